"""Hostile files get one line and a non-zero exit, never a traceback, an abort or a deletion
outside the cache: GGUF metadata llama.cpp would abort on, a cache link out of the cache, and the
small validation gaps of batch rows, serve requests, the registry, stdin, grammar files and the
chat store. Each test starts from a reproduction in issue 16."""

from __future__ import annotations

import json
import math
import os
import re
import sqlite3
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from edgeds.catalog.gguf import read_gguf
from edgeds.catalog.registry import load_registry, user_registry_path
from edgeds.cli import main
from edgeds.errors import EdgedsError
from edgeds.runtime.params import GenerationParams
from edgeds.serving.batch import OrderedWriter, parse_row, read_rows
from edgeds.store import Store
from tests.test_registry import USER_ENTRY


def write_gguf(path: Path, *, layers: int = 2, arch: str = "llama", extra: dict | None = None) -> Path:
    """A tiny GGUF with gguf-py: `layers` blocks of one F32 norm each, plus any extra typed keys
    (`{key: (value, GGUFValueType)}`)."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(path, arch)
    writer.add_uint32(f"{arch}.block_count", layers)
    writer.add_uint32(f"{arch}.context_length", 256)
    writer.add_uint32(f"{arch}.embedding_length", 32)
    for key, (value, vtype) in (extra or {}).items():
        writer.add_key_value(key, value, vtype)
    writer.add_tensor("token_embd.weight", np.ones((16, 32), np.float32))
    for i in range(layers):
        writer.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(32, np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def patched_u32(source: Path, target: Path, key: str, value: int) -> Path:
    """A copy of `source` with the uint32 metadata `key` set to `value` in place."""
    data = bytearray(source.read_bytes())
    name = key.encode()
    at = data.index(struct.pack("<Q", len(name)) + name) + 8 + len(name)
    assert struct.unpack_from("<I", data, at)[0] == 4  # GGUF_TYPE_UINT32
    struct.pack_into("<I", data, at + 4, value)
    target.write_bytes(bytes(data))
    return target


def run_cli(args: list[str], capsys) -> str:
    """`edgeds ARGS` in this process: it must fail with one line and no traceback."""
    with pytest.raises(SystemExit) as exit_info:
        main([str(a) for a in args])
    assert exit_info.value.code not in (0, None)
    err = capsys.readouterr().err.strip()
    assert err.startswith("edgeds: error: ") and "\n" not in err, err
    return err


def edgeds_process(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgeds", *map(str, args)], input=stdin, capture_output=True,
                          timeout=120)


def one_line_error(result: subprocess.CompletedProcess) -> str:
    err = result.stderr.decode(errors="replace").strip()
    assert result.returncode == 1 or result.returncode == 2, (result.returncode, err)
    assert err.startswith("edgeds: error: ") and "\n" not in err and "Traceback" not in err, err
    return err


# ---------------------------------------------------------------------------------------------
# 7. GGUF metadata is checked before anything is allocated or handed to llama.cpp


@pytest.mark.parametrize("command", [["show"], ["fit"], ["quantize", "{out}", "Q8_0"], ["run", "hi"]])
def test_alignment_zero_is_one_line_in_show_fit_quantize_and_run(tmp_path, capsys, command):
    from gguf import GGUFValueType

    model = write_gguf(tmp_path / "a.gguf", extra={"general.alignment": (0, GGUFValueType.UINT32)})
    args = [command[0], model, *[a.format(out=tmp_path / "out.gguf") for a in command[1:]]]
    err = run_cli(args, capsys)
    assert f"{model}: corrupt GGUF header (general.alignment = 0" in err
    assert not (tmp_path / "out.gguf").exists()


def test_alignment_must_be_a_uint32_power_of_two(tmp_path):
    from gguf import GGUFValueType

    for value, vtype in [(48, GGUFValueType.UINT32), (32, GGUFValueType.UINT64), (-32, GGUFValueType.INT32)]:
        model = write_gguf(tmp_path / "a.gguf", extra={"general.alignment": (value, vtype)})
        with pytest.raises(EdgedsError, match="it must be a uint32 power of two"):
            read_gguf(model)
    assert read_gguf(write_gguf(tmp_path / "b.gguf", extra={"general.alignment": (64, GGUFValueType.UINT32)}))


@pytest.mark.parametrize("block_count", [600, 0xFFFFFFFF, 0])
def test_block_count_out_of_llama_cpp_range(tmp_path, smollm2_path, block_count, capsys):
    """600 made run and quantize abort in llama.cpp (GGML_ASSERT, rc 134); 0xFFFFFFFF made the
    placement build lists that long."""
    from edgeds.machine.placement import plan_placement

    model = patched_u32(smollm2_path, tmp_path / "m.gguf", "llama.block_count", block_count)
    with pytest.raises(EdgedsError, match=rf"llama.block_count = {block_count} is out of range \(1 to 512"):
        plan_placement(model, gpu_free=0)
    err = run_cli(["fit", model], capsys)
    assert "llama.block_count" in err


@pytest.mark.slow  # CLI subprocesses around a real model
def test_block_count_600_fails_run_quantize_bench_and_eval_with_one_line(tmp_path, smollm2_path):
    model = patched_u32(smollm2_path, tmp_path / "m.gguf", "llama.block_count", 600)
    text = tmp_path / "t.txt"
    text.write_text("some text " * 100)
    for args in (["run", model, "hi", "--max-tokens", 1], ["quantize", model, tmp_path / "q.gguf", "Q8_0"],
                 ["bench", model, "-r", 1], ["eval", model, "--ref", smollm2_path, "--text", text]):
        assert "llama.block_count = 600 is out of range" in one_line_error(edgeds_process(*args)), args
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf", "t.txt"]


def test_block_count_must_match_the_layers_in_the_tensor_table(tmp_path, smollm2_path):
    """llama.cpp's quantizer asserts on a layer count that differs from the tensors (n_attention_wv)."""
    model = patched_u32(smollm2_path, tmp_path / "m.gguf", "llama.block_count", 25)
    with pytest.raises(EdgedsError, match="llama.block_count = 25, but the tensor table holds layers 0-29"):
        read_gguf(model)
    from edgeds.convert.quantize import QuantizeError, quantize

    with pytest.raises(QuantizeError, match="block_count = 25"):
        quantize(model, tmp_path / "q.gguf", "Q8_0")
    assert read_gguf(smollm2_path).metadata["llama.block_count"] == 30


