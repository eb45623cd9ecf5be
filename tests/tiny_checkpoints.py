"""Tiny dense HF checkpoints (Qwen2, Llama with llama3 rope scaling, Qwen3) around the real tokenizers.

Each is a transformers model of width 64 and two layers with random weights from a fixed seed,
saved with `save_pretrained` (float32 safetensors) next to a real tokenizer from ../shared/fixtures:
the R1-distill-Qwen tokenizer for Qwen2/Qwen3, Meta's Llama 3 tokenizer for Llama. Vocabularies are
the real configs' sizes (151936 for R1-Distill-Qwen-1.5B, which pads the tokenizer's 151665 ids;
128256 for Llama 3). A build takes about a second. Weights are scaled so logits spread
(transformers' 0.02 init makes them nearly flat, and then top-1 agreement would prove nothing).
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

FIXTURES = Path(os.environ.get("EDGEDS_FIXTURES", Path(__file__).resolve().parents[2] / "shared" / "fixtures"))
R1_QWEN_TOKENIZER = FIXTURES / "deepseek-r1-distill-qwen-tokenizer"
LLAMA3_TOKENIZER = FIXTURES / "llama3-tokenizer"

COMMON = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-6)

QWEN2 = dict(COMMON, vocab_size=151936, max_position_embeddings=131072, rope_theta=10000.0,
             bos_token_id=151646, eos_token_id=151643, tie_word_embeddings=False)
QWEN3 = dict(COMMON, vocab_size=151936, head_dim=32,  # head_dim × heads ≠ hidden: key_length must be written
             max_position_embeddings=131072, rope_theta=1000000.0, bos_token_id=151646,
             eos_token_id=151643, tie_word_embeddings=True)
# Llama 3.1 rope scaling with a short original context (64 instead of 8192), so that at the test's
# prompt lengths most frequencies are divided by `factor` and one is blended: a wrong or missing
# rope_freqs tensor changes the logits.
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 64}
LLAMA = dict(COMMON, vocab_size=128256, max_position_embeddings=131072, rope_theta=500000.0,
             bos_token_id=128000, eos_token_id=128001, tie_word_embeddings=False)


def _randomize(model, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen, dtype=torch.float32)
            if param.ndim == 1 and name.endswith("norm.weight"):
                param.copy_(1.0 + 0.1 * noise)
            elif param.ndim == 1:  # biases
                param.copy_(0.1 * noise)
            elif "embed_tokens" in name:
                param.copy_(noise)
            else:
                param.copy_(noise / math.sqrt(param.shape[-1]))


def _build(folder: Path, config, tokenizer: Path, seed: int) -> Path:
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    _randomize(model, seed)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(tokenizer / name, folder / name)
    return folder


def build_qwen2(folder: Path, **overrides) -> Path:
    """Tiny Qwen2ForCausalLM (q/k/v biases, GQA) with the real R1-Distill-Qwen tokenizer."""
    from transformers import Qwen2Config

    return _build(folder, Qwen2Config(**{**QWEN2, **overrides}), R1_QWEN_TOKENIZER, seed=2)


def build_qwen3(folder: Path, **overrides) -> Path:
    """Tiny Qwen3ForCausalLM (q/k norms, explicit head_dim, tied embeddings) with the R1-Distill-Qwen tokenizer."""
    from transformers import Qwen3Config

    return _build(folder, Qwen3Config(**{**QWEN3, **overrides}), R1_QWEN_TOKENIZER, seed=3)


def build_llama(folder: Path, **overrides) -> Path:
    """Tiny LlamaForCausalLM with llama3 rope scaling and the real Llama 3 tokenizer."""
    from transformers import LlamaConfig

    config = LlamaConfig(**{**LLAMA, **overrides}, rope_parameters=dict(LLAMA3_ROPE, rope_theta=LLAMA["rope_theta"]))
    return _build(folder, config, LLAMA3_TOKENIZER, seed=1)


def reshard(source: Path, target: Path, shards: int = 2) -> Path:
    """Copy a single-file checkpoint as `shards` safetensors files plus model.safetensors.index.json."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    for item in Path(source).iterdir():
        if item.is_file() and not item.name.endswith(".safetensors") and item.name != "model.safetensors.index.json":
            shutil.copyfile(item, target / item.name)
    with safe_open(str(Path(source) / "model.safetensors"), "np") as f:
        names = list(f.keys())
        per = -(-len(names) // shards)
        weight_map, total = {}, 0
        for i in range(shards):
            file = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {n: f.get_tensor(n) for n in names[i * per:(i + 1) * per]}
            save_file(part, str(target / file), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(part, file))
            total += sum(a.nbytes for a in part.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (target / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return target
