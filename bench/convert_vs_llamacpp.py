"""Benchmark: `edgeds convert` against llama.cpp's own converter (convert_hf_to_gguf.py).

Builds (once, cached) a Qwen2.5-0.5B-shaped random BF16 checkpoint in two safetensors shards with
an index, around the real R1-Distill-Qwen tokenizer, then converts it to F16 with each tool in a
fresh process, alternating, `--runs` times. Reports the median wall time and the median peak RSS
(the child's ru_maxrss, measured by a small wrapper process around each run).

    python bench/convert_vs_llamacpp.py [--llama-cpp /path/to/llama.cpp] [--runs 3] [--work DIR]

llama.cpp's converter needs its own gguf-py: it runs with PYTHONPATH=<llama.cpp>/gguf-py and the
same Python interpreter (which must have torch, transformers and sentencepiece/tokenizers).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_LLAMA_CPP = Path("/work/sdist/llama_cpp_python-0.3.36/vendor/llama.cpp")
TOKENIZER = Path(os.environ.get("EDGEDS_FIXTURES", REPO.parent / "shared" / "fixtures")) / "deepseek-r1-distill-qwen-tokenizer"

# Qwen2.5-0.5B's shape (R1-Distill-Qwen-1.5B's tokenizer and vocabulary size)
CONFIG = {
    "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
    "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
    "max_position_embeddings": 32768, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "tie_word_embeddings": True,
    "hidden_act": "silu", "bos_token_id": 151646, "eos_token_id": 151643, "torch_dtype": "bfloat16",
}

# Runs a command and prints its wall time and peak RSS (only this wrapper's one child counts).
WRAPPER = """
import json, resource, subprocess, sys, time
t = time.perf_counter()
rc = subprocess.call(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
wall = time.perf_counter() - t
print(json.dumps({"rc": rc, "wall_s": wall, "peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def _tensors(cfg: dict) -> list[tuple[str, tuple[int, ...]]]:
    h, ff, layers = cfg["hidden_size"], cfg["intermediate_size"], cfg["num_hidden_layers"]
    kv = h // cfg["num_attention_heads"] * cfg["num_key_value_heads"]
    out = [("model.embed_tokens.weight", (cfg["vocab_size"], h))]
    for i in range(layers):
        p = f"model.layers.{i}."
        out += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                (p + "self_attn.q_proj.bias", (h,)), (p + "self_attn.k_proj.weight", (kv, h)),
                (p + "self_attn.k_proj.bias", (kv,)), (p + "self_attn.v_proj.weight", (kv, h)),
                (p + "self_attn.v_proj.bias", (kv,)), (p + "self_attn.o_proj.weight", (h, h)),
                (p + "post_attention_layernorm.weight", (h,)), (p + "mlp.gate_proj.weight", (ff, h)),
                (p + "mlp.up_proj.weight", (ff, h)), (p + "mlp.down_proj.weight", (h, ff))]
    return out + [("model.norm.weight", (h,))]


def _random_bf16(shape: tuple[int, ...], rng: np.random.Generator) -> bytes:
    x = rng.standard_normal(shape, dtype=np.float32) * 0.02
    return (x.view(np.uint32) >> 16).astype("<u2").tobytes()


def build_checkpoint(folder: Path) -> Path:
    """Two BF16 shards + index + config + tokenizer, written tensor by tensor (cached by a stamp file)."""
    stamp = folder / ".complete"
    if stamp.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    tensors = _tensors(CONFIG)
    half = len(tensors) // 2
    weight_map = {}
    for i, part in enumerate((tensors[:half], tensors[half:]), start=1):
        file = f"model-{i:05d}-of-00002.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for name, shape in part:
            size = 2 * int(np.prod(shape))
            header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
            weight_map[name] = file
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / file, "wb") as f:
            f.write(len(raw).to_bytes(8, "little") + raw)
            for name, shape in part:
                f.write(_random_bf16(shape, rng))
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(CONFIG, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copyfile(TOKENIZER / name, folder / name)
    stamp.touch()
    return folder


def measure(cmd: list[str], env: dict[str, str]) -> dict:
    result = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], env=env, capture_output=True, text=True, check=True)
    data = json.loads(result.stdout)
    if data["rc"] != 0:
        raise SystemExit(f"failed (exit {data['rc']}): {' '.join(cmd)}")
    return data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--llama-cpp", type=Path, default=DEFAULT_LLAMA_CPP)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "edgeds-bench-convert")
    args = parser.parse_args()

    source = build_checkpoint(args.work / "qwen2-0.5b-bf16")
    params = sum(int(np.prod(s)) for _, s in _tensors(CONFIG))
    for shard in source.glob("*.safetensors"):  # the page cache holds the source for every run alike
        with open(shard, "rb") as f:
            while f.read(64 << 20):
                pass
    out_dir = args.work / "out"
    out_dir.mkdir(exist_ok=True)
    env = dict(os.environ)
    tools = {
        "llama.cpp convert_hf_to_gguf.py": (
            [sys.executable, str(args.llama_cpp / "convert_hf_to_gguf.py"), str(source), "--outfile",
             str(out_dir / "llamacpp.gguf"), "--outtype", "f16"],
            dict(env, PYTHONPATH=str(args.llama_cpp / "gguf-py")),
            out_dir / "llamacpp.gguf",
        ),
        "edgeds convert": (
            [sys.executable, "-m", "edgeds", "convert", str(source), "-o", str(out_dir / "edgeds.gguf"),
             "--outtype", "f16", "--no-progress"],
            env,
            out_dir / "edgeds.gguf",
        ),
    }
    results: dict[str, list[dict]] = {name: [] for name in tools}
    for run in range(args.runs):
        for name, (cmd, tool_env, out) in tools.items():
            results[name].append(measure(cmd, tool_env))
            size = out.stat().st_size
            out.unlink()
            print(f"run {run + 1}: {name}: {results[name][-1]['wall_s']:.2f} s, "
                  f"{results[name][-1]['peak_rss_mib']:.0f} MiB, output {size / 2**20:.0f} MiB", file=sys.stderr)

    print(f"\nQwen2-shaped BF16 checkpoint, {params / 1e6:.0f}M parameters in 2 shards → F16 GGUF; "
          f"median of {args.runs} runs, {os.cpu_count()} CPUs\n")
    print("| converter | wall time (s) | peak RSS (MiB) |")
    print("|---|---|---|")
    medians = {}
    for name, runs in results.items():
        medians[name] = (statistics.median(r["wall_s"] for r in runs), statistics.median(r["peak_rss_mib"] for r in runs))
        print(f"| {name} | {medians[name][0]:.2f} | {medians[name][1]:.0f} |")
    (ref_t, ref_m), (ours_t, ours_m) = medians.values()
    print(f"| ratio edgeds / llama.cpp | {ours_t / ref_t:.2f}× | {ours_m / ref_m:.2f}× |")


if __name__ == "__main__":
    main()
