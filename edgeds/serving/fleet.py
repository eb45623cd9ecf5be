"""`edgeds batch` over several OpenAI-compatible servers (`--endpoint` repeated): a fleet of
`edgeds serve`, llama-server or vLLM instances, so that a batch grows past one machine.

- Rows wait in one queue; each server has `parallel` workers that take the next row, so a fast
  server takes more rows than a slow one.
- A request that fails in transport (refused, reset, a reply that breaks off, no byte for
  `timeout` seconds, 408/429/5xx) marks its server down and puts the row back at the head of
  the queue, for another server where one is up (a row does not go back to a server it failed
  on while another could take it).
- A server that is down gets no rows; one of its workers asks `GET /v1/models` after a backoff
  (doubling up to PROBE_MAX_S), and the server takes rows again once it answers. A server down
  when the batch starts joins when it comes up.
- A row that failed on `tries` tries gets an error row (a rerun retries error rows): in a fleet,
  a row that fails on server after server is more likely the row's own fault. A refusal (400)
  is the row's error at once, as with one server.
- When every server has been down for GIVE_UP_S, the rows still waiting come back unfinished
  (finish_reason cancelled): batch leaves them for the next run instead of writing an error.
- `server_counts()` gives rows, failed tries and generated tokens per server, for the summary.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from edgeds.errors import EdgedsError, UsageError
from edgeds.events import Completion, failed
from edgeds.runtime.params import GenerationParams
from edgeds.serving.remote import RemoteBackend, Unavailable, _error_message, base_url, unfinished

DEFAULT_TRIES = 3
PROBE_TIMEOUT_S = 10.0  # for a server's `GET /v1/models` health check
PROBE_BASE_S = 0.5  # the first wait before a failed server is asked again; it doubles...
PROBE_MAX_S = 15.0  # ...up to this
GIVE_UP_S = 120.0  # every server down this long: the waiting rows come back unfinished


@dataclass
class _Job:
    messages: list[dict]
    params: GenerationParams
    on_done: Callable[[Completion], None]
    tries: int = 0
    failed_on: set[int] = field(default_factory=set)  # indexes of the servers it failed on
    errors: list[str] = field(default_factory=list)
    cancelled: bool = False

    def cancel(self) -> None:
        """Drop the row if it has not started (a running request finishes)."""
        self.cancelled = True


@dataclass
class _Server:
    index: int
    url: str  # the …/v1 base
    backend: RemoteBackend | None = None  # once it answered: its model is known
    down: bool = True  # until its first health check answers
    down_since: float = field(default_factory=time.monotonic)
    retry_at: float = 0.0  # when a down server is asked again
    probes_failed: int = 0  # in a row
    probing: bool = False
    rows: int = 0  # rows it answered (error rows for refused requests included)
    failed: int = 0  # tries that failed on it
    tokens: int = 0  # generated tokens of its rows
    last_error: str | None = None


class Fleet:
    """Batch's Backend over several servers; see the module's docstring.

    Args:
        endpoints: the servers' URLs (`http://host:port`, `…/v1`, …).
        model: the model name to ask for (default: each server's first in /v1/models).
        parallel: requests in flight per server.
        timeout: seconds a request may go without a byte from its server.
        tries: tries of a row, on any servers, before it gets an error row.

    Raises:
        UsageError: no endpoint, or one given twice. EdgedsError: a server refuses the health
            check (a wrong API key), or none of them answers.
    """

    def __init__(self, endpoints: list[str], *, model: str | None = None, api_key: str | None = None,
                 parallel: int = 4, timeout: float = 600.0, tries: int = DEFAULT_TRIES):
        urls = [base_url(endpoint) for endpoint in endpoints]
        if not urls:
            raise UsageError("give at least one --endpoint")
        if len(set(urls)) < len(urls):
            twice = next(url for url in urls if urls.count(url) > 1)
            raise UsageError(f"--endpoint {twice} is given twice")
        if tries < 1:
            raise UsageError("--tries must be at least 1")
        self.model, self.api_key, self.timeout, self.tries = model, api_key, timeout, tries
        self._servers = [_Server(i, url) for i, url in enumerate(urls)]
        self._pending: deque[_Job] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._refused: str | None = None  # a health check refused (not a transport failure)
        for server in self._servers:
            for n in range(parallel):
                threading.Thread(target=self._work, args=(server,), daemon=True,
                                 name=f"edgeds-fleet-{server.index}-{n}").start()
        with self._cond:  # every server's first health check, done by its workers in parallel
            self._cond.wait_for(lambda: self._refused or all(s.probes_failed or not s.down for s in self._servers),
                                timeout=3 * PROBE_TIMEOUT_S)
        if self._refused or all(s.down for s in self._servers):
            self.close()
            if self._refused:
                raise EdgedsError(self._refused)
            raise Unavailable("no server of the fleet answers: " + "; ".join(str(s.last_error) for s in self._servers))

    @property
    def name(self) -> str:
        return f"{len(self._servers)} servers"

    # -- the Backend protocol ----------------------------------------------------------------

    def submit(self, messages: list[dict], params: GenerationParams,
               on_done: Callable[[Completion], None]) -> _Job:
        job = _Job(messages, params, on_done)
        with self._cond:
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        for server in self._servers:
            if server.backend is not None:
                server.backend.close()

    def server_counts(self) -> list[dict]:
        """Per server: its URL, rows answered, tries failed, generated tokens, and whether it is up."""
        with self._cond:
            return [{"url": s.url, "rows": s.rows, "failed_tries": s.failed, "tokens": s.tokens, "up": not s.down}
                    for s in self._servers]

    # -- workers -------------------------------------------------------------------------------

    def _work(self, server: _Server) -> None:
        while True:
            job = self._take(server)
            if job is None:
                return
            self._run(server, job)

    def _take(self, server: _Server) -> _Job | None:
        """The next row this server should run; health checks while it is down. None when closed."""
        with self._cond:
            while not self._closed:
                if server.down:
                    wait = server.retry_at - time.monotonic()
                    if server.probing or wait > 0:
                        self._cond.wait(wait if not server.probing else None)
                        continue
                    server.probing = True
                    self._cond.release()
                    try:
                        up, error = self._probe(server)
                    finally:
                        self._cond.acquire()
                    self._probed(server, up, error)
                    continue
                job = self._pick(server)
                if job is not None:
                    return job
                self._cond.wait()
            return None

    def _pick(self, server: _Server) -> _Job | None:
        for job in list(self._pending):
            if job.cancelled:
                self._pending.remove(job)
            elif server.index not in job.failed_on or all(
                    s.down for s in self._servers if s.index not in job.failed_on):
                self._pending.remove(job)
                return job
        return None

    def _run(self, server: _Server, job: _Job) -> None:
        assert server.backend is not None
        try:
            completion = server.backend.complete(job.messages, job.params)
        except Unavailable as err:
            self._failed(server, job, str(err))
            return
        except Exception as err:  # noqa: BLE001 - a broken reply fails its row only
            completion = failed(f"{type(err).__name__}: {err}")
        with self._cond:
            server.rows += 1
            server.tokens += completion.stats.completion_tokens
        job.on_done(completion)

    def _failed(self, server: _Server, job: _Job, error: str) -> None:
        """A try failed in transport: the server is down until a health check answers, and the
        row goes back to the head of the queue, or gets its error row after its last try."""
        with self._cond:
            server.failed += 1
            server.last_error = error
            if not server.down:
                now = time.monotonic()
                server.down, server.down_since, server.retry_at = True, now, now + PROBE_BASE_S
            job.tries += 1
            job.failed_on.add(server.index)
            job.errors.append(error)
            give_up = job.tries >= self.tries
            if not give_up:
                self._pending.appendleft(job)
            self._cond.notify_all()
        if give_up:
            tries = "1 try" if job.tries == 1 else f"{job.tries} tries"
            job.on_done(failed(f"gave up after {tries} ({'; '.join(job.errors)})"))

    # -- health ----------------------------------------------------------------------------------

    def _probe(self, server: _Server) -> tuple[bool, str | None]:
        """Ask the server for its models; (answered, why not). A refusal (not a transport failure)
        stops the fleet from starting, or keeps the server down later."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        request = urllib.request.Request(server.url + "/models", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S) as response:
                models = json.load(response).get("data") or []
        except urllib.error.HTTPError as err:
            message = f"{server.url}/models: HTTP {err.code}: {_error_message(err)}"
            if err.code < 500 and err.code not in (408, 429) and server.backend is None:
                self._refused = message
            return False, message
        except (urllib.error.URLError, OSError, ValueError, AttributeError) as err:
            return False, f"{server.url}/models: cannot reach the server ({getattr(err, 'reason', err)})"
        if server.backend is None:
            model = self.model or (models[0].get("id") if models and isinstance(models[0], dict) else None)
            if not model:
                return False, f"{server.url}/models lists no model; name one with --model"
            server.backend = RemoteBackend(server.url, model=model, api_key=self.api_key, parallel=1,
                                           timeout=self.timeout, retries=0)
        return True, None

    def _probed(self, server: _Server, up: bool, error: str | None) -> None:
        """After a health check (the lock held): up again, or the next check later; when every
        server has been down for GIVE_UP_S, the waiting rows come back unfinished."""
        server.probing = False
        now = time.monotonic()
        if up:
            server.down, server.probes_failed = False, 0
        else:
            server.probes_failed += 1
            server.last_error = error
            server.retry_at = now + min(PROBE_BASE_S * 2 ** server.probes_failed, PROBE_MAX_S)
            if all(s.down and now - s.down_since >= GIVE_UP_S for s in self._servers) and self._pending:
                waiting, self._pending = list(self._pending), deque()
                reason = f"no server answered for {GIVE_UP_S:g} s ({error})"
                threading.Thread(target=lambda: [job.on_done(unfinished(reason)) for job in waiting
                                                 if not job.cancelled], daemon=True).start()
        self._cond.notify_all()
