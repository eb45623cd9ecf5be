"""Typed access to llama.cpp's C API through llama-cpp-python's ctypes bindings.

The high-level `llama_cpp.Llama` hides what edgeds needs (tensor buffer overrides, several
sequences in one context, its own sampler chain per sequence), so edgeds talks to the C API
directly. Everything here is thin: one `Model` (weights + vocabulary), one `Context` (KV cache
+ batch), `Sampler` (llama.cpp's C sampler chain) and `TextStream` (incremental, UTF-8-safe
detokenization).
"""

from __future__ import annotations

import codecs
import ctypes
import math
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import llama_cpp

from edgeds.errors import ContextOverflow, EdgedsError, ModelLoadError, UsageError
from edgeds.llamacpp import devices
from edgeds.llamacpp.backend import captured_llama_log, init_backend

# ---------------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class TensorOverride:
    """Keep tensors whose name matches `pattern` (a regex, searched) in `device`'s memory."""

    pattern: str
    device: str = "CPU"


@dataclass(frozen=True)
class LoadOptions:
    """How to load a GGUF: GPU layers, tensor placement overrides, mmap."""

    n_gpu_layers: int = 0
    overrides: tuple[TensorOverride, ...] = ()
    use_mmap: bool = True
    vocab_only: bool = False


class Model:
    """One loaded GGUF model: weights, vocabulary and metadata."""

    def __init__(self, path: str | Path, options: LoadOptions = LoadOptions()):
        init_backend()
        self.path = Path(path)
        self.options = options
        if not self.path.is_file():
            raise ModelLoadError(f"{self.path}: no such file")
        params = llama_cpp.llama_model_default_params()
        params.n_gpu_layers = options.n_gpu_layers
        params.use_mmap = options.use_mmap
        params.vocab_only = options.vocab_only
        self._overrides_keepalive = None
        if options.overrides:
            self._overrides_keepalive = devices.buft_overrides(options.overrides)
            params.tensor_buft_overrides = ctypes.cast(self._overrides_keepalive, ctypes.c_void_p)
        with captured_llama_log() as log:
            ptr = llama_cpp.llama_model_load_from_file(str(self.path).encode(), params)
        if not ptr:
            reason = _last_error(log) or "llama.cpp could not load it"
            raise ModelLoadError(f"{self.path}: {reason} (is it a complete GGUF file?)")
        self.ptr = ptr
        self.vocab = llama_cpp.llama_model_get_vocab(ptr)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self.vocab)
        self.n_ctx_train = llama_cpp.llama_model_n_ctx_train(ptr)
        self.n_layer = llama_cpp.llama_model_n_layer(ptr)
        self.n_embd = llama_cpp.llama_model_n_embd(ptr)
        self.size_bytes = llama_cpp.llama_model_size(ptr)
        self.n_params = llama_cpp.llama_model_n_params(ptr)
        self.bos_id = llama_cpp.llama_vocab_bos(self.vocab)
        self.eos_id = llama_cpp.llama_vocab_eos(self.vocab)
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self.vocab))
        self.metadata = self._read_metadata()
        self._pieces: dict[tuple[int, bool], bytes] = {}
        self._eog: dict[int, bool] = {}
        self._splits: dict[int, bool] = {}
        self.arch = self.metadata.get("general.architecture", "")

    def _read_metadata(self) -> dict[str, str]:
        out: dict[str, str] = {}
        buf = ctypes.create_string_buffer(1 << 16)
        for i in range(llama_cpp.llama_model_meta_count(self.ptr)):
            n = llama_cpp.llama_model_meta_key_by_index(self.ptr, i, buf, len(buf))
            key = buf.value.decode("utf-8", errors="replace") if n >= 0 else ""
            n = llama_cpp.llama_model_meta_val_str_by_index(self.ptr, i, buf, len(buf))
            if n >= len(buf):
                big = ctypes.create_string_buffer(n + 1)
                llama_cpp.llama_model_meta_val_str_by_index(self.ptr, i, big, len(big))
                out[key] = big.value.decode("utf-8", errors="replace")
            elif n >= 0:
                out[key] = buf.value.decode("utf-8", errors="replace")
        return out

    @property
    def chat_template(self) -> str | None:
        return self.metadata.get("tokenizer.chat_template")

    def token_text(self, token: int) -> str:
        return (llama_cpp.llama_vocab_get_text(self.vocab, token) or b"").decode("utf-8", errors="replace")

    def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 8
        tokens = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, n_max, add_special, parse_special)
        if n < 0:
            n_max = -n
            tokens = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self.vocab, data, len(data), tokens, n_max, add_special, parse_special)
        return list(tokens[:n])

    # Pieces and end-of-generation flags are memoized per token id: each ctypes call on the
    # decode path re-takes the GIL, and a UI thread that holds it makes every call wait.
    def token_piece(self, token: int, *, special: bool = False) -> bytes:
        key = (token, special)
        piece = self._pieces.get(key)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self.vocab, token, buf, len(buf), 0, special)
            piece = self._pieces[key] = buf.raw[:n]
        return piece

    def is_eog(self, token: int) -> bool:
        eog = self._eog.get(token)
        if eog is None:
            eog = self._eog[token] = bool(llama_cpp.llama_vocab_is_eog(self.vocab, token))
        return eog

    def splits_text(self, token: int) -> bool:
        """A special token (control or user-defined) that strips no whitespace beside it: with
        parse_special, llama.cpp cuts the text at it and tokenizes the pieces apart."""
        split = self._splits.get(token)
        if split is None:
            attr = llama_cpp.llama_vocab_get_attr(self.vocab, token)
            special = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED
            strips = llama_cpp.LLAMA_TOKEN_ATTR_LSTRIP | llama_cpp.LLAMA_TOKEN_ATTR_RSTRIP
            split = self._splits[token] = bool(attr & special) and not attr & strips
        return split

    def close(self) -> None:
        if getattr(self, "ptr", None):
            llama_cpp.llama_model_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:
        self.close()


