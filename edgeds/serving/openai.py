"""OpenAI's chat-completions wire format, both ways: `edgeds serve` writes it, the remote
client reads it. Stats ↔ `usage`, finish reasons, tool calls, and the error object."""

from __future__ import annotations

from typing import Iterable

from edgeds.events import Answer, Stats, TokenLogprob
from edgeds.runtime.tool_parser import CallStart, Piece, Text, ToolCall

# what servers send as finish_reason → edgeds' finish reasons
FINISH_FROM_WIRE = {"stop": "stop", "length": "length", "eos": "stop", "content_filter": "stop", "tool_calls": "stop"}


def usage(stats: Stats) -> dict:
    """`usage` of a reply; reasoning tokens in `completion_tokens_details`, as DeepSeek's API does,
    prompt tokens served from the prefix cache in `prompt_tokens_details.cached_tokens`, as OpenAI's does.
    Speculative drafts go where OpenAI counts a predicted output's tokens: those the model kept
    in `accepted_prediction_tokens`, the others in `rejected_prediction_tokens`."""
    return total_usage([stats])


def total_usage(stats: Iterable[Stats]) -> dict:
    """`usage` of a reply with several choices: their generated tokens summed, the prompt counted
    once (as OpenAI does), with the cached part of the choice that reused the most."""
    stats = list(stats)
    prompt = max((s.prompt_tokens for s in stats), default=0)
    completion = sum(s.completion_tokens for s in stats)
    accepted = sum(s.accepted_tokens for s in stats)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": max((s.cached_tokens for s in stats), default=0)},
            "completion_tokens_details": {"reasoning_tokens": sum(s.reasoning_tokens for s in stats),
                                          "accepted_prediction_tokens": accepted,
                                          "rejected_prediction_tokens": sum(s.draft_tokens for s in stats) - accepted}}


def logprobs_of(events: Iterable) -> dict:
    """A choice's `logprobs`: `{"content": [...]}` over the answer tokens of `events` (the
    reasoning's tokens are not reported, as OpenAI reports none)."""
    return {"content": [_logprob(entry, top=True) for event in events if isinstance(event, Answer)
                        for entry in event.logprobs or ()]}


def _logprob(entry: TokenLogprob, top: bool = False) -> dict:
    out = {"token": entry.token, "logprob": entry.logprob, "bytes": list(entry.bytes)}
    if top:
        out["top_logprobs"] = [_logprob(alt) for alt in entry.top_logprobs]
    return out


def token_counts(usage: dict) -> tuple[int, int, int]:
    """(prompt, reasoning, answer) tokens of a server's `usage` (all 0 when it sent none)."""
    completion = int(usage.get("completion_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return int(usage.get("prompt_tokens") or 0), reasoning, max(completion - reasoning, 0)


def finish_reason(stats: Stats, called: bool = False) -> str:
    """`called`: the reply holds tool calls."""
    if stats.finish_reason == "length":
        return "length"
    return "tool_calls" if called else "stop"


def tool_call(call: ToolCall) -> dict:
    """One entry of a message's `tool_calls`."""
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def answer_delta(piece: Piece) -> dict:
    """A stream chunk's delta for a piece of a parsed answer: content, a call's start (id, type,
    name, empty arguments) or the next fragment of its arguments, as OpenAI streams them."""
    if isinstance(piece, Text):
        return {"content": piece.text}
    if isinstance(piece, CallStart):
        function = {"name": piece.name, "arguments": ""}
        return {"tool_calls": [{"index": piece.index, "id": piece.id, "type": "function", "function": function}]}
    return {"tool_calls": [{"index": piece.index, "function": {"arguments": piece.text}}]}


def thinking_flag(stats: Stats) -> dict:
    """The choice's `stopped_thinking` extension: present (true) only for a reply that ended
    inside its think block."""
    return {"stopped_thinking": True} if stats.stopped_thinking else {}


def error_body(message: str, *, type: str = "invalid_request_error", param: str | None = None,  # noqa: A002
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_message(body: object) -> str:
    """The message of an error body, whatever its shape."""
    error = body.get("error") if isinstance(body, dict) else body
    if isinstance(error, dict):
        return str(error.get("message") or error)
    return str(error or body)
