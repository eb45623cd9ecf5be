"""Importance matrices: what `edgeds imatrix` computes and what `edgeds quantize --imatrix` reads.

An importance matrix holds, for every weight matrix of a model, the mean square of each of its
input columns over a calibration text: llama.cpp's low-bit quantizers (IQ1/IQ2/IQ3_XXS and the
other imatrix types) spend their precision on the columns that carry the most signal.

Collection runs the model in llama.cpp itself: the text is cut into chunks of `chunk_size`
tokens (the first replaced by BOS where the model wants one, as llama-imatrix does), each chunk
is decoded in a fresh KV cache with logits at every position, and the context's eval callback
(`edgeds.llamacpp.eval_callback.WeightTap`) hands over the input of every multiplication by a
`blk.*` weight. A dense weight accumulates the sum of squares of each input column and the number
of rows (a weight of several matrices, MLA's per-head `attn_k_b`/`attn_v_b`, one sum per matrix
under one count, as llama-imatrix keeps it); the routed experts (`mul_mat_id`) one sum and one
count per expert, over the rows routed to it. Unlike llama-imatrix, the context has an F32 KV
cache and no flash attention, so no activation is rounded to F16 on the way (a few MB at 512
tokens), and the sums are float64 (stored as F32).

Formats:
- GGUF (llama-imatrix's current one): `NAME.in_sum2` (F32, counts × values) and `NAME.counts`
  (F32, counts × 1), with `general.type = imatrix`, `imatrix.datasets`, `imatrix.chunk_count`
  and `imatrix.chunk_size`, which llama-quantize requires.
- The legacy `.dat` file of older llama-imatrix builds (read only): an int32 entry count; per
  entry an int32 name length, the name, int32 ncall, int32 nval and nval float32 values (each
  the mean square times ncall); then optionally the int32 chunk count and the int32-length
  dataset name.
Both reach llama.cpp's quantizer the way llama-quantize passes them (`Imatrix.importance`).
"""

from __future__ import annotations

import math
import os
import re
import sys
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from edgeds.errors import EdgedsError, UsageError

if TYPE_CHECKING:
    from edgeds.llamacpp.eval_callback import WeightProduct

CHUNK_SIZE = 512         # llama-imatrix's default context per chunk
MIN_CHUNK_SIZE = 16      # llama-imatrix ignores multiplications over fewer rows
CALIBRATION = "calibration.txt"  # the text shipped with edgeds (edgeds/measure/)
GGUF_MAGIC = b"GGUF"
SUMS, COUNTS = ".in_sum2", ".counts"
KEY_TYPE, KEY_DATASETS = "general.type", "imatrix.datasets"
KEY_CHUNK_COUNT, KEY_CHUNK_SIZE = "imatrix.chunk_count", "imatrix.chunk_size"
HUB_SPEC = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+):(?P<file>[^:]+)$")  # --imatrix REPO:FILE
MAX_NAME = 1 << 16  # longest entry name a legacy file may claim


class ImatrixError(EdgedsError):
    """An importance matrix that cannot be read, computed or written."""


@dataclass(frozen=True)
class Entry:
    """One weight's accumulated statistics: sums of squares of each input column, and the number
    of input rows summed, per expert (routed experts) or once (any other weight)."""

    sums: np.ndarray    # (counts, values per count) float64: experts × n_in, or 1 × (matrices × n_in)
    counts: np.ndarray  # (counts,) float64

    def mean(self) -> np.ndarray:
        """Mean squared input per column, shaped as `sums`; an expert that saw no rows gets 1.0
        everywhere, as llama-quantize gives it."""
        means = np.ones_like(self.sums)
        seen = self.counts > 0
        means[seen] = self.sums[seen] / self.counts[seen, None]
        return means


