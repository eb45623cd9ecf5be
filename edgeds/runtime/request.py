"""One validation of chat requests: the messages and sampling fields that batch rows, serve
requests and `edgeds run` carry. Each front end adds its own frame to the error (a batch row's
line number, an HTTP 400 with `param`); the rules and their wording live here.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from typing import Any, Mapping

from edgeds.errors import UsageError
from edgeds.runtime.params import GenerationParams

ROLES = ("system", "user", "assistant", "tool")
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
}


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
        if role not in ROLES:
            raise RequestError(f"messages[{i}].role", f"messages[{i}].role must be one of {', '.join(ROLES)}")
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


def sampling_params(data: Mapping[str, Any], defaults: GenerationParams = GenerationParams()) -> GenerationParams:
    """The sampling fields of a request over `defaults` (a field that is absent keeps the default)."""
    given = {key: check_sampling(data, key) for key in SAMPLING_FIELDS}
    return replace(defaults, **{k: v for k, v in given.items() if v is not None})
