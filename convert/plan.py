"""The tensor plan: what each output tensor is called, its shape, and how to produce it.

An architecture module (convert/arch/<name>.py) turns a config and a checkpoint's tensor table
into a list of `TensorPlan`s in file order, without reading any tensor data. The core then
checks the plan (every source consumed, names unique), sizes the output, and streams each
tensor's pieces straight to the GGUF writer.

Contract with architecture modules:
- `HF_ARCHITECTURES: tuple[str, ...]`, `GGUF_ARCH: str`
- `metadata(cfg) -> dict[str, object]`: full `<arch>.*` keys (no general.*, no tokenizer.*);
  int → uint32, float → float32, bool → bool, str → string.
- `plan(cfg, ckpt) -> list[TensorPlan]`
- `shapes(cfg) -> (table, dims)`: what the config implies for every tensor the plan may hold, as a
  table from the GGUF name (`blk.N.` left out) to a tuple of dimension names, and the dimensions'
  values (`{"hidden_size": 4096, ...}`). The core checks each planned shape against it before
  anything is written (`check_shapes`): a checkpoint whose tensors disagree with its config
  would give a file llama.cpp refuses to load.
- optional `SKIP: re.Pattern` or `skip(cfg) -> re.Pattern`: source tensors deliberately left out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

from edgeds.errors import ConversionError

if TYPE_CHECKING:
    from edgeds.convert.checkpoint import Checkpoint

PIECE_BYTES = 4 << 20  # float32 bytes per piece when a single source tensor streams in row blocks (cache-sized)
_BLOCK = re.compile(r"^blk\.\d+\.")


@dataclass(frozen=True)
class TensorPlan:
    """One output tensor.

    Attributes:
        name: GGUF tensor name, e.g. "blk.0.attn_q.weight".
        shape: numpy (row-major) shape of the output array.
        sources: HF tensor names this output consumes (for the leftover check).
        produce: yields float32 pieces in order; their flattened concatenation is the tensor.
            Each piece holds whole rows (a multiple of shape[-1] values) and is bounded in size.
        keep_f32: norms, biases, router, 1-D tensors: always F32 whatever the outtype.
        raw: set by `single` when the tensor is one source tensor unchanged: the core may then
            stream the stored values (e.g. BF16 bits) without the float32 round trip.
    """

    name: str
    shape: tuple[int, ...]
    sources: tuple[str, ...]
    produce: Callable[["Checkpoint"], Iterator[np.ndarray]]
    keep_f32: bool = False
    raw: str | None = None


def _rows(src: str, transform: Callable[[np.ndarray], np.ndarray] | None, ckpt: "Checkpoint") -> Iterator[np.ndarray]:
    if transform is not None:
        yield transform(ckpt.read(src))
    else:
        yield from ckpt.iter_rows(src, PIECE_BYTES)


def single(
    ckpt: "Checkpoint",
    name: str,
    src: str,
    *,
    keep_f32: bool = False,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
) -> TensorPlan:
    """The common case: one source tensor, same shape, optionally transformed as a whole.

    Without a transform the tensor streams in row blocks of at most PIECE_BYTES, so even a
    vocabulary-sized embedding never sits in memory whole.
    """
    shape = tuple(ckpt.shape(src))
    return TensorPlan(name, shape, (src,), partial(_rows, src, transform), keep_f32 or len(shape) == 1,
                      raw=src if transform is None else None)


def computed(name: str, values: np.ndarray) -> TensorPlan:
    """A tensor computed from the config alone (e.g. llama3's rope_freqs), always F32."""
    values = np.ascontiguousarray(values, dtype=np.float32)
    return TensorPlan(name, values.shape, (), lambda _ckpt: iter((values,)), True)


def check_shapes(plans: list[TensorPlan], table: Mapping[str, tuple[str, ...]], dims: Mapping[str, int],
                 where: str) -> None:
    """Every planned tensor has the shape the config implies (`table` and `dims`, see the contract above).

    Raises:
        ConversionError: naming the tensor, its source, both shapes and the config's dimensions.
    """
    for p in plans:
        names = table.get(_BLOCK.sub("", p.name))
        if names is None:
            raise ConversionError(f"{where}: no shape is known for tensor {p.name!r}")
        expected = tuple(dims[n] for n in names)
        if tuple(p.shape) != expected:
            source = f" (from {p.sources[0]})" if len(p.sources) == 1 else ""
            raise ConversionError(f"{where}: tensor {p.name}{source} has shape {list(p.shape)}, but the config "
                                  f"implies {list(expected)} ({' x '.join(names)})")
