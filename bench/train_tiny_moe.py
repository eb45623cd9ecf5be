"""Train a tiny DeepseekV3 MoE (real V3 tokenizer) on a small text on CPU, for quantization evals.

    nice python bench/train_tiny_moe.py OUT_DIR [--steps 200] [--text FILE]

Writes a Hugging Face checkpoint (config.json, safetensors, tokenizer) to OUT_DIR. Widths are
multiples of 256 so llama.cpp's K-quants apply to every expert without block-size fallbacks; 128
routed experts per layer (--experts) so the routed experts outweigh the 129k-row embedding and
output matrices, as they do (by far) in V3/R1. The default text is the GPL-3 (the first 85% for training; bench/eval_recipes.py scores the rest).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

FIXTURES = Path(os.environ.get("EDGEDS_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
DEFAULT_TEXT = Path("/usr/share/common-licenses/GPL-3")
SHAPE = dict(
    vocab_size=129280, hidden_size=256, intermediate_size=512, moe_intermediate_size=256,
    num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=4, n_shared_experts=1,
    n_routed_experts=128, num_experts_per_tok=4, n_group=4, topk_group=2, first_k_dense_replace=1,
    kv_lora_rank=256, q_lora_rank=256, qk_rope_head_dim=32, qk_nope_head_dim=32, v_head_dim=64,
    routed_scaling_factor=2.5, norm_topk_prob=True, max_position_embeddings=4096, rms_norm_eps=1e-6,
    bos_token_id=0, eos_token_id=1, tie_word_embeddings=False,
)


def split_text(path: Path) -> tuple[str, str]:
    text = path.read_text(encoding="utf-8")
    cut = int(len(text) * 0.85)
    return text[:cut], text[cut:]


def tokenizer_dir() -> Path:
    return FIXTURES / "deepseek-v3-tokenizer"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--text", type=Path, default=DEFAULT_TEXT)
    ap.add_argument("--experts", type=int, default=SHAPE["n_routed_experts"])
    args = ap.parse_args()

    import torch
    from tokenizers import Tokenizer
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    torch.manual_seed(0)
    tok_dir = tokenizer_dir()
    train, _ = split_text(args.text)
    ids = torch.tensor(Tokenizer.from_file(str(tok_dir / "tokenizer.json")).encode(train).ids)
    config = DeepseekV3Config(**{**SHAPE, "n_routed_experts": args.experts},
                              rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    model = DeepseekV3ForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=args.steps, pct_start=0.1)
    start = time.perf_counter()
    for step in range(args.steps):
        starts = torch.randint(0, len(ids) - args.seq - 1, (args.batch,))
        x = torch.stack([ids[s:s + args.seq] for s in starts])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % 20 == 0 or step == args.steps - 1:
            print(f"step {step:4d} loss {loss.item():.3f} ({time.perf_counter() - start:.0f}s)", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(args.out)
    import json

    cfg_path = args.out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(scoring_func="sigmoid", topk_method="noaux_tc")
    cfg_path.write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (tok_dir / name).is_file():
            shutil.copy(tok_dir / name, args.out / name)
    print(f"wrote {args.out} in {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
