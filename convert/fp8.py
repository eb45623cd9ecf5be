"""Block-wise FP8 (e4m3) dequantization, as DeepSeek-V3/R1 checkpoints store their linear weights.

A weight `W` of shape (rows, cols) is stored as `float8_e4m3fn` bytes with a float32
`weight_scale_inv` of shape (ceil(rows/128), ceil(cols/128)): every 128×128 block (the last row
and column blocks may be partial) is `fp8_values * weight_scale_inv[block]`.

The bytes are decoded through a 256-entry table, one block-row (128 rows) at a time, and each
block-row is scaled in place by its row of scales. No scale tensor of the weight's size is ever
built; the only full-size array is the float32 result.
"""

from __future__ import annotations

import numpy as np

from edgeds.errors import ConversionError

BLOCK = (128, 128)


def _e4m3_table() -> np.ndarray:
    """float32 value of every e4m3fn byte: 1 sign, 4 exponent (bias 7), 3 mantissa bits; no inf."""
    byte = np.arange(256, dtype=np.uint32)
    sign = np.where(byte & 0x80, -1.0, 1.0)
    exponent = (byte >> 3) & 0xF
    mantissa = (byte & 0x7).astype(np.float64)
    normal = (1.0 + mantissa / 8.0) * np.exp2(exponent.astype(np.float64) - 7.0)
    subnormal = (mantissa / 8.0) * 2.0**-6
    value = sign * np.where(exponent == 0, subnormal, normal)
    value[(exponent == 0xF) & ((byte & 0x7) == 0x7)] = np.nan  # S.1111.111 is NaN
    return value.astype(np.float32)


E4M3_TO_F32 = _e4m3_table()


def dequantize(
    weight_uint8: np.ndarray, scale_inv: np.ndarray, *, block: tuple[int, int] = BLOCK, name: str = "weight"
) -> np.ndarray:
    """float32 values of a block-scaled e4m3 weight (raw bytes as uint8) and its `weight_scale_inv`."""
    weight = np.asarray(weight_uint8)
    if weight.dtype != np.uint8 or weight.ndim != 2:
        raise ConversionError(f"{name}: FP8 weight must be 2-D bytes, got {weight.dtype} {weight.shape}")
    rows, cols = weight.shape
    block_rows, block_cols = block
    expected = (-(-rows // block_rows), -(-cols // block_cols))
    scales = np.asarray(scale_inv, dtype=np.float32)
    if scales.shape != expected:
        raise ConversionError(
            f"{name}: weight_scale_inv has shape {scales.shape}, expected {expected} for {weight.shape} "
            f"in {block_rows}x{block_cols} blocks"
        )
    out = np.empty((rows, cols), dtype=np.float32)
    full = cols // block_cols * block_cols  # columns covered by whole blocks
    for rb in range(expected[0]):
        r0, r1 = rb * block_rows, min(rows, (rb + 1) * block_rows)
        piece = out[r0:r1]
        np.take(E4M3_TO_F32, weight[r0:r1], out=piece, mode="clip")  # "clip": no buffered copy
        if full:
            blocks = piece[:, :full].view()
            blocks.shape = (r1 - r0, full // block_cols, block_cols)  # a view; raises rather than copy
            blocks *= scales[rb, : full // block_cols, None]
        if full < cols:
            piece[:, full:] *= scales[rb, -1]
    return out
