"""The app's small pieces outside the widgets: keymap file, attachments, header line, the
model switcher's choices and the thread switch interval while the app runs."""

from __future__ import annotations

import sys

import pytest

from edgeds.app import quick_thread_switches
from edgeds.app.attachments import MAX_ATTACHMENT_CHARS, file_summary, read_attachment, with_file
from edgeds.app.header import context_line, engine_line, model_label
from edgeds.app.keymap import load_keymap
from edgeds.app.model_choices import MAX_RECENT, ModelChoice, downloaded_models, recent_models, remember_model
from edgeds.catalog import local
from edgeds.catalog.registry import load_registry
from edgeds.errors import EdgedsError
from edgeds.runtime import Engine
from tests.app.support import cache_quant


def test_switch_interval_is_short_inside_and_restored_after():
    before = sys.getswitchinterval()
    with quick_thread_switches():
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    assert sys.getswitchinterval() == before


def test_keymap_file_is_optional_and_its_errors_name_it(tmp_path):
    path = tmp_path / "keymap.toml"
    assert load_keymap(path) == {}
    path.write_text('[keymap]\n"chat.cancel" = "ctrl+c"\n')
    assert load_keymap(path) == {"chat.cancel": "ctrl+c"}
    path.write_text("[keymap\n")
    with pytest.raises(EdgedsError, match="keymap.toml: cannot read the keymap"):
        load_keymap(path)
    path.write_text('[keymap]\n"chat.cancel" = 3\n')
    with pytest.raises(EdgedsError, match=r"keymap.toml: \[keymap\] must map binding ids to key strings"):
        load_keymap(path)


def test_attachments_are_short_utf8_text(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("alpha\nbeta\n")
    assert read_attachment(notes) == ("notes.txt", "alpha\nbeta")
    assert file_summary(with_file("notes.txt", "alpha\nbeta", "Why?")) == "📎 notes.txt (2 lines)\nWhy?"
    assert file_summary("no file here") == "no file here"
    (tmp_path / "blob.bin").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "big.txt").write_text("x" * (MAX_ATTACHMENT_CHARS + 1))
    for name, error in [("blob.bin", "not a UTF-8 text file"), ("big.txt", "too long to attach"),
                        ("missing.txt", "No such file or directory")]:
        with pytest.raises(EdgedsError, match=f"{name}: .*{error}"):
            read_attachment(tmp_path / name)


def test_header_line_names_the_model_as_opened_and_its_placement(smollm2_path):
    with Engine(smollm2_path, n_ctx=512, placement="CPU only: all 30 layers on CPU") as engine:
        assert engine_line(engine) == f"{smollm2_path.name} · Q4_1 · CPU only: all 30 layers on CPU"
        assert engine_line(engine, "r1-distill-qwen-7b") == "r1-distill-qwen-7b · Q4_1 · CPU only: all 30 layers on CPU"
        assert context_line(engine, 128) == "ctx 128/512 (25%)"
        engine.placement = ""
        assert engine_line(engine) == f"{smollm2_path.name} · Q4_1"


def test_model_label_is_the_file_name_or_the_id_as_given(smollm2_path):
    assert model_label(str(smollm2_path)) == smollm2_path.name
    assert model_label("~/models/gone.gguf") == "gone.gguf"
    assert model_label("r1-distill-qwen-7b:Q8_0") == "r1-distill-qwen-7b:Q8_0"


def test_recent_models_newest_first_without_vanished_files(smollm2_path, tmp_path):
    recent = tmp_path / "recent.json"
    assert recent_models(recent) == []
    gone = tmp_path / "gone.gguf"
    gone.write_bytes(b"GGUF")
    for spec in (str(gone), "r1-distill-qwen-7b", str(smollm2_path), "r1-distill-qwen-7b"):
        remember_model(spec, recent)
    assert recent_models(recent) == ["r1-distill-qwen-7b", str(smollm2_path), str(gone)]
    gone.unlink()
    assert recent_models(recent) == ["r1-distill-qwen-7b", str(smollm2_path)]
    for i in range(2 * MAX_RECENT):
        remember_model(f"model-{i}", recent)
    assert len(recent_models(recent)) == MAX_RECENT and recent_models(recent)[0] == f"model-{2 * MAX_RECENT - 1}"
    recent.write_text("{not json")
    assert recent_models(recent) == []


def test_downloaded_models_are_added_ones_and_registry_quants_in_the_hub_cache(smollm2_path, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("EDGEDS_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    assert downloaded_models() == []
    entry = load_registry().get("r1-distill-qwen-7b")
    cache_quant(tmp_path / "hub", entry.quants["Q4_K_M"], smollm2_path)
    local.add([smollm2_path], "my-smol", "default")  # `edgeds add`
    size = f"{smollm2_path.stat().st_size / 1e9:.2f} GB"
    assert downloaded_models() == [ModelChoice("my-smol:default", f"added · {size}"),
                                   ModelChoice("r1-distill-qwen-7b:Q4_K_M", f"downloaded · {size}")]
