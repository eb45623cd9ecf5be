"""`edgeds convert --merge-lora ADAPTER`: a PEFT LoRA adapter baked into the converted weights.

`merged(ckpt, adapter)` wraps a Checkpoint so that each adapted weight reads as
W + scale·B·A in float32 (scale: PEFT's, alpha/r or alpha/sqrt(r)), whole or in row blocks,
before any transform (llama's q/k permutation, DeepSeek's MLA split, expert stacking) and
before the outtype or a quantizer rounds it. Any linear weight inside the transformer blocks
can be merged, including those llama.cpp would not adapt at runtime (DeepSeek's MLA projections,
routed experts). Each pair is checked against the checkpoint first: the weight exists and has
the shape lora_B·lora_A gives.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edgeds.convert.adapter import LoraPair, PeftAdapter
from edgeds.errors import ConversionError


class MergedCheckpoint:
    """A Checkpoint (every attribute delegated) whose adapted weights include the adapter's B·A."""

    def __init__(self, ckpt, adapter: PeftAdapter) -> None:
        self._ckpt = ckpt
        self._adapter = adapter
        self._pairs: dict[str, LoraPair] = {}
        where = adapter.folder / "adapter_model.safetensors"
        names = set(ckpt.names)
        for pair in adapter.pairs:
            weight = pair.module + ".weight"
            if weight not in names:
                raise ConversionError(f"{where}: target module {pair.module}: the checkpoint {ckpt.folder} has no "
                                      f"{weight} (an adapter for another model?)")
            shape = tuple(ckpt.shape(weight))
            if shape != (pair.n_out, pair.n_in):
                raise ConversionError(f"{where}: shape mismatch for {pair.module}: lora_B·lora_A is "
                                      f"[{pair.n_out}, {pair.n_in}], {weight} is {list(shape)} "
                                      "(an adapter for another model?)")
            self._pairs[weight] = pair

    def __getattr__(self, name: str):
        return getattr(self._ckpt, name)

    @property
    def merged(self) -> tuple[str, ...]:
        """The weights that carry the adapter."""
        return tuple(self._pairs)

    def dtype(self, name: str) -> str:
        # a merged weight is float32 now: never streamed as its stored (e.g. BF16) bits
        return "F32" if name in self._pairs else self._ckpt.dtype(name)

    def _delta(self, pair: LoraPair, rows: slice) -> np.ndarray:
        a, b = self._adapter.ab(pair)
        return (b[rows] @ a) * np.float32(pair.scale)

    def read(self, name: str) -> np.ndarray:
        weight = self._ckpt.read(name)
        pair = self._pairs.get(name)
        if pair is None:
            return weight
        return weight + self._delta(pair, slice(None))

    def iter_rows(self, name: str, max_bytes: int) -> Iterator[np.ndarray]:
        pair = self._pairs.get(name)
        if pair is None:
            yield from self._ckpt.iter_rows(name, max_bytes)
            return
        start = 0
        for block in self._ckpt.iter_rows(name, max_bytes):
            yield block + self._delta(pair, slice(start, start + block.shape[0]))
            start += block.shape[0]


def merged(ckpt, adapter: PeftAdapter) -> MergedCheckpoint:
    """`ckpt` with `adapter` merged into the weights it adapts (checked against the checkpoint)."""
    return MergedCheckpoint(ckpt, adapter)
