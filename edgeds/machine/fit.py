"""Will it fit: memory for a model + quant + context, before anything is downloaded or loaded.

The estimate mirrors the buffers llama.cpp allocates and logs (tests compare against them):
- weights: the GGUF's tensor bytes (from its tensor table, or the registry's file sizes);
- KV cache, f16: MLA (deepseek2) caches the compressed latent plus the rope key,
  (kv_lora_rank + qk_rope_head_dim) x layers x ctx x 2 bytes; other models
  (k_dim + v_dim) x kv_heads x layers x ctx x 2 bytes;
- compute buffer: with flash attention (llama.cpp's default on CPU, CUDA, Metal) it is
  dominated by the logits of one micro-batch, 4 x n_ubatch x (n_vocab + 2 x n_embd) bytes;
- output buffer: one row of logits, and a fixed overhead for the runtime itself.
`plan` turns that into a verdict for a machine: fully on the GPU, GPU with routed experts in
RAM, CPU only, or no, each with the largest context that still fits.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgeds.catalog.registry import QuantSource, RegistryEntry, Shape

MiB = 1 << 20
GiB = 1 << 30
OVERHEAD = 256 * MiB        # runtime, allocator slack, Python
GPU_RESERVE = 512 * MiB     # driver / desktop use of the GPU
CTX_STEP = 1024


@dataclass(frozen=True)
class Geometry:
    """The model dimensions the estimate needs (from the registry or a GGUF)."""

    n_layers: int
    n_embd: int
    n_vocab: int
    n_head_kv: int
    head_dim_k: int
    head_dim_v: int
    kv_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    n_experts: int = 0

    @classmethod
    def from_shape(cls, shape: Shape) -> "Geometry":
        return cls(shape.n_layers, shape.n_embd, shape.n_vocab, shape.n_head_kv, shape.head_dim,
                   shape.head_dim_v or shape.head_dim, shape.kv_lora_rank, shape.qk_rope_head_dim,
                   shape.n_experts)

    @classmethod
    def from_gguf(cls, info) -> "Geometry":
        """From a `gguf_info.GgufInfo`."""
        g = info.get
        n_embd = int(g("{arch}.embedding_length"))
        n_head = int(g("{arch}.attention.head_count", 1))
        head_kv = g("{arch}.attention.head_count_kv", n_head)
        n_vocab = g("{arch}.vocab_size") or _token_count(info)
        return cls(
            n_layers=int(g("{arch}.block_count")),
            n_embd=n_embd,
            n_vocab=int(n_vocab),
            n_head_kv=int(head_kv if isinstance(head_kv, int) else max(head_kv)),
            head_dim_k=int(g("{arch}.attention.key_length", n_embd // n_head)),
            head_dim_v=int(g("{arch}.attention.value_length", n_embd // n_head)),
            kv_lora_rank=g("{arch}.attention.kv_lora_rank"),
            qk_rope_head_dim=g("{arch}.rope.dimension_count") if g("{arch}.attention.kv_lora_rank") else None,
            n_experts=int(g("{arch}.expert_count", 0) or 0),
        )

    def kv_bytes_per_token(self) -> int:
        if self.kv_lora_rank is not None:
            return (self.kv_lora_rank + (self.qk_rope_head_dim or 0)) * self.n_layers * 2
        return (self.head_dim_k + self.head_dim_v) * self.n_head_kv * self.n_layers * 2


def _token_count(info) -> int:
    tokens = info.metadata.get("tokenizer.ggml.tokens", "")
    if isinstance(tokens, str) and tokens.startswith("["):
        return int(tokens[1:].split()[0])
    return 32000


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

    @property
    def runtime(self) -> int:
        """Everything but the weights."""
        return self.total - self.weights


def estimate(geom: Geometry, weights: int, n_ctx: int, *, expert_weights: int = 0,
             n_batch: int = 512) -> Estimate:
    n_ubatch = min(n_ctx, n_batch)
    return Estimate(
        n_ctx=n_ctx,
        weights=weights,
        expert_weights=expert_weights,
        kv_cache=geom.kv_bytes_per_token() * n_ctx,
        compute=4 * n_ubatch * (geom.n_vocab + 2 * geom.n_embd),
        output=4 * geom.n_vocab,
    )


def registry_expert_bytes(entry: RegistryEntry, source: QuantSource) -> int:
    """Routed-expert share of a quant's bytes, from the parameter counts (before download)."""
    s = entry.shape
    if not s.is_moe:
        return 0
    expert_params = (s.n_layers - s.n_dense_layers) * s.n_experts * 3 * s.n_embd * s.expert_ff
    return int(source.size * min(expert_params / entry.params_total, 0.99))