def _last_error(log: list[str]) -> str | None:
    """The first line of llama.cpp's log that says what failed, without its function prefix."""
    for line in "".join(log).splitlines():
        if "error" in line.lower() or "failed" in line.lower():
            return line.split(": ", 1)[-1].strip()
    return None


# ---------------------------------------------------------------------------------------------
# Context: KV cache and decoding


class Context:
    """A llama.cpp context over a `Model`: the KV cache for up to `n_seq_max` sequences."""

    def __init__(
        self,
        model: Model,
        *,
        n_ctx: int,
        n_batch: int = 512,
        n_seq_max: int = 1,
        n_threads: int | None = None,
        kv_unified: bool = True,
        eval_callback=None,
        f32_attention: bool = False,
    ):
        """`eval_callback`: a `llama_cpp.ggml_backend_sched_eval_callback` that sees the graph's
        tensors as they are computed (edgeds.llamacpp.eval_callback); kept alive with the context.
        `f32_attention`: an F32 KV cache and no flash attention, so that no activation is rounded
        to F16 on the way (for measuring the model; costs memory and speed at long contexts)."""
        self.model = model
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = n_batch
        params.n_ubatch = min(n_batch, 512)
        params.n_seq_max = n_seq_max
        params.kv_unified = kv_unified
        if n_threads:
            params.n_threads = n_threads
            params.n_threads_batch = n_threads
        params.no_perf = True
        self._eval_callback = eval_callback
        if eval_callback is not None:
            params.cb_eval = eval_callback
        if f32_attention:
            params.type_k = params.type_v = llama_cpp.GGML_TYPE_F32
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        with captured_llama_log() as log:
            ptr = llama_cpp.llama_init_from_model(model.ptr, params)
        if not ptr:
            reason = _last_error(log) or "llama.cpp could not create the context"
            raise ModelLoadError(f"{model.path}: {reason} (n_ctx={n_ctx}; try a smaller --n-ctx)")
        self.ptr = ptr
        self.n_ctx = llama_cpp.llama_n_ctx(ptr)
        self.n_batch = n_batch
        self.memory = llama_cpp.llama_get_memory(ptr)
        self._batch = llama_cpp.llama_batch_init(n_batch, 0, n_seq_max)
        self._run = (0, 0)  # (rows, seq): the batch's first rows carry one seq id each, this one

    def decode(self, items: Sequence[tuple[int, int, int, bool]]) -> None:
        """Decode (token, pos, seq_id, want_logits) items; at most n_batch of them."""
        batch = self._batch
        self._run = (0, 0)
        for i, (token, pos, seq, logits) in enumerate(items):
            batch.token[i] = token
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = logits
        batch.n_tokens = len(items)
        rc = llama_cpp.llama_decode(self.ptr, batch)
        if rc == 1:
            raise ContextOverflow(f"the KV cache is full (n_ctx={self.n_ctx})")
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")

    def decode_prompt(self, tokens: Sequence[int], start: int, seq: int = 0,
                      should_stop: Callable[[], bool] | None = None) -> bool:
        """Decode tokens at positions start.. in chunks; logits only for the last one.

        Returns False when `should_stop` asked to stop between chunks.
        """
        n = len(tokens)
        for lo in range(0, n, self.n_batch):
            if should_stop is not None and should_stop():
                return False
            hi = min(lo + self.n_batch, n)
            self._decode_run(tokens[lo:hi], start + lo, seq, logits=hi == n)
        return True

    def _decode_run(self, tokens: Sequence[int], start: int, seq: int, logits: bool) -> None:
        """Decode a run of one sequence's tokens (logits for the last one if `logits`), the batch
        filled by whole arrays: a ctypes store per field and token costs about as much as a
        small model's prompt decode on a GPU."""
        batch, n = self._batch, len(tokens)
        ids, positions = array("i", tokens), array("i", range(start, start + n))  # alive through the copies
        ctypes.memmove(batch.token, ids.buffer_info()[0], 4 * n)
        ctypes.memmove(batch.pos, positions.buffer_info()[0], 4 * n)
        rows, run_seq = self._run
        if run_seq != seq or rows < n:
            for i in range(0 if run_seq != seq else rows, n):
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = seq
            self._run = (n, seq)
        ctypes.memset(batch.logits, 0, n)
        batch.logits[n - 1] = logits
        batch.n_tokens = n
        rc = llama_cpp.llama_decode(self.ptr, batch)
        if rc == 1:
            raise ContextOverflow(f"the KV cache is full (n_ctx={self.n_ctx})")
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")

    def decode_one(self, token: int, pos: int, seq: int = 0) -> None:
        batch = self._batch
        if self._run[1] != seq:
            self._run = (0, 0)
        batch.token[0] = token
        batch.pos[0] = pos
        batch.n_seq_id[0] = 1
        batch.seq_id[0][0] = seq
        batch.logits[0] = True
        batch.n_tokens = 1
        rc = llama_cpp.llama_decode(self.ptr, batch)
        if rc == 1:
            raise ContextOverflow(f"the KV cache is full (n_ctx={self.n_ctx})")
        if rc != 0:
            raise RuntimeError(f"llama_decode failed with code {rc}")

    def forget(self, seq: int, start: int = 0) -> None:
        """Drop positions start.. of a sequence from the KV cache."""
        llama_cpp.llama_memory_seq_rm(self.memory, seq, start, -1)

    def copy_seq(self, src: int, dst: int) -> None:
        """Make `dst` hold all of `src`'s KV. Between streams (kv_unified off) llama.cpp copies
        the whole stream, and only as a whole: trim `dst` with `forget` afterwards."""
        llama_cpp.llama_memory_seq_cp(self.memory, src, dst, -1, -1)

    def clear(self) -> None:
        llama_cpp.llama_memory_clear(self.memory, True)

    def logits(self, index: int = -1):
        """A float pointer to the logits of batch row `index` (n_vocab floats)."""
        return llama_cpp.llama_get_logits_ith(self.ptr, index)

    def logits_row(self, index: int = -1):
        """The logits of batch row `index` as a numpy view (valid until the next decode)."""
        import numpy as np

        return np.ctypeslib.as_array(self.logits(index), shape=(self.model.n_vocab,))

    def close(self) -> None:
        if getattr(self, "ptr", None):
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:
        self.close()


