"""Scheduler: several conversations decoded together in one llama.cpp context.

Like llama-server's slots: the context holds `parallel` sequences whose KV cache is shared;
each step puts one llama_batch together carrying the next token of every running sequence
and, in the room left, prompt tokens of newly admitted ones (each under its own seq_id).
Every sequence is drawn by its own llama.cpp sampler chain from its own batch row, so its
seed alone decides its samples. When a sequence finishes, the next waiting request takes the
slot at once (continuous batching); a new request never interrupts a running one. A finished
sequence keeps its KV cells until its slot is needed, so a request that starts like an earlier
or running one (a shared system prompt) decodes only what is new (`PrefixCache`;
Stats.cached_tokens counts what it skipped).

`edgeds batch` and `edgeds serve` both run on this; the single-sequence `Engine` lends its
model, chat template and defaults.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from typing import Callable, Iterator

from edgeds.errors import ContextOverflow
from edgeds.events import Completion, Done, Event, GenerationTimer, Reasoning, Stats
from edgeds.llamacpp.binding import Context, GrammarDeadEnd
from edgeds.runtime.engine import Engine, PhaseStream
from edgeds.runtime.grammar import check_grammar
from edgeds.runtime.lora import apply_loras
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.prefix_cache import PrefixCache, prompt_chunk
from edgeds.runtime.rawtext import RawStream, raw_prompt_tokens
from edgeds.runtime.sequence import TokenSequence
from edgeds.runtime.speculative import verify

DEFAULT_SEQ_CTX = 4096


class Request:
    """One submitted conversation. Iterate `events()` (from any thread) or wait for `result()`."""

    def __init__(self, tokens: list[int], opens_think: bool, params: GenerationParams, sampler: TokenSequence,
                 on_done: Callable[[Completion], None] | None):
        self.tokens = tokens
        self.opens_think = opens_think
        self.params = params
        self.sampler = sampler  # the TokenSequence: sampler chain, phases, stops, logprobs
        self.on_done = on_done
        self.completion: Completion | None = None
        self._events: queue.Queue[Event] = queue.Queue()
        self._finished = threading.Event()
        self._cancel = threading.Event()

    def cancel(self) -> None:
        """Stop at the next step; the generation ends with finish_reason cancelled."""
        self._cancel.set()

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    def events(self) -> Iterator[Event]:
        """Reasoning/Answer deltas as they are generated, then one Done."""
        while True:
            event = self._events.get()
            yield event
            if isinstance(event, Done):
                return

    def event_batches(self) -> Iterator[list[Event]]:
        """Like `events()`, each time all events queued by then (a slow reader catches up in one go)."""
        while True:
            batch = [self._events.get()]
            while not isinstance(batch[-1], Done) and not self._events.empty():
                batch.append(self._events.get())
            yield batch
            if isinstance(batch[-1], Done):
                return

    def result(self, timeout: float | None = None) -> Completion:
        if not self._finished.wait(timeout):
            raise TimeoutError("the generation has not finished")
        assert self.completion is not None
        return self.completion


class _Slot:
    """A running sequence: its position, sampler, text and timing."""

    def __init__(self, seq: int, request: Request, phases: PhaseStream):
        self.seq = seq
        self.request = request
        self.sampler = request.sampler
        self.phases = phases
        self.fed = 0  # prompt tokens decoded so far
        self.reused = 0  # prompt tokens whose KV came from the prefix cache
        self.pos = 0  # next KV position
        self.last: int | None = None  # sampled token not yet decoded
        self.tokens = list(request.tokens)  # prompt + output so far (what a drafter reads)
        self.draft = None  # its speculative.DraftState, when it decodes speculatively
        self.generated = 0
        self.reasoning: list[str] = []
        self.answer: list[str] = []
        self.timer = GenerationTimer()


class Scheduler:
    """Decode up to `parallel` conversations together on `engine`'s model.

    Args:
        engine: lends the loaded model, chat template, system-prompt rule and defaults (its
            own single-sequence context stays unused; open it with a small n_ctx).
        parallel: sequences decoded together (slots).
        seq_ctx: context length of each sequence; the shared KV cache holds parallel × seq_ctx.
        n_batch: most tokens in one llama_batch (prompt chunks fill what decoding leaves).

    Each sequence has its own KV stream (kv_unified off): attention then never runs over
    another sequence's cells, so a sequence's logits do not depend on what runs beside it
    and one seed gives the same text whatever `parallel` is (with a unified cache greedy
    outputs drifted between --parallel 1 and 4 on SmolLM2). Measured here: exact on a
    quantized model (SmolLM2 Q4_1, sampled at 0.6), whose matmuls quantize each activation
    row on its own; an F32 model's float kernels can still differ in the last bits with the
    batch size, which flips near-tied samples late in a long reply.

    With the engine's `speculation`, each slot drafts for its own sequence (a draft model gets
    a context with one sequence per slot) and every slot's verify rows go in the same batch.
    """

    def __init__(self, engine: Engine, *, parallel: int = 4, seq_ctx: int | None = None,
                 n_threads: int | None = None, n_batch: int = 512):
        if parallel < 1:
            raise ValueError("parallel must be at least 1")
        self.engine = engine
        self.model = engine.model
        self.parallel = parallel
        self.seq_ctx = seq_ctx or min(DEFAULT_SEQ_CTX, self.model.n_ctx_train or DEFAULT_SEQ_CTX)
        self.n_batch = max(n_batch, parallel)
        self.ctx = Context(self.model, n_ctx=parallel * self.seq_ctx, n_batch=self.n_batch,
                           n_seq_max=parallel, n_threads=n_threads or engine.n_threads, kv_unified=False)
        apply_loras(self.ctx, getattr(engine, "loras", ()))
        self.speculation = engine.speculation and engine.speculation.for_slots(
            parallel, self.seq_ctx, n_threads or engine.n_threads)
        self._prefix = PrefixCache(self.ctx)
        self._waiting: deque[Request] = deque()
        self._slots: dict[int, _Slot] = {}
        self._wake = threading.Condition()
        self._closing = False
        self._thread = threading.Thread(target=self._loop, name="edgeds-scheduler", daemon=True)
        self._thread.start()

    @property
    def name(self) -> str:
        return self.engine.name

    # -- submitting ------------------------------------------------------------------------

    def submit(self, messages: list[dict] | str, params: GenerationParams | None = None,
               on_done: Callable[[Completion], None] | None = None, tools: list[dict] | None = None) -> Request:
        """Queue a conversation; it starts as soon as a slot is free. `on_done` gets the
        Completion on the scheduler's thread (keep it short: hand it to a queue). A string
        instead of messages is a raw prompt (no chat template; plain text out, see rawtext).
        `tools` go to the chat template.

        The prompt is rendered and tokenized here, so a bad conversation fails at once.

        Raises:
            ContextOverflow: the prompt does not fit in one sequence's context.
            EdgedsError: a bad message list, chat template or grammar.
        """
        raw = isinstance(messages, str)
        tokens, opens_think = (raw_prompt_tokens(self.model, messages), False) if raw \
            else self.engine.prompt_tokens(messages, tools)
        if len(tokens) >= self.seq_ctx:
            raise ContextOverflow(
                f"the prompt is {len(tokens)} tokens but a sequence's context holds {self.seq_ctx}"
            )
        params = self.engine.defaults.apply(params)
        if params.grammar:
            check_grammar(params.grammar)
        phases = RawStream(self.model) if raw else PhaseStream(self.model, opens_think, self.engine.reasoning_template)
        sequence = TokenSequence(self.model, params, phases, opens_think)
        request = Request(tokens, opens_think, params, sequence, on_done)
        with self._wake:
            if self._closing:
                request.sampler.close()
                raise RuntimeError("the scheduler is closed")
            self._waiting.append(request)
            self._wake.notify()
        return request

    def generate(self, messages: list[dict], params: GenerationParams | None = None) -> Iterator[Event]:
        """Like Engine.generate, sharing the slots with every other caller."""
        request = self.submit(messages, params)
        try:
            yield from request.events()
        finally:
            request.cancel()  # a consumer that stops early frees its slot

    # -- the decode loop -------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._wake:
                while not self._closing and not self._waiting and not self._slots:
                    self._wake.wait()
                if self._closing:
                    break
                self._admit()
            try:
                self._step()
            except Exception as err:  # noqa: BLE001 - every running sequence reports it
                for slot in list(self._slots.values()):
                    self._finish(slot, "error", f"{type(err).__name__}: {err}")
                self.ctx.clear()
                self._prefix.clear()
        for slot in list(self._slots.values()):
            self._finish(slot, "cancelled")
        while self._waiting:
            self._reject(self._waiting.popleft(), "cancelled")

    def _admit(self) -> None:
        for request in [r for r in self._waiting if r.cancelled]:  # gone before their turn: no wait for a slot
            self._waiting.remove(request)
            self._reject(request, "cancelled")
        free = [seq for seq in range(self.parallel) if seq not in self._slots]
        fresh: set[int] = set()
        while free and self._waiting:
            running = {s.seq: (s.request.tokens, s.fed) for s in self._slots.values()}
            placed = self._prefix.place(self._waiting[0].tokens, free, running, fresh)
            if placed is None:  # a running sequence is decoding the prefix it shares: reuse it next step
                break
            request = self._waiting.popleft()
            seq, reused = placed
            fresh.add(seq)
            slot = self._slots[seq] = _Slot(seq, request, request.sampler.phases)
            slot.fed = slot.reused = reused
            if self.speculation and self.speculation.applies(request.params):
                slot.draft = self.speculation.start()

    def _step(self) -> None:
        items: list[tuple[int, int, int, bool]] = []
        for slot in list(self._slots.values()):
            if slot.request.cancelled:
                self._finish(slot, "cancelled")
        drafts = self._propose()
        for slot in list(self._slots.values()):
            if slot.last is not None:
                items.append((slot.last, slot.pos, slot.seq, True))
                items += [(t, slot.pos + 1 + i, slot.seq, True) for i, t in enumerate(drafts.get(slot.seq, ()))]
        for slot in list(self._slots.values()):
            room = self.n_batch - len(items)
            if room <= 0:
                break
            if slot.last is not None or slot.fed >= len(slot.request.tokens):
                continue
            chunk = slot.request.tokens[slot.fed: slot.fed + prompt_chunk(len(slot.request.tokens) - slot.fed, room)]
            if not chunk:
                continue
            end = slot.fed + len(chunk)
            for i, token in enumerate(chunk):
                last = slot.fed + i == len(slot.request.tokens) - 1
                items.append((token, slot.fed + i, slot.seq, last))
            slot.fed = end
        if not items:
            return
        # In seq order: llama.cpp (KV streams apart) puts only runs of consecutive seq ids in one
        # ubatch, so slots in the order they were refilled made one step several graph runs.
        items.sort(key=lambda item: item[2])  # stable: a sequence's own rows keep their order
        started = time.perf_counter()
        self.ctx.decode(items)
        if self.speculation:
            self.speculation.costs.observe_decode(len(items), time.perf_counter() - started)
        first_rows: dict[int, int] = {}  # seq → its first row with logits (a verify step has several)
        for row, item in enumerate(items):
            if item[3]:
                first_rows.setdefault(item[2], row)
        for seq, row in first_rows.items():
            slot = self._slots[seq]
            if slot.last is None:  # its prompt just finished
                slot.pos = len(slot.request.tokens)
                slot.timer.prompt_done()
                self._sample(slot, row)
            elif slot.seq in drafts:
                self._verify(slot, row, drafts[slot.seq])
            else:
                slot.pos += 1
                self._sample(slot, row)

    def _propose(self) -> dict[int, list[int]]:
        """Drafts of the speculating slots with a pending token, sized to their room."""
        running = [s for s in self._slots.values() if s.last is not None]
        asks = [s for s in running if s.draft is not None and s.sampler.steady]
        if not asks:
            return {}
        share = (self.n_batch - len(running)) // len(asks)
        lengths = [min(s.draft.length(self.speculation.costs, len(running)), share, self.seq_ctx - s.pos - 2,
                       s.request.params.max_tokens - s.generated - 1) for s in asks]
        asks = [(s, n) for s, n in zip(asks, lengths) if n > 0]
        if not asks:
            return {}
        drafts = self.speculation.propose([(s.seq, s.tokens, n) for s, n in asks])
        return {s.seq: draft for (s, _), draft in zip(asks, drafts)}

    def _verify(self, slot: _Slot, row: int, draft: list[int]) -> None:
        """Take the samples of a slot's verify rows (speculative.verify); drop rejected KV."""
        try:
            out = verify(slot.sampler.draw, self.ctx, range(row, row + len(draft) + 1), draft)
        except GrammarDeadEnd as err:  # this sequence's grammar alone: the others run on
            self._finish(slot, "error", str(err))
            return
        self.ctx.forget(slot.seq, slot.pos + len(out))
        self.speculation.record(slot.draft, len(draft), len(out) - 1)
        for token in out:
            slot.pos += 1
            if not self._take(slot, token):
                return

    def _sample(self, slot: _Slot, row: int) -> None:
        try:
            token = slot.sampler.draw(self.ctx, row)
        except GrammarDeadEnd as err:  # this sequence's grammar alone: the others run on
            self._finish(slot, "error", str(err))
            return
        self._take(slot, token)

    def _take(self, slot: _Slot, token: int) -> bool:
        """A sampled token: emit it, or finish the slot; False once it has finished."""
        slot.timer.token()
        if self.model.is_eog(token):
            self._finish(slot, "stop")
            return False
        slot.generated += 1
        self._emit(slot, slot.sampler.push(token))
        if slot.sampler.stopped:  # a stop string
            self._finish(slot, "stop")
            return False
        if slot.generated >= slot.request.params.max_tokens or slot.pos + 1 >= self.seq_ctx:
            self._finish(slot, "length")
            return False
        slot.last = token
        slot.tokens.append(token)
        return True

    def _emit(self, slot: _Slot, events: list[Event]) -> None:
        for event in events:
            (slot.reasoning if isinstance(event, Reasoning) else slot.answer).append(event.text)
            slot.request._events.put(event)

    def _finish(self, slot: _Slot, finish: str, error: str | None = None) -> None:
        del self._slots[slot.seq]
        self._prefix.release(slot.seq, slot.request.tokens[:slot.fed])  # its KV stays for a later prompt
        slot.sampler.close()
        self._emit(slot, slot.sampler.finish())
        stats = slot.timer.stats(prompt_tokens=len(slot.request.tokens), generated=slot.generated,
                                 decoded_prompt_tokens=len(slot.request.tokens) - slot.reused,
                                 reasoning_tokens=slot.phases.reasoning_tokens,
                                 answer_tokens=slot.phases.answer_tokens,
                                 finish_reason=finish, error=error,  # type: ignore[arg-type]
                                 stopped_thinking=slot.phases.stopped_thinking,
                                 draft_tokens=slot.draft.drafted if slot.draft else 0,
                                 accepted_tokens=slot.draft.accepted if slot.draft else 0)
        self._done(slot.request, Completion("".join(slot.reasoning), "".join(slot.answer), stats))

    def _reject(self, request: Request, finish: str) -> None:
        request.sampler.close()
        self._done(request, Completion("", "", Stats(prompt_tokens=len(request.tokens), finish_reason=finish)))  # type: ignore[arg-type]

    def _done(self, request: Request, completion: Completion) -> None:
        request.completion = completion
        request._events.put(Done(completion.stats))
        request._finished.set()
        if request.on_done is not None:
            try:
                request.on_done(completion)
            except Exception:  # noqa: BLE001 - a caller's callback must not stop the decode loop
                import traceback

                traceback.print_exc()

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Cancel what runs or waits, stop the loop and free the context (not the engine)."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        self._thread.join()
        if self.speculation:
            self.speculation.close()
        self.ctx.close()

    def __enter__(self) -> "Scheduler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
