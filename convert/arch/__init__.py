"""The architecture registry: config.json `architectures[0]` → the module that converts it.

Modules are imported only when asked for, so adding one costs nothing at start-up.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from edgeds.errors import ConversionError

ARCHITECTURES: dict[str, str] = {
    "Qwen2ForCausalLM":      "qwen2",      # DeepSeek-R1-Distill-Qwen 1.5B/7B/14B/32B
    "LlamaForCausalLM":      "llama",      # DeepSeek-R1-Distill-Llama 8B/70B
    "Qwen3ForCausalLM":      "qwen3",      # DeepSeek-R1-0528-Qwen3-8B
    "DeepseekV2ForCausalLM": "deepseek2",  # V2, V2-Lite
    "DeepseekV3ForCausalLM": "deepseek2",  # V3, R1
}


def supported() -> str:
    return ", ".join(ARCHITECTURES)


def module_for(cfg: dict[str, Any], where: str = "config.json") -> ModuleType:
    """The architecture module for a config; an unknown architecture fails naming the supported ones."""
    names = cfg.get("architectures") or []
    name = names[0] if isinstance(names, list) and names else None
    if name not in ARCHITECTURES:
        found = f"architecture {name!r}" if name else "no 'architectures' entry"
        raise ConversionError(f"{where}: {found} is not supported; supported: {supported()}")
    return importlib.import_module(f"edgeds.convert.arch.{ARCHITECTURES[name]}")