# ---------------------------------------------------------------------------------------------
# Sampling and detokenization


REPEAT_LAST_N = 64  # tokens the repeat penalty looks back over (llama.cpp's and Ollama's default)
# tokens the presence and frequency penalties look back over: OpenAI counts the whole reply; a
# window this long covers all but runaway replies, and bounds the sampler's ring buffer
PENALTY_LAST_N = 8192


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = 0
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    seed: int | None = None
    grammar: str | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: tuple[tuple[int, float], ...] = ()

    @classmethod
    def of(cls, params, *, grammar: bool = True) -> "SamplingParams":
        """The sampler's part of a filled-in `GenerationParams` (without its grammar when
        `grammar` is off)."""
        return cls(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k, min_p=params.min_p,
                   repeat_penalty=params.repeat_penalty, seed=params.seed,
                   grammar=params.grammar if grammar else None,
                   presence_penalty=params.presence_penalty or 0.0, frequency_penalty=params.frequency_penalty or 0.0,
                   logit_bias=tuple(params.logit_bias or ()))


class GrammarDeadEnd(EdgedsError):
    """The grammar allows no token of the vocabulary at this point of the text."""


class Sampler:
    """llama.cpp's C sampler chain, in llama.cpp's own order: [grammar] → logit bias → repeat
    penalty → presence/frequency penalties → top-k → top-p → min-p → temperature → draw
    (greedy at temperature 0, after the bias and penalties). Logit-bias ids must be in the
    vocabulary (checked here: llama.cpp would index out of bounds).

    A chain with a grammar samples in steps (apply, check, accept) instead of through
    `llama_sampler_sample`: when the grammar leaves no token, llama.cpp would accept one anyway
    and abort the process; here that is a GrammarDeadEnd for this sequence alone."""

    def __init__(self, model: Model, params: SamplingParams):
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self.ptr = llama_cpp.llama_sampler_chain_init(chain_params)
        self._candidates = None
        add = lambda s: llama_cpp.llama_sampler_chain_add(self.ptr, s)  # noqa: E731
        if params.grammar:
            self._candidates = _Candidates(model.n_vocab)
            grammar = llama_cpp.llama_sampler_init_grammar(model.vocab, params.grammar.encode(), b"root")
            if not grammar:
                llama_cpp.llama_sampler_free(self.ptr)
                self.ptr = None
                raise UsageError("the grammar does not parse (GBNF syntax error; llama.cpp's log has details)")
            add(grammar)
        if params.logit_bias:
            bad = [token for token, _ in params.logit_bias if not 0 <= token < model.n_vocab]
            if bad:
                llama_cpp.llama_sampler_free(self.ptr)
                self.ptr = None
                raise UsageError(f"logit_bias: token id {bad[0]} is not in the vocabulary (0..{model.n_vocab - 1})")
            biases = (llama_cpp.llama_logit_bias * len(params.logit_bias))(*params.logit_bias)
            add(llama_cpp.llama_sampler_init_logit_bias(model.n_vocab, len(params.logit_bias), biases))
        if params.repeat_penalty != 1.0:
            add(llama_cpp.llama_sampler_init_penalties(model.n_vocab, REPEAT_LAST_N, params.repeat_penalty, 0.0, 0.0))
        if params.presence_penalty or params.frequency_penalty:
            add(llama_cpp.llama_sampler_init_penalties(model.n_vocab, PENALTY_LAST_N, 1.0, params.frequency_penalty,
                                                       params.presence_penalty))
        if params.temperature <= 0:
            add(llama_cpp.llama_sampler_init_greedy())
            return
        if params.top_k > 0:
            add(llama_cpp.llama_sampler_init_top_k(params.top_k))
        if params.top_p < 1.0:
            add(llama_cpp.llama_sampler_init_top_p(params.top_p, 1))
        if params.min_p > 0:
            add(llama_cpp.llama_sampler_init_min_p(params.min_p, 1))
        add(llama_cpp.llama_sampler_init_temp(params.temperature))
        seed = params.seed if params.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED
        add(llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))

    def sample(self, ctx: Context, index: int = -1) -> int:
        """Draw a token from row `index`'s logits and accept it into the chain's state.

        Raises:
            GrammarDeadEnd: the grammar allows no token here (nothing is accepted).
        """
        if self._candidates is None:
            return llama_cpp.llama_sampler_sample(self.ptr, ctx.ptr, index)
        array = self._candidates.fill(ctx.logits_row(index))
        llama_cpp.llama_sampler_apply(self.ptr, ctypes.byref(array))
        selected = array.selected
        if not 0 <= selected < array.size or not array.data[selected].logit > -math.inf:
            raise GrammarDeadEnd("the grammar allows no token here: no token of the vocabulary can continue "
                                 "the text it has matched so far (a dead end in the grammar)")
        token = array.data[selected].id
        llama_cpp.llama_sampler_accept(self.ptr, token)
        return token

    def accept(self, token: int) -> None:
        """Tell the chain's state (penalties, grammar) about a token it did not draw."""
        llama_cpp.llama_sampler_accept(self.ptr, token)

    def close(self) -> None:
        if getattr(self, "ptr", None):
            llama_cpp.llama_sampler_free(self.ptr)
            self.ptr = None

    def __del__(self) -> None:
        self.close()


