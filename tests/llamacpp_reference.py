"""llama.cpp's own converter (convert_hf_to_gguf.py), as a test oracle: a GGUF made the way the
published GGUFs are made, not by edgeds' converter.

The llama-cpp-python sdist vendors llama.cpp at the commit the runtime is built from, converter
and gguf-py included (../shared/research/verified-here.md, "Building"). `converter_dir` finds
it in a cache folder or fetches it from PyPI with pip (a registry download of the source package,
about 75 MB, once per cache folder; no model is downloaded) and unpacks only the converter.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(os.environ.get("EDGEDS_TEST_CACHE", Path.home() / ".cache" / "edgeds-test"))
CONVERTER_PARTS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/")


def sdist_version() -> str:
    """The llama-cpp-python this runtime is built from: its converter matches the runtime."""
    return importlib.metadata.version("llama-cpp-python")


def converter_dir(cache: Path = CACHE) -> Path:
    """`vendor/llama.cpp` of the llama-cpp-python sdist, with the converter and gguf-py only."""
    version = sdist_version()
    root = cache / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if (root / "convert_hf_to_gguf.py").is_file() and (root / ".complete").is_file():
        return root
    cache.mkdir(parents=True, exist_ok=True)
    archive = cache / f"llama_cpp_python-{version}.tar.gz"
    if not archive.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(cache)], check=True, capture_output=True, text=True)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(archive) as tar:
        wanted = [m for m in tar.getmembers()
                  if m.name.startswith(prefix) and m.name[len(prefix):].startswith(CONVERTER_PARTS)]
        safe = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}  # Python < 3.10.12 has no filters
        tar.extractall(cache, members=wanted, **safe)
    (root / ".complete").write_text("")
    return root


def convert_reference(hf_dir: Path, out: Path, *, model_name: str, outtype: str = "f32") -> Path:
    """Convert `hf_dir` with llama.cpp's converter into `out` (general.name = `model_name`).

    The converter imports sentencepiece before it looks for a tokenizer.model; these checkpoints
    have none (BPE tokenizer.json), so where sentencepiece is not installed a stub stands in and
    the converter takes its BPE path, as it does with the real package.
    """
    root = converter_dir()
    paths = [str(root / "gguf-py")]
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        stub = out.parent / "sentencepiece-stub"
        stub.mkdir(exist_ok=True)
        (stub / "sentencepiece.py").write_text("class SentencePieceProcessor:\n    pass\n")
        paths.append(str(stub))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(paths))
    result = subprocess.run([sys.executable, str(root / "convert_hf_to_gguf.py"), str(hf_dir), "--outtype", outtype,
                             "--outfile", str(out), "--model-name", model_name],
                            env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"llama.cpp's converter failed:\n{result.stderr[-3000:]}")
    return out
