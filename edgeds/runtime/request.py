"""One validation of chat requests: the messages and sampling fields that batch rows, serve
requests and `edgeds run` carry. Each front end adds its own frame to the error (a batch row's
line number, an HTTP 400 with `param`); the rules and their wording live here.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any, Callable, Mapping

from edgeds.errors import UsageError
from edgeds.runtime.grammar import check_grammar
from edgeds.runtime.params import GenerationParams
from edgeds.runtime.structured import response_format_grammar

ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"developer": "system"}  # OpenAI's newer name for the system turn
MAX_TOOL_CALLS = 128  # tool calls in one assistant message

# field → (kind, lowest, highest); the sampling fields every front end accepts.
SAMPLING_FIELDS: dict[str, tuple[str, float | None, float | None]] = {
    "max_tokens": ("integer", 1, None),
    "temperature": ("number", 0, 2),
    "top_p": ("number", 0, 1),
    "top_k": ("integer", 0, None),
    "min_p": ("number", 0, 1),
    "repeat_penalty": ("number", 1, 2),  # 1 is off; below 1 would reward repetition
    "seed": ("integer", None, None),
    "presence_penalty": ("number", -2, 2),
    "frequency_penalty": ("number", -2, 2),
    "top_logprobs": ("integer", 0, 20),
    "reasoning_budget": ("integer", 0, None),  # an edgeds extension: most reasoning tokens
}

MAX_STOPS = 4  # OpenAI's limit
MAX_STOP_CHARS = 256
MAX_LOGIT_BIAS = 1024  # entries of a logit_bias object


class RequestError(UsageError):
    """A bad request field; `key` is its path (`messages[2].role`, `temperature`)."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


def type_name(value: Any) -> str:
    """How error messages name a JSON value's type."""
    return {str: "a string", int: "an integer", float: "a number", bool: "a boolean", list: "a list",
            dict: "an object", type(None): "null"}.get(type(value), type(value).__name__)


def check_messages(messages: Any) -> list[dict]:
    """The conversation as [{role, content}] with string content (a list of text parts is
    joined), plus `tool_calls` / `tool_call_id` on tool-calling turns; anything else is a
    RequestError naming the message and field."""
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages", "'messages' must be a non-empty list")
    clean = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"messages[{i}]", f"messages[{i}] must be an object, not {type_name(message)}")
        role = message.get("role")
        role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
        if role not in ROLES:
            raise RequestError(f"messages[{i}].role",
                               f"messages[{i}].role must be one of {', '.join([*ROLES, *ROLE_ALIASES])}")
        clean.append({"role": role, "content": _text(message.get("content"), i), **_tool_fields(message, i)})
    return clean


# -- tool calling: an assistant turn's `tool_calls` (its content may be null), a tool result's
# `tool_call_id`. Chat templates render a call only when the assistant's content is None.
def _tool_fields(message: dict, i: int) -> dict:
    role, calls = message["role"], message.get("tool_calls")
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str):
            raise RequestError(f"messages[{i}].tool_call_id", f"messages[{i}].tool_call_id must be a string")
        return {"tool_call_id": call_id}
    if calls is None:
        return {}
    key = f"messages[{i}].tool_calls"
    if role != "assistant":
        raise RequestError(key, f"{key} is only allowed on assistant messages")
    if not isinstance(calls, list) or not 0 < len(calls) <= MAX_TOOL_CALLS:
        raise RequestError(key, f"{key} must be a list of 1 to {MAX_TOOL_CALLS} calls")
    clean = [_tool_call(call, f"{key}[{j}]") for j, call in enumerate(calls)]
    return {"tool_calls": clean, **({} if _text(message.get("content"), i) else {"content": None})}


def _tool_call(call: Any, key: str) -> dict:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict) or call.get("type", "function") != "function":
        raise RequestError(key, f"{key} must be {{\"type\": \"function\", \"function\": {{\"name\", \"arguments\"}}}}")
    name, arguments, call_id = function.get("name"), function.get("arguments", ""), call.get("id", "")
    if not isinstance(name, str) or not name:
        raise RequestError(f"{key}.function.name", f"{key}.function.name must be a non-empty string")
    if isinstance(arguments, dict):  # some clients send the object itself
        arguments = json.dumps(arguments, ensure_ascii=False)
    if not isinstance(arguments, str):
        raise RequestError(f"{key}.function.arguments", f"{key}.function.arguments must be a JSON string")
    if not isinstance(call_id, str):
        raise RequestError(f"{key}.id", f"{key}.id must be a string")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
# -- end of tool calling


