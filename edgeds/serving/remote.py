"""A client for any OpenAI-compatible chat server (llama-server, vLLM, `edgeds serve`, …).

`edgeds batch --endpoint URL` and `edgeds run --endpoint URL` send their requests here instead
of to the embedded engine; `generate` yields the same events as the Engine and fails the same
way. Requests stream (SSE), so the time to the first token is measured the same way as locally.
Reasoning comes from `delta.reasoning_content` (DeepSeek's API, llama-server, vLLM, LM Studio)
or `delta.reasoning` (Ollama); a server that leaves `<think>…</think>` in the content is split
here with the same ReasoningSplitter the engine uses. Only the standard library is used.

A request that fails in transport (connection refused or reset, a timeout, a reply that breaks
off, HTTP 408, 429 or 5xx) raises `Unavailable`; `submit` (batch) tries it again with backoff,
and one still failing after its tries comes back unfinished (finish_reason cancelled), so that
batch leaves the row for the next run instead of writing the failure as its result.
"""

from __future__ import annotations

import json
import random
import threading
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator

from edgeds.errors import EdgedsError
from edgeds.events import Answer, Completion, Done, Event, GenerationTimer, Reasoning, Stats, collect, failed
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.reasoning import ReasoningSplitter
from edgeds.serving.openai import FINISH_FROM_WIRE, error_message, token_counts

RETRY_STATUSES = frozenset({408, 429})  # besides every 5xx: worth another try
RETRY_BASE_S = 0.5  # the first wait between tries; it doubles up to RETRY_MAX_S
RETRY_MAX_S = 8.0


class Unavailable(EdgedsError):
    """The server could not be reached, broke off its reply, or answered 408/429/5xx: the same
    request may well succeed when tried again (after `retry_after` seconds, if the server said)."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


def unfinished(message: str) -> Completion:
    """The Completion of a request given up after its tries: cancelled, so that batch leaves
    the row to the next run; `error` says why."""
    return Completion("", "", Stats(finish_reason="cancelled", error=message))


def wire_fields(params: GenerationParams) -> dict:
    """The request fields beyond the samplers' scalars (stop, penalties, logit_bias, the
    reasoning budget), in OpenAI's shape; absent where unset."""
    body: dict = {}
    for key in ("presence_penalty", "frequency_penalty", "reasoning_budget"):
        if getattr(params, key) is not None:
            body[key] = getattr(params, key)
    if params.stop:
        body["stop"] = list(params.stop)
    if params.logit_bias:
        body["logit_bias"] = {str(token): bias for token, bias in params.logit_bias}
    return body


def base_url(endpoint: str) -> str:
    """`http://host:port`, `…/v1` or `…/v1/chat/completions` → the `…/v1` base."""
    url = endpoint.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EdgedsError(f"{endpoint}: the endpoint must be an http:// or https:// URL")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url if url.endswith("/v1") else url + "/v1"


