"""A client for any OpenAI-compatible chat server (llama-server, vLLM, `edgeds serve`, …).

`edgeds batch --endpoint URL` sends its rows here instead of to the embedded engine. Requests
stream (SSE), so the time to the first token is measured the same way as locally. Reasoning
comes from `delta.reasoning_content` (DeepSeek's API, llama-server, vLLM, LM Studio) or
`delta.reasoning` (Ollama); a server that leaves `<think>…</think>` in the content is split
here with the same ReasoningSplitter the engine uses. Only the standard library is used.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Callable

from edgeds.errors import EdgedsError
from edgeds.events import Answer, Reasoning, Stats
from edgeds.runtime.reasoning import CLOSE, OPEN, ReasoningSplitter
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.scheduler import Completion

FINISH = {"stop": "stop", "length": "length", "eos": "stop", "content_filter": "stop", "tool_calls": "stop"}


def base_url(endpoint: str) -> str:
    """`http://host:port`, `…/v1` or `…/v1/chat/completions` → the `…/v1` base."""
    url = endpoint.rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise EdgedsError(f"{endpoint}: the endpoint must be an http:// or https:// URL")
    for suffix in ("/chat/completions", "/completions"):
        if url.endswith(suffix):
            url = url[: -len(suffix)]
    return url if url.endswith("/v1") else url + "/v1"


def split_text(content: str) -> tuple[str, str]:
    """Reasoning and answer of a whole reply whose think block was left in the content.

    A `</think>` with no `<think>` before it means the template opened the block itself.
    """
    head = content.split(CLOSE, 1)[0]
    splitter = ReasoningSplitter(in_reasoning=CLOSE in content and OPEN not in head)
    events = splitter.feed(content) + splitter.finish()
    reasoning = "".join(e.text for e in events if isinstance(e, Reasoning))
    answer = "".join(e.text for e in events if isinstance(e, Answer))
    return reasoning, answer


class RemoteBackend:
    """Rows → `POST {endpoint}/chat/completions`, `parallel` requests in flight."""

    def __init__(self, endpoint: str, *, model: str | None = None, api_key: str | None = None,
                 parallel: int = 4, timeout: float = 600.0):
        self.base = base_url(endpoint)
        self.api_key = api_key
        self.timeout = timeout
        self.model = model or self._first_model()
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
            raise EdgedsError(f"{self.base}{path}: HTTP {err.code}: {_error_message(err)}") from None
        except (urllib.error.URLError, OSError) as err:
            reason = getattr(err, "reason", err)
            raise EdgedsError(f"{self.base}{path}: cannot reach the server ({reason})") from None

    def _first_model(self) -> str:
        with self._open("/models") as response:
            models = json.load(response).get("data") or []
        if not models:
            raise EdgedsError(f"{self.base}/models lists no model; name one with --model")
        return models[0]["id"]

    def complete(self, messages: list[dict], params: GenerationParams) -> Completion:
        """One streamed chat completion, collected. Server errors come back as an error Completion."""
        body: dict = {"model": self.model, "messages": messages, "stream": True,
                      "stream_options": {"include_usage": True}}
        for key in ("max_tokens", "temperature", "top_p", "seed"):
            value = getattr(params, key)
            if value is not None:
                body[key] = value
        if params.grammar:
            body["grammar"] = params.grammar  # llama-server and edgeds serve take GBNF here
        t0 = time.perf_counter()
        try:
            response = self._open("/chat/completions", body)
        except EdgedsError as err:
            return Completion("", "", Stats(finish_reason="error", error=str(err)))
        reasoning: list[str] = []
        content: list[str] = []
        usage: dict = {}
        finish = "stop"
        t_first = None
        with response:
            for data in _sse_data(response):
                if data == "[DONE]":
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return Completion("", "", Stats(finish_reason="error", error=_message(chunk)))
                usage = chunk.get("usage") or usage
                for choice in chunk.get("choices") or []:
                    delta = choice.get("delta") or choice.get("message") or {}
                    piece_r = delta.get("reasoning_content") or delta.get("reasoning") or ""
                    piece_c = delta.get("content") or ""
                    if (piece_r or piece_c) and t_first is None:
                        t_first = time.perf_counter()
                    reasoning.append(piece_r)
                    content.append(piece_c)
                    if choice.get("finish_reason"):
                        finish = FINISH.get(choice["finish_reason"], "stop")
        t_end = time.perf_counter()
        reasoning_text, answer_text = "".join(reasoning).strip(), "".join(content).strip()
        if not reasoning_text and CLOSE in answer_text:
            reasoning_text, answer_text = split_text(answer_text)
        completion_tokens = int(usage.get("completion_tokens") or 0)
        details = usage.get("completion_tokens_details") or {}
        reasoning_tokens = int(details.get("reasoning_tokens") or 0)
        decode_s = t_end - (t_first or t_end)
        return Completion(reasoning_text, answer_text, Stats(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            reasoning_tokens=reasoning_tokens,
            answer_tokens=max(completion_tokens - reasoning_tokens, 0),
            ttft_s=round((t_first or t_end) - t0, 4),
            decode_tok_s=round((completion_tokens - 1) / decode_s, 2) if completion_tokens > 1 and decode_s > 0 else 0.0,
            finish_reason=finish,  # type: ignore[arg-type]
        ))

    def submit(self, messages: list[dict], params: GenerationParams,
               on_done: Callable[[Completion], None]):
        def work() -> None:
            try:
                completion = self.complete(messages, params)
            except Exception as err:  # noqa: BLE001 - a broken reply fails its row only
                completion = Completion("", "", Stats(finish_reason="error", error=f"{type(err).__name__}: {err}"))
            on_done(completion)

        return self._pool.submit(work)

    def close(self) -> None:
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


def _message(body: dict) -> str:
    error = body.get("error")
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or body)


def _error_message(err: urllib.error.HTTPError) -> str:
    try:
        return _message(json.loads(err.read().decode("utf-8")))
    except (ValueError, OSError):
        return err.reason or "no details"
