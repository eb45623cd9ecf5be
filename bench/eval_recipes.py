"""KL divergence and perplexity of each quantization recipe against the F16 file.

    nice python bench/eval_recipes.py MODEL-F16.gguf --text FILE [--recipes moe-q2,q2-pure,...]

Quantizes the F16 GGUF with each recipe (llama.cpp's quantizer), evaluates it with edgeds.measure.evaluate
against the F16 file on the same token chunks, and prints a Markdown table: file size, bytes of
routed experts, perplexity, mean and p99 KLD, top-1 agreement.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

DEFAULT = "moe-q2,q2-pure,Q2_K,moe-q3,q3-pure,Q3_K_M,moe-q4,Q4_K_M"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("f16", type=Path)
    ap.add_argument("--text", type=Path, required=True)
    ap.add_argument("--recipes", default=DEFAULT)
    ap.add_argument("--n-ctx", type=int, default=128)
    ap.add_argument("--chunks", type=int, default=8)
    ap.add_argument("--tail", type=float, default=0.15, help="score only the last fraction of the text (held out)")
    args = ap.parse_args()

    from edgeds.convert.quantize import plan_quantization, quantize
    from edgeds.measure.evaluate import evaluate

    text = args.text.read_text(encoding="utf-8")
    text = text[int(len(text) * (1 - args.tail)):]
    print("| recipe | file MiB | tensors MiB | experts MiB | PPL (F16) | KLD mean | KLD p99 | top-1 |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(dir=args.f16.parent) as tmp:
        for name in args.recipes.split(","):
            plan = plan_quantization(args.f16, name)
            experts = sum(t.new_bytes for t in plan.tensors if "_exps." in t.name)
            out = quantize(args.f16, Path(tmp) / f"{name}.gguf", name)
            r = evaluate(out, args.f16, text, n_ctx=args.n_ctx, max_chunks=args.chunks)
            print(f"| {name} | {r.model_bytes / 2**20:.2f} | {plan.total_bytes / 2**20:.2f} | {experts / 2**20:.2f} | "
                  f"{r.ppl:.3f} ({r.ref_ppl:.3f}) | {r.kld_mean:.5f} | {r.kld_p99:.4f} | {r.top1_agree * 100:.1f}% |",
                  flush=True)
            out.unlink()


if __name__ == "__main__":
    main()
