"""Errors meant for users: the CLI prints them as one line and exits non-zero.

Raise these (or a subclass) for anything a user can fix: a bad path, a malformed file,
a model that does not fit. Messages name the file, row or key and say what to do.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class EdgedsError(Exception):
    """A problem the user can fix. `str(err)` is the whole message, one line."""

    exit_code = 1


class UsageError(EdgedsError):
    """Bad arguments or options."""

    exit_code = 2


class ModelNotFound(EdgedsError):
    """A model spec that is neither a file nor a known, downloaded registry id."""


class ModelLoadError(EdgedsError):
    """llama.cpp refused to load a file (truncated, corrupt, unsupported)."""


class ContextOverflow(EdgedsError):
    """The prompt does not fit in the context window."""


class ConversionError(EdgedsError):
    """A checkpoint that cannot be converted (missing shard, unknown architecture, …)."""


class HubError(EdgedsError):
    """The Hugging Face hub is unreachable or a download failed its checks."""