def estimate_registry(entry: RegistryEntry, source: QuantSource, n_ctx: int) -> Estimate:
    return estimate(Geometry.from_shape(entry.shape), source.size, n_ctx,
                    expert_weights=registry_expert_bytes(entry, source))


def estimate_gguf(info, n_ctx: int) -> Estimate:
    """From a `gguf_info.GgufInfo` (exact weights from the tensor table)."""
    return estimate(Geometry.from_gguf(info), info.tensor_bytes, n_ctx, expert_weights=info.expert_bytes)


# ------------------------------------------------------------------------------------------
# Verdicts

GPU, EXPERTS_OFFLOADED, PARTIAL, CPU, NO = "gpu", "gpu+experts in RAM", "gpu+cpu layers", "cpu", "no"


@dataclass(frozen=True)
class Fit:
    mode: str          # one of the verdict names above
    max_ctx: int       # largest context (multiple of CTX_STEP, <= the model's) that fits; 0 for "no"
    estimate: Estimate # at max_ctx (or at the smallest context for "no")
    gpu_bytes: int
    ram_bytes: int


def _max_ctx(per_token: int, budget: int, limit: int) -> int:
    if per_token <= 0:
        return limit
    n = budget // per_token
    return min(limit, (n // CTX_STEP) * CTX_STEP)


def plan(est_at, geom: Geometry, context_limit: int, *, ram: int, vram: int) -> Fit:
    """Best placement for a model on a machine with `ram` and `vram` bytes free.

    `est_at(n_ctx)` gives the Estimate at a context length. Order of preference: all on the
    GPU; GPU with routed experts in RAM (MoE); layers split GPU/CPU; CPU only; no.
    """
    base = est_at(CTX_STEP)
    per_tok = geom.kv_bytes_per_token()
    fixed_runtime = base.runtime - base.kv_cache
    vram_budget = max(vram - GPU_RESERVE, 0)
    if vram_budget:
        n = _max_ctx(per_tok, vram_budget - base.weights - fixed_runtime, context_limit)
        if n >= CTX_STEP:
            e = est_at(n)
            return Fit(GPU, n, e, e.total, 0)
        if base.expert_weights and base.expert_weights <= ram:
            hot = base.weights - base.expert_weights
            n = _max_ctx(per_tok, vram_budget - hot - fixed_runtime, context_limit)
            if n >= CTX_STEP:
                e = est_at(n)
                return Fit(EXPERTS_OFFLOADED, n, e, e.total - e.expert_weights, e.expert_weights)
        n = _max_ctx(per_tok, vram_budget + ram - base.weights - fixed_runtime, context_limit)
        if n >= CTX_STEP and vram_budget > fixed_runtime + per_tok * CTX_STEP:
            e = est_at(n)
            on_gpu = vram_budget
            return Fit(PARTIAL, n, e, on_gpu, e.total - on_gpu)
    n = _max_ctx(per_tok, ram - base.weights - fixed_runtime, context_limit)
    if n >= CTX_STEP:
        e = est_at(n)
        return Fit(CPU, n, e, 0, e.total)
    return Fit(NO, 0, base, 0, base.total)
