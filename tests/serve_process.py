"""`edgeds serve` as a subprocess for tests: started on a free port, its log in a file (a pipe
nobody reads would fill up and stall it), stopped with SIGTERM."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tests.conftest import REPO


@contextmanager
def serving(model: Path, log: Path, *args: str, timeout: float = 180) -> Iterator[tuple[subprocess.Popen, str]]:
    """Run `edgeds serve MODEL --port 0 ARGS…`; yields (process, "http://127.0.0.1:PORT")."""
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "edgeds", "serve", str(model), "--port", "0", *args],
                                   stderr=stderr, cwd=REPO)
    try:
        deadline = time.monotonic() + timeout
        while not (match := re.search(r"on (http://127\.0\.0\.1:\d+)/v1", log.read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"edgeds serve did not start: {log.read_text()[-2000:]}")
            time.sleep(0.1)
        yield process, match[1]
    finally:
        process.terminate()
        process.wait(60)


def post(url: str, body: dict, *, key: str | None = None, timeout: float = 120) -> tuple[int, dict, dict]:
    """POST a chat completion; (status, JSON reply, headers), errors included."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    request = urllib.request.Request(url + "/v1/chat/completions", data=json.dumps(body).encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.load(response), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, json.load(err), dict(err.headers)


def healthy(url: str, *, key: str | None = None, patience: float = 60) -> bool:
    """/health answers and a small request gets its reply (after a 503, it asks again when the
    server says, for up to `patience` seconds)."""
    with urllib.request.urlopen(url + "/health", timeout=30) as response:
        if json.load(response) != {"status": "ok"}:
            return False
    deadline = time.monotonic() + patience
    while True:
        status, reply, headers = post(url, {"messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 1},
                                      key=key)
        if status != 503 or time.monotonic() > deadline:
            return status == 200 and reply["choices"][0]["message"]["content"] is not None
        time.sleep(float(headers["Retry-After"]))
