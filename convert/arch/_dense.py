"""What the dense llama-family architectures (qwen2, llama, qwen3) share.

The per-layer name table, the generic hyperparameter keys, rope scaling, tied embeddings.
Each architecture file passes its own table and transforms.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from edgeds.convert.arch._config import need, rope
from edgeds.convert.plan import TensorPlan, single
from edgeds.errors import ConversionError

# HF name under `model.layers.{i}.` → GGUF name under `blk.{i}.`; names ending in .bias are optional
LAYER = {
    "input_layernorm.weight":          "attn_norm.weight",
    "self_attn.q_proj.weight":         "attn_q.weight",
    "self_attn.q_proj.bias":           "attn_q.bias",
    "self_attn.k_proj.weight":         "attn_k.weight",
    "self_attn.k_proj.bias":           "attn_k.bias",
    "self_attn.v_proj.weight":         "attn_v.weight",
    "self_attn.v_proj.bias":           "attn_v.bias",
    "self_attn.o_proj.weight":         "attn_output.weight",
    "self_attn.o_proj.bias":           "attn_output.bias",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight":            "ffn_gate.weight",
    "mlp.up_proj.weight":              "ffn_up.weight",
    "mlp.down_proj.weight":            "ffn_down.weight",
}


# GGUF name (`blk.N.` left out) → its shape in the dimensions `dims` names
SHAPES: dict[str, tuple[str, ...]] = {
    "token_embd.weight":   ("vocab_size", "hidden_size"),
    "rope_freqs.weight":   ("rope_pairs",),
    "attn_norm.weight":    ("hidden_size",),
    "attn_q.weight":       ("q_size", "hidden_size"),
    "attn_q.bias":         ("q_size",),
    "attn_k.weight":       ("kv_size", "hidden_size"),
    "attn_k.bias":         ("kv_size",),
    "attn_v.weight":       ("kv_size", "hidden_size"),
    "attn_v.bias":         ("kv_size",),
    "attn_output.weight":  ("hidden_size", "q_size"),
    "attn_output.bias":    ("hidden_size",),
    "attn_q_norm.weight":  ("head_dim",),
    "attn_k_norm.weight":  ("head_dim",),
    "ffn_norm.weight":     ("hidden_size",),
    "ffn_gate.weight":     ("intermediate_size", "hidden_size"),
    "ffn_up.weight":       ("intermediate_size", "hidden_size"),
    "ffn_down.weight":     ("hidden_size", "intermediate_size"),
    "output_norm.weight":  ("hidden_size",),
    "output.weight":       ("vocab_size", "hidden_size"),
}


def shapes(cfg: Mapping[str, Any]) -> tuple[dict[str, tuple[str, ...]], dict[str, int]]:
    """What the config implies for every tensor (see edgeds.convert.plan)."""
    heads, kv_heads, dim = int(need(cfg, "num_attention_heads")), int(cfg.get("num_key_value_heads") or 0), head_dim(cfg)
    kv_heads = kv_heads or heads
    return SHAPES, {
        "vocab_size": int(need(cfg, "vocab_size")),
        "hidden_size": int(need(cfg, "hidden_size")),
        "intermediate_size": int(need(cfg, "intermediate_size")),
        "q_size": heads * dim,
        "kv_size": kv_heads * dim,
        "head_dim": dim,
        "rope_pairs": dim // 2,
    }


def head_dim(cfg: Mapping[str, Any]) -> int:
    return int(cfg.get("head_dim") or int(need(cfg, "hidden_size")) // int(need(cfg, "num_attention_heads")))


def skip(cfg: Mapping[str, Any]) -> re.Pattern[str]:
    """Rotary caches some checkpoints carry, and lm_head when it is tied to the embedding."""
    tied = "|^lm_head\\.weight$" if cfg.get("tie_word_embeddings") else ""
    return re.compile(rf"\.rotary_emb\.inv_freq${tied}")


def metadata(arch: str, cfg: Mapping[str, Any], *, scalings: tuple[str, ...] = ("linear", "yarn")) -> dict[str, object]:
    """The generic `<arch>.*` keys, plus rope scaling of the kinds listed."""
    theta, scaling = rope(cfg)
    heads = int(need(cfg, "num_attention_heads"))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    if heads % kv_heads or head_dim(cfg) % 2:
        raise ConversionError(f"config.json: {heads} attention heads of {head_dim(cfg)} over {kv_heads} key/value "
                              "heads: llama.cpp needs whole groups of heads per key/value head and an even head size")
    meta: dict[str, object] = {
        f"{arch}.block_count": int(need(cfg, "num_hidden_layers")),
        f"{arch}.context_length": int(need(cfg, "max_position_embeddings")),
        f"{arch}.embedding_length": int(need(cfg, "hidden_size")),
        f"{arch}.feed_forward_length": int(need(cfg, "intermediate_size")),
        f"{arch}.attention.head_count": heads,
        f"{arch}.attention.head_count_kv": kv_heads,
        f"{arch}.rope.freq_base": theta,
        f"{arch}.attention.layer_norm_rms_epsilon": float(need(cfg, "rms_norm_eps")),
    }
    if cfg.get("head_dim"):
        meta[f"{arch}.attention.key_length"] = int(cfg["head_dim"])
        meta[f"{arch}.attention.value_length"] = int(cfg["head_dim"])
    if scaling is not None:
        kind = scaling["type"]
        if kind not in scalings:
            raise ConversionError(f"config.json: rope scaling type {kind!r} is not supported for {arch} "
                                  f"(supported: {', '.join(scalings)})")
        if kind in ("linear", "yarn"):
            meta[f"{arch}.rope.scaling.type"] = kind
            meta[f"{arch}.rope.scaling.factor"] = float(need(scaling, "factor"))
        if kind == "yarn" and scaling.get("original_max_position_embeddings"):
            meta[f"{arch}.rope.scaling.original_context_length"] = int(scaling["original_max_position_embeddings"])
    return meta


Transform = Callable[[np.ndarray], np.ndarray]


def plan(
    cfg: Mapping[str, Any],
    ckpt,
    table: Mapping[str, str],
    *,
    transforms: Mapping[str, Transform] | None = None,
    extra: tuple[TensorPlan, ...] = (),
) -> list[TensorPlan]:
    """token_embd, `extra` (computed tensors), every block by `table`, output_norm, output."""
    names = set(ckpt.names)
    transforms = transforms or {}

    def required(name: str) -> str:
        if name not in names:
            raise ConversionError(f"{ckpt.folder}: tensor {name!r} is missing from the checkpoint")
        return name

    plans = [single(ckpt, "token_embd.weight", required("model.embed_tokens.weight")), *extra]
    for i in range(int(need(cfg, "num_hidden_layers"))):
        for suffix, gguf in table.items():
            src = f"model.layers.{i}.{suffix}"
            if suffix.endswith(".bias") and src not in names:
                continue
            plans.append(single(ckpt, f"blk.{i}.{gguf}", required(src), transform=transforms.get(suffix)))
    plans.append(single(ckpt, "output_norm.weight", required("model.norm.weight"), keep_f32=True))
    if not cfg.get("tie_word_embeddings") and "lm_head.weight" in names:
        plans.append(single(ckpt, "output.weight", "lm_head.weight"))
    return plans
