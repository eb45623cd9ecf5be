"""`edgeds serve`: an OpenAI-compatible HTTP server over the multi-sequence scheduler.

- `POST /v1/chat/completions`, streamed (SSE) or not. The reasoning comes split out as
  `reasoning_content`, as DeepSeek's API and llama-server do, the answer as `content`, and
  `usage` counts reasoning tokens in `completion_tokens_details.reasoning_tokens`.
- `GET /v1/models`, `GET /health`.
- Concurrent requests share the scheduler's slots; one that finds them all busy waits its
  turn, and none interrupts another. A client that hangs up cancels its own generation only.
- A reply that ends inside its think block (max_tokens reached while thinking) comes with
  finish_reason "length", the reasoning, empty content and `"stopped_thinking": true` on the
  choice, an edgeds extension that OpenAI clients ignore.
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
from dataclasses import replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edgeds.errors import ContextOverflow, EdgedsError
from edgeds.events import Answer, Done, Reasoning
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.request import RequestError, check_messages, sampling_params
from edgeds.runtime.scheduler import Scheduler
from edgeds.serving.openai import error_body, finish_reason, thinking_flag, usage


class ApiError(Exception):
    """An error reply: HTTP status plus OpenAI's error object."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type=type, param=param, code=code)


def parse_request(body: bytes, defaults: GenerationParams = GenerationParams()) -> tuple[list[dict], GenerationParams, bool, bool]:
    """A chat completion request → (messages, params over `defaults`, stream, include_usage);
    ApiError(400) if bad."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON ({err})") from None
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
    if grammar is not None and not isinstance(grammar, str):
        raise ApiError(400, "'grammar' must be a GBNF string", param="grammar")
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    options = data.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return messages, replace(params, grammar=grammar), stream, include_usage


class Server:
    """The HTTP server; `serve_forever()` blocks, `shutdown()` stops it from another thread.
    `defaults` fill the sampling fields a request leaves out (before the model's own defaults)."""

    def __init__(self, scheduler: Scheduler, *, host: str = "127.0.0.1", port: int = 8080,
                 api_key: str | None = None, model_id: str | None = None,
                 defaults: GenerationParams = GenerationParams()):
        self.scheduler = scheduler
        self.defaults = defaults
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
        messages, params, stream, include_usage = parse_request(body, self.server_state.defaults)
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
                        self._event(error_body(stats.error or "generation failed", type="server_error"))
                    else:
                        final = chunk({}, finish_reason(stats))
                        final["choices"][0].update(thinking_flag(stats))
                        self._event(final)
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
