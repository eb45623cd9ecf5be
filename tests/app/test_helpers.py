"""The app's small pieces outside the widgets: keymap file, attachments, header line and the
thread switch interval while the app runs."""

from __future__ import annotations

import sys

import pytest

from edgeds.app import quick_thread_switches
from edgeds.app.attachments import MAX_ATTACHMENT_CHARS, file_summary, read_attachment, with_file
from edgeds.app.header import engine_line
from edgeds.app.keymap import load_keymap
from edgeds.errors import EdgedsError
from edgeds.runtime import Engine


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


def test_header_line_shows_the_engines_placement_when_it_has_one(smollm2_path):
    with Engine(smollm2_path, n_ctx=512, placement="CPU only: all 30 layers on CPU") as engine:
        assert engine_line(engine, 128) == (
            f"{engine.name} · Q4_1 · CPU only: all 30 layers on CPU · ctx 128/512 (25%)")
        engine.placement = ""
        assert engine_line(engine, 0) == f"{engine.name} · Q4_1 · ctx 0/512 (0%)"
