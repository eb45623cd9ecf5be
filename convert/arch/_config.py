"""Reading config.json values the way every architecture module does.

`check_config` checks every key the converter reads against `CONFIG_KEYS` (its JSON type and its
range) before any architecture module looks at it, so the modules can use `int(...)`/`float(...)`
and `.get` on nested objects without a malformed config turning into a traceback, and a layer
count or width that llama.cpp could not load fails before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from edgeds.errors import ConversionError

LLAMA_MAX_LAYERS = 512  # llama.cpp asserts on more (llama-hparams)
_DIM = (1, 1 << 20)      # a model width, head size or rank
_COUNT = (0, 1 << 20)    # a count that may be zero

# key → (kind, lowest, highest) for integers and numbers, (kind, None, None) otherwise.
# Kinds: "int" (an integer, or a float with an integral value), "number", "bool", "str",
# "object", "list" (of strings), "ints" (a list of integers).
CONFIG_KEYS: dict[str, tuple[str, Any, Any]] = {
    "architectures": ("list", None, None),
    "model_type": ("str", None, None),
    "_name_or_path": ("str", None, None),
    "hidden_size": ("int", *_DIM),
    "intermediate_size": ("int", *_DIM),
    "num_hidden_layers": ("int", 1, LLAMA_MAX_LAYERS),
    "num_attention_heads": ("int", *_DIM),
    "num_key_value_heads": ("int", *_DIM),
    "head_dim": ("int", *_DIM),
    "max_position_embeddings": ("int", 1, (1 << 32) - 1),
    "vocab_size": ("int", 1, (1 << 31) - 1),
    "rms_norm_eps": ("number", 0, 1),
    "rope_theta": ("number", 0, math.inf),
    "tie_word_embeddings": ("bool", None, None),
    "rope_scaling": ("object", None, None),
    "rope_parameters": ("object", None, None),
    "quantization_config": ("object", None, None),
    # DeepSeek MLA / MoE
    "q_lora_rank": ("int", *_DIM),
    "kv_lora_rank": ("int", *_DIM),
    "qk_rope_head_dim": ("int", *_DIM),
    "qk_nope_head_dim": ("int", *_DIM),
    "v_head_dim": ("int", *_DIM),
    "n_routed_experts": ("int", 1, 1024),  # LLAMA_MAX_EXPERTS (edgeds.catalog.gguf.LIMITS)
    "num_experts_per_tok": ("int", 1, 1024),
    "moe_intermediate_size": ("int", *_DIM),
    "n_shared_experts": ("int", *_COUNT),
    "first_k_dense_replace": ("int", 0, LLAMA_MAX_LAYERS),
    "n_group": ("int", *_DIM),
    "topk_group": ("int", *_DIM),
    "routed_scaling_factor": ("number", 0, math.inf),
    "norm_topk_prob": ("bool", None, None),
    "scoring_func": ("str", None, None),
    "num_nextn_predict_layers": ("int", 0, LLAMA_MAX_LAYERS),
}
# The same for the keys of `rope_scaling` / `rope_parameters` and `quantization_config`.
ROPE_KEYS: dict[str, tuple[str, Any, Any]] = {
    "type": ("str", None, None),
    "rope_type": ("str", None, None),
    "rope_theta": ("number", 0, math.inf),
    "factor": ("number", 0, math.inf),
    "original_max_position_embeddings": ("int", 1, (1 << 32) - 1),
    "low_freq_factor": ("number", 0, math.inf),
    "high_freq_factor": ("number", 0, math.inf),
    "beta_fast": ("number", -math.inf, math.inf),
    "beta_slow": ("number", -math.inf, math.inf),
    "mscale_all_dim": ("number", -math.inf, math.inf),
}
QUANTIZATION_KEYS: dict[str, tuple[str, Any, Any]] = {
    "weight_block_size": ("ints", 1, 1 << 20),
}
_NESTED = {"rope_scaling": ROPE_KEYS, "rope_parameters": ROPE_KEYS, "quantization_config": QUANTIZATION_KEYS}
_KIND_NAMES = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string",
               "object": "an object", "list": "a list of strings", "ints": "a list of integers"}


def _fits(value: Any, kind: str, low: Any, high: Any) -> bool:
    if kind in ("int", "number"):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if isinstance(value, float) and not (math.isfinite(value) and (kind == "number" or value.is_integer())):
            return False
        return low <= value <= high
    if kind == "ints":
        return isinstance(value, list) and all(_fits(v, "int", low, high) for v in value)
    if kind == "list":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    return isinstance(value, {"bool": bool, "str": str, "object": dict}[kind])


def checked_config(cfg: Mapping[str, Any], path: Path | str = "config.json") -> dict[str, Any]:
    """`cfg` with null values dropped (HF writes `"rope_scaling": null` for "none"), after checking
    that every key of CONFIG_KEYS (and of the nested rope and quantization objects) it has is of
    its kind and in its range.

    Raises:
        ConversionError: naming the file and the key.
    """
    out = {key: value for key, value in cfg.items() if value is not None}
    for name in _NESTED:
        if isinstance(out.get(name), dict):
            out[name] = {key: value for key, value in out[name].items() if value is not None}
    for keys, table, prefix in [(out, CONFIG_KEYS, "")] + [
            (out[name], nested, f"{name}.") for name, nested in _NESTED.items() if isinstance(out.get(name), dict)]:
        for key, (kind, low, high) in table.items():
            if key not in keys:
                continue
            if not _fits(keys[key], kind, low, high):
                bounds = f" from {low} to {high}" if kind in ("int", "number", "ints") else ""
                raise ConversionError(f"{path}: {prefix}{key} is {keys[key]!r}; it must be {_KIND_NAMES[kind]}{bounds}")
            if kind == "int":  # 4096.0 → 4096
                keys[key] = int(keys[key])
    return out


def need(cfg: Mapping[str, Any], key: str, why: str = "") -> Any:
    """`cfg[key]`; when it is missing or null, a ConversionError naming the key (and why it is needed)."""
    value = cfg.get(key)
    if value is None:
        raise ConversionError(f"config.json: {key!r} is missing" + (f" ({why})" if why else ""))
    return value


def rope(cfg: Mapping[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, scaling or None) from the legacy keys or transformers 5's `rope_parameters`."""
    params = cfg.get("rope_parameters") or {}
    scaling = cfg.get("rope_scaling") or params
    theta = cfg.get("rope_theta", params.get("rope_theta", 10000.0))
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    return float(theta), (None if kind == "default" else dict(scaling, type=kind))