def test_expert_counts_llama_cpp_asserts_on(tmp_path):
    """Each of these aborts llama.cpp while it loads the model (GGML_ASSERT on n_expert and
    n_expert_used), whatever the architecture."""
    from gguf import GGUFValueType

    u32 = GGUFValueType.UINT32
    for counts, problem in [((1025, 8), "expert_count = 1025 is out of range (0 to 1024"),
                            ((8, 9), "expert_used_count = 9 does not fit"),
                            ((8, 0), "expert_used_count = 0 does not fit")]:
        model = write_gguf(tmp_path / "e.gguf", extra={"llama.expert_count": (counts[0], u32),
                                                        "llama.expert_used_count": (counts[1], u32)})
        with pytest.raises(EdgedsError, match=re.escape(problem)):
            read_gguf(model)


def raw_gguf(path: Path, kv: list[bytes], tensors: list[tuple[str, list[int], int, int]], data: int = 1024) -> Path:
    """A GGUF written byte by byte: encoded key/values, (name, dims, ggml type, offset) tensors."""
    def string(text: str) -> bytes:
        return struct.pack("<Q", len(text.encode())) + text.encode()

    head = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv)
    for name, dims, kind, offset in tensors:
        head += string(name) + struct.pack(f"<I{len(dims)}QIQ", len(dims), *dims, kind, offset)
    path.write_bytes(head + b"\0" * (-len(head) % 32 + data))
    return path


def _kv(key: str, vtype: int, payload: bytes) -> bytes:
    return struct.pack("<Q", len(key)) + key.encode() + struct.pack("<I", vtype) + payload


