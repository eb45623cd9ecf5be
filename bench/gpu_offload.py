"""Expert offload on a GPU: the planner's choice against plain layer offload, over VRAM budgets and
context depths, next to the cost model's predictions.

    python bench/gpu_offload.py vocab TEMPLATE.gguf OUT-vocab.gguf        # here: the tokenizer keys only
    python bench/gpu_offload.py bench OUT-vocab.gguf --shape v2-lite --budgets 4,8 --depths 0,4096,16384

`bench` writes (once) a random-weight Q4_0 GGUF of the chosen shape with the vocabulary's keys:
- v2-lite: DeepSeek-V2-Lite's widths with a compressed query, 28 layers (27 would make llama.cpp
  take it for V2-Lite itself, which has no q_lora), 64 experts top-6, about 8.6 GiB;
- r1-slice: DeepSeek-R1's widths (7168, 256 experts of 2048, top-8), 1 dense + 3 MoE layers, 19 GiB.
For every budget and depth it plans `auto` (the cost model's choice for that depth), `none` (layer
offload) and `all` (every expert in CPU RAM) with edgeds.machine.placement for that artificial
VRAM budget, loads each with edgeds' runtime exactly as `edgeds run` does, fills the KV cache to the
depth, and times decoding (medians of --reps) with the same raw loop for every plan. It prints one
row per plan: the plan, predicted and measured decode tok/s, and prompt tok/s.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

SHAPES = {
    "v2-lite": dict(n_layers=28, n_embd=2048, n_head=16, n_head_kv=16, head_dim=192, head_dim_v=128, n_ff=10944,
                    kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, n_experts=64, n_experts_used=6,
                    n_shared_experts=2, expert_ff=1408, n_dense_layers=1),
    "r1-slice": dict(n_layers=4, n_embd=7168, n_head=128, n_head_kv=128, head_dim=192, head_dim_v=128, n_ff=18432,
                     kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64, n_experts=256, n_experts_used=8,
                     n_shared_experts=1, expert_ff=2048, n_dense_layers=1),
    "smoke": dict(n_layers=4, n_embd=256, n_head=4, n_head_kv=4, head_dim=96, head_dim_v=64, n_ff=512,
                  kv_lora_rank=128, q_lora_rank=128, qk_rope_head_dim=32, n_experts=8, n_experts_used=2,
                  n_shared_experts=1, expert_ff=256, n_dense_layers=1),  # checks the script on a CPU build
}
GiB = 1 << 30


def write_vocab(template: Path, out: Path) -> None:
    from gguf import GGUFWriter

    from edgeds.catalog.gguf import read_file
    from edgeds.convert.layout import copy_metadata

    w = GGUFWriter(out, "deepseek2")
    copy_metadata(read_file(template, arrays=True), w, skip=lambda key: key.startswith("edgeds."))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    w.close()


def entry_for(name: str, n_vocab: int) -> SimpleNamespace:
    shape = SimpleNamespace(**SHAPES[name], n_vocab=n_vocab)
    return SimpleNamespace(id=name, architecture="deepseek2", shape=shape, context_length=163840)


def write_model(vocab: Path, out: Path, shape_name: str) -> None:
    """The header from edgeds.convert.synthetic, then random Q4_0 blocks of scale 0.01 (and unit
    norms), written tensor by tensor."""
    from edgeds.catalog.gguf import read_file
    from edgeds.convert.synthetic import write_header_only

    source = read_file(vocab, arrays=True)
    write_header_only(out, entry_for(shape_name, len(source.metadata["tokenizer.ggml.tokens"])), dtype="Q4_0",
                      copy_from=source)
    rng = np.random.default_rng(0)
    with open(out, "r+b") as f:
        for t in read_file(out).tensors:
            f.seek(t.offset)
            if t.ggml_type == "F32":
                values = np.ones(t.n_elements, np.float32) if "norm" in t.name else \
                    (rng.standard_normal(t.n_elements) * 0.02).astype(np.float32)
                f.write(values.tobytes())
                continue
            for start in range(0, t.n_bytes // 18, 1 << 22):  # Q4_0 blocks: f16 scale + 16 bytes of nibbles
                n = min(1 << 22, t.n_bytes // 18 - start)
                blocks = np.empty((n, 18), np.uint8)
                blocks[:, :2] = np.frombuffer(np.float16(0.01).tobytes(), np.uint8)
                blocks[:, 2:] = rng.integers(0, 256, (n, 16), dtype=np.uint8)
                f.write(blocks.tobytes())


def measure(path: Path, placement, depth: int, n_gen: int, reps: int) -> dict:
    """Prompt tok/s filling the KV cache to `depth` (at least 512 tokens), then decode tok/s there."""
    from edgeds.llamacpp.binding import Context, Model

    model = Model(path, placement.load_options)
    n_prompt = max(depth, 512)
    ctx = Context(model, n_ctx=n_prompt + n_gen + 16, n_batch=512)
    rng = np.random.default_rng(1)
    pp, tg = [], []
    try:
        for _ in range(reps):
            ctx.clear()
            toks = [int(t) for t in rng.integers(1000, 50000, n_prompt + n_gen)]
            t0 = time.perf_counter()
            ctx.decode_prompt(toks[:n_prompt], 0)
            pp.append(n_prompt / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            for i in range(n_gen):
                ctx.decode_one(toks[n_prompt + i], n_prompt + i)
            tg.append(n_gen / (time.perf_counter() - t0))
    finally:
        ctx.close()
        model.close()
    return dict(pp=statistics.median(pp), tg=statistics.median(tg))


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vocab")
    v.add_argument("template", type=Path)
    v.add_argument("out", type=Path)
    b = sub.add_parser("bench")
    b.add_argument("vocab", type=Path)
    b.add_argument("--shape", choices=sorted(SHAPES), default="v2-lite")
    b.add_argument("--model", type=Path, default=None, help="default: /tmp/<shape>-random-q4_0.gguf")
    b.add_argument("--budgets", default="4,8", help="VRAM budgets in GiB, comma-separated")
    b.add_argument("--depths", default="0,4096,16384", help="context depths to decode at, comma-separated")
    b.add_argument("--n-gen", type=int, default=64)
    b.add_argument("--reps", type=int, default=3)
    args = ap.parse_args()
    if args.cmd == "vocab":
        write_vocab(args.template, args.out)
        return
    from edgeds.catalog.gguf import read_gguf
    from edgeds.machine.placement import TensorTable, plan

    path = args.model or Path(f"/tmp/{args.shape}-random-q4_0.gguf")
    if not path.exists():
        t0 = time.perf_counter()
        write_model(args.vocab, path, args.shape)
        print(f"wrote {path} in {time.perf_counter() - t0:.0f} s", flush=True)
    table = TensorTable.from_gguf(read_gguf(path))
    print(f"model {path.name}: {table.total / GiB:.2f} GiB, {table.n_layer} layers", flush=True)
    print("| budget GiB | depth | mode | plan | predicted tg | measured tg | pp |")
    print("|---|---|---|---|---|---|---|")
    for budget in (float(x) for x in args.budgets.split(",")):
        for depth in (int(x) for x in args.depths.split(",")):
            n_ctx = max(depth, 512) + args.n_gen + 16
            for mode in ("auto", "none", "all"):
                p = plan(table, gpu_free=int(budget * GiB), moe_offload=mode, n_ctx=n_ctx, depth=max(depth, 1),
                         gpu_name="CUDA0")
                r = measure(path, p, depth, args.n_gen, args.reps)
                what = p.explanation.split(": ", 1)[-1].split(" (est.")[0]
                print(f"| {budget:g} | {depth} | {mode} | {what} | {p.decode_tok_s:.1f} | {r['tg']:.1f} | {r['pp']:.0f} |",
                      flush=True)


if __name__ == "__main__":
    main()