class RemoteBackend:
    """Rows → `POST {endpoint}/chat/completions`, `parallel` requests in flight; a row that
    fails in transport is tried `retries` more times."""

    def __init__(self, endpoint: str, *, model: str | None = None, api_key: str | None = None,
                 parallel: int = 4, timeout: float = 600.0, retries: int = 8):
        self.base = base_url(endpoint)
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self._closed = threading.Event()
        self.model = model or self._first_model()
        self._cancel = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=parallel, thread_name_prefix="edgeds-remote")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def _open(self, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(self.base + path, data=data, headers=self._headers(),
                                         method="POST" if data is not None else "GET")
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            message = f"{self.base}{path}: HTTP {err.code}: {_error_message(err)}"
            if err.code in RETRY_STATUSES or err.code >= 500:
                raise Unavailable(message, _seconds(err.headers.get("Retry-After"))) from None
            raise EdgedsError(message) from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise Unavailable(f"{self.base}{path}: cannot reach the server ({reason})") from None

    def _first_model(self) -> str:
        with self._open("/models") as response:
            models = json.load(response).get("data") or []
        if not models:
            raise EdgedsError(f"{self.base}/models lists no model; name one with --model")
        return models[0]["id"]

    @property
    def name(self) -> str:
        return self.model

    def cancel(self) -> None:
        """End the running `generate` at its next chunk (finish_reason cancelled)."""
        self._cancel.set()

    def generate(self, messages: list[dict], params: GenerationParams | None = None) -> Iterator[Event]:
        """One streamed chat completion as events: Reasoning/Answer deltas, then Done (a reply
        that breaks off ends with Done(finish_reason="error")).

        Raises:
            EdgedsError: the server refuses the request (Unavailable: it cannot be reached).
        """
        return self._stream(messages, params or GenerationParams(), broken_raises=False, bare_close=False)

    def _stream(self, messages: list[dict], params: GenerationParams, *, broken_raises: bool,
                bare_close: bool) -> Iterator[Event]:
        """`bare_close`: hold content back until a `</think>` or the end shows whether it was
        reasoning (a server whose template opened the think block); whole replies can wait."""
        body: dict = {"model": self.model, "messages": messages, "stream": True,
                      "stream_options": {"include_usage": True}}
        for key in ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed"):  # llama-server's names
            value = getattr(params, key)
            if value is not None:
                body[key] = value
        if params.response_format:  # as the request gave it: any OpenAI-compatible server takes it
            body["response_format"] = json.loads(params.response_format)
        elif params.grammar:
            body["grammar"] = params.grammar  # llama-server and edgeds serve take GBNF here
        body.update(wire_fields(params))
        self._cancel.clear()
        timer = GenerationTimer()
        response = self._open("/chat/completions", body)
        timer.prompt_done()
        splitter = ReasoningSplitter(bare_close=bare_close)  # for content that carries its own think block
        usage: dict = {}
        seen: set[type] = set()  # the kinds of text events yielded, for stopped_thinking
        finish, error = "stop", None
        ended = False  # [DONE] or a finish_reason came: the reply is whole
        try:
            with response:
                for data in _sse_data(response):
                    if data == "[DONE]":
                        ended = True
                        break
                    if self._cancel.is_set():
                        finish = "cancelled"
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        finish, error = "error", error_message(chunk)
                        break
                    usage = chunk.get("usage") or usage
                    for choice in chunk.get("choices") or []:
                        delta = choice.get("delta") or choice.get("message") or {}
                        reasoning = delta.get("reasoning_content") or delta.get("reasoning") or ""
                        content = delta.get("content") or ""
                        if reasoning or content:
                            timer.token()
                        pieces = ([Reasoning(reasoning)] if reasoning else []) + splitter.feed(content)
                        seen.update(type(piece) for piece in pieces)
                        yield from pieces
                        if choice.get("finish_reason"):
                            ended = True
                            finish = FINISH_FROM_WIRE.get(choice["finish_reason"], "stop")
            if not ended and finish == "stop":
                raise ConnectionError("the server closed the connection before the end")
        except (OSError, ValueError) as err:  # the connection broke, or a chunk is not JSON
            error = f"{self.base}/chat/completions: the reply broke off ({err})"
            if broken_raises and isinstance(err, OSError):
                raise Unavailable(error) from None
            finish = "error"
        pieces = splitter.finish()
        seen.update(type(piece) for piece in pieces)
        yield from pieces
        prompt_tokens, reasoning_tokens, answer_tokens = token_counts(usage)
        yield Done(timer.stats(prompt_tokens=prompt_tokens, generated=reasoning_tokens + answer_tokens,
                               reasoning_tokens=reasoning_tokens, answer_tokens=answer_tokens,
                               finish_reason=finish, error=error,  # type: ignore[arg-type]
                               stopped_thinking=Reasoning in seen and Answer not in seen))

    def complete(self, messages: list[dict], params: GenerationParams) -> Completion:
        """One chat completion, collected; a refused request comes back as an error Completion.

        Raises:
            Unavailable: the server could not be reached, or its reply broke off.
        """
        try:
            completion = collect(self._stream(messages, params, broken_raises=True, bare_close=True))
        except Unavailable:
            raise
        except EdgedsError as err:
            return failed(str(err))
        return Completion(completion.reasoning.strip(), completion.answer, completion.stats)

    def submit(self, messages: list[dict], params: GenerationParams,
               on_done: Callable[[Completion], None]):
        def work() -> None:
            on_done(self._complete_with_retries(messages, params))

        return self._pool.submit(work)

    def _complete_with_retries(self, messages: list[dict], params: GenerationParams) -> Completion:
        attempt = 0
        while True:
            try:
                return self.complete(messages, params)
            except Unavailable as err:
                if attempt == self.retries or self._closed.wait(_backoff(attempt, err.retry_after)):
                    tries = f"{attempt + 1} {'try' if attempt == 0 else 'tries'}"
                    return unfinished(f"{err} (gave up after {tries})")
            except Exception as err:  # noqa: BLE001 - a broken reply fails its row only
                return failed(f"{type(err).__name__}: {err}")
            attempt += 1

    def close(self) -> None:
        self._closed.set()
        self._pool.shutdown(wait=False, cancel_futures=True)


def _sse_data(response):
    """The `data:` payloads of a server-sent event stream (a plain JSON body counts as one)."""
    if not (response.headers.get("Content-Type") or "").startswith("text/event-stream"):
        yield response.read().decode("utf-8")
        yield "[DONE]"
        return
    lines: list[str] = []
    for raw in response:
        line = raw.decode("utf-8").rstrip("\r\n")
        if line.startswith("data:"):
            lines.append(line[5:].lstrip())
        elif not line and lines:
            yield "\n".join(lines)
            lines = []
    if lines:
        yield "\n".join(lines)


def _backoff(attempt: int, retry_after: float | None) -> float:
    """Seconds before try `attempt + 2`: doubling from RETRY_BASE_S up to RETRY_MAX_S, with
    jitter so that parallel rows do not come back all at once, and never sooner than the
    server asked (Retry-After, up to a minute)."""
    doubling = min(RETRY_BASE_S * 2 ** attempt, RETRY_MAX_S) * random.uniform(0.5, 1.0)
    return max(doubling, min(retry_after or 0.0, 60.0))


def _seconds(header: str | None) -> float | None:
    """A Retry-After header in seconds (its HTTP-date form is not used by the servers we talk to)."""
    return float(header) if header and header.strip().isdigit() else None


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        return error_message(json.loads(err.read().decode("utf-8")))
    except (ValueError, OSError):
        return err.reason or "no details"