def _text(content: Any, i: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text" for p in content):
        return "".join(str(p.get("text", "")) for p in content)
    raise RequestError(f"messages[{i}].content", f"messages[{i}].content must be a string or a list of text parts")


def with_system(messages: list[dict], system: str | None) -> list[dict]:
    """`messages` behind a system prompt (the chat template decides whether the model gets it
    as a system turn or folded into the first user turn)."""
    return ([{"role": "system", "content": system}] if system else []) + list(messages)


def check_sampling(data: Mapping[str, Any], key: str) -> int | float | None:
    """One sampling field of `data` (None when absent), checked against SAMPLING_FIELDS."""
    value = data.get(key)
    if value is None:
        return None
    kind, lo, hi = SAMPLING_FIELDS[key]
    types = (int,) if kind == "integer" else (int, float)
    if isinstance(value, bool) or not isinstance(value, types):
        article = "an" if kind == "integer" else "a"
        raise RequestError(key, f"key '{key}' must be {article} {kind}, not {type_name(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(key, f"'{key}' must be a finite number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        bounds = f"at least {lo}" if hi is None else f"between {lo} and {hi}"
        raise RequestError(key, f"'{key}' is out of range (must be {bounds})")
    return value


def _stop(value: Any) -> tuple[str, ...] | None:
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise RequestError("stop", "'stop' must be a string or a list of strings")
    if len(stops) > MAX_STOPS:
        raise RequestError("stop", f"'stop' has {len(stops)} strings; the limit is {MAX_STOPS}")
    if any(not s for s in stops) or any(len(s) > MAX_STOP_CHARS for s in stops):
        raise RequestError("stop", f"each 'stop' string must have 1 to {MAX_STOP_CHARS} characters")
    return tuple(stops) or None


def _logit_bias(value: Any) -> tuple[tuple[int, float], ...] | None:
    if not isinstance(value, dict):
        raise RequestError("logit_bias", "'logit_bias' must be an object of token id → bias")
    if len(value) > MAX_LOGIT_BIAS:
        raise RequestError("logit_bias", f"'logit_bias' has {len(value)} entries; the limit is {MAX_LOGIT_BIAS}")
    pairs = []
    for key, bias in value.items():
        if not (key.isascii() and key.isdigit() and len(key) <= 9):
            raise RequestError("logit_bias", f"logit_bias: key {key[:20]!r} is not a token id")
        if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
            raise RequestError("logit_bias", f"logit_bias[{key!r}] must be a number between -100 and 100")
        pairs.append((int(key), float(bias)))
    return tuple(sorted(pairs)) or None


def _flag(key: str) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        if not isinstance(value, bool):
            raise RequestError(key, f"'{key}' must be true or false")
        return value
    return check


def _grammar(value: Any) -> str:
    if not isinstance(value, str):
        raise RequestError("grammar", "'grammar' must be a GBNF string")
    try:
        check_grammar(value)
    except UsageError as err:
        raise RequestError("grammar", str(err)) from None
    return value


def _response_format(value: Any) -> str | None:
    try:
        return response_format_grammar(value)
    except UsageError as err:
        raise RequestError("response_format", str(err)) from None


# field → (GenerationParams field, checker of the JSON value); fields the range table cannot say
CHECKED_FIELDS: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "stop": ("stop", _stop),
    "logit_bias": ("logit_bias", _logit_bias),
    "logprobs": ("logprobs", _flag("logprobs")),
    "grammar": ("grammar", _grammar),  # an edgeds (and llama-server) extension: GBNF text
    "response_format": ("grammar", _response_format),
}
REQUEST_FIELDS = (*SAMPLING_FIELDS, *CHECKED_FIELDS)  # every generation field a request may carry


def sampling_params(data: Mapping[str, Any], defaults: GenerationParams = GenerationParams()) -> GenerationParams:
    """The generation fields of a request over `defaults` (a field that is absent or null keeps
    the default)."""
    given: dict[str, Any] = {key: check_sampling(data, key) for key in SAMPLING_FIELDS}
    if data.get("grammar") is not None and data.get("response_format") is not None:
        raise RequestError("response_format", "give 'response_format' or 'grammar', not both")
    for key, (field, check) in CHECKED_FIELDS.items():
        if data.get(key) is not None:
            given[field] = check(data[key])
    if given.get("grammar") is not None and data.get("response_format") is not None:  # kept as given
        given["response_format"] = json.dumps(data["response_format"], ensure_ascii=False)
    if given.get("top_logprobs") is not None and not given.get("logprobs"):
        raise RequestError("top_logprobs", "'top_logprobs' needs 'logprobs': true")
    return replace(defaults, **{k: v for k, v in given.items() if v is not None})
