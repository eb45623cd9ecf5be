"""OpenAI's legacy text completions, `POST /v1/completions`, for `edgeds serve`: one prompt
string in, its continuation out as `text`, with no chat template and no reasoning split
(runtime.rawtext). Streamed as SSE chunks of `object: "text_completion"`, like OpenAI's.

The request fields are a table: those honoured, and OpenAI's that edgeds does not implement,
which are accepted only at the value that means "off" and otherwise refused with a 400 naming
them. Any other field is refused too, so that nothing a client asks for is dropped silently.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from edgeds.errors import UsageError
from edgeds.events import Stats
from edgeds.runtime.grammar import check_grammar
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.request import SAMPLING_FIELDS, RequestError, sampling_params, type_name
from edgeds.serving.openai import finish_reason

# honoured besides the sampling fields. model: any name is served, as llama-server does; user:
# an end-user id for OpenAI's abuse monitoring, which changes nothing in a reply
FIELDS = ("model", "prompt", "stream", "stream_options", "grammar", "user", *SAMPLING_FIELDS)
# not implemented: field → the values that ask for nothing (accepted; anything else is a 400)
OFF_VALUES: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
    "logprobs": (None,),
    "stop": (None, [], ""),
    "presence_penalty": (None, 0),
    "frequency_penalty": (None, 0),
    "logit_bias": (None, {}),
}


class BadBody(UsageError):
    """A body that is not a JSON object (no field to name)."""


@dataclass(frozen=True)
class TextRequest:
    prompt: str
    params: GenerationParams
    stream: bool
    include_usage: bool


def parse_completion(body: bytes, defaults: GenerationParams = GenerationParams()) -> TextRequest:
    """A completions request body → TextRequest over `defaults`.

    Raises:
        RequestError: a bad or unsupported field (its `key` names it). BadBody: not a JSON object.
    """
    try:
        data = json.loads(body or b"null")
    except (ValueError, UnicodeDecodeError) as err:
        raise BadBody(f"the request body is not valid JSON ({err})") from None
    except RecursionError:
        raise BadBody("the request body is not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise BadBody("the request body must be a JSON object")
    for key, value in data.items():
        if key in OFF_VALUES:
            if not any(_same(value, off) for off in OFF_VALUES[key]):
                raise RequestError(key, f"'{key}' is not supported by edgeds' /v1/completions")
        elif key not in FIELDS:
            raise RequestError(key, f"unknown field {key!r} (/v1/completions takes: {', '.join(FIELDS)})")
    for key in ("model", "user"):
        if data.get(key) is not None and not isinstance(data[key], str):
            raise RequestError(key, f"'{key}' must be a string, not {type_name(data[key])}")
    params = sampling_params(data, defaults)
    grammar = data.get("grammar")
    if grammar is not None:
        if not isinstance(grammar, str):
            raise RequestError("grammar", "'grammar' must be a GBNF string")
        try:
            check_grammar(grammar)
        except UsageError as err:
            raise RequestError("grammar", str(err)) from None
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream", "'stream' must be true or false")
    return TextRequest(_prompt(data.get("prompt")), replace(params, grammar=grammar), stream,
                       _include_usage(data.get("stream_options")))


def _same(value: Any, off: Any) -> bool:
    """JSON equality: 0 and 0.0 are the same, false and 0 are not."""
    return value == off and isinstance(value, bool) == isinstance(off, bool) and type(value) in (type(off), int, float)


def _prompt(value: Any) -> str:
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) > 1:
        raise RequestError("prompt", "only one prompt per request (send the others as their own requests)")
    raise RequestError("prompt", f"'prompt' must be a string (or a list of one string), not {type_name(value)}")


def _include_usage(options: Any) -> bool:
    if options is None:
        return False
    if not isinstance(options, dict) or set(options) - {"include_usage"} \
            or not isinstance(options.get("include_usage", False), bool):
        raise RequestError("stream_options", "'stream_options' must be {\"include_usage\": true|false}")
    return bool(options.get("include_usage"))


def text_usage(stats: Stats) -> dict:
    return {"prompt_tokens": stats.prompt_tokens, "completion_tokens": stats.completion_tokens,
            "total_tokens": stats.prompt_tokens + stats.completion_tokens}


class TextReply:
    """The reply objects of one completion: the whole one, or its stream's chunks."""

    def __init__(self, model: str):
        self.id, self.created, self.model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), model

    def _frame(self, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def whole(self, text: str, stats: Stats) -> dict:
        return self._frame([self._choice(text, finish_reason(stats))], usage=text_usage(stats))

    def chunk(self, text: str, stats: Stats | None = None) -> dict:
        """A piece of text; the last chunk carries the finish reason (`stats`)."""
        return self._frame([self._choice(text, finish_reason(stats) if stats else None)])

    def usage_chunk(self, stats: Stats) -> dict:
        return self._frame([], usage=text_usage(stats))

    @staticmethod
    def _choice(text: str, finish: str | None) -> dict:
        return {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
