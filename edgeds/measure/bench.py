"""`edgeds bench`: prompt processing and generation speed, the way llama-bench reports them,
for llama.cpp's raw decode loop and for the edgeds Engine in the same run.

- raw: llama.cpp's low-level API only (llama_decode on one batch of `n_prompt` random tokens,
  then `n_gen` single-token decodes, each token picked by llama.cpp's C greedy sampler);
- edgeds: `Engine.generate` on a chat prompt of about `n_prompt` tokens, greedy, `n_gen` tokens
  at most (the model may stop earlier; tok/s is still per generated token).
Each is repeated `reps` times after one warm-up, the two runners alternating; tables give
mean ± sd, like llama-bench. The overhead ratio (edgeds ÷ raw) says what the Engine's Python
loop, chat template, detokenizer and reasoning splitter cost.
"""

from __future__ import annotations

import ctypes
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Run:
    pp_tok_s: float
    tg_tok_s: float
    ttft_s: float
    n_prompt: int
    n_gen: int


@dataclass(frozen=True)
class BenchResult:
    model: str
    size_bytes: int
    n_params: int
    backend: str
    threads: int
    raw: tuple[Run, ...]
    engine: tuple[Run, ...]


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


class RawLoop:
    """llama.cpp's own loop through its C API (no edgeds runtime code on the hot path)."""

    def __init__(self, path: Path, *, n_prompt: int, n_gen: int, threads: int, n_gpu_layers: int = 0,
                 seed: int = 42):
        import llama_cpp

        from edgeds.errors import ModelLoadError
        from edgeds.llamacpp.backend import captured_llama_log

        self.n_prompt, self.n_gen = n_prompt, n_gen
        with captured_llama_log():  # routes llama.cpp's log away from the terminal
            mparams = llama_cpp.llama_model_default_params()
            mparams.n_gpu_layers = n_gpu_layers
            self.model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
            if not self.model:
                raise ModelLoadError(f"{path}: llama.cpp could not load it")
            cparams = llama_cpp.llama_context_default_params()
            cparams.n_ctx = n_prompt + n_gen + 16
            cparams.n_batch = max(n_prompt, 1)
            cparams.n_ubatch = min(max(n_prompt, 1), 512)
            cparams.n_threads = cparams.n_threads_batch = threads
            cparams.no_perf = True
            self.ctx = llama_cpp.llama_init_from_model(self.model, cparams)
        self.size = llama_cpp.llama_model_size(self.model)
        self.n_params = llama_cpp.llama_model_n_params(self.model)
        desc = ctypes.create_string_buffer(256)
        llama_cpp.llama_model_desc(self.model, desc, 256)
        self.desc = desc.value.decode(errors="replace")
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(llama_cpp.llama_model_get_vocab(self.model))
        self.memory = llama_cpp.llama_get_memory(self.ctx)
        self.batch = llama_cpp.llama_batch_init(max(n_prompt, 1), 0, 1)
        chain_params = llama_cpp.llama_sampler_chain_default_params()
        chain_params.no_perf = True
        self.sampler = llama_cpp.llama_sampler_chain_init(chain_params)
        llama_cpp.llama_sampler_chain_add(self.sampler, llama_cpp.llama_sampler_init_greedy())
        self.rng = random.Random(seed)

    def _fill(self, tokens: list[int], start: int) -> None:
        batch = self.batch
        for i, tok in enumerate(tokens):
            batch.token[i] = tok
            batch.pos[i] = start + i
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = 0
            batch.logits[i] = i == len(tokens) - 1
        batch.n_tokens = len(tokens)

    def run(self) -> Run:
        """One pp + tg repetition on a fresh random prompt."""
        import llama_cpp

        llama_cpp.llama_memory_clear(self.memory, True)
        self._fill([self.rng.randrange(self.n_vocab) for _ in range(self.n_prompt)], 0)
        t0 = time.perf_counter()
        if llama_cpp.llama_decode(self.ctx, self.batch) != 0:
            raise RuntimeError("llama_decode failed on the prompt batch")
        llama_cpp.llama_synchronize(self.ctx)
        t1 = time.perf_counter()
        token = llama_cpp.llama_sampler_sample(self.sampler, self.ctx, -1)
        t_first = time.perf_counter()
        for j in range(self.n_gen):
            self._fill([token], self.n_prompt + j)
            if llama_cpp.llama_decode(self.ctx, self.batch) != 0:
                raise RuntimeError("llama_decode failed while generating")
            token = llama_cpp.llama_sampler_sample(self.sampler, self.ctx, -1)
        t2 = time.perf_counter()
        return Run(self.n_prompt / (t1 - t0), self.n_gen / (t2 - t_first), t_first - t0, self.n_prompt, self.n_gen)

    def close(self) -> None:
        import llama_cpp

        llama_cpp.llama_sampler_free(self.sampler)
        llama_cpp.llama_batch_free(self.batch)
        llama_cpp.llama_free(self.ctx)
        llama_cpp.llama_model_free(self.model)


FILLER = ("The quick brown fox jumps over the lazy dog while the river runs past old stone "
          "bridges and quiet fields of wheat. ")


