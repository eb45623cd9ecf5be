"""Reading config.json values the way every architecture module does."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from edgeds.errors import ConversionError


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
