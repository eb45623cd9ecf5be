"""DeepSeek MoE conversion (deepseek2: MLA + routed/shared experts, FP8 sources) is faithful.

- FP8: `edgeds.convert.fp8.dequantize` equals torch's own float8_e4m3fn decoding times the
  128×128 block scales, and works block-row by block-row (no weight-sized scale is built).
- Metadata: real DeepSeek-V3/R1 and V2-Lite configs give the keys published GGUFs carry.
- Parity: tiny checkpoints (tests/tiny_moe_checkpoints.py) converted to F32 by edgeds and run by
  llama.cpp give transformers' float32 logits on the same ids.
"""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from edgeds.catalog.gguf import read_file
from edgeds.convert.fp8 import E4M3_TO_F32, dequantize
from edgeds.convert.verify import transformers_logits
from edgeds.errors import ConversionError
from edgeds.llamacpp.logits import all_logits

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


# ---------------------------------------------------------------- deepseek2 metadata from real configs

# config.json of deepseek-ai/DeepSeek-V3 (R1 and V3-0324 share it), quantization_config left out
DEEPSEEK_V3_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"], "model_type": "deepseek_v3", "vocab_size": 129280,
    "hidden_size": 7168, "intermediate_size": 18432, "moe_intermediate_size": 2048, "num_hidden_layers": 61,
    "num_nextn_predict_layers": 1, "num_attention_heads": 128, "num_key_value_heads": 128,
    "n_shared_experts": 1, "n_routed_experts": 256, "routed_scaling_factor": 2.5, "kv_lora_rank": 512,
    "q_lora_rank": 1536, "qk_rope_head_dim": 64, "v_head_dim": 128, "qk_nope_head_dim": 128,
    "topk_method": "noaux_tc", "n_group": 8, "topk_group": 4, "num_experts_per_tok": 8,
    "first_k_dense_replace": 3, "norm_topk_prob": True, "scoring_func": "sigmoid", "hidden_act": "silu",
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0, "mscale_all_dim": 1.0,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "tie_word_embeddings": False,
}
# the deepseek2 keys of published DeepSeek-R1 GGUFs (llama.cpp's converter, MLA era)
DEEPSEEK_R1_GGUF = {
    "block_count": 61, "context_length": 163840, "embedding_length": 7168, "feed_forward_length": 18432,
    "attention.head_count": 128, "attention.head_count_kv": 1, "rope.freq_base": 10000.0,
    "attention.layer_norm_rms_epsilon": 1e-6, "expert_used_count": 8, "expert_count": 256,
    "expert_shared_count": 1, "expert_feed_forward_length": 2048, "expert_weights_scale": 2.5,
    "expert_weights_norm": True, "expert_gating_func": 2, "expert_group_count": 8, "expert_group_used_count": 4,
    "leading_dense_block_count": 3, "vocab_size": 129280, "attention.q_lora_rank": 1536,
    "attention.kv_lora_rank": 512, "attention.key_length": 576, "attention.value_length": 512,
    "attention.key_length_mla": 192, "attention.value_length_mla": 128, "rope.dimension_count": 64,
    "rope.scaling.type": "yarn", "rope.scaling.factor": 40.0, "rope.scaling.original_context_length": 4096,
    "rope.scaling.yarn_log_multiplier": 0.1, "rope.scaling.yarn_beta_fast": 32.0, "rope.scaling.yarn_beta_slow": 1.0,
}
# config.json of deepseek-ai/DeepSeek-V2-Lite-Chat
DEEPSEEK_V2_LITE_CONFIG = {
    "architectures": ["DeepseekV2ForCausalLM"], "model_type": "deepseek_v2", "vocab_size": 102400,
    "hidden_size": 2048, "intermediate_size": 10944, "moe_intermediate_size": 1408, "num_hidden_layers": 27,
    "num_attention_heads": 16, "num_key_value_heads": 16, "n_shared_experts": 2, "n_routed_experts": 64,
    "routed_scaling_factor": 1.0, "kv_lora_rank": 512, "q_lora_rank": None, "qk_rope_head_dim": 64,
    "v_head_dim": 128, "qk_nope_head_dim": 128, "topk_method": "greedy", "n_group": 1, "topk_group": 1,
    "num_experts_per_tok": 6, "first_k_dense_replace": 1, "norm_topk_prob": False, "scoring_func": "softmax",
    "max_position_embeddings": 163840, "rms_norm_eps": 1e-06, "rope_theta": 10000,
    "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707, "mscale_all_dim": 0.707,
                     "original_max_position_embeddings": 4096, "type": "yarn"},
    "tie_word_embeddings": False,
}


def _deepseek2():
    from edgeds.convert.arch import deepseek2

    return deepseek2


