"""Reading a PEFT LoRA adapter: `adapter_config.json` and `adapter_model.safetensors`, checked.

An adapter is a local folder or a hub repo id (the two files are downloaded with edgeds' hub
client). Before any tensor is read: the config is a LoRA config edgeds can represent (no DoRA,
LoRA biases, fully trained modules, trained token embeddings, ...), `r` and `lora_alpha` are
positive, the safetensors header parses within its bounds (edgeds.convert.checkpoint), every
tensor is a `lora_A`/`lora_B` weight of a module, both halves are there, and their ranks agree
with each other and with the config.

PEFT's per-module scale is alpha/r (alpha/sqrt(r) with `use_rslora`; `rank_pattern` and
`alpha_pattern` override r and alpha for the modules they match, as PEFT matches them).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeds.convert.checkpoint import Checkpoint, _parse_header, load_json
from edgeds.errors import ConversionError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
_TENSOR = re.compile(r"^base_model\.model\.(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")

# adapter_config.json keys that change what the adapter computes in ways a LoRA GGUF (or a
# merge of B·A) cannot hold: any true, non-empty value is refused, naming the key.
UNSUPPORTED: dict[str, str] = {
    "use_dora": "DoRA adapters",
    "lora_bias": "LoRA biases",
    "modules_to_save": "fully trained modules",
    "trainable_token_indices": "trained token embeddings",
    "layer_replication": "layer replication",
    "fan_in_fan_out": "transposed (Conv1D) weights",
    "alora_invocation_tokens": "activated LoRA",
    "use_qalora": "QA-LoRA",
    "target_parameters": "LoRA on parameters (e.g. fused MoE experts)",
}
# Modules of the base model outside the transformer blocks: token embeddings and the output head.
_OUTSIDE_BLOCKS = re.compile(r"(^|\.)(embed_tokens|lm_head|wte|wpe|embed_out)$")


@dataclass(frozen=True)
class LoraPair:
    """One adapted module.

    Attributes:
        module: the base model's module name, e.g. "model.layers.0.self_attn.q_proj" (its weight
            is `module + ".weight"`).
        a, b: the safetensors names of lora_A (rank × n_in) and lora_B (n_out × rank).
        rank: the pair's rank.
        scale: PEFT's scaling of B·A for this module.
    """

    module: str
    a: str
    b: str
    n_in: int
    n_out: int
    rank: int
    scale: float


class _Tensors(Checkpoint):
    """The adapter's one safetensors file, read like a checkpoint's (bounded header, float32 reads)."""

    def __init__(self, file: Path) -> None:  # noqa: D107 - no config.json, no index: just the header
        self.folder = file.parent
        self.config = {}
        self.files = [file]
        self._entries = _parse_header(file)
        self._scales = set()
        self.names = list(self._entries)
        self._fp8_block = (128, 128)


def _pattern(patterns: dict[str, Any], module: str, default: Any, key: str, where: Path) -> Any:
    """PEFT's `get_pattern_key`: the first pattern that matches the end of the module name."""
    for pattern, value in patterns.items():
        try:
            if re.match(rf"(.*\.)?({pattern})$", module):
                return value
        except re.error as err:
            raise ConversionError(f"{where}: {key} has a pattern {pattern!r} that is not a regex ({err})") from None
    return default


def _positive(cfg: dict[str, Any], key: str, where: Path, *, integer: bool = False) -> float:
    value = cfg.get(key)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0
    if not ok or (integer and not float(value).is_integer()):
        raise ConversionError(f"{where}: {key} is {value!r}; it must be a positive "
                              + ("integer" if integer else "number"))
    return value


def _patterns(cfg: dict[str, Any], key: str, where: Path, *, integer: bool) -> dict[str, Any]:
    patterns = cfg.get(key) or {}
    if not isinstance(patterns, dict):
        raise ConversionError(f"{where}: {key} must be an object of module pattern → value")
    for value in patterns.values():
        _positive({key: value}, key, where, integer=integer)
    return patterns


def resolve_adapter(src: str | os.PathLike[str], *, revision: str | None = None) -> Path:
    """A local adapter folder, or a hub repo id whose two adapter files are downloaded."""
    path = Path(src).expanduser()
    if path.is_dir():
        return path
    text = str(src)
    if path.exists() or not _REPO_ID.match(text):
        raise ConversionError(f"{text}: not a PEFT adapter folder (nor a Hugging Face repo id like owner/name)")
    from edgeds.catalog.hub import download

    config = download(text, ADAPTER_CONFIG, revision or "main", progress=False)
    download(text, ADAPTER_WEIGHTS, revision or "main", progress=False)
    return config.parent


