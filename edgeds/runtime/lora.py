"""`--lora FILE[:SCALE]`: GGUF LoRA adapters applied to a model at run time.

Each adapter is checked against the model before llama.cpp sees it, so a wrong file fails with
one line naming it rather than llama.cpp's log: a readable GGUF (edgeds.catalog.gguf's bounded
header reader), `general.type = adapter` and `adapter.type = lora`, the model's architecture,
and every tensor a `.lora_a`/`.lora_b` half of a weight the model has, pairs complete, with
shapes that fit that weight (lora_a rank × n_in, lora_b n_out × rank). Then llama.cpp loads it
(edgeds.llamacpp.lora) and every context of the engine applies it with its scale.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edgeds.errors import EdgedsError, UsageError
from edgeds.llamacpp.binding import Context, Model
from edgeds.llamacpp.lora import LoraAdapter, set_loras

MAX_SCALE = 10.0  # |scale|: past a few the model's output is noise; far past, inf/NaN logits
_HALF = re.compile(r"^(?P<weight>.+)\.lora_(?P<part>[ab])$")
# Weights llama.cpp's graph multiplies without its LoRA-aware matmul, per architecture: an adapter
# tensor for one of them would load and change nothing.
NOT_APPLIED: dict[str, re.Pattern[str]] = {
    "deepseek2": re.compile(r"^blk\.\d+\.(attn_q|attn_q_a|attn_q_b|attn_kv_a_mqa|attn_k_b|attn_v_b|attn_kv_b)\.weight$"),
}


@dataclass(frozen=True)
class LoraSpec:
    """One `--lora FILE[:SCALE]`."""

    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """`FILE` or `FILE:SCALE` (a FILE whose name has a colon takes `FILE:1`).

        Raises:
            UsageError: an empty file name or a scale that is not a number within ±MAX_SCALE.
        """
        path, sep, scale_text = text.rpartition(":")
        if not sep or "/" in scale_text or "\\" in scale_text:
            path, scale_text = text, ""
        scale = 1.0
        if scale_text:
            try:
                scale = float(scale_text)
            except ValueError:
                raise UsageError(f"--lora {text}: the scale {scale_text!r} is not a number (FILE[:SCALE])") from None
            if not math.isfinite(scale) or abs(scale) > MAX_SCALE:
                raise UsageError(f"--lora {text}: the scale must be between {-MAX_SCALE:g} and {MAX_SCALE:g}")
        if not path:
            raise UsageError(f"--lora {text!r}: give the adapter's GGUF file (FILE[:SCALE])")
        return cls(Path(path).expanduser(), scale)


def check_adapter(path: Path, model_path: Path) -> None:
    """The adapter GGUF at `path` fits the model GGUF at `model_path` (see the module docstring).

    Raises:
        EdgedsError: one line naming the adapter and what does not fit.
    """
    from edgeds.catalog.gguf import read_file, read_gguf

    if not path.is_file():
        raise EdgedsError(f"--lora {path}: no such file")
    adapter = read_file(path)
    meta = adapter.metadata
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise EdgedsError(f"--lora {path}: not a LoRA adapter GGUF (general.type {meta.get('general.type')!r}, "
                          f"adapter.type {meta.get('adapter.type')!r}); convert a PEFT adapter with `edgeds convert-lora`")
    model = read_gguf(model_path)
    arch = meta.get("general.architecture")
    if arch != model.arch:
        raise EdgedsError(f"--lora {path}: an adapter for {arch!r} models, but {model_path.name} is {model.arch!r}")
    alpha = meta.get("adapter.lora.alpha", 0.0)
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or not math.isfinite(alpha) or alpha < 0:
        raise EdgedsError(f"--lora {path}: adapter.lora.alpha {alpha!r} is not a non-negative number")
    weights = {t.name: t.shape for t in model.tensors}
    halves: dict[str, dict[str, tuple[int, ...]]] = {}
    for t in adapter.tensors:
        m = _HALF.match(t.name)
        if m is None:
            if t.name.endswith("_norm.weight"):
                continue  # llama.cpp skips norm vectors some adapters carry
            raise EdgedsError(f"--lora {path}: tensor {t.name!r} is not a .lora_a/.lora_b half")
        halves.setdefault(m.group("weight"), {})[m.group("part")] = t.shape
    if not halves:
        raise EdgedsError(f"--lora {path}: holds no LoRA tensors")
    skipped = NOT_APPLIED.get(arch)
    for weight, parts in halves.items():
        if set(parts) != {"a", "b"}:
            raise EdgedsError(f"--lora {path}: {weight} has no .lora_{'b' if 'a' in parts else 'a'} tensor")
        if weight not in weights:
            raise EdgedsError(f"--lora {path}: {model_path.name} has no tensor {weight} (an adapter for another model?)")
        if skipped is not None and skipped.match(weight):
            raise EdgedsError(f"--lora {path}: llama.cpp does not apply adapters to {weight} of {arch} models; "
                              "merge the adapter into the weights (`edgeds convert --merge-lora`)")
        a, b, w = parts["a"], parts["b"], weights[weight]
        if weight.endswith("token_embd.weight"):
            continue  # llama.cpp's own layout for embedding adapters (A and B flipped); it checks them
        if len(a) != 2 or len(b) != 2 or len(w) != 2 or a[0] != b[1] or (b[0], a[1]) != tuple(w):
            raise EdgedsError(f"--lora {path}: shape mismatch for {weight}: lora_a {list(a)} and lora_b {list(b)} "
                              f"do not fit the model's {list(w)} (an adapter for another model?)")


def load_loras(model: Model, specs: Sequence[LoraSpec]) -> tuple[tuple[LoraAdapter, float], ...]:
    """Check and load each adapter onto `model`; (adapter, scale) pairs for `apply_loras`."""
    loaded = []
    for spec in specs:
        check_adapter(spec.path, model.path)
        loaded.append((LoraAdapter(model, spec.path), spec.scale))
    return tuple(loaded)


def apply_loras(ctx: Context, loras: Sequence[tuple[LoraAdapter, float]]) -> None:
    """Make `ctx` use these adapters with their scales (nothing to do for none)."""
    if loras:
        set_loras(ctx, loras)
