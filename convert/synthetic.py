"""Header-only GGUFs of registry models: the real tensor names, shapes and hyperparameters, and no
data. The file is sparse (the tensor data reads as zeros and takes no disk), so llama.cpp's
quantizer can plan a recipe on DeepSeek-R1's 1.3 TB tensor table in a second, before anything is
downloaded (`edgeds quantize r1 moe-iq1 --dry-run`), and tests and benchmarks get files of the
real shapes.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from edgeds.errors import ConversionError
from edgeds.machine.tensors import is_f32, tensor_bytes, tensor_shapes

# registry shape field → GGUF key (under the architecture's prefix), for the keys llama.cpp needs
_COMMON_KEYS = {"n_layers": "block_count", "n_embd": "embedding_length", "n_ff": "feed_forward_length",
                "n_head": "attention.head_count", "n_head_kv": "attention.head_count_kv", "n_vocab": "vocab_size"}
_MLA_KEYS = {"kv_lora_rank": "attention.kv_lora_rank", "q_lora_rank": "attention.q_lora_rank",
             "qk_rope_head_dim": "rope.dimension_count", "n_experts": "expert_count",
             "n_experts_used": "expert_used_count", "n_shared_experts": "expert_shared_count",
             "expert_ff": "expert_feed_forward_length", "n_dense_layers": "leading_dense_block_count"}


def write_header_only(path: str | os.PathLike[str], entry, *, dtype: str = "BF16", copy_from=None) -> Path:
    """A sparse GGUF of registry `entry`'s tensor table (an entry's architecture, shape,
    context_length and id), its matrices typed `dtype` (BF16, F16, Q4_0, ...), with the keys of
    `copy_from` (a `catalog.gguf.GgufFile` read with arrays, e.g. a vocabulary) added."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFWriter

    arch, s = entry.architecture, entry.shape
    if arch not in ("llama", "qwen2", "qwen3", "deepseek2"):
        raise ConversionError(f"{entry.id}: no header-only layout for architecture {arch!r}")
    path = Path(path)
    writer = GGUFWriter(path, arch)
    if copy_from is not None:
        from edgeds.convert.layout import copy_metadata

        copy_metadata(copy_from, writer, skip=lambda key: key.startswith((f"{arch}.", "edgeds.", "split.")))
    keys = {**_COMMON_KEYS, **(_MLA_KEYS if arch == "deepseek2" else {})}
    for field, key in keys.items():
        value = getattr(s, field, None)
        if value is not None:
            writer.add_uint32(f"{arch}.{key}", 1 if arch == "deepseek2" and field == "n_head_kv" else int(value))
    writer.add_uint32(f"{arch}.context_length", entry.context_length)
    writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
    writer.add_float32(f"{arch}.rope.freq_base", 10000.0)
    if arch == "deepseek2":  # MLA runs as MQA over the latent, as the converter writes it
        rope, v = s.qk_rope_head_dim, s.head_dim_v or s.head_dim
        writer.add_uint32(f"{arch}.attention.key_length", s.kv_lora_rank + rope)
        writer.add_uint32(f"{arch}.attention.value_length", s.kv_lora_rank)
        writer.add_uint32(f"{arch}.attention.key_length_mla", s.head_dim)
        writer.add_uint32(f"{arch}.attention.value_length_mla", v)
        writer.add_uint32(f"{arch}.expert_gating_func", 2 if s.q_lora_rank else 1)
        writer.add_float32(f"{arch}.expert_weights_scale", 2.5 if s.q_lora_rank else 1.0)
        writer.add_bool(f"{arch}.expert_weights_norm", bool(s.q_lora_rank))
    for name, dims in tensor_shapes(arch, s):
        kind = "F32" if is_f32(name, dims) else dtype.upper()
        writer.add_tensor_info(name, tuple(reversed(dims)), np.dtype(np.float32), tensor_bytes(dims, kind),
                               raw_dtype=GGMLQuantizationType[kind])  # gguf-py takes numpy order
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    align = writer.data_alignment
    data_bytes = sum(-(-info.nbytes // align) * align for info in writer.tensors[0].values())
    out = writer.fout[0]
    out.truncate(-(-out.tell() // align) * align + data_bytes)  # sparse: the data reads as zeros, takes no disk
    writer.close()
    return path


def plan_registry_quantization(spec: str, recipe):
    """llama.cpp's dry run of `recipe` on a registry model's header-only GGUF (nothing downloaded)."""
    from edgeds.catalog.resolve import find
    from edgeds.convert.quantize import plan_quantization

    entry, _ = find(spec)
    with tempfile.TemporaryDirectory(prefix="edgeds-header-") as folder:
        path = write_header_only(Path(folder) / f"{entry.id}-header-only.gguf", entry)
        return plan_quantization(path, recipe)
