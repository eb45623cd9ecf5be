"""OpenAI's chat-completions wire format, both ways: `edgeds serve` writes it, the remote
client reads it. Stats ↔ `usage`, finish reasons, and the error object."""

from __future__ import annotations

from edgeds.events import Stats

# what servers send as finish_reason → edgeds' finish reasons
FINISH_FROM_WIRE = {"stop": "stop", "length": "length", "eos": "stop", "content_filter": "stop", "tool_calls": "stop"}


def usage(stats: Stats) -> dict:
    """`usage` of a reply; reasoning tokens in `completion_tokens_details`, as DeepSeek's API does,
    prompt tokens served from the prefix cache in `prompt_tokens_details.cached_tokens`, as OpenAI's does."""
    return {
        "prompt_tokens": stats.prompt_tokens,
        "completion_tokens": stats.completion_tokens,
        "total_tokens": stats.prompt_tokens + stats.completion_tokens,
        "prompt_tokens_details": {"cached_tokens": stats.cached_tokens},
        "completion_tokens_details": {"reasoning_tokens": stats.reasoning_tokens},
    }


def token_counts(usage: dict) -> tuple[int, int, int]:
    """(prompt, reasoning, answer) tokens of a server's `usage` (all 0 when it sent none)."""
    completion = int(usage.get("completion_tokens") or 0)
    reasoning = int((usage.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return int(usage.get("prompt_tokens") or 0), reasoning, max(completion - reasoning, 0)


def finish_reason(stats: Stats) -> str:
    return "length" if stats.finish_reason == "length" else "stop"


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