class _Candidates:
    """A llama_token_data_array over one logits row, its buffer reused from token to token
    (what llama_sampler_sample builds inside llama.cpp)."""

    def __init__(self, n_vocab: int):
        import numpy as np

        self._ids = np.arange(n_vocab, dtype=np.int32)
        self._data = np.zeros(n_vocab, dtype=[("id", np.int32), ("logit", np.float32), ("p", np.float32)])
        assert self._data.itemsize == ctypes.sizeof(llama_cpp.llama_token_data)
        self._pointer = self._data.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        self._array = llama_cpp.llama_token_data_array()

    def fill(self, logits) -> "llama_cpp.llama_token_data_array":
        """The array over `logits` in vocabulary order, unsorted, nothing selected (the
        samplers sort and shrink it in place)."""
        data = self._data
        data["id"] = self._ids
        data["logit"] = logits
        data["p"] = 0.0
        array = self._array
        array.data, array.size, array.selected, array.sorted = self._pointer, len(data), -1, False
        return array


class TextStream:
    """Token ids → text pieces, holding back bytes of a UTF-8 character split across tokens.

    Think tags and DeepSeek's tool-call markers render as text even where the vocabulary marks
    them as control tokens, so the reasoning splitter and the tool-call parser see them; other
    control tokens (EOS, …) render as nothing.
    """

    TAGS = ("<think>", "</think>", "<｜tool▁calls▁begin｜>", "<｜tool▁calls▁end｜>", "<｜tool▁call▁begin｜>",
            "<｜tool▁call▁end｜>", "<｜tool▁sep｜>")

    def __init__(self, model: Model):
        self.model = model
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._tag_tokens = _tag_tokens(model)

    def push(self, token: int) -> str:
        tag = self._tag_tokens.get(token)
        if tag is not None:
            return self._decoder.decode(b"", final=True) + tag
        return self._decoder.decode(self.model.token_piece(token))

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)


def _tag_tokens(model: Model) -> dict[int, str]:
    cache = getattr(model, "_shown_tag_tokens", None)
    if cache is None:
        cache = {}
        for tag in TextStream.TAGS:
            ids = model.tokenize(tag, add_special=False, parse_special=True)
            if len(ids) == 1:
                cache[ids[0]] = tag
        model._shown_tag_tokens = cache
    return cache