@dataclass(frozen=True)
class Imatrix:
    """An importance matrix, computed here or read from a file."""

    entries: dict[str, Entry]
    datasets: tuple[str, ...] = ()
    chunk_count: int = 0
    chunk_size: int = 0
    legacy: bool = False  # read from a .dat file: the sums are means × ncall, counts hold ncall

    def importance(self) -> list[tuple[str, np.ndarray]]:
        """(weight name, flat float32 values) for llama.cpp's quantizer, as llama-quantize makes
        them: GGUF sums over counts (1.0 for matrices without data); legacy values over ncall."""
        out = []
        for name, e in sorted(self.entries.items()):
            if self.legacy:
                values = e.sums / e.counts[:, None] if e.counts[0] > 0 else e.sums
            else:
                values = e.mean()
            out.append((name, values.reshape(-1).astype(np.float32)))
        return out

    def unseen(self) -> list[str]:
        """Names of weights with matrices (experts) that no calibration row reached."""
        return [name for name, e in sorted(self.entries.items()) if (e.counts == 0).any()]

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Write llama-imatrix's GGUF format to `path` (via `path.partial`, renamed when complete)."""
        from gguf import GGUFWriter

        path = Path(path)
        partial = path.with_name(path.name + ".partial")
        writer = GGUFWriter(partial, arch="")  # an empty string is not written: no general.architecture
        writer.add_string(KEY_TYPE, "imatrix")
        writer.add_array(KEY_DATASETS, list(self.datasets))
        writer.add_uint32(KEY_CHUNK_COUNT, self.chunk_count)
        writer.add_uint32(KEY_CHUNK_SIZE, self.chunk_size)
        for name, e in sorted(self.entries.items()):
            writer.add_tensor(name + SUMS, np.ascontiguousarray(e.sums, dtype=np.float32))
            writer.add_tensor(name + COUNTS, np.ascontiguousarray(e.counts, dtype=np.float32).reshape(-1, 1))
        try:
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file()
            writer.close()
            os.replace(partial, path)
        except OSError as err:
            raise ImatrixError(f"{path}: cannot write it ({err.strerror or err})") from None
        finally:
            writer.close()
            partial.unlink(missing_ok=True)
        return path


# ---------------------------------------------------------------------------------------------
# Accumulation


class Accumulator:
    """Sums of squared inputs per weight, fed by `WeightTap` with one `WeightProduct` at a time."""

    def __init__(self):
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}

    def add(self, p: WeightProduct) -> None:
        n_in = p.weight_shape[0]
        if p.inputs.shape[-1] != n_in:
            raise ImatrixError(f"{p.weight}: inputs of {p.inputs.shape[-1]} columns for a weight of {n_in}")
        if p.expert_ids is None:
            sums, rows = _dense_sums(p)
            counts = np.array([rows], dtype=np.float64)
        else:
            sums, counts = _expert_sums(p)
        if not np.isfinite(sums).all():
            raise ImatrixError(f"{p.weight}: its inputs hold non-finite values (inf/NaN); the model or the "
                               "text makes the activations overflow")
        if p.weight not in self.sums:
            self.sums[p.weight], self.counts[p.weight] = sums, counts
        elif self.sums[p.weight].shape != sums.shape:
            raise ImatrixError(f"{p.weight}: inputs of shape {sums.shape}, earlier {self.sums[p.weight].shape}")
        else:
            self.sums[p.weight] += sums
            self.counts[p.weight] += counts

    def entries(self) -> dict[str, Entry]:
        return {name: Entry(self.sums[name], self.counts[name]) for name in self.sums}


