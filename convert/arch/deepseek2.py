"""DeepSeek-V2 / V3 / R1 (MLA attention, routed + shared experts) → llama.cpp's `deepseek2` architecture.

Written in llama.cpp's current MLA form:
- `kv_b_proj` is split per head into `attn_k_b` (transposed) and `attn_v_b`, and the file claims
  MQA over the compressed latent (`head_count_kv = 1`, `key_length = kv_lora_rank + rope dims`,
  `value_length = kv_lora_rank`); the real per-head sizes go in the `*_mla` keys.
- Routed experts are stacked into `ffn_{gate,up,down}_exps` one expert at a time; shared experts,
  the router (`ffn_gate_inp`) and its selection bias (`exp_probs_b`, from `e_score_correction_bias`)
  stay separate. The first `first_k_dense_replace` layers have a dense FFN.
- File order puts every non-expert ("hot") tensor first and each layer's routed experts after
  them, the layout expert offload wants.
- The multi-token-prediction layers after the last block (`model.layers.{num_hidden_layers}` on)
  are not converted: llama.cpp's deepseek2 graph does not use them.

Gating: DeepseekV3 always routes with sigmoid scores (its configs may omit `scoring_func`, e.g.
when saved by transformers 5); V2 uses `scoring_func`, softmax by default.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from functools import partial
from typing import Any

import numpy as np

from edgeds.convert.arch import _config
from edgeds.convert.plan import TensorPlan, single
from edgeds.errors import ConversionError

HF_ARCHITECTURES = ("DeepseekV2ForCausalLM", "DeepseekV3ForCausalLM")
GGUF_ARCH = "deepseek2"

GATING_FUNC = {"softmax": 1, "sigmoid": 2}  # llama.cpp's llama_expert_gating_func_type
LITE_LAYER_COUNTS = (26, 27)  # llama.cpp skips attention.q_lora_rank only for these layer counts

# HF name under `model.layers.{i}.` → GGUF name under `blk.{i}.`; (name, keep_f32)
ATTENTION = {
    "input_layernorm.weight": ("attn_norm.weight", True),
    "self_attn.q_proj.weight": ("attn_q.weight", False),  # no q_lora (V2-Lite)
    "self_attn.q_a_proj.weight": ("attn_q_a.weight", False),  # q_lora (V2, V3, R1)
    "self_attn.q_a_layernorm.weight": ("attn_q_a_norm.weight", True),
    "self_attn.q_b_proj.weight": ("attn_q_b.weight", False),
    "self_attn.kv_a_proj_with_mqa.weight": ("attn_kv_a_mqa.weight", False),
    "self_attn.kv_a_layernorm.weight": ("attn_kv_a_norm.weight", True),
    # self_attn.kv_b_proj.weight → attn_k_b + attn_v_b (see _mla_split)
    "self_attn.o_proj.weight": ("attn_output.weight", False),
    "post_attention_layernorm.weight": ("ffn_norm.weight", True),
}
DENSE_FFN = {
    "mlp.gate_proj.weight": ("ffn_gate.weight", False),
    "mlp.up_proj.weight": ("ffn_up.weight", False),
    "mlp.down_proj.weight": ("ffn_down.weight", False),
}
MOE_HOT = {
    "mlp.gate.weight": ("ffn_gate_inp.weight", True),  # router
    "mlp.gate.e_score_correction_bias": ("exp_probs_b.bias", True),  # V3 selection bias (optional)
    "mlp.shared_experts.gate_proj.weight": ("ffn_gate_shexp.weight", False),
    "mlp.shared_experts.up_proj.weight": ("ffn_up_shexp.weight", False),
    "mlp.shared_experts.down_proj.weight": ("ffn_down_shexp.weight", False),
}
OPTIONAL = {"mlp.gate.e_score_correction_bias"}
EXPERTS = {  # stacked over `mlp.experts.{e}.` in expert order
    "gate_proj.weight": "ffn_gate_exps.weight",
    "up_proj.weight": "ffn_up_exps.weight",
    "down_proj.weight": "ffn_down_exps.weight",
}


# GGUF name (`blk.N.` left out) → its shape in the dimensions `shapes` names
SHAPES: dict[str, tuple[str, ...]] = {
    "token_embd.weight":      ("vocab_size", "hidden_size"),
    "attn_norm.weight":       ("hidden_size",),
    "attn_q.weight":          ("q_size", "hidden_size"),
    "attn_q_a.weight":        ("q_lora_rank", "hidden_size"),
    "attn_q_a_norm.weight":   ("q_lora_rank",),
    "attn_q_b.weight":        ("q_size", "q_lora_rank"),
    "attn_kv_a_mqa.weight":   ("kv_a_size", "hidden_size"),
    "attn_kv_a_norm.weight":  ("kv_lora_rank",),
    "attn_k_b.weight":        ("num_attention_heads", "kv_lora_rank", "qk_nope_head_dim"),
    "attn_v_b.weight":        ("num_attention_heads", "v_head_dim", "kv_lora_rank"),
    "attn_output.weight":     ("hidden_size", "o_size"),
    "ffn_norm.weight":        ("hidden_size",),
    "ffn_gate.weight":        ("intermediate_size", "hidden_size"),
    "ffn_up.weight":          ("intermediate_size", "hidden_size"),
    "ffn_down.weight":        ("hidden_size", "intermediate_size"),
    "ffn_gate_inp.weight":    ("n_routed_experts", "hidden_size"),
    "exp_probs_b.bias":       ("n_routed_experts",),
    "ffn_gate_shexp.weight":  ("shared_size", "hidden_size"),
    "ffn_up_shexp.weight":    ("shared_size", "hidden_size"),
    "ffn_down_shexp.weight":  ("hidden_size", "shared_size"),
    "ffn_gate_exps.weight":   ("n_routed_experts", "moe_intermediate_size", "hidden_size"),
    "ffn_up_exps.weight":     ("n_routed_experts", "moe_intermediate_size", "hidden_size"),
    "ffn_down_exps.weight":   ("n_routed_experts", "hidden_size", "moe_intermediate_size"),
    "output_norm.weight":     ("hidden_size",),
    "output.weight":          ("vocab_size", "hidden_size"),
}


def _need(cfg: Mapping[str, Any], key: str) -> Any:
    return _config.need(cfg, key, "needed for DeepSeek MLA/MoE")


def _is_v3(cfg: Mapping[str, Any]) -> bool:
    architectures = cfg.get("architectures")
    if architectures:
        return architectures[0] == "DeepseekV3ForCausalLM"
    return cfg.get("model_type") == "deepseek_v3"


def skip(cfg: Mapping[str, Any]) -> re.Pattern[str]:
    """Source tensors not converted: the MTP layers (index ≥ num_hidden_layers), tied lm_head."""
    layers = int(_need(cfg, "num_hidden_layers"))
    mtp = "|".join(str(i) for i in range(layers, layers + max(1, int(cfg.get("num_nextn_predict_layers") or 1))))
    tied = "|^lm_head\\.weight$" if cfg.get("tie_word_embeddings") else ""
    return re.compile(rf"^model\.layers\.({mtp})\.{tied}")


def metadata(cfg: Mapping[str, Any]) -> dict[str, object]:
    """`deepseek2.*` keys. int → uint32, float → float32, bool → bool, str → string."""
    a = GGUF_ARCH
    kv_lora = int(cfg.get("kv_lora_rank") or 512)
    rope_dims = int(_need(cfg, "qk_rope_head_dim"))
    nope_dims = int(_need(cfg, "qk_nope_head_dim"))
    n_experts = int(_need(cfg, "n_routed_experts"))
    if int(_need(cfg, "num_experts_per_tok")) > n_experts:
        raise ConversionError(f"config.json: num_experts_per_tok {cfg['num_experts_per_tok']} is more than "
                              f"n_routed_experts {n_experts}")
    if _is_v3(cfg):
        gating = "sigmoid"  # DeepseekV3's router is sigmoid whatever the config says or omits
    else:
        gating = cfg.get("scoring_func") or "softmax"
        if gating not in GATING_FUNC:
            raise ConversionError(f"config.json: scoring_func {gating!r} is not one of {', '.join(GATING_FUNC)}")
    theta, scaling = _config.rope(cfg)
    meta: dict[str, object] = {
        f"{a}.block_count": int(_need(cfg, "num_hidden_layers")),
        f"{a}.context_length": int(_need(cfg, "max_position_embeddings")),
        f"{a}.embedding_length": int(_need(cfg, "hidden_size")),
        f"{a}.feed_forward_length": int(_need(cfg, "intermediate_size")),
        f"{a}.attention.head_count": int(_need(cfg, "num_attention_heads")),
        f"{a}.attention.head_count_kv": 1,  # MLA runs as MQA over the latent
        f"{a}.rope.freq_base": theta,
        f"{a}.attention.layer_norm_rms_epsilon": float(cfg.get("rms_norm_eps") or 1e-6),
        f"{a}.vocab_size": int(_need(cfg, "vocab_size")),
        f"{a}.leading_dense_block_count": int(cfg.get("first_k_dense_replace") or 0),
        f"{a}.attention.kv_lora_rank": kv_lora,
        f"{a}.attention.key_length": kv_lora + rope_dims,
        f"{a}.attention.value_length": kv_lora,
        f"{a}.attention.key_length_mla": nope_dims + rope_dims,
        f"{a}.attention.value_length_mla": int(_need(cfg, "v_head_dim")),
        f"{a}.rope.dimension_count": rope_dims,
        f"{a}.expert_count": n_experts,
        f"{a}.expert_used_count": int(_need(cfg, "num_experts_per_tok")),
        f"{a}.expert_feed_forward_length": int(_need(cfg, "moe_intermediate_size")),
        f"{a}.expert_shared_count": int(cfg.get("n_shared_experts") or 0),
        f"{a}.expert_gating_func": GATING_FUNC[gating],
        f"{a}.expert_weights_scale": float(cfg.get("routed_scaling_factor", 2.5 if _is_v3(cfg) else 1.0)),
        f"{a}.expert_weights_norm": bool(cfg.get("norm_topk_prob", _is_v3(cfg))),
    }
    if cfg.get("q_lora_rank") is not None:
        meta[f"{a}.attention.q_lora_rank"] = int(cfg["q_lora_rank"])
    elif meta[f"{a}.block_count"] not in LITE_LAYER_COUNTS:
        raise ConversionError(
            f"config.json: q_lora_rank is null with {meta[f'{a}.block_count']} layers; llama.cpp reads such "
            f"DeepSeek models (V2-Lite style) only with {' or '.join(map(str, LITE_LAYER_COUNTS))} layers"
        )
    if cfg.get("n_group") is not None:
        groups, used = int(cfg["n_group"]), int(_need(cfg, "topk_group"))
        if n_experts % groups:
            raise ConversionError(f"config.json: n_routed_experts {n_experts} is not divisible by n_group {groups}")
        meta[f"{a}.expert_group_count"] = groups
        meta[f"{a}.expert_group_used_count"] = used
    if scaling is not None:
        if scaling["type"] != "yarn":
            raise ConversionError(f"config.json: rope scaling type {scaling['type']!r} is not supported for DeepSeek (yarn only)")
        meta[f"{a}.rope.scaling.type"] = "yarn"
        meta[f"{a}.rope.scaling.factor"] = float(_need(scaling, "factor"))
        meta[f"{a}.rope.scaling.original_context_length"] = int(_need(scaling, "original_max_position_embeddings"))
        meta[f"{a}.rope.scaling.yarn_beta_fast"] = float(scaling.get("beta_fast", 32.0))
        meta[f"{a}.rope.scaling.yarn_beta_slow"] = float(scaling.get("beta_slow", 1.0))
        if scaling.get("mscale_all_dim"):
            # llama.cpp's loader divides this key by 0.1 again (its TAG_DEEPSEEK2_YARN_LOG_MUL_FIX)
            meta[f"{a}.rope.scaling.yarn_log_multiplier"] = 0.1 * float(scaling["mscale_all_dim"])
    return meta


def shapes(cfg: Mapping[str, Any]) -> tuple[dict[str, tuple[str, ...]], dict[str, int]]:
    """What the config implies for every tensor (see edgeds.convert.plan)."""
    dims = {key: int(_need(cfg, key)) for key in (
        "vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "qk_nope_head_dim", "v_head_dim",
        "n_routed_experts", "moe_intermediate_size")}
    heads, rope_dims = dims["num_attention_heads"], int(_need(cfg, "qk_rope_head_dim"))
    kv_lora = int(cfg.get("kv_lora_rank") or 512)
    return SHAPES, {
        **dims,
        "q_lora_rank": int(cfg.get("q_lora_rank") or 0),
        "q_size": heads * (dims["qk_nope_head_dim"] + rope_dims),
        "kv_lora_rank": kv_lora,
        "kv_a_size": kv_lora + rope_dims,
        "o_size": heads * dims["v_head_dim"],
        "shared_size": dims["moe_intermediate_size"] * int(cfg.get("n_shared_experts") or 0),
    }


def _stack(names: tuple[str, ...], ckpt) -> Iterator[np.ndarray]:
    for name in names:
        yield ckpt.read(name)


def _mla_split(name: str, heads: int, nope: int, v_dim: int, part: str, ckpt) -> Iterator[np.ndarray]:
    """kv_b_proj (heads·(nope+v), kv_lora) → per head: k_b transposed (kv_lora, nope) or v_b (v, kv_lora)."""
    kv_b = ckpt.read(name)
    per_head = kv_b.reshape(heads, nope + v_dim, kv_b.shape[-1])
    for h in range(heads):
        yield np.ascontiguousarray(per_head[h, :nope].T) if part == "k" else per_head[h, nope:]


def plan(cfg: Mapping[str, Any], ckpt) -> list[TensorPlan]:
    """Every output tensor in file order: hot tensors first, then each MoE layer's routed experts."""
    names = set(ckpt.names)

    def need(name: str) -> str:
        if name not in names:
            raise ConversionError(f"checkpoint: tensor {name!r} is missing")
        return name

    layers = int(_need(cfg, "num_hidden_layers"))
    dense = int(cfg.get("first_k_dense_replace") or 0)
    heads = int(_need(cfg, "num_attention_heads"))
    nope, v_dim = int(_need(cfg, "qk_nope_head_dim")), int(_need(cfg, "v_head_dim"))
    kv_lora = int(cfg.get("kv_lora_rank") or 512)
    n_experts = int(_need(cfg, "n_routed_experts"))
    q_lora = cfg.get("q_lora_rank") is not None

    hot = [single(ckpt, "token_embd.weight", need("model.embed_tokens.weight"))]
    experts: list[TensorPlan] = []
    for i in range(layers):
        hf, blk = f"model.layers.{i}.", f"blk.{i}."
        for suffix, (gguf, keep) in ATTENTION.items():
            uses_q_lora = suffix.startswith(("self_attn.q_a_", "self_attn.q_b_"))
            if suffix == "self_attn.q_proj.weight" and q_lora or uses_q_lora and not q_lora:
                continue
            hot.append(single(ckpt, blk + gguf, need(hf + suffix), keep_f32=keep))
            if suffix == "self_attn.kv_a_layernorm.weight":  # k_b / v_b follow the latent norm
                kv_b = need(hf + "self_attn.kv_b_proj.weight")
                if tuple(ckpt.shape(kv_b)) != (heads * (nope + v_dim), kv_lora):
                    raise ConversionError(f"checkpoint: {kv_b} has shape {ckpt.shape(kv_b)}, config implies "
                                          f"{(heads * (nope + v_dim), kv_lora)}")
                hot.append(TensorPlan(blk + "attn_k_b.weight", (heads, kv_lora, nope), (kv_b,),
                                      partial(_mla_split, kv_b, heads, nope, v_dim, "k")))
                hot.append(TensorPlan(blk + "attn_v_b.weight", (heads, v_dim, kv_lora), (kv_b,),
                                      partial(_mla_split, kv_b, heads, nope, v_dim, "v")))
        if i < dense:
            hot += [single(ckpt, blk + gguf, need(hf + s), keep_f32=keep) for s, (gguf, keep) in DENSE_FFN.items()]
            continue
        for suffix, (gguf, keep) in MOE_HOT.items():
            if suffix in OPTIONAL and hf + suffix not in names:
                continue
            hot.append(single(ckpt, blk + gguf, need(hf + suffix), keep_f32=keep))
        for suffix, gguf in EXPERTS.items():
            sources = tuple(need(f"{hf}mlp.experts.{e}.{suffix}") for e in range(n_experts))
            shape = tuple(ckpt.shape(sources[0]))
            for src in sources[1:]:
                if tuple(ckpt.shape(src)) != shape:
                    raise ConversionError(f"checkpoint: {src} has shape {ckpt.shape(src)}, expert 0 has {shape}")
            experts.append(TensorPlan(blk + gguf, (n_experts, *shape), sources, partial(_stack, sources)))
    hot.append(single(ckpt, "output_norm.weight", need("model.norm.weight"), keep_f32=True))
    if not cfg.get("tie_word_embeddings"):
        hot.append(single(ckpt, "output.weight", need("lm_head.weight")))
    return hot + experts
