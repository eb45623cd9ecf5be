"""Tiny DeepSeek MoE checkpoints (MLA + routed/shared experts) around the real DeepSeek-V3 tokenizer.

Built with transformers' own DeepseekV2/V3 classes and random weights, then saved the way DeepSeek's
Hugging Face repos store them: per-expert tensors, `e_score_correction_bias`, sharded safetensors
with an index, an MTP layer after the last block (V3), and for the FP8 variant e4m3 weights with
128×128 `weight_scale_inv` blocks plus a `quantization_config`. Deterministic (fixed seeds), a few
seconds each. Used by the converter parity tests and the quantization tests.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

FIXTURES = Path(os.environ.get("EDGEDS_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
V3_TOKENIZER = FIXTURES / "deepseek-v3-tokenizer"

YARN = {  # DeepSeek's long-context rope (V3/R1: factor 40 from 4096 tokens)
    "rope_type": "yarn",
    "factor": 40.0,
    "original_max_position_embeddings": 4096,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
    "rope_theta": 10000.0,
}

V3_SHAPE = dict(  # DeepSeek-V3 in miniature: MLA with q_lora, 8 experts top-2 in 2 groups, 1 shared
    vocab_size=129280,
    hidden_size=64,
    intermediate_size=96,
    moe_intermediate_size=32,
    num_hidden_layers=3,
    num_attention_heads=4,
    num_key_value_heads=4,
    n_shared_experts=1,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_group=2,
    topk_group=1,
    first_k_dense_replace=1,
    kv_lora_rank=96,  # MLA widths all differ, so a mixed-up key length or transpose cannot pass
    q_lora_rank=128,
    qk_rope_head_dim=32,
    qk_nope_head_dim=32,
    v_head_dim=48,
    routed_scaling_factor=2.5,
    norm_topk_prob=True,
    max_position_embeddings=163840,
    rms_norm_eps=1e-6,
    bos_token_id=0,
    eos_token_id=1,
    tie_word_embeddings=False,
)

V3_FP8_SHAPE = dict(  # widths chosen so 128×128 blocks are whole in some places and partial in others
    V3_SHAPE,
    num_hidden_layers=2,
    hidden_size=160,
    intermediate_size=320,
    moe_intermediate_size=64,
    q_lora_rank=96,
    kv_lora_rank=96,
    qk_nope_head_dim=32,
    qk_rope_head_dim=32,
    v_head_dim=32,
)

V2_LITE_SHAPE = dict(  # V2-Lite in miniature: no q_lora, softmax gating, 2 shared experts, 27 layers
    vocab_size=129280,
    hidden_size=64,
    intermediate_size=96,
    moe_intermediate_size=32,
    num_hidden_layers=27,  # llama.cpp recognises V2-Lite (no q_lora_rank key) by its 27 layers
    num_attention_heads=4,
    num_key_value_heads=4,
    n_shared_experts=2,
    n_routed_experts=8,
    num_experts_per_tok=2,
    n_group=1,
    topk_group=1,
    topk_method="greedy",
    first_k_dense_replace=1,
    kv_lora_rank=96,
    q_lora_rank=None,
    qk_rope_head_dim=32,
    qk_nope_head_dim=32,
    v_head_dim=48,
    routed_scaling_factor=1.0,
    norm_topk_prob=False,
    max_position_embeddings=163840,
    rms_norm_eps=1e-6,
    bos_token_id=0,
    eos_token_id=1,
    tie_word_embeddings=False,
)

FP8_QUANTIZATION_CONFIG = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [128, 128],
}
FP8_BLOCK = 128
E4M3_MAX = 448.0


def _randomize(model, seed: int) -> None:
    """Weights large enough that logits spread (transformers' 0.02 init makes them nearly flat)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if param.ndim == 1:  # RMSNorm weights
                param.copy_(1.0 + 0.1 * noise)
            elif "embed_tokens" in name:
                param.copy_(noise)
            else:  # linear layers and stacked experts: unit-variance outputs
                param.copy_(noise / math.sqrt(param.shape[-1]))
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(0.05 * torch.randn(buf.shape, generator=gen))


def _router_bias_f32(tensors: dict) -> None:
    """DeepSeek stores e_score_correction_bias in float32 even in BF16/FP8 checkpoints."""
    import torch

    for name in tensors:
        if name.endswith("e_score_correction_bias"):
            tensors[name] = tensors[name].to(torch.float32)


def _copy_tokenizer(target: Path) -> None:
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(V3_TOKENIZER / name, target / name)


def _read_shards(folder: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(folder.glob("*.safetensors")):
        tensors.update(load_file(shard))
    return tensors


def _write_sharded(folder: Path, tensors: dict, shards: list[list[str]]) -> None:
    """Write `shards` (lists of tensor names) as model-0000i-of-0000n.safetensors plus the index."""
    from safetensors.torch import save_file

    for old in folder.glob("model*.safetensors*"):
        old.unlink()
    weight_map: dict[str, str] = {}
    total = 0
    for i, names in enumerate(shards, start=1):
        file = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        part = {n: tensors[n].contiguous() for n in names}
        save_file(part, str(folder / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, file))
        total += sum(t.numel() * t.element_size() for t in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")


def _patch_config(folder: Path, **changes) -> dict:
    path = folder / "config.json"
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    return config


def _mtp_layer(layer: int, hidden: int, seed: int) -> dict:
    """The parts of DeepSeek-V3's multi-token-prediction module (`model.layers.{num_hidden_layers}`)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    prefix = f"model.layers.{layer}"
    shapes = {
        "enorm.weight": (hidden,),
        "hnorm.weight": (hidden,),
        "eh_proj.weight": (hidden, 2 * hidden),
        "shared_head.norm.weight": (hidden,),
        "input_layernorm.weight": (hidden,),
        "mlp.gate.weight": (8, hidden),
    }
    return {f"{prefix}.{k}": torch.randn(s, generator=gen).to(torch.bfloat16) for k, s in shapes.items()}


def _by_layer(names: list[str], n_shards: int) -> list[list[str]]:
    """Split tensor names into shards at layer boundaries (non-layer tensors in the first/last)."""
    def layer_of(name: str) -> int:
        parts = name.split(".")
        return int(parts[2]) if name.startswith("model.layers.") else (-1 if "embed" in name else 10**6)

    ordered = sorted(names, key=lambda n: (layer_of(n), n))
    size = math.ceil(len(ordered) / n_shards)
    return [ordered[i : i + size] for i in range(0, len(ordered), size)]


def build_deepseek_v3(folder: Path, *, scoring_func: bool = True, seed: int = 0) -> Path:
    """A tiny DeepseekV3ForCausalLM in BF16, sharded, with an MTP layer; `scoring_func=False`
    leaves the key out of config.json, as transformers 5 saves it (real V3/R1 configs say sigmoid)."""
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = DeepseekV3Config(**V3_SHAPE, rope_parameters=dict(YARN))
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(config)
    _randomize(model, seed)
    model.to(torch.bfloat16).save_pretrained(folder)
    tensors = _read_shards(folder)
    n_layers = V3_SHAPE["num_hidden_layers"]
    _router_bias_f32(tensors)
    tensors.update(_mtp_layer(n_layers, V3_SHAPE["hidden_size"], seed + 1))
    _write_sharded(folder, tensors, _by_layer(list(tensors), 2))
    _patch_config(
        folder,
        scoring_func="sigmoid" if scoring_func else None,
        topk_method="noaux_tc",
        num_nextn_predict_layers=1,
    )
    _copy_tokenizer(folder)
    return folder


def build_deepseek_v2_lite(folder: Path, *, seed: int = 1) -> Path:
    """A tiny DeepseekV2ForCausalLM shaped like V2-Lite (27 layers, no q_lora, softmax routing), in
    float32, with the legacy `rope_scaling`/`rope_theta` config keys DeepSeek's V2 repos use."""
    import torch
    from transformers import DeepseekV2Config, DeepseekV2ForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = DeepseekV2Config(**V2_LITE_SHAPE, rope_parameters=dict(YARN, mscale=0.707, mscale_all_dim=0.707))
    torch.manual_seed(seed)
    model = DeepseekV2ForCausalLM(config)
    _randomize(model, seed)
    model.save_pretrained(folder)
    rope = dict(json.loads((folder / "config.json").read_text())["rope_parameters"])
    theta = rope.pop("rope_theta")
    rope["type"] = rope.pop("rope_type")
    _patch_config(folder, rope_parameters=None, rope_scaling=rope, rope_theta=theta, scoring_func="softmax")
    _copy_tokenizer(folder)
    return folder


def _quantize_e4m3(weight):
    """Block-wise e4m3 quantization as DeepSeek stores it: (bytes as float8, float32 scale_inv)."""
    import torch

    rows, cols = weight.shape
    rb, cb = math.ceil(rows / FP8_BLOCK), math.ceil(cols / FP8_BLOCK)
    padded = torch.zeros(rb * FP8_BLOCK, cb * FP8_BLOCK, dtype=torch.float32)
    padded[:rows, :cols] = weight.float()
    blocks = padded.view(rb, FP8_BLOCK, cb, FP8_BLOCK)
    amax = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12)
    scale = amax / E4M3_MAX
    q = (blocks / scale[:, None, :, None]).view(rb * FP8_BLOCK, cb * FP8_BLOCK)[:rows, :cols]
    return q.to(torch.float8_e4m3fn).contiguous(), scale.to(torch.float32).contiguous()


def _fp8_quantized(name: str, tensor) -> bool:
    """DeepSeek-V3 keeps embeddings, lm_head, norms and the router in higher precision."""
    return (
        name.startswith("model.layers.")
        and name.endswith("proj.weight")
        and tensor.ndim == 2
    )


def build_deepseek_v3_fp8(folder: Path, *, seed: int = 2) -> Path:
    """A tiny DeepSeek-V3 stored as DeepSeek's FP8 release is: e4m3 linear weights with 128×128
    `weight_scale_inv` blocks (partial at the edges), BF16 for the rest, `quantization_config`."""
    import torch
    from transformers import DeepseekV3Config, DeepseekV3ForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = DeepseekV3Config(**V3_FP8_SHAPE, rope_parameters=dict(YARN))
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(config)
    _randomize(model, seed)
    model.to(torch.bfloat16).save_pretrained(folder)
    tensors = _read_shards(folder)
    _router_bias_f32(tensors)
    for name, tensor in list(tensors.items()):
        if _fp8_quantized(name, tensor):
            tensors[name], tensors[f"{name}_scale_inv"] = _quantize_e4m3(tensor)
    _write_sharded(folder, tensors, _by_layer(list(tensors), 2))
    _patch_config(
        folder,
        scoring_func="sigmoid",
        topk_method="noaux_tc",
        quantization_config=FP8_QUANTIZATION_CONFIG,
        dtype="bfloat16",
    )
    _copy_tokenizer(folder)
    return folder


def dequantized_twin(fp8_folder: Path, folder: Path) -> Path:
    """The FP8 checkpoint's values in float32, without quantization_config: what transformers
    evaluates as the reference. Dequantized with torch's own float8 type, independently of edgeds."""
    import torch

    fp8_folder, folder = Path(fp8_folder), Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = _read_shards(fp8_folder)
    out = {}
    for name, tensor in tensors.items():
        if name.endswith("_scale_inv"):
            continue
        if tensor.dtype == torch.float8_e4m3fn:
            scale = tensors[f"{name}_scale_inv"]
            rows, cols = tensor.shape
            full = scale.repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)[:rows, :cols]
            out[name] = tensor.to(torch.float32) * full
        else:
            out[name] = tensor.to(torch.float32)
    for file in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(fp8_folder / file, folder / file)
    _write_sharded(folder, out, [sorted(out)])
    _patch_config(folder, quantization_config=None, dtype="float32")
    return folder
