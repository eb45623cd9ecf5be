"""`edgeds pull` against a fake hub (tests/hub_server.py) reached through HF_ENDPOINT.

The CLI runs in a subprocess so huggingface-hub reads HF_ENDPOINT / HF_HUB_OFFLINE / HF_HOME
fresh. Nothing here reaches the internet.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgeds.errors import ModelNotFound
from edgeds.catalog.resolve import resolve_model
from edgeds.catalog.registry import user_registry_path
from tests.hub_server import FakeHub

REPO = "acme/tiny-GGUF"
SINGLE = "tiny-Q8_0.gguf"
SPLIT = [f"tiny-Q4_K_M/tiny-Q4_K_M-0000{i}-of-00002.gguf" for i in (1, 2)]


def payload(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


DATA = {SINGLE: payload(300_000, 1), SPLIT[0]: payload(120_000, 2), SPLIT[1]: payload(80_000, 3)}


def registry_text() -> str:
    split_files = ", ".join(f'{{ name = "{n}", size = {len(DATA[n])}, exact = true }}' for n in SPLIT)
    return f'''
[models."tiny-test"]
name = "Tiny"
source = "acme/tiny"
architecture = "llama"
license = "MIT"
params_total = 1000
params_active = 1000
context_length = 2048
default_quant = "Q8_0"
generation = {{ temperature = 0.6, top_p = 0.95, allow_system = true, forces_think = false, max_tokens = 64 }}
shape = {{ n_layers = 2, n_embd = 64, n_head = 4, n_head_kv = 2, head_dim = 16, n_ff = 128, n_vocab = 256 }}

[models."tiny-test".quants]
Q8_0 = {{ repo = "{REPO}", files = [{{ name = "{SINGLE}", size = {len(DATA[SINGLE])} }}] }}
Q4_K_M = {{ repo = "{REPO}", files = [{split_files}] }}
'''


@pytest.fixture
def hub(tmp_path):
    path = user_registry_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(registry_text())
    fake = FakeHub().start()
    yield fake
    fake.stop()
    path.unlink(missing_ok=True)


def edgeds(args: list[str], hf_home: Path, endpoint: str, offline: bool = False):
    env = dict(os.environ, HF_ENDPOINT=endpoint, HF_HOME=str(hf_home),
               HF_HUB_OFFLINE="1" if offline else "0", HF_HUB_DISABLE_XET="1")
    return subprocess.run([sys.executable, "-m", "edgeds", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def blobs(hf_home: Path) -> list[Path]:
    return [p for p in hf_home.rglob("*") if p.is_file() and "blobs" in p.parts]


@pytest.mark.slow
def test_pull_single_and_split(hub, tmp_path):
    for name, data in DATA.items():
        hub.add(REPO, name, data)
    hf_home = tmp_path / "hf"
    out = edgeds(["pull", "tiny-test", "-q"], hf_home, hub.url)
    assert out.returncode == 0, out.stderr
    out = edgeds(["pull", "tiny-test:Q4_K_M", "-q"], hf_home, hub.url)
    assert out.returncode == 0, out.stderr
    assert "2 file(s)" in out.stdout
    got = {p.read_bytes() for p in blobs_complete(hf_home)}
    assert got == set(DATA.values())
    gets = [path for method, path, _ in hub.requests if method == "GET" and "/resolve/" in path]
    assert sorted(p.split("/resolve/", 1)[1].split("/", 1)[1] for p in gets) == sorted(DATA)
    # Offline now: resolution finds every part in the cache without the network.
    listing = edgeds(["list", "--local"], hf_home, hub.url, offline=True)
    assert "tiny-test:Q8_0" in listing.stdout and "tiny-test:Q4_K_M" in listing.stdout
    rm = edgeds(["rm", "tiny-test:Q4_K_M"], hf_home, hub.url, offline=True)
    assert rm.returncode == 0 and "2 file(s)" in rm.stdout
    assert {p.read_bytes() for p in blobs(hf_home)} == {DATA[SINGLE]}


@pytest.mark.slow
def test_pull_resumes_after_a_cut_connection(hub, tmp_path):
    # huggingface-hub keeps what it has written in 10 MiB chunks: cut well past the first one.
    big = payload(24 << 20, 4)
    cut = 15 << 20
    hub.add(REPO, SINGLE, big, cut_first_get_at=cut)
    (path := user_registry_path()).write_text(registry_text().replace(f"size = {len(DATA[SINGLE])}", f"size = {len(big)}"))
    hf_home = tmp_path / "hf"
    out = edgeds(["pull", "tiny-test:Q8_0", "-q"], hf_home, hub.url)
    assert out.returncode == 0, out.stderr
    ranges = [rng for method, p, rng in hub.requests if method == "GET" and "/resolve/" in p]
    assert len(ranges) == 2 and ranges[0] is None
    start = int(ranges[1].removeprefix("bytes=").rstrip("-"))  # the second GET resumed
    assert 0 < start <= cut
    assert [p.read_bytes() for p in blobs(hf_home)] == [big]


@pytest.mark.slow
def test_an_interrupted_pull_resumes_in_the_next_one(hub, tmp_path):
    big = payload(24 << 20, 5)
    hub.add(REPO, SINGLE, big, stall_first_get_at=15 << 20)
    user_registry_path().write_text(registry_text().replace(f"size = {len(DATA[SINGLE])}", f"size = {len(big)}"))
    hf_home = tmp_path / "hf"
    env = dict(os.environ, HF_ENDPOINT=hub.url, HF_HOME=str(hf_home), HF_HUB_OFFLINE="0")
    # Ctrl-C as at a terminal, even when this test runs in a background job that ignores SIGINT
    proc = subprocess.Popen([sys.executable, "-m", "edgeds", "pull", "tiny-test:Q8_0", "-q"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 90
    partial = []
    while time.monotonic() < deadline and not partial:
        partial = [p for p in hf_home.rglob("*.incomplete") if p.stat().st_size >= 10 << 20]
        time.sleep(0.2)
    assert partial, "the first pull never wrote a partial file"
    proc.send_signal(signal.SIGINT)  # the user presses Ctrl-C
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "resumes" in err and "Traceback" not in err
    kept = partial[0].stat().st_size
    assert kept >= 10 << 20 and not blobs_complete(hf_home)
    out = edgeds(["pull", "tiny-test:Q8_0", "-q"], hf_home, hub.url)
    assert out.returncode == 0, out.stderr
    ranges = [rng for method, p, rng in hub.requests if method == "GET" and "/resolve/" in p]
    assert ranges == [None, f"bytes={kept}-"]
    assert [p.read_bytes() for p in blobs_complete(hf_home)] == [big]
    assert not list(hf_home.rglob("*.incomplete"))


def blobs_complete(hf_home: Path) -> list[Path]:
    return [p for p in blobs(hf_home) if not p.name.endswith(".incomplete")]


@pytest.mark.parametrize("fault", ["size", "sha256"])
def test_size_or_sha_mismatch_is_one_line_and_leaves_nothing(hub, tmp_path, fault):
    data = DATA[SINGLE]
    if fault == "size":
        hub.add(REPO, SINGLE, data, announced_size=len(data) + 1000)
    else:
        hub.add(REPO, SINGLE, data, announced_sha256=hashlib.sha256(b"other").hexdigest())
    hf_home = tmp_path / "hf"
    out = edgeds(["pull", "tiny-test:Q8_0", "-q"], hf_home, hub.url)
    assert out.returncode != 0
    lines = [line for line in out.stderr.splitlines() if line.startswith("edgeds: error:")]
    assert len(lines) == 1 and f"{REPO}/{SINGLE}" in lines[0]
    assert ("size" in lines[0]) if fault == "size" else ("sha256 mismatch" in lines[0])
    assert "Traceback" not in out.stderr
    assert not any(p.stat().st_size == len(data) for p in hf_home.rglob("*") if p.is_file())
    assert not list(hf_home.rglob(SINGLE))


@pytest.mark.slow
def test_offline_and_unreachable_name_the_file_and_the_local_way(hub, tmp_path):
    hf_home = tmp_path / "hf"
    out = edgeds(["pull", "tiny-test:Q8_0"], hf_home, hub.url, offline=True)
    assert out.returncode != 0
    msg = out.stderr.strip().splitlines()[-1]
    assert f"{REPO}/{SINGLE}" in msg and "HF_HUB_OFFLINE" in msg
    assert f"edgeds add /path/to/{SINGLE} --as tiny-test:Q8_0" in msg  # a way every command takes
    assert f"/{REPO}/resolve/main/{SINGLE}" in msg
    hub.stop()
    out = edgeds(["pull", "tiny-test:Q8_0"], hf_home, hub.url)
    msg = out.stderr.strip().splitlines()[-1]
    assert out.returncode != 0 and "cannot reach the hub" in msg and f"{REPO}/{SINGLE}" in msg
    hub.start()  # for the fixture's stop()


def test_resolve_model_paths_ids_and_typos(hub, tmp_path):
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve_model(str(gguf), pull=False).path == gguf
    with pytest.raises(ModelNotFound, match=r"edgeds pull tiny-test:Q8_0"):
        resolve_model("tiny-test", pull="ask")  # not a TTY: no prompt, an error naming the pull
    with pytest.raises(ModelNotFound, match=r"did you mean r1-distill-qwen-7b"):
        resolve_model("r1-distil-qwen-7b", pull=False)
    with pytest.raises(ModelNotFound, match="no such file"):
        resolve_model(str(tmp_path / "missing.gguf"), pull=False)
