"""Expert offload on a GPU: `--moe-offload auto` against plain layer offload at one VRAM budget.

    python bench/gpu_offload.py vocab TEMPLATE.gguf OUT-vocab.gguf     # here: the tokenizer keys only
    python bench/gpu_offload.py bench OUT-vocab.gguf --budget-gib 4     # on the GPU machine

`bench` writes a random DeepSeek-V2-Lite-sized deepseek2 GGUF (27 layers, 64 experts top-6,
Q4_0 weights with small scales, about 9 GiB) with the real V3 vocabulary, plans both placements
for the same artificial VRAM budget with edgeds.machine.placement, loads each through edgeds' runtime and
measures prompt (512 tokens) and decode (64 tokens) speed, medians of 3. It prints the plans, the
speeds and how many `buffer type overridden` lines llama.cpp logged.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

SHAPE = dict(H=2048, L=27, dense=1, E=64, used=6, Fm=1408, shared=2, F=10944, nh=16, Q=1536, K=512, R=64, N=128, V=128)


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


def tensor_shapes(s: dict, n_vocab: int):
    H, nh = s["H"], s["nh"]
    yield "token_embd.weight", (H, n_vocab), "q"
    for i in range(s["L"]):
        p = f"blk.{i}."
        yield p + "attn_norm.weight", (H,), "f"
        yield p + "attn_q_a.weight", (H, s["Q"]), "q"
        yield p + "attn_q_a_norm.weight", (s["Q"],), "f"
        yield p + "attn_q_b.weight", (s["Q"], nh * (s["N"] + s["R"])), "q"
        yield p + "attn_kv_a_mqa.weight", (H, s["K"] + s["R"]), "q"
        yield p + "attn_kv_a_norm.weight", (s["K"],), "f"
        yield p + "attn_k_b.weight", (s["N"], s["K"], nh), "q"
        yield p + "attn_v_b.weight", (s["K"], s["V"], nh), "q"
        yield p + "attn_output.weight", (nh * s["V"], H), "q"
        yield p + "ffn_norm.weight", (H,), "f"
        if i < s["dense"]:
            yield p + "ffn_gate.weight", (H, s["F"]), "q"
            yield p + "ffn_up.weight", (H, s["F"]), "q"
            yield p + "ffn_down.weight", (s["F"], H), "q"
            continue
        yield p + "ffn_gate_inp.weight", (H, s["E"]), "f"
        yield p + "exp_probs_b.bias", (s["E"],), "f"
        sh = s["Fm"] * s["shared"]
        yield p + "ffn_gate_shexp.weight", (H, sh), "q"
        yield p + "ffn_up_shexp.weight", (H, sh), "q"
        yield p + "ffn_down_shexp.weight", (sh, H), "q"
    yield "output_norm.weight", (H,), "f"
    yield "output.weight", (H, n_vocab), "q"
    for i in range(s["dense"], s["L"]):  # expert-offload layout: experts last, layer by layer
        p = f"blk.{i}."
        yield p + "ffn_gate_exps.weight", (H, s["Fm"], s["E"]), "q"
        yield p + "ffn_up_exps.weight", (H, s["Fm"], s["E"]), "q"
        yield p + "ffn_down_exps.weight", (s["Fm"], H, s["E"]), "q"


def q4_0_blocks(n_elements: int, rng) -> np.ndarray:
    n_blocks = n_elements // 32
    blocks = np.empty((n_blocks, 18), dtype=np.uint8)
    blocks[:, :2] = np.frombuffer(np.float16(0.01).tobytes(), dtype=np.uint8)
    blocks[:, 2:] = rng.integers(0, 256, size=(n_blocks, 16), dtype=np.uint8)
    return blocks.reshape(-1)


def write_model(vocab: Path, out: Path, s: dict) -> None:
    from gguf import GGMLQuantizationType, GGUFWriter

    from edgeds.catalog.gguf import read_file
    from edgeds.convert.layout import copy_metadata

    source = read_file(vocab, arrays=True)
    n_vocab = len(source.metadata["tokenizer.ggml.tokens"])
    w = GGUFWriter(out, "deepseek2")
    copy_metadata(source, w, skip=lambda key: key.startswith("deepseek2."))
    a = "deepseek2."
    for key, val in {"block_count": s["L"], "context_length": 163840, "embedding_length": s["H"],
                     "feed_forward_length": s["F"], "attention.head_count": s["nh"], "attention.head_count_kv": 1,
                     "vocab_size": n_vocab, "leading_dense_block_count": s["dense"],
                     "attention.kv_lora_rank": s["K"], "attention.key_length": s["K"] + s["R"],
                     "attention.value_length": s["K"], "attention.key_length_mla": s["N"] + s["R"],
                     "attention.value_length_mla": s["V"], "rope.dimension_count": s["R"], "expert_count": s["E"],
                     "expert_used_count": s["used"], "expert_feed_forward_length": s["Fm"],
                     "expert_shared_count": s["shared"], "expert_gating_func": 2, "attention.q_lora_rank": s["Q"]}.items():
        w.add_uint32(a + key, val)
    w.add_float32(a + "rope.freq_base", 10000.0)
    w.add_float32(a + "attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32(a + "expert_weights_scale", 1.0)
    w.add_bool(a + "expert_weights_norm", True)
    rng = np.random.default_rng(0)
    for name, shape, kind in tensor_shapes(s, n_vocab):
        n = int(np.prod(shape))
        if kind == "f":
            data = (np.ones(n, dtype=np.float32) if "norm" in name else rng.standard_normal(n).astype(np.float32) * 0.02)
            w.add_tensor(name, data.reshape(tuple(reversed(shape))))
        else:
            blocks = q4_0_blocks(n, rng)
            byte_shape = tuple(reversed(shape))[:-1] + (shape[0] // 32 * 18,)
            w.add_tensor(name, blocks.reshape(byte_shape), raw_shape=byte_shape, raw_dtype=GGMLQuantizationType.Q4_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def measure(path: Path, placement, n_prompt: int = 512, n_gen: int = 64, reps: int = 3) -> dict:
    from edgeds.llamacpp.backend import captured_llama_log
    from edgeds.llamacpp.binding import Context, Model

    with captured_llama_log() as log:
        model = Model(path, placement.load_options)
    text = "".join(log)
    ctx = Context(model, n_ctx=placement.n_ctx, n_batch=512)
    rng = np.random.default_rng(1)
    pp, tg = [], []
    for _ in range(reps):
        ctx.clear()
        toks = [int(t) for t in rng.integers(1000, 50000, n_prompt)]
        t0 = time.perf_counter()
        ctx.decode_prompt(toks, 0)
        pp.append(n_prompt / (time.perf_counter() - t0))
        t0 = time.perf_counter()
        for i in range(n_gen):
            ctx.decode_one(int(toks[i]), n_prompt + i)
        tg.append(n_gen / (time.perf_counter() - t0))
    ctx.close()
    return dict(pp=statistics.median(pp), tg=statistics.median(tg),
                overridden=text.count("buffer type overridden"),
                overridden_cpu=text.count("buffer type overridden to CPU"),
                offloaded=[l for l in text.splitlines() if "offloaded" in l])


def main() -> None:
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    v = sub.add_parser("vocab")
    v.add_argument("template", type=Path)
    v.add_argument("out", type=Path)
    b = sub.add_parser("bench")
    b.add_argument("vocab", type=Path)
    b.add_argument("--model", type=Path, default=Path("/tmp/v2lite-random-q4_0.gguf"))
    b.add_argument("--budget-gib", type=float, default=4.0)
    b.add_argument("--layers", type=int, default=SHAPE["L"])
    args = ap.parse_args()
    if args.cmd == "vocab":
        write_vocab(args.template, args.out)
        return
    from edgeds.catalog.gguf import read_gguf
    from edgeds.machine.placement import TensorTable, plan

    shape = dict(SHAPE, L=args.layers)
    t0 = time.perf_counter()
    if not args.model.exists():
        write_model(args.vocab, args.model, shape)
    print(f"model {args.model} {args.model.stat().st_size / 2**30:.2f} GiB (written in {time.perf_counter() - t0:.0f}s)", flush=True)
    table = TensorTable.from_gguf(read_gguf(args.model))
    budget = int(args.budget_gib * 2**30)
    for mode in ("auto", "none"):
        p = plan(table, gpu_free=budget, moe_offload=mode, n_ctx=4096, gpu_name="CUDA0")
        print(f"[{mode}] n_gpu_layers={p.load_options.n_gpu_layers} {p.explanation}", flush=True)
        r = measure(args.model, p)
        print(f"[{mode}] prompt {r['pp']:.1f} tok/s, decode {r['tg']:.1f} tok/s, "
              f"overridden lines {r['overridden']} (to CPU {r['overridden_cpu']})", flush=True)
        for line in r["offloaded"]:
            print(f"[{mode}]   {line.strip()}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
