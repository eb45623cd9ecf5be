"""LlamaForCausalLM (DeepSeek-R1-Distill-Llama) → llama.cpp's `llama`.

Two transforms:
- q/k rows are reordered per head: HF rotates the two halves of each head (NEOX layout), llama.cpp's
  llama graph rotates adjacent pairs, so row j of a head's first half and row j of its second half
  become rows 2j and 2j+1.
- Llama 3.1 rope scaling (`rope_type: llama3`) is not a formula llama.cpp evaluates: the converter
  writes the per-frequency divisors as the `rope_freqs.weight` tensor.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from functools import partial
from typing import Any

import numpy as np

from edgeds.convert.arch import _dense
from edgeds.convert.arch._config import need, rope
from edgeds.convert.plan import TensorPlan, computed

HF_ARCHITECTURES = ("LlamaForCausalLM",)
GGUF_ARCH = "llama"
TABLE = _dense.LAYER
skip = _dense.skip
shapes = _dense.shapes


def metadata(cfg: Mapping[str, Any]) -> dict[str, object]:
    meta = _dense.metadata(GGUF_ARCH, cfg, scalings=("linear", "yarn", "llama3"))
    meta[f"{GGUF_ARCH}.vocab_size"] = int(need(cfg, "vocab_size"))
    meta[f"{GGUF_ARCH}.rope.dimension_count"] = _dense.head_dim(cfg)
    return meta


def interleave_rope_rows(w: np.ndarray, heads: int) -> np.ndarray:
    """Per head, rows [a0..a(n-1), b0..b(n-1)] → [a0, b0, a1, b1, ...] (also for 1-D biases)."""
    rows = w.shape[0]
    return np.ascontiguousarray(w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape))


def llama3_rope_factors(cfg: Mapping[str, Any]) -> np.ndarray:
    """Divisor of each rotary frequency under Llama 3.1 scaling: 1 for short wavelengths, `factor`
    for long ones, and a smooth blend between `old_ctx/high_freq_factor` and `old_ctx/low_freq_factor`."""
    theta, scaling = rope(cfg)
    assert scaling is not None
    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    dim = _dense.head_dim(cfg)
    freqs = 1.0 / theta ** (np.arange(0, dim, 2, dtype=np.float64) / dim)
    wavelen = 2 * math.pi / freqs
    smooth = (old_ctx / wavelen - low) / (high - low)
    blended = 1.0 / ((1 - smooth) / factor + smooth)
    out = np.where(wavelen < old_ctx / high, 1.0, np.where(wavelen > old_ctx / low, factor, blended))
    return out.astype(np.float32)


def plan(cfg: Mapping[str, Any], ckpt) -> list[TensorPlan]:
    heads = int(need(cfg, "num_attention_heads"))
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    transforms = {
        "self_attn.q_proj.weight": partial(interleave_rope_rows, heads=heads),
        "self_attn.q_proj.bias": partial(interleave_rope_rows, heads=heads),
        "self_attn.k_proj.weight": partial(interleave_rope_rows, heads=kv_heads),
        "self_attn.k_proj.bias": partial(interleave_rope_rows, heads=kv_heads),
    }
    _, scaling = rope(cfg)
    extra = (computed("rope_freqs.weight", llama3_rope_factors(cfg)),) if scaling and scaling["type"] == "llama3" else ()
    return _dense.plan(cfg, ckpt, TABLE, transforms=transforms, extra=extra)