@pytest.mark.parametrize("kv, tensors, problem", [
    ([], [("a", [8], 0, 0), ("a", [8], 0, 32)], "tensor 'a' appears twice"),
    ([_kv("k", 4, struct.pack("<I", 1)), _kv("k", 4, struct.pack("<I", 2))], [], "key 'k' appears twice"),
    ([_kv("k", 9, struct.pack("<IQ", 9, 1) + struct.pack("<IQ", 4, 0))], [], "an array of GGUF value type 9"),
    ([], [("a", [8], 0, 4)], "tensor 'a' at offset 4, not a multiple of the alignment 32"),
    ([], [("q", [100, 2], 12, 0)], "rows of 100 do not fill Q4_K blocks of 256"),
    ([], [("x", [1 << 63, 2], 0, 0)], "corrupt GGUF header (tensor 'x': F32"),
    ([], [("x", [8], 4, 0)], "not a readable GGUF file"),  # ggml type 4 (Q4_2) was removed
    ([], [("x", [8, 8, 8, 8, 8], 0, 0)], "tensor 'x' has 5 dimensions"),
    ([_kv("general.architecture", 8, struct.pack("<Q", 6) + b"llama\n")], [], "is not an architecture name"),
    ([_kv("general.architecture", 8, struct.pack("<Q", 5) + b"llama"), _kv("llama.block_count", 4, struct.pack("<I", 1))],
     [("blk.0.a", [8], 0, 0), ("blk.4000000000.a", [8], 0, 32)], "block_count = 1, but the tensor table holds "
                                                               "2 layers up to blk.4000000000"),
])
def test_gguf_structure_llama_cpp_refuses(tmp_path, kv, tensors, problem):
    with pytest.raises(EdgedsError) as err:
        read_gguf(raw_gguf(tmp_path / "x.gguf", kv, tensors))
    assert problem in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------------------------------------
# 9. `edgeds rm` deletes inside the hub cache only


def remove_my_model(capsys) -> str:
    """`edgeds rm my-model:Q4_1` with USER_ENTRY as the user registry; returns its output."""
    user_registry_path().parent.mkdir(parents=True, exist_ok=True)
    user_registry_path().write_text(USER_ENTRY)
    try:
        main(["rm", "my-model:Q4_1"])
    except SystemExit as stop:
        assert stop.code in (0, None)
    finally:
        user_registry_path().unlink()
    return capsys.readouterr().out.strip()


def test_rm_never_follows_a_link_out_of_the_cache(tmp_path, monkeypatch, capsys):
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    repo = cache / "models--me--my-model-GGUF"
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    victim = tmp_path / "precious.txt"
    victim.write_text("not a model")
    link = repo / "snapshots" / commit / "my-model.Q4_1.gguf"
    link.symlink_to(victim)
    assert remove_my_model(capsys) == "deleted my-model:Q4_1 (1 file(s))"
    assert victim.read_text() == "not a model" and not link.is_symlink()

    # the usual layout: a link to ../../blobs/ETAG: link and blob go
    blob = repo / "blobs" / ("ab" * 32)
    blob.parent.mkdir()
    blob.write_bytes(b"GGUF")
    link.symlink_to(os.path.relpath(blob, link.parent))
    assert remove_my_model(capsys) == "deleted my-model:Q4_1 (1 file(s))"
    assert not blob.exists() and not link.is_symlink() and victim.exists()


# ---------------------------------------------------------------------------------------------
# 11. Small validation gaps


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e308"])
def test_batch_rows_and_serve_requests_refuse_non_finite_temperatures(value):
    from edgeds.serving.server import ApiError, parse_request

    row = parse_row(f'{{"prompt": "hi", "temperature": {value}}}', index=0, line=1, defaults=GenerationParams())
    assert row.error is not None and "'temperature'" in row.error and row.messages is None
    with pytest.raises(ApiError) as err:
        parse_request(f'{{"messages": [{{"role": "user", "content": "hi"}}], "temperature": {value}}}'.encode())
    assert err.value.status == 400 and "temperature" in str(err.value)


