"""Which PEFT LoRA target modules become which llama.cpp adapter tensors, per architecture (data only).

A PEFT module name under `model.layers.{i}.` (e.g. `self_attn.q_proj`) maps to the GGUF weight
`blk.{i}.<stem>.weight`, and the adapter holds `<that>.lora_a` and `.lora_b`. Only the weights
llama.cpp's graph multiplies through its LoRA-aware matmul are listed: for deepseek2 that is
the attention output and the dense and shared-expert FFNs. Its MLA projections are plain matmuls
in llama.cpp (an adapter on them would load and do nothing) and its routed experts are stacked
per layer: those can only be merged into the weights (`edgeds convert --merge-lora`).
"""

from __future__ import annotations

DENSE: dict[str, str] = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj":    "ffn_gate",
    "mlp.up_proj":      "ffn_up",
    "mlp.down_proj":    "ffn_down",
}

DEEPSEEK2: dict[str, str] = {
    "self_attn.o_proj":               "attn_output",
    "mlp.gate_proj":                  "ffn_gate",   # the first_k_dense_replace dense layers
    "mlp.up_proj":                    "ffn_up",
    "mlp.down_proj":                  "ffn_down",
    "mlp.shared_experts.gate_proj":   "ffn_gate_shexp",
    "mlp.shared_experts.up_proj":     "ffn_up_shexp",
    "mlp.shared_experts.down_proj":   "ffn_down_shexp",
}

# GGUF architecture → its runtime targets
TARGETS: dict[str, dict[str, str]] = {"qwen2": DENSE, "llama": DENSE, "qwen3": DENSE, "deepseek2": DEEPSEEK2}

# Modules an adapter may target that llama.cpp does not apply at runtime: a regex over the module
# name under `model.layers.{i}.`, per architecture.
MERGE_ONLY: dict[str, str] = {
    "deepseek2": r"^(self_attn\.(q_proj|q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj)|mlp\.experts\.\d+\.\w+)$",
}

# Modules whose base weight the converter permutes by rows (llama's q/k rope layout): lora_b's
# rows take the same permutation, with the head count the config key names.
ROW_PERMUTED: dict[str, dict[str, str]] = {
    "llama": {"self_attn.q_proj": "num_attention_heads", "self_attn.k_proj": "num_key_value_heads"},
}

# GGUF metadata keys that hold the same head counts, for a GGUF base.
HEAD_KEYS: dict[str, str] = {
    "num_attention_heads": "{arch}.attention.head_count",
    "num_key_value_heads": "{arch}.attention.head_count_kv",
}
