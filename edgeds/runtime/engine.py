"""Engine: one loaded model that turns a conversation into reasoning/answer/done events.

The decode loop is llama.cpp's: the prompt is decoded in batches, each token is drawn by
llama.cpp's C sampler chain, and the Python side only turns token ids into text and events.
The KV cache keeps the previous conversation, so a follow-up turn decodes only what is new.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Iterator, Sequence

from edgeds.errors import ContextOverflow, EdgedsError
from edgeds.events import Done, Event, GenerationTimer
from edgeds.llamacpp.backend import gpu_offload_supported
from edgeds.llamacpp.binding import Context, LoadOptions, Model, TextStream
from edgeds.machine.hardware import memory, physical_cores
from edgeds.machine.memory import Geometry, default_n_ctx
from edgeds.runtime import template
from edgeds.runtime.grammar import check_grammar
from edgeds.runtime.lora import LoraSpec, apply_loras, load_loras
from edgeds.runtime.params import GenerationParams, ModelDefaults
from edgeds.runtime.prompt_cache import PromptTokenizer
from edgeds.runtime.reasoning import ReasoningSplitter
from edgeds.runtime.sequence import TokenSequence
from edgeds.runtime.speculative import Speculation, speculate

class PhaseStream:
    """Generated token ids → Reasoning/Answer events, counting the tokens of each phase.

    Shared by the Engine and the multi-sequence scheduler: one per generation.
    """

    def __init__(self, model: Model, opens_think: bool, bare_close: bool = False):
        self._text = TextStream(model)
        self._splitter = ReasoningSplitter(in_reasoning=opens_think, bare_close=bare_close)
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
        events = self._splitter.feed(self._text.flush()) + self._splitter.finish()
        if self._splitter.phase == "answer":  # held-back text turned out to be the answer
            self._counts["answer"] += self._counts["start"]
            self._counts["start"] = 0
        return events

    @property
    def stopped_thinking(self) -> bool:
        """The text ends inside the think block (read after `finish`)."""
        return self._splitter.in_think_block

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
        loras: GGUF LoRA adapters with their scales, applied to every context (edgeds.runtime.lora).
        think_prefix: start an R1-family model's reply with `<think>\\n` where its template
            does not (DeepSeek asks for it, so the model does not skip thinking). R1-family:
            `defaults.forces_think`, or when None, DeepSeek's template and a name that says R1.
        speculation: a drafter for speculative decoding (`runtime.speculative`); the engine
            closes it. The output is the same as without it.
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
        think_prefix: bool = True,
        loras: Sequence[LoraSpec] = (),
        speculation: Speculation | None = None,
    ):
        path = Path(model)
        if load_options is None:
            if n_gpu_layers is None:
                n_gpu_layers = -1 if gpu_offload_supported() else 0
            load_options = LoadOptions(n_gpu_layers=n_gpu_layers)
        self.model = Model(path, load_options)
        self.n_threads = n_threads or physical_cores()
        self.n_ctx = n_ctx or default_n_ctx(Geometry.from_metadata(self.model.metadata, n_vocab=self.model.n_vocab),
                                            self.model.size_bytes, memory()[1])
        self.ctx = Context(self.model, n_ctx=self.n_ctx, n_threads=self.n_threads)
        try:
            self.loras = load_loras(self.model, loras)  # (adapter, scale) pairs every context applies
        except BaseException:
            self.close()
            raise
        apply_loras(self.ctx, self.loras)
        self.defaults = defaults or ModelDefaults()
        self.chat_template = chat_template or self.model.chat_template
        self.reasoning_template = template.is_reasoning_template(self.chat_template)
        allow_system = self.defaults.allow_system
        if allow_system is None:
            allow_system = not self.reasoning_template
        self.allow_system = allow_system
        forces_think = self.defaults.forces_think
        if forces_think is None:
            forces_think = template.is_r1_family(self.chat_template, self.name)
        self.think_prefix = think_prefix and forces_think  # replies start inside <think>
        self.placement = placement
        self.speculation = speculation
        self._cached: list[int] = []  # tokens whose KV is in sequence 0
        self._tokenize = PromptTokenizer(self.model)  # tokenizes what differs from recent prompts
        self.reused_prompt_tokens = 0  # of the last prompt, tokens whose KV was already cached
        self._cancel = threading.Event()
        self._busy = threading.Lock()

    @property
    def name(self) -> str:
        return self.model.metadata.get("general.name") or self.model.path.stem

    def cancel(self) -> None:
        """Stop the running generation at the next token; it ends with finish_reason cancelled."""
        self._cancel.set()

    def prompt_tokens(self, messages: list[dict], tools: list[dict] | None = None) -> tuple[list[int], bool]:
        """The token ids of the rendered conversation, and whether it opened a think block
        (the template did, or the think prefix was appended). `tools` go to the template."""
        history = template.answer_only(messages, allow_system=self.allow_system)
        bos = self.model.token_text(self.model.bos_id) if self.model.bos_id >= 0 else ""
        eos = self.model.token_text(self.model.eos_id) if self.model.eos_id >= 0 else ""
        prompt = template.render(self.chat_template, history, bos_token=bos, eos_token=eos,
                                 source=f"the chat template of {self.model.path.name}", tools=tools)
        if self.think_prefix:
            prompt = template.open_think(prompt)
        try:
            tokens = self._tokenize(prompt.text)
        except UnicodeEncodeError as err:  # a lone surrogate ("\ud800" in JSON) has no UTF-8 form
            raise EdgedsError(f"the prompt is not valid Unicode: {err.object[err.start]!r} at character "
                              f"{err.start} ({err.reason})") from None
        if self.model.add_bos and self.model.bos_id >= 0 and tokens[:1] != [self.model.bos_id]:
            tokens.insert(0, self.model.bos_id)  # templates that do not write BOS themselves
        if not tokens:  # llama.cpp would decode nothing and abort on the missing logits
            raise EdgedsError(f"the chat template of {self.model.path.name} renders an empty prompt")
        return tokens, prompt.opens_think

    def generate(self, messages: list[dict], params: GenerationParams | None = None) -> Iterator[Event]:
        """Yield Reasoning/Answer deltas, then one Done(stats).

        A request refused before generating raises; a generation that fails after it started
        ends with Done(finish_reason="error"). Every backend does the same.

        Raises:
            ContextOverflow: the prompt alone does not fit in the context.
            EdgedsError: a bad message list, chat template or grammar.
        """
        if not self._busy.acquire(blocking=False):
            raise EdgedsError("this engine is already generating")
        try:
            yield from self._generate(messages, self.defaults.apply(params))
        finally:
            self._busy.release()

    def _generate(self, messages: list[dict], params: GenerationParams) -> Iterator[Event]:
        self._cancel.clear()
        timer = GenerationTimer()
        tokens, opens_think = self.prompt_tokens(messages)
        if len(tokens) >= self.n_ctx:
            raise ContextOverflow(
                f"the prompt is {len(tokens)} tokens but the context holds {self.n_ctx}; "
                "shorten the conversation or raise --n-ctx"
            )
        if params.grammar:
            check_grammar(params.grammar)
        phases = PhaseStream(self.model, opens_think, self.reasoning_template)
        sequence = TokenSequence(self.model, params, phases, opens_think)  # sampling, stops, logprobs, grammar
        finish, error = "stop", None
        generated = 0
        spec = self.speculation if self.speculation and self.speculation.applies(params) else None
        draft = spec.start() if spec else None
        queued: list[int] = []  # samples of the last speculative step not yet taken
        reuse = self.reused_prompt_tokens = self._reuse_prefix(tokens)
        try:
            if not self.ctx.decode_prompt(tokens[reuse:], reuse, should_stop=self._cancel.is_set):
                finish = "cancelled"
            self._cached = list(tokens)
            timer.prompt_done()
            pos = len(tokens)
            while finish == "stop":
                if self._cancel.is_set():
                    finish = "cancelled"
                    break
                if generated >= params.max_tokens:
                    finish = "length"
                    break
                token = queued.pop(0) if queued else sequence.draw(self.ctx)
                timer.token()
                if self.model.is_eog(token):
                    break
                generated += 1
                yield from sequence.push(token)
                if sequence.stopped:
                    break
                if pos + 1 >= self.n_ctx:
                    finish = "length"
                    break
                self._cached.append(token)
                if queued:
                    pass  # an accepted draft: its KV is in place already
                elif spec and sequence.steady:
                    room = min(self.n_ctx - pos - 2, params.max_tokens - generated - 1)
                    queued = speculate(spec, draft, self.ctx, sequence.draw, self._cached, pos, room)
                else:
                    self.ctx.decode_one(token, pos)
                pos += 1
        except ContextOverflow as err:
            finish, error = "length", str(err)
        except Exception as err:  # noqa: BLE001 - a failure after the start ends the stream with Done(error)
            finish, error = "error", f"{type(err).__name__}: {err}"
            self._cached = []
            self.ctx.clear()
        finally:
            sequence.close()
        yield from sequence.finish()
        yield Done(timer.stats(prompt_tokens=len(tokens), decoded_prompt_tokens=len(tokens) - reuse,
                               generated=generated, reasoning_tokens=phases.reasoning_tokens,
                               answer_tokens=phases.answer_tokens, finish_reason=finish, error=error,
                               stopped_thinking=phases.stopped_thinking,
                               draft_tokens=draft.drafted if draft else 0,
                               accepted_tokens=draft.accepted if draft else 0))

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
        if self.speculation is not None:
            self.speculation.close()
        self.ctx.close()
        self.model.close()

    def __enter__(self) -> "Engine":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
