"""Every field of OpenAI's chat-completions request, and what `edgeds serve` does with it.

No field is dropped silently: each is honoured, ignored because ignoring it cannot change the
reply (the table says why), or refused with a 400 naming it when it asks for something
edgeds does not do. A field outside this table (and outside the edgeds extensions) is a 400
too, so that a typo or a newer OpenAI feature is never mistaken for a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Mapping

from edgeds.runtime.request import RequestError

Handling = Literal["honoured", "ignored", "rejected"]


@dataclass(frozen=True)
class Field:
    """What edgeds does with one request field. A rejected field is still accepted with a
    value in `no_op` (or null): the value that asks for nothing."""

    handling: Handling
    note: str
    no_op: tuple[Any, ...] = ()


OPENAI_FIELDS: dict[str, Field] = {
    "messages": Field("honoured", "system/developer, user, assistant (with tool_calls) and tool turns; text content or text parts"),
    "model": Field("ignored", "one model per server; the reply names the model it ran"),
    "audio": Field("rejected", "no audio output", (None,)),
    "frequency_penalty": Field("honoured", "llama.cpp's penalties sampler, over the reply's last 8192 tokens"),
    "function_call": Field("rejected", "the deprecated form of tool_choice: send tool_choice", ("none", "auto")),
    "functions": Field("rejected", "the deprecated form of tools: send tools", ([],)),
    "logit_bias": Field("honoured", "llama.cpp's logit-bias sampler; token ids checked against the vocabulary"),
    "logprobs": Field("honoured", "log-softmax of the raw logits of each answer token"),
    "max_completion_tokens": Field("honoured", "most generated tokens, reasoning included; wins over max_tokens"),
    "max_tokens": Field("honoured", "most generated tokens, reasoning included"),
    "metadata": Field("ignored", "tags for OpenAI's dashboard; edgeds keeps no record of requests"),
    "modalities": Field("rejected", "text output only", (["text"],)),
    "moderation": Field("rejected", "edgeds runs no moderation model"),
    "n": Field("honoured", "choices, each its own sequence (seed, seed+1, …); at most the server's slots"),
    "parallel_tool_calls": Field("honoured", "false: a required call is one call"),
    "prediction": Field("rejected", "predicted outputs are not supported"),
    "presence_penalty": Field("honoured", "llama.cpp's penalties sampler, over the reply's last 8192 tokens"),
    "prompt_cache_key": Field("ignored", "a cache-routing hint; edgeds reuses a cached prompt prefix by itself"),
    "prompt_cache_options": Field("ignored", "prompt-cache hints; they change where a prompt is cached, not the reply"),
    "prompt_cache_retention": Field("ignored", "how long OpenAI keeps a cached prompt; never changes the reply"),
    "reasoning_effort": Field("rejected", "R1 models have no effort levels; use the reasoning_budget extension"),
    "response_format": Field("honoured", "text, json_object or json_schema, as a grammar on the answer"),
    "safety_identifier": Field("ignored", "an end-user id for OpenAI's abuse checks; nothing here uses it"),
    "seed": Field("honoured", "the sampler's seed; the same seed gives the same reply"),
    "service_tier": Field("ignored", "one tier here: every request is served the same way"),
    "stop": Field("honoured", "up to 4 strings that end the answer, never shown"),
    "store": Field("ignored", "storing replies for OpenAI's dashboard; edgeds stores nothing"),
    "stream": Field("honoured", "server-sent events"),
    "stream_options": Field("honoured", "include_usage adds a last chunk with usage"),
    "temperature": Field("honoured", "0 to 2; 0 is greedy"),
    "tool_choice": Field("honoured", "none, auto, required or a named function (a grammar drives the call)"),
    "tools": Field("honoured", "functions with JSON-schema parameters, described in the prompt; calls parsed back"),
    "top_logprobs": Field("honoured", "0 to 20 likeliest alternatives per token; needs logprobs"),
    "top_p": Field("honoured", "nucleus sampling"),
    "user": Field("ignored", "an end-user id for OpenAI's abuse checks; nothing here uses it"),
    "verbosity": Field("rejected", "no verbosity levels", ("medium",)),
    "web_search_options": Field("rejected", "no web search"),
}

# fields edgeds adds (llama-server knows the sampler ones by these names too)
EXTENSIONS: dict[str, str] = {
    "grammar": "a GBNF grammar on the answer",
    "reasoning_budget": "most reasoning tokens; then the think block is closed for the model",
    "top_k": "sample from the K likeliest tokens",
    "min_p": "drop tokens below this fraction of the likeliest one's probability",
    "repeat_penalty": "penalise tokens seen in the last 64",
}


def check_fields(data: Mapping[str, Any]) -> None:
    """Refuse a field edgeds does not know, or a rejected field that asks for something.

    Raises:
        RequestError: naming the field.
    """
    for key, value in data.items():
        field = OPENAI_FIELDS.get(key)
        if field is None:
            if key not in EXTENSIONS:
                raise RequestError(key, f"unknown field {key[:80]!r}")
        elif field.handling == "rejected" and value is not None and value not in field.no_op:
            raise RequestError(key, f"'{key}' is not supported ({field.note})")
    if "stream_options" in data and data["stream_options"] is not None:
        options = data["stream_options"]
        if not isinstance(options, dict) or set(options) - {"include_usage", "include_obfuscation"}:
            raise RequestError("stream_options", "'stream_options' must be an object with include_usage")


def choices(data: Mapping[str, Any], limit: int) -> int:
    """The request's `n`: 1 to `limit` (the server's slots)."""
    n = data.get("n")
    if n is None:
        return 1
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= limit:
        raise RequestError("n", f"'n' must be an integer from 1 to {limit} (the server's slots)")
    return n
