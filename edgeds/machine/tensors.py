"""A model's tensor table before any file exists: the names and shapes llama.cpp's GGUF files
have for a registry model, and their bytes under a set of tensor types.

`edgeds fit` sizes a registry model under a quant recipe with it, the placement plan lays out a
model that is not downloaded, and the tests write header-only GGUFs of DeepSeek-R1's real shapes
from it. Shapes are in GGUF order (the row length, ne0, first).
"""

from __future__ import annotations

from typing import Callable, Iterator

Dims = tuple[int, ...]
F32_TENSORS = ("norm.weight", "_norm.weight", ".bias", "ffn_gate_inp.weight", "exp_probs_b")

# llama.cpp's fallbacks for a row length its block size does not divide (llama-quant.cpp)
FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0",
            "iq1_s": "q4_0", "iq1_m": "q4_0", "iq2_xxs": "q4_0", "iq2_xs": "q4_0", "iq2_s": "q4_0",
            "iq3_xxs": "q4_0", "iq3_s": "q4_0", "iq4_xs": "iq4_nl"}
HOT_TYPE_OF_PUBLISHED = "q4_k"  # published dynamic quants keep attention and shared tensors near 4.5 bits


def tensor_shapes(architecture: str, shape) -> Iterator[tuple[str, Dims]]:
    """(GGUF name, dims) of every tensor of a model with registry `shape` (a catalog.registry.Shape)."""
    s = shape
    yield "token_embd.weight", (s.n_embd, s.n_vocab)
    for i in range(s.n_layers):
        p = f"blk.{i}."
        yield p + "attn_norm.weight", (s.n_embd,)
        if architecture == "deepseek2":
            yield from _mla_attention(p, s)
        else:
            yield from _attention(p, s, architecture)
        yield p + "ffn_norm.weight", (s.n_embd,)
        if s.n_experts and i >= s.n_dense_layers:
            yield from _moe_ffn(p, s)
        else:
            yield p + "ffn_gate.weight", (s.n_embd, s.n_ff)
            yield p + "ffn_up.weight", (s.n_embd, s.n_ff)
            yield p + "ffn_down.weight", (s.n_ff, s.n_embd)
    yield "output_norm.weight", (s.n_embd,)
    yield "output.weight", (s.n_embd, s.n_vocab)


def _attention(p: str, s, architecture: str) -> Iterator[tuple[str, Dims]]:
    q, kv = s.n_head * s.head_dim, s.n_head_kv * s.head_dim
    yield p + "attn_q.weight", (s.n_embd, q)
    yield p + "attn_k.weight", (s.n_embd, kv)
    yield p + "attn_v.weight", (s.n_embd, kv)
    if architecture == "qwen2":
        yield p + "attn_q.bias", (q,)
        yield p + "attn_k.bias", (kv,)
        yield p + "attn_v.bias", (kv,)
    if architecture == "qwen3":
        yield p + "attn_q_norm.weight", (s.head_dim,)
        yield p + "attn_k_norm.weight", (s.head_dim,)
    yield p + "attn_output.weight", (q, s.n_embd)


def _mla_attention(p: str, s) -> Iterator[tuple[str, Dims]]:
    rope, kv_lora, v = s.qk_rope_head_dim, s.kv_lora_rank, s.head_dim_v or s.head_dim
    nope = s.head_dim - rope
    if s.q_lora_rank:
        yield p + "attn_q_a.weight", (s.n_embd, s.q_lora_rank)
        yield p + "attn_q_a_norm.weight", (s.q_lora_rank,)
        yield p + "attn_q_b.weight", (s.q_lora_rank, s.n_head * s.head_dim)
    else:
        yield p + "attn_q.weight", (s.n_embd, s.n_head * s.head_dim)
    yield p + "attn_kv_a_mqa.weight", (s.n_embd, kv_lora + rope)
    yield p + "attn_kv_a_norm.weight", (kv_lora,)
    yield p + "attn_k_b.weight", (nope, kv_lora, s.n_head)
    yield p + "attn_v_b.weight", (kv_lora, v, s.n_head)
    yield p + "attn_output.weight", (s.n_head * v, s.n_embd)


def _moe_ffn(p: str, s) -> Iterator[tuple[str, Dims]]:
    yield p + "ffn_gate_inp.weight", (s.n_embd, s.n_experts)
    if s.q_lora_rank:  # V3/R1 route with sigmoid scores and a per-expert bias
        yield p + "exp_probs_b.bias", (s.n_experts,)
    shared = s.expert_ff * s.n_shared_experts
    if shared:
        yield p + "ffn_gate_shexp.weight", (s.n_embd, shared)
        yield p + "ffn_up_shexp.weight", (s.n_embd, shared)
        yield p + "ffn_down_shexp.weight", (shared, s.n_embd)
    yield p + "ffn_gate_exps.weight", (s.n_embd, s.expert_ff, s.n_experts)
    yield p + "ffn_up_exps.weight", (s.n_embd, s.expert_ff, s.n_experts)
    yield p + "ffn_down_exps.weight", (s.expert_ff, s.n_embd, s.n_experts)


def is_f32(name: str, dims: Dims) -> bool:
    """Tensors llama.cpp never quantizes: 1-D ones (norms, biases) and the MoE router."""
    return len(dims) == 1 or name.endswith(F32_TENSORS)


def tensor_bytes(dims: Dims, ggml_type: str) -> int:
    """Bytes of a tensor of `dims` stored as `ggml_type` (a gguf-py GGMLQuantizationType name,
    any case), with llama.cpp's fallback where the row length does not fit the type's blocks."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    kind = ggml_type.lower()
    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[kind.upper()]]
    if dims[0] % block and kind in FALLBACK:
        return tensor_bytes(dims, FALLBACK[kind])
    n = 1
    for d in dims:
        n *= d
    return n // block * size


def sized(shapes, type_for: Callable[[str], str]) -> list[tuple[str, int]]:
    """(name, bytes) of each tensor, with `type_for(name)` the type of every quantized one."""
    return [(name, tensor_bytes(dims, "f32" if is_f32(name, dims) else type_for(name))) for name, dims in shapes]


def sized_like_published(shapes, total_bytes: int) -> list[tuple[str, int]]:
    """(name, bytes) for a published file of `total_bytes` whose per-tensor types are not known:
    the tensors every token reads at HOT_TYPE_OF_PUBLISHED, the routed experts sharing the rest."""
    from edgeds.catalog.gguf import expert_layer

    shapes = list(shapes)
    experts = [(n, d) for n, d in shapes if expert_layer(n) is not None]
    if not experts:  # a dense model: every tensor at the file's average bits per weight
        return _scaled(shapes, total_bytes)
    hot = sized([(n, d) for n, d in shapes if expert_layer(n) is None], lambda _: HOT_TYPE_OF_PUBLISHED)
    return hot + _scaled(experts, max(total_bytes - sum(b for _, b in hot), 0))


def _scaled(shapes, total_bytes: int) -> list[tuple[str, int]]:
    """`total_bytes` shared among the tensors in proportion to their elements."""
    elements = [_elements(d) for _, d in shapes]
    scale = total_bytes / max(sum(elements), 1)
    return [(n, int(e * scale)) for (n, _), e in zip(shapes, elements)]


def _elements(dims: Dims) -> int:
    n = 1
    for d in dims:
        n *= d
    return n
