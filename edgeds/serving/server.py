"""`edgeds serve`: an OpenAI-compatible HTTP server over the multi-sequence scheduler.

- `POST /v1/chat/completions`, streamed (SSE) or not. The reasoning comes split out as
  `reasoning_content`, as DeepSeek's API and llama-server do, the answer as `content`, and
  `usage` counts reasoning tokens in `completion_tokens_details.reasoning_tokens`.
- `POST /v1/completions` (OpenAI's legacy text completions): a raw prompt, no chat template,
  its continuation as `text` (edgeds.serving.completions).
- `GET /v1/models`, `GET /v1/models/{id}`, `GET /health`. The model's id is `--alias`, or by
  default the registry id or the GGUF file's stem; a request naming another `model` is served
  all the same (as llama-server does), and replies name the served id.
- CORS is off unless `--cors-origin` lists origins (edgeds.serving.cors): then preflights
  (`OPTIONS`) from them are answered without the API key and every reply to them carries
  Access-Control-Allow-Origin.
- Every field of OpenAI's request is honoured, ignored where that cannot change the reply, or
  refused with a 400 naming it (edgeds.serving.chat_fields); `n` choices run as n sequences
  (seed, seed+1, …) and stream with their index; `logprobs` come per answer token.
- Tool calling (OpenAI's `tools`, `tool_choice`, `parallel_tool_calls`, `tool` turns):
  edgeds.runtime.tools puts the tools into the prompt (and a grammar, when tool_choice
  demands a call); the answer's DeepSeek call blocks come back as `tool_calls`, whole or
  streamed as OpenAI streams them (edgeds.runtime.tool_parser), with finish_reason "tool_calls".
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
import queue
import sys
import threading
import time
import traceback
import uuid
from dataclasses import dataclass, replace
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote

from edgeds.errors import ContextOverflow, EdgedsError
from edgeds.events import Answer, Completion, Done, Event, Reasoning, Stats, collect
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.request import RequestError, check_messages, sampling_params
from edgeds.runtime.scheduler import Scheduler
from edgeds.runtime.tool_parser import ToolCallParser, finished_calls, parse_tool_calls
from edgeds.runtime.tools import ToolPlan, ToolRequest, check_tool_request, plan_tools
from edgeds.serving.completions import BadBody, TextReply, parse_completion
from edgeds.serving.cors import CorsPolicy
from edgeds.serving.http import (HangupWatch, HttpError, HttpLimits, TimedReader, body_length, check_json_type,
                                 linger, read_body)
from edgeds.serving.chat_fields import check_fields, choices
from edgeds.serving.openai import (answer_delta, error_body, finish_reason, logprobs_of, thinking_flag, tool_call,
                                   total_usage)

QUEUE_PER_SLOT = 4  # default --max-queue: requests that may wait, per slot
RETRY_AFTER_S = 1
POST_ROUTES = ("/v1/chat/completions", "/v1/completions")
GET_ROUTES = ("/health", "/v1/models")  # and /v1/models/{id}


def model_id_of(spec: str | Path) -> str:
    """The id a model is served as by default: a GGUF file's stem, or the registry id as given,
    without spaces."""
    path = Path(spec)
    name = path.stem if path.suffix == ".gguf" or path.is_file() else str(spec)
    return "-".join(name.split()) or "model"


class ApiError(Exception):
    """An error reply: HTTP status plus OpenAI's error object (and any extra headers)."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",  # noqa: A002
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.body = error_body(message, type=type, param=param, code=code)
        self.headers = headers or {}


@dataclass(frozen=True)
class ChatRequest:
    """A checked chat-completion request."""

    messages: list[dict]
    params: GenerationParams
    stream: bool = False
    include_usage: bool = False
    n: int = 1
    tools: ToolRequest | None = None


