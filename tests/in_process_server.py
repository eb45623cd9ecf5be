"""`edgeds serve`'s server in the test process, on a free port, and an openai client for a server
(tests/serve_process.py runs it as a subprocess instead)."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import openai

from edgeds.runtime import Engine
from edgeds.runtime.scheduler import Scheduler
from edgeds.serving.server import Server


@contextmanager
def served(model: Path, *, parallel: int, seq_ctx: int, n_ctx: int = 256, server_options: dict | None = None,
           **engine_options) -> Iterator[Server]:
    """`model` in an Engine (`engine_options`) with a Scheduler of `parallel` slots, served on a
    background thread until the block ends."""
    with Engine(model, n_ctx=n_ctx, **engine_options) as engine, \
            Scheduler(engine, parallel=parallel, seq_ctx=seq_ctx) as scheduler, \
            Server(scheduler, port=0, **(server_options or {})) as server:
        yield server


def openai_client(url: str, *, api_key: str = "none", timeout: float = 120) -> openai.OpenAI:
    """The official client for the server at `url`, with no retries (a test sees every failure)."""
    return openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0, timeout=timeout)
