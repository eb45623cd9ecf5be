"""Qwen2 checkpoints written with numpy alone (no torch, no transformers), in milliseconds.

For the tests that damage a checkpoint or need one of a given size rather than one whose logits
mean anything: random float32 weights, a config.json, and a byte-level BPE tokenizer (the 256
GPT-2 byte symbols, two merges, four special tokens) with Qwen2's pre-tokenizer, so the converter
names it `deepseek-r1-qwen` as it does the real R1-Distill-Qwen tokenizer.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from edgeds.convert.tokenizer import _QWEN2_SPLIT

SPECIAL = ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<think>", "</think>"]
MERGES = ["Ġ t", "h e"]
TEMPLATE = ("{{ bos_token }}{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant: <think>\n{% endif %}")


def byte_symbols() -> list[str]:
    """GPT-2's byte → printable character table, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = iter(range(256, 512))
    return [chr(b) if b in printable else chr(next(extra)) for b in range(256)]


def tokenizer_files(folder: Path) -> int:
    """Write tokenizer.json and tokenizer_config.json; returns the number of token ids."""
    vocab = {s: i for i, s in enumerate(byte_symbols())}
    for merge in MERGES:
        vocab["".join(merge.split())] = len(vocab)
    added = [{"id": len(vocab) + i, "content": text, "special": True, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False} for i, text in enumerate(SPECIAL)]
    tokenizer = {
        "version": "1.0", "truncation": None, "padding": None, "added_tokens": added, "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": _QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False, "vocab": vocab,
                  "merges": MERGES},
    }
    config = {"add_bos_token": True, "add_eos_token": False, "bos_token": SPECIAL[0], "eos_token": SPECIAL[1],
              "tokenizer_class": "LlamaTokenizerFast", "chat_template": TEMPLATE}
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False))
    return len(vocab) + len(added)


def qwen2_config(*, hidden: int = 64, ff: int = 128, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                 vocab: int = 264) -> dict:
    return {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": hidden,
            "intermediate_size": ff, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "vocab_size": vocab, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "tie_word_embeddings": False,
            "bos_token_id": 260, "eos_token_id": 261, "torch_dtype": "float32"}


def qwen2_tensors(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Random float32 weights in the shapes `cfg` implies."""
    rng = np.random.default_rng(seed)
    hidden, ff, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    head = hidden // cfg["num_attention_heads"]
    kv = head * cfg["num_key_value_heads"]

    def w(*shape):
        return (rng.standard_normal(shape, dtype=np.float32) / np.sqrt(shape[-1])).astype(np.float32)

    tensors = {"model.embed_tokens.weight": w(vocab, hidden), "model.norm.weight": np.ones(hidden, np.float32),
               "lm_head.weight": w(vocab, hidden)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        tensors.update({
            p + "input_layernorm.weight": np.ones(hidden, np.float32),
            p + "post_attention_layernorm.weight": np.ones(hidden, np.float32),
            p + "self_attn.q_proj.weight": w(hidden, hidden), p + "self_attn.q_proj.bias": w(hidden),
            p + "self_attn.k_proj.weight": w(kv, hidden), p + "self_attn.k_proj.bias": w(kv),
            p + "self_attn.v_proj.weight": w(kv, hidden), p + "self_attn.v_proj.bias": w(kv),
            p + "self_attn.o_proj.weight": w(hidden, hidden),
            p + "mlp.gate_proj.weight": w(ff, hidden), p + "mlp.up_proj.weight": w(ff, hidden),
            p + "mlp.down_proj.weight": w(hidden, ff),
        })
    return tensors


def build_qwen2(folder: Path, *, tensors: dict[str, np.ndarray] | None = None, seed: int = 0, **shape) -> Path:
    """A Qwen2 checkpoint folder: config.json, model.safetensors, the byte-level tokenizer.
    `shape` goes to `qwen2_config`; `tensors` replaces the random weights."""
    from safetensors.numpy import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer_files(folder)
    cfg = qwen2_config(**shape)
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(tensors if tensors is not None else qwen2_tensors(cfg, seed), str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    return folder
