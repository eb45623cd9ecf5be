"""KL divergence and perplexity of each quantization recipe against the F16 file.

    nice python bench/eval_recipes.py MODEL-F16.gguf --text FILE [--recipes moe-q2,q2-pure,...]
                                      [--imatrix IMATRIX.gguf [--flat]]

Quantizes the F16 GGUF with each recipe (llama.cpp's quantizer), evaluates it with edgeds.measure.evaluate
against the F16 file on the same token chunks, and prints a Markdown table: file size, bytes of
routed experts, perplexity, mean and p99 KLD, top-1 agreement. With `--imatrix` every recipe is
quantized with that importance matrix (`edgeds imatrix`); `--flat` adds, for each recipe, a row
with a flat one (every column equally important: what an imatrix type gets without calibration,
since llama.cpp refuses those types with no imatrix at all).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

DEFAULT = "moe-q2,q2-pure,Q2_K,moe-q3,q3-pure,Q3_K_M,moe-q4,Q4_K_M"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("f16", type=Path)
    ap.add_argument("--text", type=Path, required=True)
    ap.add_argument("--recipes", default=DEFAULT)
    ap.add_argument("--n-ctx", type=int, default=128)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--tail", type=float, default=0.15, help="score only the last fraction of the text (held out)")
    ap.add_argument("--imatrix", type=Path, default=None, help="an importance matrix for every recipe")
    ap.add_argument("--flat", action="store_true", help="with --imatrix: also each recipe with a flat imatrix")
    args = ap.parse_args()

    from edgeds.convert.quantize import plan_quantization, quantize
    from edgeds.measure.evaluate import evaluate
    from edgeds.measure.imatrix import Entry, Imatrix, read_imatrix

    text = args.text.read_text(encoding="utf-8")
    text = text[int(len(text) * (1 - args.tail)):]
    print("| recipe | file MiB | tensors MiB | experts MiB | PPL (F16) | KLD mean | KLD p99 | top-1 |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.f16.parent) as tmp:
        imatrices: list[tuple[str, Path | None]] = [("", args.imatrix)]
        if args.imatrix and args.flat:
            computed = read_imatrix(args.imatrix)
            flat = Imatrix({name: Entry(np.ones_like(e.sums), np.ones_like(e.counts)) for name, e in computed.entries.items()})
            imatrices.append((" (flat imatrix)", flat.write(Path(tmp) / "flat.imatrix.gguf")))
        for name in args.recipes.split(","):
            plan = plan_quantization(args.f16, name)
            experts = sum(t.new_bytes for t in plan.tensors if "_exps." in t.name)
            for label, imatrix in imatrices:
                out = quantize(args.f16, Path(tmp) / f"{name}.gguf", name, imatrix=imatrix)
                r = evaluate(out, args.f16, text, n_ctx=args.n_ctx, max_chunks=args.chunks)
                print(f"| {name}{label} | {r.model_bytes / 2**20:.2f} | {plan.total_bytes / 2**20:.2f} | "
                      f"{experts / 2**20:.2f} | {r.ppl:.3f} ({r.ref_ppl:.3f}) | {r.kld_mean:.5f} | {r.kld_p99:.4f} | "
                      f"{r.top1_agree * 100:.1f}% |", flush=True)
                out.unlink()


if __name__ == "__main__":
    main()
