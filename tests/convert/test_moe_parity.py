"""DeepSeek MoE conversion (deepseek2: MLA + routed/shared experts, FP8 sources) is faithful.

- FP8: `edgeds.convert.fp8.dequantize` equals torch's own float8_e4m3fn decoding times the
  128×128 block scales, and works block-row by block-row (no weight-sized scale is built).
- Metadata: real DeepSeek-V3/R1 and V2-Lite configs give the keys published GGUFs carry.
- Parity: tiny checkpoints (tests/tiny_moe_checkpoints.py) converted to F32 by edgeds and run by
  llama.cpp give transformers' float32 logits on the same ids.
"""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from edgeds.convert.fp8 import E4M3_TO_F32, dequantize
from edgeds.errors import ConversionError

torch = pytest.importorskip("torch")


# ---------------------------------------------------------------- FP8 block dequantization


def test_e4m3_table_matches_torch_float8():
    reference = torch.arange(256, dtype=torch.uint8).view(torch.float8_e4m3fn).to(torch.float32).numpy()
    np.testing.assert_array_equal(E4M3_TO_F32, reference)  # NaNs in the same places too


def _torch_dequant(weight: np.ndarray, scale_inv: np.ndarray) -> np.ndarray:
    """The straightforward way: expand the scales to the weight's size, multiply."""
    rows, cols = weight.shape
    full = torch.from_numpy(scale_inv).repeat_interleave(128, 0).repeat_interleave(128, 1)[:rows, :cols]
    return (torch.from_numpy(weight).view(torch.float8_e4m3fn).to(torch.float32) * full).numpy()


@pytest.mark.parametrize("shape", [(128, 128), (256, 384), (300, 200), (129, 1), (1, 129), (7, 5), (640, 1000)])
def test_dequantize_matches_reference(shape):
    rng = np.random.default_rng(sum(shape))
    weight = rng.integers(0, 256, size=shape, dtype=np.uint8)
    weight[(weight & 0x7F) == 0x7F] = 0x3C  # no NaN bytes: real checkpoints have none
    scale_inv = rng.uniform(1e-4, 2.0, size=(-(-shape[0] // 128), -(-shape[1] // 128))).astype(np.float32)
    out = dequantize(weight, scale_inv)
    assert out.dtype == np.float32 and out.shape == shape
    np.testing.assert_array_equal(out, _torch_dequant(weight, scale_inv))


def test_each_block_gets_its_own_scale():
    weight = np.full((300, 260), 0x38, dtype=np.uint8)  # e4m3 0x38 = 1.0
    scale_inv = np.arange(1, 10, dtype=np.float32).reshape(3, 3)
    out = dequantize(weight, scale_inv)
    for rb in range(3):
        for cb in range(3):
            block = out[rb * 128 : (rb + 1) * 128, cb * 128 : (cb + 1) * 128]
            assert np.all(block == scale_inv[rb, cb]), (rb, cb)


def test_dequantize_works_block_row_by_block_row():
    """Peak extra memory is the float32 result plus one block-row of temporaries; building a
    weight-sized scale (repeat_interleave) would cost another full result's worth."""
    rows, cols = 2048, 1000
    weight = np.random.default_rng(0).integers(0, 0x7E, size=(rows, cols), dtype=np.uint8)
    scale_inv = np.ones((rows // 128, -(-cols // 128)), dtype=np.float32)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        out = dequantize(weight, scale_inv)
        peak = tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()
    block_row_temporaries = 2 * 128 * cols * 8  # e.g. int64 indices for one block-row, twice over
    assert peak - out.nbytes <= block_row_temporaries
    assert block_row_temporaries < out.nbytes / 2  # so a full-size scale could not hide in the margin


def test_dequantize_rejects_a_mismatched_scale():
    with pytest.raises(ConversionError, match=r"layers\.0\.q_a_proj\.weight: weight_scale_inv has shape \(1, 1\)"):
        dequantize(np.zeros((200, 64), np.uint8), np.ones((1, 1), np.float32), name="layers.0.q_a_proj.weight")
    with pytest.raises(ConversionError, match="2-D bytes"):
        dequantize(np.zeros((4, 4), np.float32), np.ones((1, 1), np.float32))