def _assert_keys(meta: dict, expected: dict) -> None:
    for key, value in expected.items():
        got = meta[f"deepseek2.{key}"]
        assert type(got) is type(value), (key, got)  # int → uint32, float → float32: types matter to llama.cpp
        assert got == pytest.approx(value, rel=1e-6), key


def test_deepseek_v3_config_gives_the_published_r1_keys():
    meta = _deepseek2().metadata(DEEPSEEK_V3_CONFIG)
    _assert_keys(meta, DEEPSEEK_R1_GGUF)
    assert not [k for k in meta if not k.startswith("deepseek2.")]


def test_v3_routes_with_sigmoid_even_without_scoring_func():
    config = {k: v for k, v in DEEPSEEK_V3_CONFIG.items() if k != "scoring_func"}  # as transformers 5 saves it
    assert _deepseek2().metadata(config)["deepseek2.expert_gating_func"] == 2


def test_v2_lite_config():
    meta = _deepseek2().metadata(DEEPSEEK_V2_LITE_CONFIG)
    _assert_keys(meta, {
        "block_count": 27, "expert_gating_func": 1, "expert_count": 64, "expert_used_count": 6,
        "expert_shared_count": 2, "expert_feed_forward_length": 1408, "expert_weights_scale": 1.0,
        "expert_weights_norm": False, "attention.key_length": 576, "attention.value_length": 512,
        "attention.key_length_mla": 192, "attention.value_length_mla": 128, "attention.head_count_kv": 1,
        "leading_dense_block_count": 1, "rope.scaling.yarn_log_multiplier": 0.0707,
    })
    assert "deepseek2.attention.q_lora_rank" not in meta  # plain attn_q; llama.cpp knows V2-Lite by 27 layers


def test_transformers5_rope_parameters_are_read_like_rope_scaling():
    legacy = DEEPSEEK_V3_CONFIG
    modern = {k: v for k, v in legacy.items() if k not in ("rope_scaling", "rope_theta")}
    modern["rope_parameters"] = dict(legacy["rope_scaling"], rope_theta=10000.0, rope_type="yarn")
    del modern["rope_parameters"]["type"]
    assert _deepseek2().metadata(modern) == _deepseek2().metadata(legacy)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"scoring_func": "tanh", "architectures": ["DeepseekV2ForCausalLM"]}, "scoring_func 'tanh'"),
        ({"qk_rope_head_dim": None}, "'qk_rope_head_dim' is missing"),
        ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope scaling type 'linear'"),
        ({"n_group": 3}, "not divisible by n_group 3"),
        ({"q_lora_rank": None}, "q_lora_rank is null with 61 layers"),
    ],
)
def test_bad_configs_name_the_key(change, message):
    with pytest.raises(ConversionError, match=f"config.json: .*{message}"):
        _deepseek2().metadata({**DEEPSEEK_V3_CONFIG, **change})


def test_mtp_layers_are_skipped_and_nothing_else():
    pattern = _deepseek2().skip(DEEPSEEK_V3_CONFIG)
    assert pattern.search("model.layers.61.eh_proj.weight")
    assert pattern.search("model.layers.61.mlp.experts.3.up_proj.weight")
    assert not pattern.search("model.layers.60.mlp.experts.3.up_proj.weight")
    assert not pattern.search("model.layers.6.mlp.gate.weight")
    assert not pattern.search("lm_head.weight")


# ---------------------------------------------------------------- logits parity with transformers

PROMPT = "DeepSeek-V3 routes each token to 2 of 8 experts. 你好，世界！ def f(x): return x**2 <think>ok</think>"

# case → (builder, builder kwargs); the FP8 case is compared with its dequantized float32 twin
CASES = {
    "v3": ("build_deepseek_v3", {}),
    "v3-without-scoring-func": ("build_deepseek_v3", {"scoring_func": False}),
    "v2-lite-27-layers": ("build_deepseek_v2_lite", {}),
    "v3-fp8": ("build_deepseek_v3_fp8", {}),
}


@pytest.fixture(scope="module")
def moe_source(tmp_path_factory):
    """Build each tiny checkpoint once per module: (HF folder, reference folder for transformers)."""
    from tests import tiny_moe_checkpoints as tiny

    cache: dict[str, tuple[Path, Path]] = {}

    def _get(case: str) -> tuple[Path, Path]:
        if case not in cache:
            builder, kwargs = CASES[case]
            root = tmp_path_factory.mktemp(case)
            source = getattr(tiny, builder)(root / "hf", **kwargs)
            reference = tiny.dequantized_twin(source, root / "twin") if case.endswith("fp8") else source
            cache[case] = (source, reference)
        return cache[case]

    return _get