def _dense_sums(p: WeightProduct) -> tuple[np.ndarray, int]:
    """The sums, one row of matrices × n_in (one count for all, as llama-imatrix keeps it), and the
    rows per matrix, for a weight of ne02 × ne03 matrices whose inputs (ne13, ne12, rows, n_in)
    broadcast over them as ggml's mul_mat does (i2 % ne02, i3 % ne03)."""
    ne02, ne03 = (list(p.weight_shape[2:]) + [1, 1])[:2]
    ne13, ne12, rows, n_in = p.inputs.shape
    if ne12 % ne02 or ne13 % ne03:
        raise ImatrixError(f"{p.weight}: inputs {p.inputs.shape} do not broadcast over {ne02}×{ne03} matrices")
    sums = np.square(p.inputs, dtype=np.float32).sum(axis=2, dtype=np.float64)  # (ne13, ne12, n_in)
    sums = sums.reshape(ne13 // ne03, ne03, ne12 // ne02, ne02, n_in).sum(axis=(0, 2))
    return sums.reshape(1, -1), rows * (ne12 // ne02) * (ne13 // ne03)


def _expert_sums(p: WeightProduct) -> tuple[np.ndarray, np.ndarray]:
    """Per expert, the sums over the (token, slot) rows routed to it, and their number. Inputs
    are (1, tokens, slots or 1, n_in): gate/up read each token's row once for all its slots."""
    n_as = p.weight_shape[2]
    ids = p.expert_ids
    _, n_tokens, ne11, n_in = p.inputs.shape
    if p.inputs.shape[0] != 1 or ids.shape[0] != n_tokens:
        raise ImatrixError(f"{p.weight}: expert inputs {p.inputs.shape} do not match expert ids {ids.shape}")
    experts = ids.reshape(-1).astype(np.int64)  # token-major: (token, slot) pairs
    if experts.size and (experts.min() < 0 or experts.max() >= n_as):
        raise ImatrixError(f"{p.weight}: an expert id outside 0..{n_as - 1}")
    tokens = np.repeat(np.arange(n_tokens), ids.shape[1])
    slots = np.tile(np.arange(ids.shape[1]), n_tokens) % ne11
    order = np.argsort(experts, kind="stable")
    routed = experts[order]
    starts = np.flatnonzero(np.r_[True, routed[1:] != routed[:-1]]) if routed.size else np.zeros(0, np.int64)
    rows = np.square(p.inputs[0][tokens[order], slots[order]], dtype=np.float32)
    sums = np.zeros((n_as, n_in), dtype=np.float64)
    if routed.size:
        sums[routed[starts]] = np.add.reduceat(rows, starts, axis=0, dtype=np.float64)
    return sums, np.bincount(experts, minlength=n_as).astype(np.float64)


def is_collected(name: str) -> bool:
    """The weights llama-imatrix collects by default: every `blk.*` one (not the output head)."""
    return name.startswith("blk.")


# ---------------------------------------------------------------------------------------------
# Computing


@dataclass(frozen=True)
class Chunk:
    """Progress after one chunk: for a progress bar."""

    index: int       # 1-based
    total: int
    perplexity: float  # running, over the second half of every chunk so far


def calibration_text() -> str:
    """The calibration text shipped with edgeds (multilingual prose, code, math, reasoning)."""
    return resources.files("edgeds.measure").joinpath(CALIBRATION).read_text(encoding="utf-8")


def calibration_chunks(model, text: str, chunk_size: int, max_chunks: int | None = None, *,
                       name: str = "the text") -> list[list[int]]:
    """The text's tokens (`model` is an edgeds.llamacpp.binding.Model) cut into whole chunks, each
    starting with BOS (replacing the chunk's first token) where the model wants one, as
    llama-imatrix cuts them; at most `max_chunks` of them.

    Raises:
        ImatrixError: the text is shorter than one chunk.
    """
    tokens = model.tokenize(text, add_special=False, parse_special=False)
    n = len(tokens) // chunk_size
    if max_chunks is not None:
        n = min(n, max_chunks)
    if n < 1:
        raise ImatrixError(f"{name}: {len(tokens)} tokens, fewer than one chunk of {chunk_size} (--chunk-size)")
    chunks = [tokens[i * chunk_size:(i + 1) * chunk_size] for i in range(n)]
    if model.add_bos:
        for c in chunks:
            c[0] = model.bos_id
    return chunks


def check_output(out: Path, model: Path) -> None:
    """Refuse an output path that cannot be written, or that is the model itself."""
    if not out.parent.is_dir():
        raise ImatrixError(f"{out}: the folder {out.parent} does not exist")
    if out.is_dir():
        raise ImatrixError(f"{out}: is a folder; give the path of the file to write")
    if model.exists() and out.resolve() == model.resolve():
        raise ImatrixError(f"{out}: is the model; write the imatrix somewhere else")


def compute_imatrix(model_path: str | os.PathLike[str], text: str, *, dataset: str, chunk_size: int = CHUNK_SIZE,
                    max_chunks: int | None = None, n_threads: int | None = None, moe_offload: str = "auto",
                    on_chunk: Callable[[Chunk], None] | None = None,
                    on_placement: Callable[[str], None] | None = None) -> tuple[Imatrix, float]:
    """The importance matrix of a GGUF over `text`, and the model's perplexity on it.

    Args:
        dataset: the text's name, recorded in the file (`imatrix.datasets`).
        chunk_size: tokens per chunk; every chunk is decoded in a fresh KV cache.
        max_chunks: use at most this many chunks (default: all whole chunks of the text).
        moe_offload: the placement of a model too big for the GPU (edgeds.machine.placement).
        on_chunk: called after each chunk (progress).
        on_placement: called with the placement line once the model is loaded and the text cut.

    Raises:
        ImatrixError: a bad chunk size, a text too short for one chunk, activations that overflow.
        ModelLoadError: llama.cpp could not load the model.
    """
    from edgeds.llamacpp.binding import Context, Model
    from edgeds.llamacpp.eval_callback import WeightTap
    from edgeds.machine.placement import plan_placement

    model_path = Path(model_path)
    if chunk_size < MIN_CHUNK_SIZE:
        raise UsageError(f"--chunk-size {chunk_size}: use at least {MIN_CHUNK_SIZE} tokens")
    if max_chunks is not None and max_chunks < 1:
        raise UsageError(f"--chunks {max_chunks}: use at least 1")
    if not model_path.is_file():
        raise ImatrixError(f"{model_path}: no such file")
    placement = plan_placement(model_path, moe_offload, chunk_size)
    model = Model(model_path, placement.load_options)
    accumulator = Accumulator()
    tap = WeightTap(accumulator.add, is_collected)
    ctx = None
    nll, scored = 0.0, 0
    try:
        if chunk_size > model.n_ctx_train:
            raise UsageError(f"--chunk-size {chunk_size}: {model_path} was trained on contexts of "
                             f"{model.n_ctx_train} tokens")
        chunks = calibration_chunks(model, text, chunk_size, max_chunks, name=dataset)
        if on_placement is not None:
            on_placement(placement.explanation)
        ctx = Context(model, n_ctx=chunk_size, n_batch=chunk_size, n_threads=n_threads, eval_callback=tap.callback,
                      f32_attention=True)
        for i, chunk in enumerate(chunks, start=1):
            ctx.clear()
            try:
                # every position's logits: llama.cpp skips the last layer's FFN for rows without output
                ctx.decode([(t, pos, 0, True) for pos, t in enumerate(chunk)])
            finally:
                tap.raise_pending()
            nll += _second_half_nll(ctx, model.n_vocab, chunk)
            scored += len(chunk) - 1 - len(chunk) // 2
            if on_chunk is not None:
                on_chunk(Chunk(i, len(chunks), math.exp(nll / scored)))
    finally:
        if ctx is not None:
            ctx.close()
        model.close()
    return Imatrix(accumulator.entries(), (dataset,), len(chunks), chunk_size), math.exp(nll / scored)


def _second_half_nll(ctx, n_vocab: int, chunk: list[int]) -> float:
    """The negative log-likelihood of the chunk's second half, predicted from the logits (llama-imatrix's
    perplexity: the first half is context)."""
    first = len(chunk) // 2
    total = 0.0
    for i in range(first, len(chunk) - 1):
        row = np.ctypeslib.as_array(ctx.logits(i), shape=(n_vocab,)).astype(np.float64)
        peak = row.max()
        total += peak + math.log(np.exp(row - peak).sum()) - row[chunk[i + 1]]
    return total


# ---------------------------------------------------------------------------------------------
# Reading


def resolve_imatrix(spec: str | os.PathLike[str]) -> Path:
    """A local imatrix file, or `REPO:FILE` downloaded from the hub into its cache (a local file of
    that name wins)."""
    from edgeds.catalog.hub import download

    path = Path(spec)
    if path.is_file():
        return path
    m = HUB_SPEC.match(str(spec))
    if m is None:
        raise ImatrixError(f"{spec}: no such imatrix file (or use REPO:FILE for one on the hub)")
    return download(m["repo"], m["file"], progress=sys.stderr.isatty())


def read_imatrix(path: str | os.PathLike[str]) -> Imatrix:
    """Read a GGUF imatrix or a legacy `.dat` one (by the file's first bytes).

    Raises:
        ImatrixError: a missing, truncated or malformed file, one line naming it and what is wrong.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            magic = f.read(4)
    except OSError as err:
        raise ImatrixError(f"{path}: cannot read the imatrix ({err.strerror or err})") from None
    return _read_gguf(path) if magic == GGUF_MAGIC else _read_legacy(path)


def _read_gguf(path: Path) -> Imatrix:
    from edgeds.catalog.gguf import read_file

    try:
        f = read_file(path, arrays=True)
    except EdgedsError as err:
        raise ImatrixError(f"{path}: not a GGUF imatrix ({str(err).removeprefix(f'{path}: ')})") from None
    names = {t.name for t in f.tensors}
    entries = {}
    for t in f.tensors:
        base = t.name.removesuffix(SUMS)
        if base == t.name:
            if not t.name.endswith(COUNTS) or t.name.removesuffix(COUNTS) + SUMS not in names:
                raise ImatrixError(f"{path}: tensor {t.name} is neither NAME{SUMS} nor the NAME{COUNTS} of one")
            continue
        if base + COUNTS not in names:
            raise ImatrixError(f"{path}: {base}{COUNTS} is missing")
        try:
            sums, counts = f.f32(t.name), f.f32(base + COUNTS)
        except ValueError as err:
            raise ImatrixError(f"{path}: {err} (imatrix tensors are F32)") from None
        matrices = counts.size
        if matrices == 0 or sums.size == 0 or sums.size % matrices:
            raise ImatrixError(f"{path}: {base}: {sums.size} sums do not split into {matrices} matrices")
        sums = sums.reshape(matrices, -1).astype(np.float64)
        counts = counts.reshape(-1).astype(np.float64)
        if not (np.isfinite(sums).all() and np.isfinite(counts).all()) or (sums < 0).any() or (counts < 0).any():
            raise ImatrixError(f"{path}: {base}: negative or non-finite values")
        entries[base] = Entry(sums, counts)
    if not entries:
        raise ImatrixError(f"{path}: no imatrix entries (expected NAME{SUMS} and NAME{COUNTS} tensors)")
    datasets = f.metadata.get(KEY_DATASETS, [])
    return Imatrix(entries, tuple(datasets) if isinstance(datasets, list) else (), _uint(f.metadata, KEY_CHUNK_COUNT),
                   _uint(f.metadata, KEY_CHUNK_SIZE))


def _uint(metadata: dict, key: str) -> int:
    value = metadata.get(key, 0)
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


class _LegacyCursor:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def int32(self, what: str) -> int:
        return self.take(4, what).cast("i")[0]

    def take(self, n: int, what: str) -> memoryview:
        if n > len(self.data) - self.pos:
            raise ImatrixError(f"{self.path}: truncated legacy imatrix ({what} at byte {self.pos})")
        out = memoryview(self.data)[self.pos:self.pos + n]
        self.pos += n
        return out


def _read_legacy(path: Path) -> Imatrix:
    """llama.cpp's legacy `.dat` layout (imatrix-loader.cpp's common_imatrix_load_legacy), checked."""
    data = path.read_bytes()
    cur = _LegacyCursor(data, path)
    n_entries = cur.int32("the entry count") if len(data) >= 4 else 0
    if n_entries < 1:
        raise ImatrixError(f"{path}: neither a GGUF imatrix nor a legacy one (no entries)")
    entries = {}
    for i in range(1, n_entries + 1):
        size = cur.int32(f"entry {i}'s name length")
        if not 0 < size <= MAX_NAME:
            raise ImatrixError(f"{path}: entry {i} has a name of {size} bytes")
        try:
            name = bytes(cur.take(size, f"entry {i}'s name")).decode("utf-8")
        except UnicodeDecodeError:
            raise ImatrixError(f"{path}: entry {i}'s name is not UTF-8") from None
        ncall, nval = cur.int32(f"{name}'s ncall"), cur.int32(f"{name}'s value count")
        if nval < 1 or ncall < 0:
            raise ImatrixError(f"{path}: {name}: {nval} values, ncall {ncall}")
        if name in entries:
            raise ImatrixError(f"{path}: {name} appears twice")
        values = np.frombuffer(cur.take(4 * nval, f"{name}'s values"), dtype="<f4").astype(np.float64)
        if not np.isfinite(values).all() or (values < 0).any():
            raise ImatrixError(f"{path}: {name}: negative or non-finite values")
        entries[name] = Entry(values.reshape(1, -1), np.array([float(ncall)]))
    chunk_count, datasets = 0, ()
    if cur.pos + 4 <= len(data):  # the trailing chunk count and dataset name are optional
        chunk_count = max(cur.int32("the chunk count"), 0)
        if cur.pos + 4 <= len(data):
            size = cur.int32("the dataset name length")
            if 0 < size <= len(data) - cur.pos:
                datasets = (bytes(cur.take(size, "the dataset name")).decode("utf-8", errors="replace"),)
    return Imatrix(entries, datasets, chunk_count, 0, legacy=True)

