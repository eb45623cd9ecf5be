"""`edgeds serve`: an OpenAI-compatible HTTP server over the multi-sequence scheduler.

- `POST /v1/chat/completions`, streamed (SSE) or not. The reasoning comes split out as
  `reasoning_content`, as DeepSeek's API and llama-server do, the answer as `content`, and
  `usage` counts reasoning tokens in `completion_tokens_details.reasoning_tokens`.
- `GET /v1/models`, `GET /health`.
- Concurrent requests share the scheduler's slots; one that finds them all busy waits its
  turn, and none interrupts another. A client that hangs up cancels its own generation only.
- Binds 127.0.0.1 unless told otherwise; with an API key, requests without it get 401.
  Errors use OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

The standard library's ThreadingHTTPServer is enough here: one thread per connection, and
the decoding happens on the scheduler's own thread.
"""

from __future__ import annotations

import hmac
import json
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edgeds.errors import ContextOverflow, EdgedsError
from edgeds.events import Answer, Done, Reasoning, Stats
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.scheduler import Scheduler

ROLES = ("system", "user", "assistant")


class ApiError(Exception):
    """An error reply: HTTP status plus OpenAI's error object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = {"error": {"message": message, "type": type, "param": param, "code": code}}


def parse_request(body: bytes) -> tuple[list[dict], GenerationParams, bool, bool]:
    """A chat completion request → (messages, params, stream, include_usage); ApiError(400) if bad."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    messages = data.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "'messages' must be a non-empty list", param="messages")
    clean: list[dict] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise ApiError(400, f"messages[{i}].role must be one of {', '.join(ROLES)}", param=f"messages[{i}].role")
        clean.append({"role": message["role"], "content": _text(message.get("content"), i)})

    def number(key: str, kind, lo: float | None = None, hi: float | None = None):
        value = data.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, kind):
            raise ApiError(400, f"'{key}' must be a {'integer' if kind is int else 'number'}", param=key)
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            raise ApiError(400, f"'{key}' is out of range", param=key)
        return value

    max_tokens = number("max_completion_tokens", int, 1) or number("max_tokens", int, 1)
    n = number("n", int, 1)
    if n not in (None, 1):
        raise ApiError(400, "only n=1 is supported", param="n")
    grammar = data.get("grammar")
    if grammar is not None and not isinstance(grammar, str):
        raise ApiError(400, "'grammar' must be a GBNF string", param="grammar")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    options = data.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    params = GenerationParams(
        max_tokens=max_tokens,
        temperature=number("temperature", (int, float), 0, 2),
        top_p=number("top_p", (int, float), 0, 1),
        seed=number("seed", int),
        grammar=grammar,
    )
    return clean, params, stream, include_usage


def _text(content, i: int) -> str:
    """Message content: a string, or a list of text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise ApiError(400, f"messages[{i}].content must be a string or a list of text parts", param=f"messages[{i}].content")


def usage(stats: Stats) -> dict:
    completion = stats.reasoning_tokens + stats.answer_tokens
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": stats.prompt_tokens + completion,
        "completion_tokens_details": {"reasoning_tokens": stats.reasoning_tokens},
    }


def _finish_reason(stats: Stats) -> str:
    return "length" if stats.finish_reason == "length" else "stop"


class Server:
    """The HTTP server; `serve_forever()` blocks, `shutdown()` stops it from another thread."""

    def __init__(self, scheduler: Scheduler, *, host: str = "127.0.0.1", port: int = 8080,
                 api_key: str | None = None, model_id: str | None = None):
        self.scheduler = scheduler
        self.api_key = api_key
        self.model_id = model_id or scheduler.name
        self.created = int(time.time())
        handler = type("Handler", (_Handler,), {"server_state": self})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as err:
            raise EdgedsError(f"cannot listen on {host}:{port} ({err.strerror})") from None
        self.httpd.daemon_threads = True

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


class _Handler(BaseHTTPRequestHandler):
    server_state: Server
    protocol_version = "HTTP/1.1"
    server_version = "edgeds"

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - quiet; the CLI prints its own line
        pass

    # -- routing ---------------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        self._handle(lambda: self._get(self.path.split("?", 1)[0].rstrip("/")))

    def do_POST(self) -> None:  # noqa: N802
        self._handle(lambda: self._post(self.path.split("?", 1)[0].rstrip("/")))

    def _handle(self, route) -> None:
        try:
            route()
        except ApiError as err:
            self._json(err.status, err.body)
        except (BrokenPipeError, ConnectionResetError):
            pass

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
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self._authorize()
        if path != "/v1/chat/completions":
            raise ApiError(404, f"no route POST {path}", code="not_found")
        messages, params, stream, include_usage = parse_request(body)
        try:
            request = self.server_state.scheduler.submit(messages, params)
        except ContextOverflow as err:
            raise ApiError(400, str(err), param="messages", code="context_length_exceeded") from None
        except EdgedsError as err:
            raise ApiError(400, str(err), param="messages") from None
        if stream:
            self._stream(request, include_usage)
        else:
            self._complete(request)

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
        try:
            completion = request.result()
        except BaseException:
            request.cancel()
            raise
        stats = completion.stats
        if stats.finish_reason == "error":
            self._json(500, ApiError(500, stats.error or "generation failed", type="server_error").body)
            return
        message = {"role": "assistant", "content": completion.answer,
                   "reasoning_content": completion.reasoning or None}
        self._json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.server_state.model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": _finish_reason(stats), "logprobs": None}],
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
        try:
            self._event(chunk({"role": "assistant", "content": ""}))
            for event in request.events():
                if isinstance(event, Reasoning):
                    self._event(chunk({"reasoning_content": event.text}))
                elif isinstance(event, Answer):
                    self._event(chunk({"content": event.text}))
                elif isinstance(event, Done):
                    stats = event.stats
                    if stats.finish_reason == "error":
                        self._event({"error": {"message": stats.error, "type": "server_error", "param": None,
                                               "code": None}})
                    else:
                        self._event(chunk({}, _finish_reason(stats)))
                        if include_usage:
                            self._event({**chunk({}), "choices": [], "usage": usage(stats)})
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            request.cancel()  # the client left: free its slot

    def _event(self, data: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(data, ensure_ascii=False).encode("utf-8") + b"\n\n")
        self.wfile.flush()

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body, ensure_ascii=False).encode("utf-8")
        self.send_response(status, HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else None)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
