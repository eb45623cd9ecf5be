"""DeepSeek-R1 on a 24 GB GPU + 128 GB RAM, planned before anything is downloaded: the IQ recipes'
sizes from llama.cpp's own dry run on a header-only GGUF of R1's real tensor table, `edgeds fit`
for the published 1.58-bit file and for the recipe, and every placement mode loading in llama.cpp."""

from __future__ import annotations

import re

import pytest

from edgeds.catalog.registry import load_registry
from edgeds.cli import main
from edgeds.convert.quantize import plan_quantization
from edgeds.convert.recipes import get_recipe
from edgeds.convert.synthetic import write_header_only
from edgeds.machine.fit import Footprint
from edgeds.machine.placement import plan

GB = 10**9


@pytest.fixture(scope="module")
def r1_header(tmp_path_factory):
    """R1's 1086 tensors at BF16 (1.34 TB of sparse zeros: no disk is used)."""
    entry = load_registry().get("r1")
    path = write_header_only(tmp_path_factory.mktemp("r1") / "r1-bf16-header.gguf", entry)
    assert path.stat().st_size > 1.3e12 and path.stat().st_blocks * 512 < 1e6
    return path


@pytest.mark.parametrize("recipe, low, high", [("moe-iq1", 120 * GB, 140 * GB), ("moe-iq2", 160 * GB, 200 * GB),
                                               ("moe-q2", 230 * GB, 260 * GB)])
def test_recipe_sizes_on_the_real_r1_table(r1_header, recipe, low, high):
    planned = plan_quantization(r1_header, recipe)
    assert low <= planned.total_bytes <= high
    experts = [t for t in planned.tensors if "_exps." in t.name]
    assert len(experts) == 58 * 3 and {t.new_type for t in experts} <= {"iq1_s", "iq1_m", "iq2_xxs", "iq2_xs", "q2_K", "q3_K"}
    # `edgeds fit --recipe` sizes the same table without llama.cpp: it must agree with the dry run
    entry = load_registry().get("r1")
    sized = Footprint.from_registry(entry, entry.quant(None), type_for=get_recipe(recipe).main_type)
    assert sized.weights == pytest.approx(planned.total_bytes, rel=0.01)


def test_iq_recipes_need_an_importance_matrix():
    assert get_recipe("moe-iq1").needs_imatrix and get_recipe("moe-iq2").needs_imatrix
    assert not get_recipe("moe-q2").needs_imatrix


def test_quantize_dry_run_of_a_registry_id_downloads_nothing(capsys):
    with pytest.raises(SystemExit) as done:
        main(["quantize", "r1", "moe-iq1", "--dry-run"])
    assert done.value.code in (0, None)
    total = capsys.readouterr().out.strip().splitlines()[-1]
    match = re.match(r"total: ([\d.]+) GiB \((\d+) bytes of tensors\) with moe-iq1$", total)
    assert match and int(match[2]) <= 140 * GB


@pytest.mark.parametrize("args", [["r1:UD-IQ1_S"], ["r1", "--recipe", "moe-iq1"]])
def test_fit_r1_on_24_gb_and_128_gb(args, capsys):
    with pytest.raises(SystemExit) as done:
        main(["fit", *args, "--vram", "24", "--ram", "128", "--n-ctx", "8192"])
    out = capsys.readouterr().out
    assert done.value.code in (0, None), out
    assert "fits: gpu+experts in RAM, up to 8k context" in out
    plan_line = next(line for line in out.splitlines() if line.startswith("plan: "))
    assert re.search(r"GPU (\d+\.\d)/24\.0 GiB: attention\+shared on GPU, experts of layers 3-\d+ on CPU", plan_line)
    used = float(re.search(r"GPU (\d+\.\d)/", plan_line)[1])
    assert 20 < used <= 24  # the VRAM is filled with expert tensors, not left empty
    assert int(re.search(r"est\. (\d+) tok/s at depth 8192", plan_line)[1]) >= 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["auto", "all", "none", "1"])
@pytest.mark.parametrize("vram", ["none", "half the experts"])
def test_every_plan_loads_and_decodes_in_llama_cpp(moe_f16, mode, vram):
    """The plan's load options (GPU layers, expert overrides) are ones llama.cpp accepts: on this
    CPU build a GPU plan loads with its overrides applied (llama.cpp logs each), and decodes."""
    from edgeds.catalog.gguf import read_gguf
    from edgeds.llamacpp.backend import captured_llama_log
    from edgeds.machine.memory import gpu_reserve
    from edgeds.machine.placement import TensorTable
    from edgeds.runtime import Engine, GenerationParams

    table = TensorTable.from_gguf(read_gguf(moe_f16))
    gpu_free = 0
    if vram != "none":  # room for everything but half of the routed experts
        kv = table.kv_per_token_layer * 512 * table.n_layer
        gpu_free = gpu_reserve(table.geometry, 512) + sum(table.layer_hot) + table.output + kv + sum(table.layer_experts) // 2
    p = plan(table, gpu_free=gpu_free, moe_offload=mode, n_ctx=512, depth=512)
    if vram != "none" and mode != "auto":  # auto may find the CPU fastest for so small a model
        assert p.load_options.n_gpu_layers > 0
        assert bool(p.load_options.overrides) == (mode in ("all", "1"))
    with captured_llama_log() as log:
        engine = Engine(moe_f16, n_ctx=512, load_options=p.load_options, placement=p.explanation)
    try:
        overridden = "".join(log).count("buffer type overridden to CPU")
        patterns = [re.compile(o.pattern) for o in p.load_options.overrides]
        expected = sum(1 for t in read_gguf(moe_f16).tensors if any(pt.search(t.name) for pt in patterns))
        assert overridden == expected
        if mode == "all":
            assert expected == 3 * sum(1 for e in table.layer_experts if e)
        events = list(engine.generate([{"role": "user", "content": "Hi"}], GenerationParams(max_tokens=4, temperature=0)))
        assert events[-1].stats.finish_reason in ("stop", "length")
    finally:
        engine.close()
