"""Engine: one loaded model that turns a conversation into reasoning/answer/done events.

The decode loop is llama.cpp's: the prompt is decoded in batches, each token is drawn by
llama.cpp's C sampler chain, and the Python side only turns token ids into text and events.
The KV cache keeps the previous conversation, so a follow-up turn decodes only what is new.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Iterator

from edgeds.errors import ContextOverflow, EdgedsError
from edgeds.events import Answer, Done, Event, Reasoning, Stats
from edgeds.machine.hardware import physical_cores
from edgeds.runtime.reasoning import ReasoningSplitter
from edgeds.runtime import chat
from edgeds.llamacpp.binding import (
    Context,
    LoadOptions,
    Model,
    Sampler,
    SamplingParams,
    TextStream,
    gpu_offload_supported,
)
from edgeds.runtime.params import GenerationParams, ModelDefaults

MIN_CTX = 2048
# Reasoning traces run to thousands of tokens, but a full 128k-token KV cache and its compute
# buffers take gigabytes: default to at most this much; --n-ctx goes higher.
DEFAULT_MAX_CTX = 32768


def kv_bytes_per_token(metadata: dict[str, str]) -> int:
    """Bytes of f16 KV cache one token takes (MLA models cache the latent, not the heads)."""
    arch = metadata.get("general.architecture", "")
    get = lambda key, default=0: int(float(metadata.get(f"{arch}.{key}", default)))  # noqa: E731
    n_layer = get("block_count", 1)
    if f"{arch}.attention.kv_lora_rank" in metadata:
        return (get("attention.kv_lora_rank") + get("rope.dimension_count")) * n_layer * 2
    n_head = get("attention.head_count", 1)
    n_kv = get("attention.head_count_kv", n_head)
    head_k = get("attention.key_length", get("embedding_length") // max(n_head, 1))
    head_v = get("attention.value_length", head_k)
    return n_kv * (head_k + head_v) * n_layer * 2


def default_n_ctx(model: Model, *, ram_available: int | None = None) -> int:
    """The trained context length, capped at DEFAULT_MAX_CTX and so the KV cache takes at most
    half the free RAM."""
    if ram_available is None:
        ram_available = _available_ram()
    per_token = max(kv_bytes_per_token(model.metadata), 1)
    fits = max(0, ram_available // 2 - model.size_bytes) // per_token
    n_ctx = min(model.n_ctx_train or MIN_CTX, DEFAULT_MAX_CTX, max(fits // 256 * 256, MIN_CTX))
    return max(n_ctx, 256)


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class PhaseStream:
    """Generated token ids → Reasoning/Answer events, counting the tokens of each phase.

    Shared by the Engine and the multi-sequence scheduler: one per generation.
    """

    def __init__(self, model: Model, opens_think: bool):
        self._text = TextStream(model)
        self._splitter = ReasoningSplitter(in_reasoning=opens_think)
        self._counts = {"reasoning": 0, "answer": 0, "start": 0}

    def push(self, token: int) -> list[Event]:
        events = self._splitter.feed(self._text.push(token))
        phase = self._splitter.phase
        self._counts[phase] += 1
        if phase != "start" and self._counts["start"]:
            # tokens seen before the phase was known belong to the phase they opened
            self._counts[phase] += self._counts["start"]
            self._counts["start"] = 0
        return events

    def finish(self) -> list[Event]:
        return self._splitter.feed(self._text.flush()) + self._splitter.finish()

    @property
    def reasoning_tokens(self) -> int:
        return self._counts["reasoning"] + self._counts["start"]

    @property
    def answer_tokens(self) -> int:
        return self._counts["answer"]


class Engine:
    """One loaded model.

    Args:
        model: a GGUF path, or a registry id (resolved to a downloaded file).
        n_ctx: context length; default: the trained context, capped by free RAM.
        n_threads: decode threads; default: physical cores.
        n_gpu_layers: layers on the GPU; default: all where llama.cpp has a GPU backend.
        load_options: full control over loading (placement plans build these).
        defaults: generation defaults; registry entries carry their own.
        chat_template: a Jinja chat template to use instead of the GGUF's own.
        placement: one line on where the weights sit (the placement plan's explanation).
    """

    def __init__(
        self,
        model: str | Path,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        load_options: LoadOptions | None = None,
        defaults: ModelDefaults | None = None,
        chat_template: str | None = None,
        placement: str = "",
    ):
        path = Path(model)
        if load_options is None:
            if n_gpu_layers is None:
                n_gpu_layers = -1 if gpu_offload_supported() else 0
            load_options = LoadOptions(n_gpu_layers=n_gpu_layers)
        self.model = Model(path, load_options)
        self.n_threads = n_threads or physical_cores()
        self.n_ctx = n_ctx or default_n_ctx(self.model)
        self.ctx = Context(self.model, n_ctx=self.n_ctx, n_threads=self.n_threads)
        self.defaults = defaults or ModelDefaults()
        self.chat_template = chat_template or self.model.chat_template
        allow_system = self.defaults.allow_system
        if allow_system is None:
            allow_system = not chat.is_reasoning_template(self.chat_template)
        self.allow_system = allow_system
        self.placement = placement
        self._cached: list[int] = []  # tokens whose KV is in sequence 0
        self.reused_prompt_tokens = 0  # of the last prompt, tokens whose KV was already cached
        self._cancel = threading.Event()
        self._busy = threading.Lock()

    @property
    def name(self) -> str:
        return self.model.metadata.get("general.name") or self.model.path.stem

    def cancel(self) -> None:
        """Stop the running generation at the next token; it ends with finish_reason cancelled."""
        self._cancel.set()

    def prompt_tokens(self, messages: list[dict]) -> tuple[list[int], bool]:
        """The token ids of the rendered conversation, and whether it opened a think block."""
        history = chat.answer_only(messages, allow_system=self.allow_system)
        bos = self.model.token_text(self.model.bos_id) if self.model.bos_id >= 0 else ""
        eos = self.model.token_text(self.model.eos_id) if self.model.eos_id >= 0 else ""
        prompt = chat.render(self.chat_template, history, bos_token=bos, eos_token=eos)
        tokens = self.model.tokenize(prompt.text, add_special=False, parse_special=True)
        if self.model.add_bos and self.model.bos_id >= 0 and tokens[:1] != [self.model.bos_id]:
            tokens.insert(0, self.model.bos_id)  # templates that do not write BOS themselves
        return tokens, prompt.opens_think

    def generate(self, messages: list[dict], params: GenerationParams | None = None) -> Iterator[Event]:
        """Yield Reasoning/Answer deltas, then one Done(stats).

        Raises:
            ContextOverflow: the prompt alone does not fit in the context.
            EdgedsError: a bad message list or chat template.
        """
        if not self._busy.acquire(blocking=False):
            raise EdgedsError("this engine is already generating")
        try:
            yield from self._generate(messages, self.defaults.apply(params))
        finally:
            self._busy.release()

    def _generate(self, messages: list[dict], params: GenerationParams) -> Iterator[Event]:
        self._cancel.clear()
        t0 = time.perf_counter()
        tokens, opens_think = self.prompt_tokens(messages)
        if len(tokens) >= self.n_ctx:
            raise ContextOverflow(
                f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx}; "
                "shorten the conversation or raise --n-ctx"
            )
        sampler = Sampler(
            self.model,
            SamplingParams(temperature=params.temperature, top_p=params.top_p, seed=params.seed, grammar=params.grammar),
        )
        phases = PhaseStream(self.model, opens_think)
        finish, error = "stop", None
        n_prompt = len(tokens)
        t_first = t_prompt_done = None
        n_decoded_prompt = 0
        generated = 0
        try:
            reuse = self.reused_prompt_tokens = self._reuse_prefix(tokens)
            n_decoded_prompt = len(tokens) - reuse
            if not self.ctx.decode_prompt(tokens[reuse:], reuse, should_stop=self._cancel.is_set):
                finish = "cancelled"
            self._cached = list(tokens)
            t_prompt_done = time.perf_counter()
            pos = len(tokens)
            while finish == "stop":
                if self._cancel.is_set():
                    finish = "cancelled"
                    break
                if generated >= params.max_tokens:
                    finish = "length"
                    break
                token = sampler.sample(self.ctx)
                if t_first is None:
                    t_first = time.perf_counter()
                if self.model.is_eog(token):
                    break
                generated += 1
                yield from phases.push(token)
                if pos + 1 >= self.n_ctx:
                    finish = "length"
                    break
                self.ctx.decode_one(token, pos)
                self._cached.append(token)
                pos += 1
        except ContextOverflow as err:
            finish, error = "length", str(err)
        except Exception as err:  # noqa: BLE001 - reported in Done, then re-raised below
            finish, error = "error", f"{type(err).__name__}: {err}"
            raise
        finally:
            sampler.close()
            if finish == "error":
                self._cached = []
                self.ctx.clear()
        yield from phases.finish()
        t_end = time.perf_counter()
        prompt_s = (t_prompt_done or t_end) - t0
        decode_s = t_end - (t_first or t_end)
        yield Done(
            Stats(
                prompt_tokens=n_prompt,
                reasoning_tokens=phases.reasoning_tokens,
                answer_tokens=phases.answer_tokens,
                ttft_s=round((t_first or t_end) - t0, 4),
                prompt_tok_s=round(n_decoded_prompt / prompt_s, 2) if prompt_s > 0 and n_decoded_prompt else 0.0,
                decode_tok_s=round((generated - 1) / decode_s, 2) if generated > 1 and decode_s > 0 else 0.0,
                finish_reason=finish,
                error=error if finish == "error" else None,
            )
        )

    def _reuse_prefix(self, tokens: list[int]) -> int:
        """Keep the cached KV shared with `tokens` (at least one token is always re-decoded)."""
        common = 0
        for a, b in zip(self._cached, tokens):
            if a != b:
                break
            common += 1
        common = min(common, len(tokens) - 1)
        self.ctx.forget(0, common)
        self._cached = self._cached[:common]
        return common

    def close(self) -> None:
        self.ctx.close()
        self.model.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