class PeftAdapter:
    """A checked PEFT LoRA adapter folder.

    Attributes:
        folder: the adapter folder.
        config: adapter_config.json.
        alpha, rank: the config's `lora_alpha` and `r`.
        rslora: `use_rslora`.
        base: the config's `base_model_name_or_path` (None when absent).
        pairs: every adapted module, in the file's order.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        cfg_path = self.folder / ADAPTER_CONFIG
        weights = self.folder / ADAPTER_WEIGHTS
        if not cfg_path.is_file():
            raise ConversionError(f"{cfg_path}: missing; a PEFT adapter folder has {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}")
        if not weights.is_file():
            pickled = " (adapter_model.bin is a pickle, which edgeds does not load: save with safetensors)" \
                if (self.folder / "adapter_model.bin").exists() else ""
            raise ConversionError(f"{weights}: missing{pickled}")
        cfg = self.config = load_json(cfg_path, "an adapter config")
        peft_type = cfg.get("peft_type", "LORA")
        if peft_type != "LORA":
            raise ConversionError(f"{cfg_path}: peft_type is {peft_type!r}; only LoRA adapters (LORA) convert")
        for key, what in UNSUPPORTED.items():
            if cfg.get(key):
                raise ConversionError(f"{cfg_path}: {key} is set: {what} are not supported (plain LoRA only)")
        if cfg.get("bias", "none") not in ("none", None):
            raise ConversionError(f"{cfg_path}: bias is {cfg['bias']!r}: trained biases are not supported (\"none\" only)")
        self.rank = int(_positive(cfg, "r", cfg_path, integer=True))
        self.alpha = float(_positive(cfg, "lora_alpha", cfg_path))
        self.rslora = bool(cfg.get("use_rslora"))
        base = cfg.get("base_model_name_or_path")
        self.base = base if isinstance(base, str) and base else None
        rank_pattern = _patterns(cfg, "rank_pattern", cfg_path, integer=True)
        alpha_pattern = _patterns(cfg, "alpha_pattern", cfg_path, integer=False)

        self.tensors = _Tensors(weights)
        halves: dict[str, dict[str, str]] = {}
        for name in self.tensors.names:
            m = _TENSOR.match(name)
            if m is None:
                raise ConversionError(f"{weights}: tensor {name!r} is not a LoRA weight "
                                      "(base_model.model.<module>.lora_A/lora_B.weight)")
            module = m.group("module")
            if _OUTSIDE_BLOCKS.search(module):
                raise ConversionError(f"{weights}: the adapter targets {module}: adapters on token embeddings or the "
                                      "output head are not supported (only modules inside the transformer blocks)")
            halves.setdefault(module, {})[m.group("part")] = name
        if not halves:
            raise ConversionError(f"{weights}: holds no LoRA tensors")
        self.pairs: list[LoraPair] = []
        for module, parts in halves.items():
            if set(parts) != {"A", "B"}:
                missing = "lora_B" if "A" in parts else "lora_A"
                raise ConversionError(f"{weights}: {module} has no {missing} tensor")
            a, b = self.tensors.shape(parts["A"]), self.tensors.shape(parts["B"])
            if len(a) != 2 or len(b) != 2:
                raise ConversionError(f"{weights}: {module}: lora_A {list(a)} and lora_B {list(b)} must be matrices")
            rank = int(_pattern(rank_pattern, module, self.rank, "rank_pattern", cfg_path))
            if a[0] != rank or b[1] != rank:
                raise ConversionError(f"{weights}: rank mismatch for {module}: lora_A {list(a)} and lora_B {list(b)}, "
                                      f"but {ADAPTER_CONFIG} says r = {rank}")
            alpha = float(_pattern(alpha_pattern, module, self.alpha, "alpha_pattern", cfg_path))
            scale = alpha / (math.sqrt(rank) if self.rslora else rank)
            self.pairs.append(LoraPair(module, parts["A"], parts["B"], n_in=a[1], n_out=b[0], rank=rank, scale=scale))

    @property
    def files(self) -> list[Path]:
        return [self.folder / ADAPTER_CONFIG, self.folder / ADAPTER_WEIGHTS]

    def ab(self, pair: LoraPair) -> tuple[np.ndarray, np.ndarray]:
        """lora_A and lora_B as float32."""
        return self.tensors.read(pair.a), self.tensors.read(pair.b)
