"""`edgeds serve`: an OpenAI-compatible HTTP server over the multi-sequence scheduler.

- `POST /v1/chat/completions`, streamed (SSE) or not. The reasoning comes split out as
  `reasoning_content`, as DeepSeek's API and llama-server do, the answer as `content`, and
  `usage` counts reasoning tokens in `completion_tokens_details.reasoning_tokens`.
- `GET /v1/models`, `GET /health`.
- Concurrent requests share the scheduler's slots; one that finds them all busy waits its
  turn, and none interrupts another. When more requests wait than `max_queue`, a new one gets
  503 with Retry-After. A client that hangs up, while its reply streams or while it waits for
  a whole one, cancels its own generation only.
- A reply that ends inside its think block (max_tokens reached while thinking) comes with
  finish_reason "length", the reasoning, empty content and `"stopped_thinking": true` on the
  choice, an edgeds extension that OpenAI clients ignore.
- Binds 127.0.0.1 unless told otherwise; with an API key, requests without it get 401.
  Errors use OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
- Untrusted input is read with limits (edgeds.serving.http): the API key is checked before
  any body byte is read; bodies are JSON only (415 otherwise, so a web page cannot post here
  without a CORS preflight), within `--max-body-bytes` (413), and arrive within
  `--read-timeout` like the headers do (408, or the connection is closed).

The standard library's ThreadingHTTPServer is enough here: one thread per connection, and
the decoding happens on the scheduler's own thread.
"""

from __future__ import annotations

import hmac
import json
import sys
import threading
import time
import traceback
import uuid
from dataclasses import replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edgeds.errors import ContextOverflow, EdgedsError, UsageError
from edgeds.events import Answer, Done, Reasoning
from edgeds.runtime.grammar import check_grammar
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.request import RequestError, check_messages, sampling_params
from edgeds.runtime.scheduler import Scheduler
from edgeds.serving.http import (HangupWatch, HttpError, HttpLimits, TimedReader, body_length, check_json_type,
                                 linger, read_body)
from edgeds.serving.openai import error_body, finish_reason, thinking_flag, usage

QUEUE_PER_SLOT = 4  # default --max-queue: requests that may wait, per slot
RETRY_AFTER_S = 1


