"""The placement planner against synthetic machines (4, 8, 12, 24 GB of VRAM) and tensor tables
built from the real DeepSeek-V2-Lite and DeepSeek-R1 configs at ~4.5 bits per weight, and against
the GPU measurements of ../shared/research/verified-here.md (V2-Lite shape, Q4_0, 28 layers)."""

from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from edgeds.errors import UsageError
from edgeds.machine import tensors
from edgeds.machine.memory import Geometry, gpu_reserve
from edgeds.machine.placement import PARTS, TensorTable, plan

GB = 10**9
GiB = 1 << 30
BPW = 4.5 / 8  # bytes per weight of a Q4_K_M-like file

V2_LITE = dict(hidden=2048, layers=27, first_dense=1, routed=64, used=6, shared=2, moe_inter=1408, inter=10944,
               vocab=102400, heads=16, q_lora=0, kv_lora=512, nope=128, rope=64, v=128)
R1 = dict(hidden=7168, layers=61, first_dense=3, routed=256, used=8, shared=1, moe_inter=2048, inter=18432,
          vocab=129280, heads=128, q_lora=1536, kv_lora=512, nope=128, rope=64, v=128)


def table_from_config(c: dict) -> TensorTable:
    h, qk = c["hidden"], c["nope"] + c["rope"]
    if c["q_lora"]:
        attn = h * c["q_lora"] + c["q_lora"] * c["heads"] * qk
    else:
        attn = h * c["heads"] * qk
    attn += h * (c["kv_lora"] + c["rope"]) + c["kv_lora"] * c["heads"] * (c["nope"] + c["v"]) + c["heads"] * c["v"] * h
    hot, exps = [], []
    for i in range(c["layers"]):
        if i < c["first_dense"]:
            hot.append(int((attn + 3 * h * c["inter"]) * BPW))
            exps.append(0)
        else:
            hot.append(int((attn + 3 * h * c["moe_inter"] * c["shared"]) * BPW) + h * c["routed"] * 4)
            exps.append(int(3 * h * c["moe_inter"] * c["routed"] * BPW))
    embd = int(c["vocab"] * h * BPW)
    geometry = Geometry(n_layers=c["layers"], n_embd=h, n_vocab=c["vocab"], n_head_kv=c["heads"], head_dim_k=qk,
                        head_dim_v=c["v"], kv_lora_rank=c["kv_lora"], qk_rope_head_dim=c["rope"],
                        n_experts=c["routed"], n_ctx_train=163840, n_head=c["heads"], n_experts_used=c["used"])
    return TensorTable(c["layers"], tuple(hot), tuple(exps), other=2 * embd, output=embd, geometry=geometry)


def measured_v2_lite() -> TensorTable:
    """The random-weight Q4_0 file the GPU measurements used: V2-Lite's shape with a compressed
    query and 28 layers (27 make llama.cpp take it for V2-Lite, which has none)."""
    shape = SimpleNamespace(n_layers=28, n_embd=2048, n_head=16, n_head_kv=16, head_dim=192, head_dim_v=128,
                            n_ff=10944, n_vocab=129280, kv_lora_rank=512, q_lora_rank=1536, qk_rope_head_dim=64,
                            n_experts=64, n_experts_used=6, n_shared_experts=2, expert_ff=1408, n_dense_layers=1)
    sizes = tensors.sized(tensors.tensor_shapes("deepseek2", shape), lambda name: "q4_0")
    return TensorTable.from_sizes(sizes, Geometry.from_shape(shape, 163840))


def gpu_bytes(table: TensorTable, p) -> int:
    """What the plan's load options put on the GPU, recomputed from the options alone."""
    opts = p.load_options
    patterns = [re.compile(o.pattern) for o in opts.overrides if o.device == "CPU"]
    on_cpu = lambda i, part: any(pt.search(f"blk.{i}.ffn_{part}_exps.weight") for pt in patterns)  # noqa: E731
    n = min(opts.n_gpu_layers, table.n_layer)
    total = 0
    for i in range(table.n_layer - n, table.n_layer):
        total += table.layer_hot[i] + table.kv_per_token_layer * p.n_ctx
        total += sum(table.part_bytes(i, part) for part in PARTS if not on_cpu(i, part))
    if opts.n_gpu_layers > table.n_layer:
        total += table.output
    return total


@pytest.mark.parametrize("config", [V2_LITE, R1], ids=["v2-lite", "r1"])
@pytest.mark.parametrize("vram_gb", [4, 8, 12, 24])
@pytest.mark.parametrize("mode", ["auto", "all", "none", "2"])
def test_never_more_than_fits(config, vram_gb, mode):
    table = table_from_config(config)
    p = plan(table, gpu_free=vram_gb * GB, moe_offload=mode, n_ctx=4096)
    assert gpu_bytes(table, p) <= vram_gb * GB - gpu_reserve(table.geometry, 4096)
    assert gpu_bytes(table, p) == p.gpu_bytes
    where = r"GPU \d+\.\d/\d+\.\d GiB: " if p.load_options.n_gpu_layers else r"CPU only: "  # when no layer fits
    assert re.match(where + r".* \(est\. \d+ tok/s at depth 4096\)$", p.explanation), p.explanation
    assert p.decode_tok_s > 0


