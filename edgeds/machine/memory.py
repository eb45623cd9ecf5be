"""The one memory model: the bytes llama.cpp allocates for a model at a context length.

`edgeds fit`, `edgeds doctor`, the placement plan and the Engine's default context all count
with these functions; the estimate mirrors the buffers llama.cpp logs when it loads a model
(tests compare against them):
- weights: the GGUF's tensor bytes (from its tensor table, or the registry's file sizes);
- KV cache, f16: MLA (deepseek2) caches the compressed latent plus the rope key,
  (kv_lora_rank + qk_rope_head_dim) x layers x ctx x 2 bytes; other models
  (k_dim + v_dim) x kv_heads x layers x ctx x 2 bytes;
- compute buffer: with flash attention (llama.cpp's default on CPU, CUDA, Metal) it is
  dominated by the logits of one micro-batch, 4 x n_ubatch x (n_vocab + 2 x n_embd) bytes;
- output buffer: one row of logits;
- a fixed host overhead for the runtime itself, and on a GPU a reserve for the driver.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

MiB = 1 << 20
GiB = 1 << 30
OVERHEAD = 256 * MiB       # host: runtime, allocator slack, Python
GPU_RESERVE = 512 * MiB    # GPU: driver and context memory llama.cpp does not report in its buffers
N_BATCH = 512              # llama.cpp's micro-batch, as edgeds' contexts use it
MIN_CTX = 2048
# Reasoning traces run to thousands of tokens, but a full 128k-token KV cache and its compute
# buffers take gigabytes: default to at most this much; --n-ctx goes higher.
DEFAULT_MAX_CTX = 32768


@dataclass(frozen=True)
class Geometry:
    """The model dimensions the memory model needs (from the registry or a GGUF's metadata)."""

    n_layers: int
    n_embd: int
    n_vocab: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    n_experts: int = 0
    n_ctx_train: int = 0
    n_head: int = 0          # query heads (attention cost grows with them)
    n_experts_used: int = 0  # routed experts each token reads (top-k)

    @classmethod
    def from_shape(cls, shape, context_length: int = 0) -> "Geometry":
        """From a registry `Shape`."""
        return cls(shape.n_layers, shape.n_embd, shape.n_vocab, shape.n_head_kv, shape.head_dim,
                   shape.head_dim_v or shape.head_dim, shape.kv_lora_rank, shape.qk_rope_head_dim,
                   shape.n_experts, context_length, shape.n_head, shape.n_experts_used)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], *, n_vocab: int | None = None) -> "Geometry":
        """From GGUF metadata: the header reader's values, or llama.cpp's (all strings)."""
        arch = str(metadata.get("general.architecture", ""))

        def get(key: str, default: int = 0) -> int:
            value = metadata.get(f"{arch}.{key}")
            if isinstance(value, (list, tuple)):  # per-layer values (e.g. head_count_kv): the largest
                value = max(value, default=default)
            try:
                return int(float(value))
            except (TypeError, ValueError):
                return default

        n_embd = get("embedding_length")
        n_head = max(get("attention.head_count", 1), 1)
        kv_lora = get("attention.kv_lora_rank") or None
        return cls(
            n_layers=get("block_count"),
            n_embd=n_embd,
            n_vocab=n_vocab or get("vocab_size") or _token_count(metadata),
            n_head_kv=get("attention.head_count_kv", n_head),
            head_dim_k=get("attention.key_length", n_embd // n_head),
            head_dim_v=get("attention.value_length", n_embd // n_head),
            kv_lora_rank=kv_lora,
            qk_rope_head_dim=get("rope.dimension_count") if kv_lora else None,
            n_experts=get("expert_count"),
            n_ctx_train=get("context_length"),
            n_head=n_head,
            n_experts_used=get("expert_used_count"),
        )

    def attention_bytes(self, depth: int) -> int:
        """Bytes one token's attention reads per layer over `depth` cached tokens: the layer's KV
        cache, once per KV head group; MLA attends over its compressed latent once per query head."""
        per_token_layer = self.kv_bytes_per_token() // max(self.n_layers, 1)
        return depth * per_token_layer * (max(self.n_head, 1) if self.kv_lora_rank is not None else 1)

    def kv_bytes_per_token(self) -> int:
        """f16 KV cache bytes one token takes (MLA models cache the latent, not the heads)."""
        if self.kv_lora_rank is not None:
            return (self.kv_lora_rank + (self.qk_rope_head_dim or 0)) * self.n_layers * 2
        return (self.head_dim_k + self.head_dim_v) * self.n_head_kv * self.n_layers * 2


def _token_count(metadata: Mapping[str, Any]) -> int:
    tokens = metadata.get("tokenizer.ggml.tokens", "")
    if isinstance(tokens, (list, tuple)):
        return len(tokens)
    if isinstance(tokens, str) and tokens.startswith("[") and tokens[1:].split()[0].isdigit():
        return int(tokens[1:].split()[0])  # the header reader's summary: "[151936 strings]"
    return 32000


def compute_bytes(geom: Geometry, n_ctx: int, n_batch: int = N_BATCH) -> int:
    """llama.cpp's compute buffer: the logits and activations of one micro-batch."""
    return 4 * min(n_ctx, n_batch) * (geom.n_vocab + 2 * geom.n_embd)


def output_bytes(geom: Geometry) -> int:
    """The output buffer: one row of logits."""
    return 4 * geom.n_vocab


def gpu_reserve(geom: Geometry, n_ctx: int) -> int:
    """What a GPU holds besides weights and KV cache: compute and output buffers, driver reserve."""
    return GPU_RESERVE + compute_bytes(geom, n_ctx) + output_bytes(geom)


@dataclass(frozen=True)
class Estimate:
    """Bytes llama.cpp will allocate for one context of `n_ctx` tokens."""

    n_ctx: int
    weights: int
    expert_weights: int   # part of `weights` in routed-expert tensors (MoE only)
    kv_cache: int
    compute: int
    output: int
    overhead: int = OVERHEAD

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute + self.output + self.overhead


def estimate(geom: Geometry, weights: int, n_ctx: int, *, expert_weights: int = 0) -> Estimate:
    return Estimate(
        n_ctx=n_ctx,
        weights=weights,
        expert_weights=expert_weights,
        kv_cache=geom.kv_bytes_per_token() * n_ctx,
        compute=compute_bytes(geom, n_ctx),
        output=output_bytes(geom),
    )


def default_n_ctx(geom: Geometry, weights: int, ram_available: int) -> int:
    """The trained context length, capped at DEFAULT_MAX_CTX and so that the KV cache takes at
    most half the free RAM (never below MIN_CTX)."""
    per_token = max(geom.kv_bytes_per_token(), 1)
    fits = max(0, ram_available // 2 - weights) // per_token
    return max(min(geom.n_ctx_train or MIN_CTX, DEFAULT_MAX_CTX, max(fits // 256 * 256, MIN_CTX)), 256)