class ApiError(Exception):
    """An error reply: HTTP status plus OpenAI's error object (and any extra headers)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type=type, param=param, code=code)
        self.headers = headers or {}


def parse_request(body: bytes, defaults: GenerationParams = GenerationParams()
                  ) -> tuple[list[dict], GenerationParams, bool, bool]:
    """A chat completion request → (messages, params over `defaults`, stream, include_usage);
    ApiError(400) if bad."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON ({err})") from None
    except RecursionError:
        raise ApiError(400, "the request body is not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if "max_completion_tokens" in data:  # OpenAI's newer name wins
        data = {**data, "max_tokens": data["max_completion_tokens"]}
    try:
        messages = check_messages(data.get("messages"))
        params = sampling_params(data, defaults)
        if data.get("n") not in (None, 1):
            raise RequestError("n", "only n=1 is supported")
    except RequestError as err:
        raise ApiError(400, str(err), param=err.key) from None
    grammar = data.get("grammar")
    if grammar is not None:
        if not isinstance(grammar, str):
            raise ApiError(400, "'grammar' must be a GBNF string", param="grammar")
        try:
            check_grammar(grammar)
        except UsageError as err:
            raise ApiError(400, str(err), param="grammar") from None
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    options = data.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return messages, replace(params, grammar=grammar), stream, include_usage


class Server:
    """The HTTP server; `serve_forever()` blocks, `shutdown()` stops it from another thread.

    Args:
        defaults: fill the sampling fields a request leaves out (before the model's own defaults).
        max_queue: requests that may wait for a slot; one more gets 503 (default 4 per slot).
        limits: what one request may send, and how long it may take to send it.
    """

    def __init__(self, scheduler: Scheduler, *, host: str = "127.0.0.1", port: int = 8080,
                 api_key: str | None = None, model_id: str | None = None,
                 defaults: GenerationParams = GenerationParams(), max_queue: int | None = None,
                 limits: HttpLimits = HttpLimits()):
        self.scheduler = scheduler
        self.defaults = defaults
        self.api_key = api_key
        self.model_id = model_id or scheduler.name
        self.created = int(time.time())
        self.limits = limits
        self.max_queue = QUEUE_PER_SLOT * scheduler.parallel if max_queue is None else max_queue
        self._admitted = threading.BoundedSemaphore(scheduler.parallel + self.max_queue)
        self.hangups = HangupWatch()
        handler = type("Handler", (_Handler,), {"server_state": self})
        self.httpd = ThreadingHTTPServer((host, port), handler, bind_and_activate=False)
        # room in the kernel's accept queue for a burst as large as what may run and wait, at least
        self.httpd.request_queue_size = max(128, 2 * (scheduler.parallel + self.max_queue))
        self.httpd.daemon_threads = True
        try:
            self.httpd.server_bind()
            self.httpd.server_activate()
        except OSError as err:
            self.httpd.server_close()
            self.hangups.close()
            raise EdgedsError(f"cannot listen on {host}:{port} ({err.strerror})") from None

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]  # type: ignore[return-value]

    @property
    def url(self) -> str:
        host, port = self.address
        return f"http://{host}:{port}"

    def serve_forever(self) -> None:
        self.httpd.serve_forever(poll_interval=0.2)

    def start(self) -> threading.Thread:
        """Serve on a background thread (tests, embedding)."""
        thread = threading.Thread(target=self.serve_forever, name="edgeds-serve", daemon=True)
        thread.start()
        return thread

    def shutdown(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.hangups.close()

    def admit(self) -> None:
        """Take a place among the requests that run or wait; ApiError 503 when all are taken."""
        if not self._admitted.acquire(blocking=False):
            raise ApiError(503, f"the server is busy ({self.scheduler.parallel} requests running and "
                           f"{self.max_queue} waiting); retry later", type="server_error", code="server_busy",
                           headers={"Retry-After": str(RETRY_AFTER_S)})

    def release(self) -> None:
        self._admitted.release()


class _Handler(BaseHTTPRequestHandler):
    server_state: Server
    protocol_version = "HTTP/1.1"
    server_version = "edgeds"
    rfile: TimedReader  # type: ignore[assignment]

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet; the CLI prints its own line
        pass

    # -- reading ---------------------------------------------------------------------------

    def setup(self) -> None:
        super().setup()
        self.rfile.close()
        self.rfile = TimedReader(self.connection, idle_timeout=self.server_state.limits.read_timeout_s)
        self.body_unread = False

    def handle_one_request(self) -> None:
        self.rfile.arm(self.server_state.limits.read_timeout_s)  # the request line and headers
        self.body_unread = False
        try:
            super().handle_one_request()
        except OSError:  # the client reset the connection (a timeout is handled inside)
            self.close_connection = True

    def handle_expect_100(self) -> bool:
        """Refuse before the client sends its body, where the headers already say no."""
        try:
            self._check_head(self._path())
        except ApiError as err:
            self.body_unread = True
            self._refuse(err)
            return False
        return super().handle_expect_100()

    def _path(self) -> str:
        return self.path.split("?", 1)[0].rstrip("/")

    def _check_head(self, path: str) -> None:
        """Everything a POST is refused for that its headers show, before any body byte is read."""
        if self.command != "POST":
            return
        self._authorize()
        if path != "/v1/chat/completions":
            raise ApiError(404, f"no route POST {path}", code="not_found")
        try:
            check_json_type(self.headers)
            body_length(self.headers, self.server_state.limits)
        except HttpError as err:
            raise ApiError(err.status, str(err), code=err.code) from None

    def _read_body(self) -> bytes:
        try:
            body = read_body(self.headers, self.rfile, self.server_state.limits)
        except HttpError as err:
            raise ApiError(err.status, str(err), code=err.code) from None
        self.body_unread = False
        return body

    # -- routing ---------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        declared = self.headers.get("Content-Length") not in (None, "0")
        self.body_unread = declared or bool(self.headers.get("Transfer-Encoding"))
        self._handle(lambda: self._get(self._path()))

    def do_POST(self) -> None:  # noqa: N802
        self.body_unread = True
        self._handle(lambda: self._post(self._path()))

    def _handle(self, route) -> None:
        try:
            route()
        except ApiError as err:
            self._refuse(err)
        except OSError:  # the client left (reset, broken pipe, a write that timed out)
            self.close_connection = True
        except Exception as err:  # noqa: BLE001 - a bug: the client still gets a reply, the log the traceback
            traceback.print_exc(file=sys.stderr)
            self._refuse(ApiError(500, f"internal error: {type(err).__name__}: {err}", type="server_error"))
        if self.body_unread:  # the connection cannot carry another request
            self.close_connection = True

    def _refuse(self, err: ApiError) -> None:
        """The error reply; where the body was left unread, close after letting the client finish
        sending it (so it reads the reply, not a reset)."""
        try:
            self._json(err.status, err.body, headers=err.headers, close=self.body_unread)
            if self.body_unread:
                linger(self.connection, self.rfile)
        except OSError:
            self.close_connection = True

    def _get(self, path: str) -> None:
        state = self.server_state
        if path == "/health":
            self._json(200, {"status": "ok"})
            return
        self._authorize()
        if path == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "edgeds"}]})
            return
        raise ApiError(404, f"no route GET {path}", code="not_found")

    def _post(self, path: str) -> None:
        self._check_head(path)
        state = self.server_state
        messages, params, stream, include_usage = parse_request(self._read_body(), state.defaults)
        state.admit()
        try:
            try:
                request = state.scheduler.submit(messages, params)
            except ContextOverflow as err:
                raise ApiError(400, str(err), param="messages", code="context_length_exceeded") from None
            except EdgedsError as err:
                raise ApiError(400, str(err), param=_param_of(err)) from None
            watch = state.hangups.watch(self.connection, request.cancel)
            try:
                if stream:
                    self._stream(request, include_usage)
                else:
                    self._complete(request)
            finally:
                state.hangups.unwatch(watch)
                request.cancel()  # a no-op once it finished; frees the slot if this thread failed
        finally:
            state.release()

    def _authorize(self) -> None:
        key = self.server_state.api_key
        if not key:
            return
        given = self.headers.get("Authorization") or ""
        token = given[7:] if given.startswith("Bearer ") else ""
        if not hmac.compare_digest(token.encode(), key.encode()):
            raise ApiError(401, "invalid or missing API key (send 'Authorization: Bearer KEY')",
                           type="authentication_error", code="invalid_api_key")

    # -- replies ---------------------------------------------------------------------------

    def _complete(self, request) -> None:
        stats = (completion := request.result()).stats
        if stats.finish_reason == "error":
            raise ApiError(500, stats.error or "generation failed", type="server_error")
        if stats.finish_reason == "cancelled":  # the client hung up, or the server is stopping
            raise ApiError(503, "the request was cancelled", type="server_error", code="cancelled",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        message = {"role": "assistant", "content": completion.answer,
                   "reasoning_content": completion.reasoning or None}
        self._json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.server_state.model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": finish_reason(stats), "logprobs": None,
                         **thinking_flag(stats)}],
            "usage": usage(stats),
        })

    def _stream(self, request, include_usage: bool) -> None:
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        model = self.server_state.model_id

        def chunk(delta: dict, finish: str | None = None, **extra) -> dict:
            choices = [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
            return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": choices, **extra}

        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True
        self._event(chunk({"role": "assistant", "content": ""}))
        # a text chunk is the same JSON every time but for its text: encode the rest once
        frames = {kind: _frame(chunk, key) for kind, key in ((Reasoning, "reasoning_content"), (Answer, "content"))}
        for events in request.event_batches():  # what queued up while the last write went out: one write
            text = [frames[type(e)][0] + json.dumps(e.text, ensure_ascii=False).encode("utf-8") + frames[type(e)][1]
                    for e in events if not isinstance(e, Done)]
            if text:
                self.wfile.write(b"".join(text))
                self.wfile.flush()
            event = events[-1]
            if isinstance(event, Done):
                stats = event.stats
                if stats.finish_reason == "error":
                    self._event(error_body(stats.error or "generation failed", type="server_error"))
                else:
                    final = chunk({}, finish_reason(stats))
                    final["choices"][0].update(thinking_flag(stats))
                    self._event(final)
                    if include_usage:
                        self._event({**chunk({}), "choices": [], "usage": usage(stats)})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _event(self, data: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(data, ensure_ascii=False).encode("utf-8") + b"\n\n")
        self.wfile.flush()

    def _json(self, status: int, body: dict, *, headers: dict[str, str] | None = None, close: bool = False) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else None)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()


def _frame(chunk, key: str) -> tuple[bytes, bytes]:
    """The SSE bytes before and after the JSON string of a `{key: text}` delta chunk."""
    mark = uuid.uuid4().hex
    head, tail = json.dumps(chunk({key: mark}), ensure_ascii=False).split(f'"{mark}"')
    return b"data: " + head.encode("utf-8"), tail.encode("utf-8") + b"\n\n"


def _param_of(err: EdgedsError) -> str:
    """The request field a refused submission is about."""
    if isinstance(err, RequestError):
        return err.key
    return "grammar" if str(err).startswith("the grammar") else "messages"