@pytest.mark.parametrize("budget_gib", [4, 8])
def test_picks_the_faster_measured_plan(budget_gib):
    """verified-here.md: on the V2-Lite shape, layer offload decoded faster at short context (44.5
    and 102 tok/s against 30.9 and 50.4 for expert offload), expert offload at depth 8192 (27.2 and
    36.1 against 8.6 and 21.5)."""
    table = measured_v2_lite()
    n_ctx = 8192 + 512
    short = plan(table, gpu_free=budget_gib * GiB, n_ctx=n_ctx, depth=256)
    deep = plan(table, gpu_free=budget_gib * GiB, n_ctx=n_ctx, depth=8192)
    assert not short.load_options.overrides and short.load_options.n_gpu_layers < table.n_layer
    assert "layer offload" in short.explanation
    assert deep.load_options.n_gpu_layers == table.n_layer + 1 and deep.load_options.overrides
    assert "attention+shared on GPU" in deep.explanation
    measured = {(4, 256): 44.5, (4, 8192): 27.2, (8, 256): 102, (8, 8192): 36.1}
    for p, depth in ((short, 256), (deep, 8192)):  # and the predicted speeds are near the measured ones
        assert p.decode_tok_s == pytest.approx(measured[(budget_gib, depth)], rel=0.25)


@pytest.mark.parametrize("config", [V2_LITE, R1], ids=["v2-lite", "r1"])
@pytest.mark.parametrize("vram_gb", [4, 8, 12, 24])
def test_no_room_for_another_expert_tensor_is_left(config, vram_gb):
    """When experts of GPU layers stay in CPU RAM, the VRAM left is smaller than any of them."""
    table = table_from_config(config)
    p = plan(table, gpu_free=vram_gb * GB, n_ctx=4096, depth=4096)
    if not p.load_options.overrides:
        return
    left = vram_gb * GB - gpu_reserve(table.geometry, 4096) - p.gpu_bytes
    smallest = min(table.part_bytes(i, part) for i in range(table.n_layer) if table.layer_experts[i] for part in PARTS)
    assert 0 <= left < smallest


def test_v2_lite_choices():
    table = table_from_config(V2_LITE)
    assert table.total / GB == pytest.approx(8.9, abs=0.5)  # ~15.7B weights at 4.5 bits
    big = plan(table, gpu_free=24 * GB, n_ctx=4096)
    assert big.load_options.n_gpu_layers == 28 and not big.load_options.overrides
    assert "everything on GPU" in big.explanation
    small = plan(table, gpu_free=4 * GB, n_ctx=4096)
    assert small.load_options.n_gpu_layers == 28  # attention+shared of every layer fit
    assert 0 < len(small.cpu_experts_layers) < 26
    # the experts kept on the GPU are the last layers', those on CPU the first ones (like --n-cpu-moe N)
    assert small.cpu_experts_layers == tuple(range(1, 1 + len(small.cpu_experts_layers)))
    mid = plan(table, gpu_free=8 * GB, n_ctx=4096)
    assert len(mid.cpu_experts_layers) < len(small.cpu_experts_layers)
    assert f"experts of layers 1-{small.cpu_experts_layers[-1]} on CPU" in small.explanation


def test_r1_choices():
    table = table_from_config(R1)
    assert table.total / GB == pytest.approx(377, rel=0.05)  # 671B weights at 4.5 bits
    at24 = plan(table, gpu_free=24 * GB, n_ctx=4096)
    assert at24.load_options.n_gpu_layers == 62
    assert 53 <= len(at24.cpu_experts_layers) < 58  # hot part fits, some expert tensors too
    assert "experts of layer" in at24.explanation.split("on CPU, ", 1)[-1]  # single tensors fill the rest
    at12 = plan(table, gpu_free=12 * GB, n_ctx=4096)
    assert at12.load_options.n_gpu_layers == 62 and len(at12.cpu_experts_layers) == 58
    for gb in (4, 8):  # the hot part alone does not fit: fewer layers on the GPU
        p = plan(table, gpu_free=gb * GB, n_ctx=4096)
        assert 0 < p.load_options.n_gpu_layers < 61
    assert plan(table, gpu_free=8 * GB, n_ctx=4096).load_options.n_gpu_layers > \
        plan(table, gpu_free=4 * GB, n_ctx=4096).load_options.n_gpu_layers


def test_modes_and_cpu_only():
    table = table_from_config(V2_LITE)
    none = plan(table, gpu_free=4 * GB, moe_offload="none", n_ctx=4096)
    assert not none.load_options.overrides and 0 < none.load_options.n_gpu_layers < 27
    assert "layer offload" in none.explanation
    three = plan(table, gpu_free=24 * GB, moe_offload="3", n_ctx=4096)
    assert three.cpu_experts_layers == (1, 2, 3)
    cpu = plan(table, gpu_free=0, moe_offload="all", n_ctx=2048)
    assert cpu.load_options.n_gpu_layers == 0 and cpu.cpu_experts_layers == tuple(range(1, 27))
    assert cpu.explanation.startswith("CPU only") and cpu.n_ctx == 2048
    with pytest.raises(UsageError, match="--moe-offload 'some'"):
        plan(table, gpu_free=0, moe_offload="some")


def test_more_context_leaves_less_for_experts():
    table = table_from_config(V2_LITE)
    short = plan(table, gpu_free=6 * GB, n_ctx=2048, depth=2048)
    long = plan(table, gpu_free=6 * GB, n_ctx=65536, depth=2048)
    assert len(long.cpu_experts_layers) > len(short.cpu_experts_layers)


def test_depth_changes_the_plan_and_its_prediction():
    """Chat and serve plan for long traces, `run` with a short reply for less."""
    table = measured_v2_lite()
    short = plan(table, gpu_free=8 * GiB, n_ctx=32768, depth=512)
    long = plan(table, gpu_free=8 * GiB, n_ctx=32768)
    assert long.depth == 32768 and short.depth == 512
    assert short.decode_tok_s > long.decode_tok_s
    assert short.load_options != long.load_options
