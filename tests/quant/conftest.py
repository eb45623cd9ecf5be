"""Fixtures for the quantization tests: a tiny DeepSeek-V3-shaped MoE whose weight rows are
256 wide (so K-quants apply without llama.cpp's block-size fallback), converted to F16 by edgeds."""

from __future__ import annotations

import pytest

WIDE = dict(hidden_size=256, intermediate_size=256, moe_intermediate_size=256, q_lora_rank=256,
            kv_lora_rank=256, v_head_dim=64, num_hidden_layers=3)


def build_wide_v3(folder):
    import tests.tiny_moe_checkpoints as tmc

    saved = dict(tmc.V3_SHAPE)
    tmc.V3_SHAPE.update(WIDE)
    try:
        return tmc.build_deepseek_v3(folder)
    finally:
        tmc.V3_SHAPE.clear()
        tmc.V3_SHAPE.update(saved)


@pytest.fixture(scope="session")
def moe_hf(tmp_path_factory):
    return build_wide_v3(tmp_path_factory.mktemp("wide_v3_hf"))


@pytest.fixture(scope="session")
def moe_f16(moe_hf, tmp_path_factory):
    from edgeds.convert import convert

    out = tmp_path_factory.mktemp("wide_v3") / "wide-v3-f16.gguf"
    return convert(moe_hf, out, "f16", progress=False)
