"""Session fixtures for converter tests: tiny dense checkpoints, built once, and their F32 GGUFs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import tiny_checkpoints as tiny

BUILDERS = {"qwen2": tiny.build_qwen2, "llama": tiny.build_llama, "qwen3": tiny.build_qwen3}


@pytest.fixture(scope="session")
def dense_hf(tmp_path_factory):
    """arch → the tiny HF checkpoint folder (built on first use)."""
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = BUILDERS[arch](tmp_path_factory.mktemp(f"hf-{arch}") / f"tiny-{arch}")
        return built[arch]

    return get


@pytest.fixture(scope="session")
def dense_gguf(tmp_path_factory, dense_hf):
    """(arch, outtype) → that checkpoint converted by edgeds (on first use)."""
    from edgeds.convert import convert

    done: dict[tuple[str, str], Path] = {}

    def get(arch: str, outtype: str = "f32") -> Path:
        if (arch, outtype) not in done:
            out = tmp_path_factory.mktemp(f"gguf-{arch}-{outtype}") / f"tiny-{arch}-{outtype}.gguf"
            done[arch, outtype] = convert(dense_hf(arch), out, outtype, progress=False)
        return done[arch, outtype]

    return get