@pytest.mark.parametrize("change, key", [
    ("max_tokens = 512", "max_tokens = 0"), ("max_tokens = 512", "max_tokens = -5"),
    ("temperature = 0.6", "temperature = nan"), ("temperature = 0.6", "temperature = inf"),
    ("temperature = 0.6", "temperature = 1e308"), ("top_p = 0.95", "top_p = nan"),
])
def test_registry_generation_values_out_of_range(change, key):
    path = user_registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(USER_ENTRY.replace(change, key))
    try:
        with pytest.raises(EdgedsError) as err:
            load_registry()
    finally:
        path.unlink()
    message = str(err.value)
    assert message.startswith(f"{path}:11: entry 'my-model': key 'generation.{key.split()[0]}'"), message
    assert "\n" not in message


@pytest.mark.parametrize("change, problem", [
    (('name = "my-model.Q4_1.gguf"', 'name = "../../../outside.gguf"'), "files[0].name"),
    (('name = "my-model.Q4_1.gguf"', 'name = "/etc/passwd"'), "files[0].name"),
    (('repo = "me/my-model-GGUF"', 'repo = "me/.."'), "quants.Q4_1.repo"),
    (('repo = "me/my-model-GGUF"', 'repo = "/me/x"'), "quants.Q4_1.repo"),
    (('repo = "me/my-model-GGUF"', 'repo = "me/x", revision = "../../../x"'), "quants.Q4_1.revision"),
    (('source = "me/my-model"', 'source = "../me"'), "key 'source'"),
])
def test_registry_refuses_paths_out_of_the_cache(change, problem):
    path = user_registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(USER_ENTRY.replace(*change))
    try:
        with pytest.raises(EdgedsError) as err:
            load_registry()
    finally:
        path.unlink()
    assert str(err.value).startswith(f"{path}:") and problem in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("text, problem", [
    (b"[defaults]\nchat = \"x\xff\"\n", ":2: not UTF-8 text (byte 0xff)"),
    (b"defaults = 3\n", "key 'defaults' must be a table"),
    (b"defaults = [1, 2]\n", "key 'defaults' must be a table"),
    (b"[defaults]\nchat = 7\n", "key 'defaults' must be a table whose 'chat' is a string"),
])
def test_registry_file_and_defaults_errors(text, problem):
    path = user_registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text)
    try:
        with pytest.raises(EdgedsError) as err:
            load_registry()
    finally:
        path.unlink()
    assert str(err.value).startswith(str(path)) and problem in str(err.value)


def test_batch_input_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"id": "a", "prompt": "hi"}\n{"id": "b", "prompt": "ho"}\n')
    rows = read_rows(path, GenerationParams())
    assert [(r.id, r.error) for r in rows] == [("a", None), ("b", None)]


def test_a_line_number_id_that_collides_with_an_explicit_id_says_so(tmp_path):
    """Rows without an id get their line number; a later explicit id equal to it is refused with
    a message that explains where the first one came from (and the same the other way round)."""
    path = tmp_path / "in.jsonl"
    path.write_text('{"prompt": "one"}\n{"id": 1, "prompt": "two"}\n{"id": 4, "prompt": "three"}\n'
                    '{"prompt": "four"}\n{"id": "x", "prompt": "five"}\n{"id": "x", "prompt": "six"}\n')
    rows = read_rows(path, GenerationParams())
    assert [r.error for r in rows[:1] + rows[2:3] + rows[4:5]] == [None, None, None]
    assert rows[1].error == ("line 2: key 'id': 1 repeats the id of line 1 "
                             "(a row without an 'id' gets its line number as its id)")
    assert rows[3].error == ("line 4: key 'id': 4 repeats the id of line 3 "
                             "(a row without an 'id' gets its line number as its id)")
    assert rows[5].error == "line 6: key 'id': 'x' repeats the id of line 5"


