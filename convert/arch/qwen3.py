"""Qwen3ForCausalLM (DeepSeek-R1-0528-Qwen3-8B) → llama.cpp's `qwen3`.

Qwen2's layout without q/k/v biases, plus a per-head RMSNorm on queries and keys
(`attn_q_norm`, `attn_k_norm`); the config's explicit `head_dim` becomes key/value_length.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeds.convert.arch import _dense
from edgeds.convert.plan import TensorPlan

HF_ARCHITECTURES = ("Qwen3ForCausalLM",)
GGUF_ARCH = "qwen3"
TABLE = {
    **_dense.LAYER,
    "self_attn.q_norm.weight": "attn_q_norm.weight",
    "self_attn.k_norm.weight": "attn_k_norm.weight",
}
skip = _dense.skip
shapes = _dense.shapes


def metadata(cfg: Mapping[str, Any]) -> dict[str, object]:
    return _dense.metadata(GGUF_ARCH, cfg)


def plan(cfg: Mapping[str, Any], ckpt) -> list[TensorPlan]:
    return _dense.plan(cfg, ckpt, TABLE)
