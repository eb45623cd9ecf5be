"""`edgeds fit` and the loader count memory with the same function: for SmolLM2, the tiny R1
fixture and the V2-Lite/R1 tensor tables, the fit estimate, the placement plan's estimate and
the Engine's geometry are one and the same."""

from __future__ import annotations

import pytest

from edgeds.catalog.gguf import read_gguf
from edgeds.machine import fit, memory
from edgeds.machine.placement import TensorTable, plan, plan_placement
from tests.quant.test_placement import R1, V2_LITE, table_from_config

GiB = 1 << 30


@pytest.fixture(params=["smollm2", "tiny_r1"])
def gguf_path(request, smollm2_path):
    return smollm2_path if request.param == "smollm2" else request.getfixturevalue("tiny_r1_gguf")


def test_fit_and_placement_share_the_estimate(gguf_path):
    footprint = fit.footprint(str(gguf_path))
    table = TensorTable.from_gguf(read_gguf(gguf_path))
    assert table.geometry == footprint.geometry
    assert table.total == footprint.weights
    for n_ctx in (512, 2048, 4096):
        placement = plan_placement(gguf_path, n_ctx=n_ctx, gpu_free=0)
        assert placement.n_ctx == n_ctx
        assert placement.memory == footprint.estimate(n_ctx) == memory.estimate(
            footprint.geometry, footprint.weights, n_ctx, expert_weights=footprint.expert_weights)


def test_engine_reads_the_same_geometry_from_llama_cpp(gguf_path):
    """llama.cpp's metadata (all strings) and the header reader give the same Geometry, so the
    Engine's default context is the one the placement plan assumed."""
    from edgeds.llamacpp.binding import Model

    model = Model(gguf_path)
    try:
        from_llama = memory.Geometry.from_metadata(model.metadata, n_vocab=model.n_vocab)
    finally:
        model.close()
    footprint = fit.footprint(str(gguf_path))
    assert from_llama == footprint.geometry
    ram = 6 * GiB
    assert memory.default_n_ctx(from_llama, model.size_bytes, ram) == \
        memory.default_n_ctx(footprint.geometry, footprint.weights, ram)


def test_default_context_of_open_engine_is_the_plans(smollm2_path):
    from edgeds.loader import open_engine

    with open_engine(smollm2_path, progress=False) as engine:
        planned = plan_placement(smollm2_path)
        assert engine.n_ctx == planned.n_ctx


@pytest.mark.parametrize("config", [V2_LITE, R1], ids=["v2-lite", "r1"])
@pytest.mark.parametrize("vram_gb", [4, 8, 24])
def test_moe_tables_fit_and_plan_agree(config, vram_gb):
    table = table_from_config(config)
    footprint = fit.Footprint("table", table.geometry, 163840, table.total, sum(table.layer_experts))
    p = plan(table, gpu_free=vram_gb * 10**9, n_ctx=8192)
    assert p.memory == footprint.estimate(8192)
    # both leave the same reserve on the GPU: what placement budgets is what fit's verdict subtracts
    assert p.gpu_bytes <= vram_gb * 10**9 - memory.gpu_reserve(table.geometry, 8192)
