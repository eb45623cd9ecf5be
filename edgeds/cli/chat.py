"""`edgeds chat [MODEL]`: the Textual chat app (imported only when this command runs)."""

from __future__ import annotations

from typing import Optional

import typer

from edgeds.cli._app import app
from edgeds.errors import UsageError


@app.command("chat")
def chat(
    model: Optional[str] = typer.Argument(None, help="A GGUF file or a registry id (default: the registry's default chat model)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", min=256, help="Context length (default: trained length, capped by RAM)."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt for new chats (R1 models get it folded into the first user turn)."),
    moe_offload: Optional[str] = typer.Option(None, "--moe-offload", help="Keep routed experts in CPU RAM (MoE models; needs the placement planner)."),
) -> None:
    """Chat with a model in a terminal UI; reasoning streams into a collapsible section."""
    if model is None:
        from edgeds.registry import load_registry

        model = load_registry().default_chat or None
        if model is None:
            raise UsageError("give a MODEL (a GGUF file or a registry id)")
    if moe_offload is not None:
        # TODO(placement): pass to the placement planner once edgeds.placement lands.
        raise UsageError("--moe-offload needs the placement planner, which this build does not have yet")
    from edgeds.models import resolve_model

    path = resolve_model(model, pull="ask").path  # downloads (asking first) before the UI starts
    from edgeds.app import run_chat

    run_chat(str(path), n_ctx=n_ctx, system=system)
