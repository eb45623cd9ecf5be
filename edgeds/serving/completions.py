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
from edgeds.events import Answer, Event, TokenLogprob
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.request import SAMPLING_FIELDS, RequestError, sampling_params, type_name
from edgeds.serving.chat_fields import choices
from edgeds.serving.openai import finish_reason

# sampling fields that mean nothing here: the legacy `logprobs` integer carries the top-k, and a
# raw prompt has no think block to budget
NOT_HERE = ("top_logprobs", "reasoning_budget")
# honoured. model: any name is served, as llama-server does; user: an end-user id for OpenAI's
# abuse monitoring, which changes nothing in a reply; n: choices, each its own sequence (seed,
# seed+1, …), at most the server's slots; logprobs: the legacy integer, 0..MAX_LOGPROBS
# alternatives per token; stop, logit_bias, grammar: checked as chat's (runtime.request)
FIELDS = ("model", "prompt", "stream", "stream_options", "user", "n", "logprobs", "stop", "logit_bias", "grammar",
          *(key for key in SAMPLING_FIELDS if key not in NOT_HERE))
# not implemented: field → the values that ask for nothing (accepted; anything else is a 400)
OFF_VALUES: dict[str, tuple[Any, ...]] = {
    "best_of": (None, 1),
    "echo": (None, False),
    "suffix": (None, ""),
}
MAX_LOGPROBS = 5  # OpenAI's limit on the legacy field


class BadBody(UsageError):
    """A body that is not a JSON object (no field to name)."""


@dataclass(frozen=True)
class TextRequest:
    prompt: str
    params: GenerationParams
    stream: bool
    include_usage: bool
    n: int = 1


def parse_completion(body: bytes, defaults: GenerationParams = GenerationParams(), max_n: int = 1) -> TextRequest:
    """A completions request body → TextRequest over `defaults` (`n` at most `max_n`).

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
    top = _logprobs(data.get("logprobs"))
    params = sampling_params({**data, "logprobs": None}, defaults)
    if top is not None:
        params = replace(params, logprobs=True, top_logprobs=top)
    n = choices(data, max_n)
    stream = data.get("stream", False)
    if not isinstance(stream, bool):
        raise RequestError("stream", "'stream' must be true or false")
    return TextRequest(_prompt(data.get("prompt")), params, stream, _include_usage(data.get("stream_options")), n)


def _logprobs(value: Any) -> int | None:
    """The legacy `logprobs`: how many likeliest alternatives to list per token (None: no logprobs)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LOGPROBS:
        raise RequestError("logprobs", f"'logprobs' must be an integer from 0 to {MAX_LOGPROBS} (the alternatives "
                                       "listed per token)")
    return value


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


def text_usage(*stats: Stats) -> dict:
    """The usage of a reply's choices (the prompt counted once, as OpenAI counts it)."""
    prompt, completion = max(s.prompt_tokens for s in stats), sum(s.completion_tokens for s in stats)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


class TextReply:
    """The reply objects of one completion: the whole one, or its stream's chunks.

    With `logprobs`, each choice carries the legacy shape: its tokens, their log-probabilities,
    their alternatives and each token's character offset in prompt + completion."""

    def __init__(self, model: str, prompt: str = "", logprobs: bool = False, n: int = 1):
        self.id, self.created, self.model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), model
        self.logprobs = logprobs
        self._offsets = [len(prompt)] * n  # each choice's next text_offset

    def _frame(self, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
                "choices": choices, **extra}

    def whole(self, replies: list[tuple[str, Stats, list[Event]]]) -> dict:
        """The reply to (text, stats, events) of each choice."""
        out = [self._choice(index, text, finish_reason(stats), events) for index, (text, stats, events)
               in enumerate(replies)]
        return self._frame(out, usage=text_usage(*(stats for _, stats, _ in replies)))

    def chunk(self, text: str, stats: Stats | None = None, index: int = 0, events: list[Event] = ()) -> dict:
        """A piece of choice `index`'s text; its last chunk carries the finish reason (`stats`)."""
        return self._frame([self._choice(index, text, finish_reason(stats) if stats else None, events)])

    def usage_chunk(self, *stats: Stats) -> dict:
        return self._frame([], usage=text_usage(*stats))

    def _choice(self, index: int, text: str, finish: str | None, events: list[Event]) -> dict:
        logprobs = self._legacy(index, [e for event in events if isinstance(event, Answer)
                                        for e in event.logprobs or ()]) if self.logprobs else None
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}

    def _legacy(self, index: int, entries: list[TokenLogprob]) -> dict:
        offsets = []
        for entry in entries:
            offsets.append(self._offsets[index])
            self._offsets[index] += len(entry.token)
        return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{alt.token: alt.logprob for alt in e.top_logprobs} for e in entries],
                "text_offset": offsets}
