"""`edgeds chat [MODEL]`: the Textual chat app (imported only when this command runs)."""

from __future__ import annotations

from typing import Optional

import typer

from edgeds.cli._app import app
from edgeds.cli.options import MoeOffload
from edgeds.errors import UsageError


@app.command("chat")
def chat(
    model: Optional[str] = typer.Argument(None, help="A GGUF file or a registry id (default: the registry's default chat model)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", min=256, help="Context length (default: trained length, capped by RAM)."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt for new chats (R1 models get it folded into the first user turn)."),
    moe_offload: str = MoeOffload,
) -> None:
    """Chat with a model in a terminal UI; reasoning streams into a collapsible section."""
    if model is None:
        from edgeds.catalog.registry import load_registry

        model = load_registry().default_chat or None
        if model is None:
            raise UsageError("give a MODEL (a GGUF file or a registry id)")
    from edgeds.catalog.resolve import resolve_model
    from edgeds.machine.placement import parse_moe_offload

    parse_moe_offload(moe_offload)
    resolve_model(model, pull="ask")  # downloads (asking first) before the UI starts
    from edgeds.app import run_chat

    run_chat(model, n_ctx=n_ctx, system=system, moe_offload=moe_offload)
