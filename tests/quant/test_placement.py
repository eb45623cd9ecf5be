"""The placement planner against synthetic machines (4, 8, 12, 24 GB of VRAM) and tensor tables
built from the real DeepSeek-V2-Lite and DeepSeek-R1 configs at ~4.5 bits per weight."""

from __future__ import annotations

import re

import pytest

from edgeds.errors import UsageError
from edgeds.machine.memory import Geometry, gpu_reserve
from edgeds.machine.placement import TensorTable, plan

GB = 10**9
BPW = 4.5 / 8  # bytes per weight of a Q4_K_M-like file

V2_LITE = dict(hidden=2048, layers=27, first_dense=1, routed=64, shared=2, moe_inter=1408, inter=10944,
               vocab=102400, heads=16, q_lora=0, kv_lora=512, nope=128, rope=64, v=128)
R1 = dict(hidden=7168, layers=61, first_dense=3, routed=256, shared=1, moe_inter=2048, inter=18432,
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
                        n_experts=c["routed"], n_ctx_train=163840)
    return TensorTable(c["layers"], tuple(hot), tuple(exps), other=2 * embd, output=embd, geometry=geometry)


def gpu_bytes(table: TensorTable, p) -> int:
    """What the plan's load options put on the GPU, recomputed from the options alone."""
    opts = p.load_options
    patterns = [re.compile(o.pattern) for o in opts.overrides if o.device == "CPU"]
    on_cpu = lambda i: any(pt.search(f"blk.{i}.ffn_up_exps.weight") for pt in patterns)  # noqa: E731
    n = min(opts.n_gpu_layers, table.n_layer)
    total = 0
    for i in range(table.n_layer - n, table.n_layer):
        total += table.layer_hot[i] + table.kv_per_token_layer * p.n_ctx
        if not on_cpu(i):
            total += table.layer_experts[i]
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
    assert re.match(r"GPU \d+\.\d/\d+\.\d GiB: ", p.explanation), p.explanation


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
    assert 55 <= len(at24.cpu_experts_layers) < 58  # hot part fits, a couple of expert layers too
    at12 = plan(table, gpu_free=12 * GB, n_ctx=4096)
    assert at12.load_options.n_gpu_layers == 62 and len(at12.cpu_experts_layers) == 58
    for gb in (4, 8):  # the hot part alone does not fit: fewer layers, all experts on CPU
        p = plan(table, gpu_free=gb * GB, n_ctx=4096)
        assert 0 < p.load_options.n_gpu_layers < 61
        assert len(p.cpu_experts_layers) == 58
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
    short = plan(table, gpu_free=6 * GB, n_ctx=2048)
    long = plan(table, gpu_free=6 * GB, n_ctx=65536)
    assert len(long.cpu_experts_layers) > len(short.cpu_experts_layers)