class EngineLoop:
    """The edgeds Engine: chat template, sampler chain, detokenizer, reasoning splitter."""

    def __init__(self, path: Path, *, n_prompt: int, n_gen: int, threads: int):
        from edgeds.runtime import Engine, GenerationParams

        self.engine = Engine(path, n_ctx=n_prompt + n_gen + 64, n_threads=threads)
        self.params = GenerationParams(max_tokens=n_gen, temperature=0.0, seed=0)
        self.reps = 0
        self.words = n_prompt
        for _ in range(4):  # size the prompt to about n_prompt tokens
            n = len(self.engine.prompt_tokens(self._messages())[0])
            if abs(n - n_prompt) <= 2:
                break
            self.words = max(1, self.words + (n_prompt - n) * self.words // max(n, 1))

    def _messages(self) -> list[dict]:
        text = (FILLER * (self.words // 20 + 1)).split()[:self.words]
        # A different first word each run, so the Engine's prefix cache cannot skip the prompt.
        return [{"role": "user", "content": f"Run {self.reps}. " + " ".join(text)
                 + "\nNow count from 1 to 500, separated by commas."}]

    def run(self) -> Run:
        from edgeds.events import Done

        self.reps += 1
        stats = None
        for event in self.engine.generate(self._messages(), self.params):
            if isinstance(event, Done):
                stats = event.stats
        return Run(stats.prompt_tok_s, stats.decode_tok_s, stats.ttft_s, stats.prompt_tokens,
                   stats.completion_tokens)

    def close(self) -> None:
        self.engine.close()


def run_bench(path: Path, *, n_prompt: int = 512, n_gen: int = 128, reps: int = 5,
              threads: int | None = None, engine: bool = True) -> BenchResult:
    """Both runners loaded side by side, one warm-up each, then their repetitions alternate so
    drift in machine load (these machines are shared) hits both alike."""
    from edgeds.catalog.gguf import read_gguf
    from edgeds.machine.hardware import physical_cores
    from edgeds.llamacpp.backend import gpu_offload_supported

    read_gguf(path)  # a header llama.cpp would abort on fails here, with one line
    threads = threads or physical_cores()
    gpu = gpu_offload_supported()
    runners = [RawLoop(path, n_prompt=n_prompt, n_gen=n_gen, threads=threads, n_gpu_layers=-1 if gpu else 0)]
    try:
        if engine:
            runners.append(EngineLoop(path, n_prompt=n_prompt, n_gen=n_gen, threads=threads))
        runs: list[list[Run]] = [[] for _ in runners]
        for rep in range(reps + 1):  # the first one warms up
            for runner, out in zip(runners, runs):
                run = runner.run()
                if rep:
                    out.append(run)
        raw = runners[0]
        return BenchResult(raw.desc, raw.size, raw.n_params, "GPU" if gpu else "CPU", threads,
                           tuple(runs[0]), tuple(runs[1]) if engine else ())
    finally:
        for runner in runners:
            runner.close()


def _size(n: int) -> str:
    return f"{n / (1 << 30):.2f} GiB" if n >= 1 << 30 else f"{n / (1 << 20):.2f} MiB"


def _params(n: int) -> str:
    return f"{n / 1e9:.2f} B" if n >= 1e9 else f"{n / 1e6:.2f} M"


def format_table(result: BenchResult) -> str:
    """A llama-bench style Markdown table, then the overhead ratios."""
    head = ("model", "size", "params", "backend", "threads", "runner", "test", "t/s")
    rows = []
    for runner, runs in (("llama.cpp", result.raw), ("edgeds", result.engine)):
        if not runs:
            continue
        n_p = round(statistics.fmean(r.n_prompt for r in runs))
        n_g = round(statistics.fmean(r.n_gen for r in runs))
        for test, values in ((f"pp{n_p}", [r.pp_tok_s for r in runs]),
                             (f"tg{n_g}", [r.tg_tok_s for r in runs])):
            m, sd = mean_sd(values)
            rows.append((result.model, _size(result.size_bytes), _params(result.n_params),
                         result.backend, str(result.threads), runner, test, f"{m:.2f} ± {sd:.2f}"))
        m, sd = mean_sd([r.ttft_s * 1000 for r in runs])
        rows.append((result.model, _size(result.size_bytes), _params(result.n_params), result.backend,
                     str(result.threads), runner, "ttft (ms)", f"{m:.1f} ± {sd:.1f}"))
    widths = [max(len(r[i]) for r in rows + [head]) for i in range(len(head))]
    right = {2, 4, 7}

    def line(cells):
        return "| " + " | ".join(c.rjust(w) if i in right else c.ljust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    out = [line(head), "| " + " | ".join(("-" * (w - 1) + ":") if i in right else "-" * w
                                         for i, w in enumerate(widths)) + " |"]
    out += [line(r) for r in rows]
    if result.raw and result.engine:
        raw_tg = statistics.fmean(r.tg_tok_s for r in result.raw)
        eng_tg = statistics.fmean(r.tg_tok_s for r in result.engine)
        raw_pp = statistics.fmean(r.pp_tok_s for r in result.raw)
        eng_pp = statistics.fmean(r.pp_tok_s for r in result.engine)
        raw_ttft = statistics.fmean(r.ttft_s for r in result.raw)
        eng_ttft = statistics.fmean(r.ttft_s for r in result.engine)
        out.append("")
        out.append(f"edgeds / llama.cpp: decode {eng_tg / raw_tg:.3f}x tok/s, prompt {eng_pp / raw_pp:.3f}x tok/s, "
                   f"TTFT {eng_ttft / raw_ttft:.3f}x (>1 = slower first token)")
    out.append(f"tg follows the prompt (llama-bench: tg @ d{result.raw[0].n_prompt if result.raw else 0}); "
               f"{len(result.raw)} repetitions after 1 warm-up; greedy sampling")
    return "\n".join(out)