@pytest.fixture(scope="module")
def converted_moe(moe_source, tmp_path_factory):
    """Convert (edgeds, F32) each tiny checkpoint once per module: (source, reference, GGUF path)."""
    from edgeds.convert import convert

    cache: dict[str, tuple[Path, Path, Path]] = {}

    def _get(case: str):
        if case not in cache:
            source, reference = moe_source(case)
            out = tmp_path_factory.mktemp(f"{case}-gguf") / f"{case}.gguf"
            cache[case] = (source, reference, Path(convert(source, out, outtype="f32", progress=False)))
        return cache[case]

    return _get


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_llama_cpp_logits_match_transformers(case, converted_moe):
    from edgeds.convert.tokenizer import reference_ids

    source, reference, gguf_path = converted_moe(case)
    ids = reference_ids(source, PROMPT)
    assert ids[0] == 0 and len(ids) > 20  # DeepSeek-V3 tokenizer, with its BOS
    expected = transformers_logits(reference, ids)
    got = all_logits(gguf_path, ids, n_threads=2)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-2
    assert (got.argmax(-1) == expected.argmax(-1)).all()
    assert expected.std() > 0.5  # logits that spread, so top-1 agreement means something
    gating = 1 if case.startswith("v2") else 2  # sigmoid for every V3, config or not
    assert read_file(gguf_path).metadata["deepseek2.expert_gating_func"] == gating


@pytest.mark.slow
def test_file_layout_hot_first_experts_last_no_mtp(converted_moe):
    _, _, gguf_path = converted_moe("v3")
    names = [t.name for t in read_file(gguf_path).tensors]
    assert len(names) == 52
    first_expert = min(i for i, n in enumerate(names) if n.endswith("_exps.weight"))
    assert all(n.endswith("_exps.weight") for n in names[first_expert:])
    assert names[first_expert:] == [f"blk.{b}.ffn_{w}_exps.weight" for b in (1, 2) for w in ("gate", "up", "down")]
    assert not [n for n in names if n.startswith("blk.3.")]  # the MTP layer (model.layers.3) is not converted
    assert {"blk.1.exp_probs_b.bias", "blk.1.ffn_gate_inp.weight", "blk.1.attn_k_b.weight", "blk.0.ffn_gate.weight"} <= set(names)
    assert "blk.1.attn_kv_b.weight" not in names  # split into attn_k_b / attn_v_b


def _checkpoint(folder):
    from edgeds.convert.checkpoint import Checkpoint

    return Checkpoint(folder)


@pytest.mark.slow
def test_routed_experts_are_produced_one_expert_at_a_time(moe_source):
    source, _ = moe_source("v3")
    ckpt = _checkpoint(source)
    plans = {p.name: p for p in _deepseek2().plan(ckpt.config, ckpt)}
    gate = plans["blk.1.ffn_gate_exps.weight"]
    assert gate.shape == (8, 32, 64) and len(gate.sources) == 8
    pieces = list(gate.produce(ckpt))
    assert [p.shape for p in pieces] == [(32, 64)] * 8
    np.testing.assert_array_equal(pieces[5], ckpt.read("model.layers.1.mlp.experts.5.gate_proj.weight"))
    k_b, v_b = plans["blk.1.attn_k_b.weight"], plans["blk.1.attn_v_b.weight"]
    kv_b = ckpt.read("model.layers.1.self_attn.kv_b_proj.weight").reshape(4, 32 + 48, 96)
    np.testing.assert_array_equal(np.stack(list(k_b.produce(ckpt))), kv_b[:, :32].transpose(0, 2, 1))
    np.testing.assert_array_equal(np.stack(list(v_b.produce(ckpt))), kv_b[:, 32:])
    assert plans["blk.1.ffn_gate_inp.weight"].keep_f32 and plans["blk.1.exp_probs_b.bias"].keep_f32
    assert not plans["blk.1.attn_q_b.weight"].keep_f32


@pytest.mark.slow
def test_a_missing_expert_is_named(moe_source, tmp_path):
    import shutil

    from tests import tiny_moe_checkpoints as tiny

    source, _ = moe_source("v3")
    broken = tmp_path / "broken"
    shutil.copytree(source, broken)
    tensors = tiny._read_shards(broken)
    del tensors["model.layers.2.mlp.experts.6.down_proj.weight"]
    tiny._write_sharded(broken, tensors, [sorted(tensors)])
    ckpt = _checkpoint(broken)
    with pytest.raises(ConversionError, match=r"'model\.layers\.2\.mlp\.experts\.6\.down_proj\.weight' is missing"):
        _deepseek2().plan(ckpt.config, ckpt)