def test_batch_output_on_a_full_disk_closes_without_a_traceback(tmp_path):
    """The row write fails with ENOSPC (an EdgedsError); closing, once or twice, must not flush
    the failed row's bytes again and raise an OSError over it."""
    writer = OrderedWriter(tmp_path / "out.jsonl", overwrite=False)
    writer.expect([0])
    writer._out.close()
    writer._out = open("/dev/full", "ab")  # every flush: ENOSPC
    with pytest.raises(EdgedsError, match="cannot write the output"):
        writer.put(0, {"id": 1, "answer": "x"})
    writer.close()
    writer.close()


def test_non_utf8_stdin_prompt_is_one_line(tmp_path):
    result = edgeds_process("run", tmp_path / "none.gguf", stdin=b"caf\xe9 au lait\n")
    assert one_line_error(result) == "edgeds: error: stdin: the prompt is not UTF-8 text (byte 3)"


def test_non_utf8_grammar_file_is_one_line(tmp_path, capsys):
    grammar = tmp_path / "g.gbnf"
    grammar.write_bytes(b'root ::= "caf\xe9"\n')
    err = run_cli(["run", tmp_path / "none.gguf", "hi", "--grammar", grammar], capsys)
    assert err == f"edgeds: error: {grammar}: the grammar is not UTF-8 text (byte 13)"


def test_chat_store_with_bad_json_or_missing_tables(tmp_path):
    path = tmp_path / "chats.db"
    store = Store(path)
    chat = store.create("t")
    store.add(chat.id, "user", "hi")
    message = store.add(chat.id, "assistant", "ho", finish_reason="stop", stats={"ttft_s": 1.0})
    store.db.execute("UPDATE message SET stats = '{not json' WHERE id = ?", (message.id,))
    store.db.commit()
    with pytest.raises(EdgedsError, match=rf"^{path}: message {message.id} has corrupt stats"):
        store.messages(chat.id)
    store.db.execute("UPDATE message SET stats = '[1, 2]' WHERE id = ?", (message.id,))
    store.db.commit()
    with pytest.raises(EdgedsError, match="corrupt stats"):
        store.history(chat.id)
    store.db.execute("DROP TABLE message")
    store.db.commit()
    store.close()
    with pytest.raises(EdgedsError, match=rf"^{path}: cannot open the chat database \(no such table: message\)"):
        Store(path)
    renamed = tmp_path / "renamed.db"
    db = sqlite3.connect(renamed)
    db.executescript("CREATE TABLE conversation (id INTEGER PRIMARY KEY, title TEXT); PRAGMA user_version = 2;")
    db.close()
    with pytest.raises(EdgedsError, match=r"cannot open the chat database \(no such column: model\)"):
        Store(renamed)


def test_json_nested_past_the_recursion_limit_is_an_error_row():
    row = parse_row("[" * 100_000, index=0, line=7, defaults=GenerationParams())
    assert row.error == "line 7: not valid JSON (nested too deeply)"
    assert math.isfinite(json.loads('{"t": 1}')["t"])


# ---------------------------------------------------------------------------------------------
# 5. A Ctrl-C that lands in llama.cpp's log callback is kept, not discarded by ctypes


def test_ctrl_c_inside_the_llama_log_callback_is_raised_after_llama_cpp_returns(capfd):
    """Python runs the SIGINT handler inside the ctypes callback when llama.cpp logs from the main
    thread (loading a model); ctypes printed "Exception ignored ... KeyboardInterrupt" and went on."""
    from edgeds.llamacpp import backend

    def interrupted(message):  # the handler's KeyboardInterrupt, raised inside the callback
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        with backend.captured_llama_log() as log:
            backend._log_sinks.insert(0, interrupted)
            try:
                backend._on_llama_log(2, b"llama_model_loader: loaded meta data\n", None)  # through ctypes
            finally:
                backend._log_sinks.remove(interrupted)
            assert log == []  # the block goes on until llama.cpp returns
    assert "Exception ignored" not in capfd.readouterr().err
    with backend.captured_llama_log():  # raised once, not again
        pass
