"""Qwen2ForCausalLM (DeepSeek-R1-Distill-Qwen) → llama.cpp's `qwen2`.

The generic llama-family layout with q/k/v biases; llama.cpp applies NEOX-style rope to Qwen,
which is HF's own layout, so no weight is permuted.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeds.convert.arch import _dense
from edgeds.convert.plan import TensorPlan

HF_ARCHITECTURES = ("Qwen2ForCausalLM",)
GGUF_ARCH = "qwen2"
TABLE = _dense.LAYER
skip = _dense.skip
shapes = _dense.shapes


def metadata(cfg: Mapping[str, Any]) -> dict[str, object]:
    return _dense.metadata(GGUF_ARCH, cfg)


def plan(cfg: Mapping[str, Any], ckpt) -> list[TensorPlan]:
    return _dense.plan(cfg, ckpt, TABLE)
