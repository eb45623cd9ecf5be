"""`edgeds chat [MODEL]`: the Textual chat app (imported only when this command runs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from edgeds.cli._app import app
from edgeds.cli.options import MoeOffload, read_grammar
from edgeds.errors import UsageError


def on_terminal() -> bool:
    """Whether stdin and stdout are both a terminal: the full-screen app needs both."""
    return sys.stdin.isatty() and sys.stdout.isatty()


@app.command("chat")
def chat(
    model: Optional[str] = typer.Argument(None, help="A GGUF file or a registry id (default: the registry's default chat model)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", min=256, help="Context length (default: trained length, capped by RAM)."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt for new chats (R1 models get it folded into the first user turn)."),
    moe_offload: str = MoeOffload,
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Most tokens per reply (reasoning included)."),
    grammar: Optional[Path] = typer.Option(None, "--grammar", help="A GBNF grammar file every reply follows."),
) -> None:
    """Chat with a model in a terminal UI; reasoning streams into a collapsible section."""
    if not on_terminal():
        raise UsageError("edgeds chat needs a terminal for stdin and stdout; "
                         "in pipes and scripts use `edgeds run MODEL [PROMPT]`")
    if model is None:
        from edgeds.catalog.registry import load_registry

        model = load_registry().default_chat or None
        if model is None:
            raise UsageError("give a MODEL (a GGUF file or a registry id)")
    from edgeds.catalog.resolve import resolve_model
    from edgeds.machine.placement import parse_moe_offload
    from edgeds.runtime.params import GenerationParams

    parse_moe_offload(moe_offload)
    params = GenerationParams(max_tokens=max_tokens, grammar=read_grammar(grammar))
    resolve_model(model, pull="ask")  # downloads (asking first) before the UI starts
    from edgeds.app import run_chat

    run_chat(model, n_ctx=n_ctx, system=system, moe_offload=moe_offload, params=params)
