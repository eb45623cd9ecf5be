"""`edgeds serve` (placeholder until its issue lands)."""

from edgeds.cli._app import app  # noqa: F401