def parse_chat(body: bytes, defaults: GenerationParams = GenerationParams(), max_n: int = 1) -> ChatRequest:
    """A chat completion request → its messages, params over `defaults`, stream options, n
    (at most `max_n`) and tool fields; ApiError(400) naming the field if bad
    (edgeds.serving.chat_fields says what happens to every field)."""
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as err:
        raise ApiError(400, f"the request body is not valid JSON ({err})") from None
    except RecursionError:
        raise ApiError(400, "the request body is not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ApiError(400, "the request body must be a JSON object")
    if data.get("max_completion_tokens") is not None:  # OpenAI's newer name wins
        data = {**data, "max_tokens": data["max_completion_tokens"]}
    try:
        check_fields(data)
        messages = check_messages(data.get("messages"))
        params = sampling_params(data, defaults)
        n = choices(data, max_n)
        tools = check_tool_request(data)
    except RequestError as err:
        raise ApiError(400, str(err), param=err.key) from None
    stream = data.get("stream", False)
    if stream is None:
        stream = False
    if not isinstance(stream, bool):
        raise ApiError(400, "'stream' must be true or false", param="stream")
    options = data.get("stream_options") or {}
    include_usage = bool(isinstance(options, dict) and options.get("include_usage"))
    return ChatRequest(messages, params, stream, include_usage, n, tools)


def parse_request(body: bytes, defaults: GenerationParams = GenerationParams()
                  ) -> tuple[list[dict], GenerationParams, bool, bool]:
    """`parse_chat` as (messages, params, stream, include_usage), for a request with n=1."""
    chat = parse_chat(body, defaults)
    return chat.messages, chat.params, chat.stream, chat.include_usage


def apply_tools(tools: ToolRequest, messages: list[dict], params: GenerationParams, scheduler: Scheduler,
                model_id: str) -> tuple[ToolPlan, GenerationParams]:
    """The request's tools in the prompt (and its grammar, when tool_choice demands a call);
    ApiError(400) when the model cannot call tools."""
    try:
        plan = plan_tools(tools, messages, scheduler.engine.chat_template, model_id)
    except RequestError as err:
        raise ApiError(400, str(err), param=err.key) from None
    if plan.grammar:
        if params.grammar:
            raise ApiError(400, "'grammar' and 'response_format' cannot be combined with a tool_choice that "
                           "demands a call", param="tool_choice")
        params = replace(params, grammar=plan.grammar)
    return plan, params


class Server:
    """The HTTP server; `serve_forever()` blocks, `shutdown()` stops it from another thread.

    Args:
        defaults: fill the sampling fields a request leaves out (before the model's own defaults).
        max_queue: requests that may wait for a slot; one more gets 503 (default 4 per slot).
        limits: what one request may send, and how long it may take to send it.
        model_id: the id served (default: the GGUF file's stem).
        cors: the origins whose web pages may call the server (default: none).
    """

    def __init__(self, scheduler: Scheduler, *, host: str = "127.0.0.1", port: int = 8080,
                 api_key: str | None = None, model_id: str | None = None,
                 defaults: GenerationParams = GenerationParams(), max_queue: int | None = None,
                 limits: HttpLimits = HttpLimits(), cors: CorsPolicy = CorsPolicy()):
        self.scheduler = scheduler
        self.defaults = defaults
        self.api_key = api_key
        self.model_id = model_id or model_id_of(scheduler.engine.model.path)
        self.cors = cors
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

    def __enter__(self) -> "Server":
        """Serving on a background thread until the block ends."""
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

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
        self.headers = None  # type: ignore[assignment] # not the previous request's, for the CORS headers
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
        if path not in POST_ROUTES:
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
        self._mark_bodiless()
        self._handle(lambda: self._get(self._path()))

    def do_OPTIONS(self) -> None:  # noqa: N802
        self._mark_bodiless()
        self._handle(lambda: self._preflight(self._path()))

    def _mark_bodiless(self) -> None:
        """A request that should have no body: one that has one is not read, and closes the connection."""
        declared = self.headers.get("Content-Length") not in (None, "0")
        self.body_unread = declared or bool(self.headers.get("Transfer-Encoding"))

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
        model = {"id": state.model_id, "object": "model", "created": state.created, "owned_by": "edgeds"}
        if path == "/v1/models":
            self._json(200, {"object": "list", "data": [model]})
            return
        if path.startswith("/v1/models/"):
            wanted = unquote(path[len("/v1/models/"):])
            if wanted != state.model_id:
                raise ApiError(404, f"the model {wanted!r} does not exist (this server serves {state.model_id!r})",
                               param="model", code="model_not_found")
            self._json(200, model)
            return
        raise ApiError(404, f"no route GET {path}", code="not_found")

    def _preflight(self, path: str) -> None:
        """A browser's CORS preflight: answered for allowed origins, without the API key."""
        cors = self.server_state.cors
        if not cors.enabled:
            raise ApiError(405, "OPTIONS is not answered: CORS is off (see edgeds serve --cors-origin)",
                           code="method_not_allowed", headers={"Allow": "GET, POST"})
        if path not in POST_ROUTES + GET_ROUTES and not path.startswith("/v1/models/"):
            raise ApiError(404, f"no route {path}", code="not_found")
        origin = self.headers.get("Origin")
        if cors.allowed(origin) is None:
            raise ApiError(403, f"the origin {origin!r} may not call this server (see edgeds serve --cors-origin)"
                           if origin else "a CORS preflight needs an Origin header", code="origin_not_allowed")
        self.send_response(204)
        for name, value in cors.preflight_headers().items():
            self.send_header(name, value)
        self.send_header("Content-Length", "0")
        if self.body_unread:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()

    def _post(self, path: str) -> None:
        self._check_head(path)
        if path == "/v1/completions":
            self._post_text()
            return
        state = self.server_state
        chat = parse_chat(self._read_body(), state.defaults, max_n=state.scheduler.parallel)
        plan, params = apply_tools(chat.tools, chat.messages, chat.params, state.scheduler, state.model_id)

        def reply(requests: list) -> None:
            if chat.stream:
                self._stream(requests, chat.include_usage, params.logprobs, plan.parse)
            else:
                self._complete(requests, params.logprobs, plan.parse)

        self._run_choices(chat.n, params, lambda p: state.scheduler.submit(plan.messages, p, tools=plan.template_tools),
                          "messages", reply)

    def _post_text(self) -> None:
        """POST /v1/completions: a raw prompt (no chat template), its continuation as `text`."""
        state = self.server_state
        try:
            text = parse_completion(self._read_body(), state.defaults, max_n=state.scheduler.parallel)
        except BadBody as err:
            raise ApiError(400, str(err)) from None
        except RequestError as err:
            raise ApiError(400, str(err), param=err.key) from None
        reply = TextReply(state.model_id, text.prompt, text.params.logprobs, text.n)

        def answer(requests: list) -> None:
            if text.stream:
                self._stream_text(requests, reply, text.include_usage)
            else:
                self._json(200, reply.whole([(c.answer, c.stats, events) for c, events in _finished(requests)]))

        self._run_choices(text.n, text.params, lambda p: state.scheduler.submit(text.prompt, p), "prompt", answer)

    def _run_choices(self, n: int, params: GenerationParams, submit, prompt_param: str, reply) -> None:
        """Submit `n` choices, each its own sequence seeded seed, seed+1, … (`submit(params)` → a
        scheduler request), and `reply(requests)`; their slots are freed however it ends, and a
        client that hangs up cancels them."""
        state = self.server_state
        requests: list = []
        admitted = 0
        try:
            for i in range(n):
                state.admit()
                admitted += 1
                try:
                    requests.append(submit(params if params.seed is None else replace(params, seed=params.seed + i)))
                except ContextOverflow as err:
                    raise ApiError(400, str(err), param=prompt_param, code="context_length_exceeded") from None
                except EdgedsError as err:
                    raise ApiError(400, str(err), param=_param_of(err, prompt_param)) from None
            watch = state.hangups.watch(self.connection, lambda: [r.cancel() for r in requests])
            try:
                reply(requests)
            finally:
                state.hangups.unwatch(watch)
        finally:
            for request in requests:
                request.cancel()  # a no-op once it finished; frees the slot if this thread failed
            for _ in range(admitted):
                state.release()

    def _stream_text(self, requests: list, reply: TextReply, include_usage: bool) -> None:
        self._start_events()
        done: list[Stats] = []
        failed = False
        for batch in _merged(requests):  # what queued up while the last write went out: one write
            out: list[bytes] = []
            for index, event in batch:
                if isinstance(event, Answer):
                    out.append(_sse(reply.chunk(event.text, index=index, events=[event])))
                elif isinstance(event, Done):
                    done.append(event.stats)
                    if event.stats.finish_reason == "error":
                        failed = True
                        out.append(_sse(error_body(event.stats.error or "generation failed", type="server_error")))
                    else:
                        out.append(_sse(reply.chunk("", event.stats, index=index)))
            self._write(out)
        tail = [_sse(reply.usage_chunk(*done))] if include_usage and not failed else []
        self._write(tail + [b"data: [DONE]\n\n"])

    def _start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

    def send_response(self, code: int, message: str | None = None) -> None:
        """Every reply, errors and event streams included, with the CORS headers its origin gets."""
        super().send_response(code, message)
        origin = self.headers.get("Origin") if self.headers is not None else None
        for name, value in self.server_state.cors.headers(origin).items():
            self.send_header(name, value)

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

    def _complete(self, requests: list, logprobs: bool | None, parse_calls: bool = False) -> None:
        replies = _finished(requests)
        out = []
        for index, (completion, events) in enumerate(replies):
            content, calls = parse_tool_calls(completion.answer) if parse_calls else (completion.answer, [])
            message = {"role": "assistant", "content": (content.strip() or None) if calls else content,
                       "reasoning_content": completion.reasoning or None,
                       **({"tool_calls": [tool_call(c) for c in calls]} if calls else {})}
            out.append({"index": index, "message": message,
                        "finish_reason": finish_reason(completion.stats, finished_calls(calls)),
                        "logprobs": logprobs_of(events) if logprobs else None, **thinking_flag(completion.stats)})
        self._json(200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": self.server_state.model_id, "choices": out,
            "usage": total_usage([completion.stats for completion, _ in replies]),
        })

    def _stream(self, requests: list, include_usage: bool, logprobs: bool | None, parse_calls: bool = False) -> None:
        chunk_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        model = self.server_state.model_id

        def chunk(index: int, delta: dict, finish: str | None = None, events: list | None = None) -> dict:
            choices = [{"index": index, "delta": delta, "finish_reason": finish,
                        "logprobs": logprobs_of(events or []) if logprobs and events else None}]
            return {"id": chunk_id, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": choices}

        # a plain text chunk is the same JSON every time but for its text: encode the rest once
        frames: dict[tuple[int, type], tuple[bytes, bytes]] = {}

        def text_chunk(index: int, event: Reasoning | Answer) -> bytes:
            key = (index, type(event))
            if key not in frames:
                frames[key] = _frame(lambda delta: chunk(index, delta),
                                     "reasoning_content" if isinstance(event, Reasoning) else "content")
            head, tail = frames[key]
            return head + json.dumps(event.text, ensure_ascii=False).encode("utf-8") + tail

        self._start_events()
        self._write([_sse(chunk(index, {"role": "assistant", "content": ""})) for index in range(len(requests))])
        done: list[Stats] = []
        failed = False
        parsers = [ToolCallParser() for _ in requests] if parse_calls else None
        for batch in _merged(requests):  # what queued up while the last write went out: one write
            out: list[bytes] = []
            for index, event in batch:
                calls = parsers[index] if parsers else None
                if isinstance(event, Answer) and calls is not None:
                    out += [_sse(chunk(index, answer_delta(piece))) for piece in calls.feed(event.text)]
                elif isinstance(event, Answer) and logprobs:
                    out.append(_sse(chunk(index, {"content": event.text}, events=[event])))
                elif isinstance(event, (Reasoning, Answer)):
                    out.append(text_chunk(index, event))
                elif isinstance(event, Done):
                    out += [_sse(chunk(index, answer_delta(piece))) for piece in (calls.finish() if calls else ())]
                    stats = event.stats
                    done.append(stats)
                    if stats.finish_reason == "error":
                        failed = True
                        out.append(_sse(error_body(stats.error or "generation failed", type="server_error")))
                    else:
                        final = chunk(index, {}, finish_reason(stats, bool(calls) and finished_calls(calls.calls)))
                        final["choices"][0].update(thinking_flag(stats))
                        out.append(_sse(final))
            self._write(out)
        tail = [_sse({**chunk(0, {}), "choices": [], "usage": total_usage(done)})] if include_usage and not failed else []
        self._write(tail + [b"data: [DONE]\n\n"])

    def _write(self, frames: list[bytes]) -> None:
        if frames:
            self.wfile.write(b"".join(frames))
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


def _sse(data: dict) -> bytes:
    return b"data: " + json.dumps(data, ensure_ascii=False).encode("utf-8") + b"\n\n"


def _frame(chunk, key: str) -> tuple[bytes, bytes]:
    """The SSE bytes before and after the JSON string of a `{key: text}` delta chunk."""
    mark = uuid.uuid4().hex
    head, tail = json.dumps(chunk({key: mark}), ensure_ascii=False).split(f'"{mark}"')
    return b"data: " + head.encode("utf-8"), tail.encode("utf-8") + b"\n\n"


def _merged(requests: list) -> Iterator[list[tuple[int, Event]]]:
    """Batches of (choice index, event) of several requests as they come, each all that queued
    up since the last one was taken; one request needs no threads."""
    if len(requests) == 1:
        for batch in requests[0].event_batches():
            yield [(0, event) for event in batch]
        return
    merged: queue.Queue[tuple[int, Event]] = queue.Queue()

    def pump(index: int, request) -> None:
        for event in request.events():
            merged.put((index, event))

    for index, request in enumerate(requests):
        threading.Thread(target=pump, args=(index, request), name="edgeds-choice", daemon=True).start()
    running = len(requests)
    while running:
        batch = [merged.get()]
        while not merged.empty():
            batch.append(merged.get_nowait())
        running -= sum(isinstance(event, Done) for _, event in batch)
        yield batch


def _param_of(err: EdgedsError, prompt_param: str = "messages") -> str:
    """The request field a refused submission is about (`prompt_param`: where the prompt came from)."""
    if isinstance(err, RequestError):
        return err.key
    return "grammar" if str(err).startswith("the grammar") else prompt_param


def _finished(requests: list) -> list[tuple[Completion, list[Event]]]:
    """Each request's Completion and events once it ended; ApiError for one that did not come to
    its end (500 on an error, 503 when cancelled: the client hung up, or the server is stopping)."""
    replies = []
    for request in requests:
        events = list(request.events())
        replies.append((collect(events), events))
    for completion, _ in replies:
        stats = completion.stats
        if stats.finish_reason == "error":
            raise ApiError(500, stats.error or "generation failed", type="server_error")
        if stats.finish_reason == "cancelled":
            raise ApiError(503, "the request was cancelled", type="server_error", code="cancelled",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
    return replies
