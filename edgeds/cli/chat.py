"""`edgeds chat [MODEL]`: the Textual chat app (imported only when this command runs)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from edgeds.cli._app import app
from edgeds.cli.options import (Draft, DraftMax, Loras, MinP, MoeOffload, NoThinkPrefix, ReasoningBudget, RepeatPenalty,
                                Threads, TopK, parse_loras, read_grammar)
from edgeds.errors import UsageError


def on_terminal() -> bool:
    """Whether stdin and stdout are both a terminal: the full-screen app needs both."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def model_opener(n_threads: int | None, think_prefix: bool, loras=(), draft: str | None = None,
                 draft_max: int | None = None):
    """How the app opens models (its own, `workers.open_model`, with --threads, --no-think-prefix,
    --lora and --draft/--draft-max)."""
    from edgeds.loader import open_engine
    from edgeds.machine.hardware import threads_beside_ui

    def open_model(spec: str, *, n_ctx: int | None = None, moe_offload: str = "auto"):
        return open_engine(spec, n_ctx=n_ctx, n_threads=n_threads or threads_beside_ui(), moe_offload=moe_offload,
                           pull=False, progress=False, think_prefix=think_prefix, loras=loras, draft=draft,
                           draft_max=draft_max)

    return open_model


@app.command("chat")
def chat(
    model: Optional[str] = typer.Argument(None, help="A GGUF file or a registry id (default: the registry's default chat model)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", min=256, help="Context length (default: trained length, capped by RAM)."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt for new chats (R1 models get it folded into the first user turn)."),
    moe_offload: str = MoeOffload,
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Most tokens per reply (reasoning included)."),
    grammar: Optional[Path] = typer.Option(None, "--grammar", help="A GBNF grammar file every reply follows."),
    top_k: Optional[int] = TopK,
    min_p: Optional[float] = MinP,
    repeat_penalty: Optional[float] = RepeatPenalty,
    reasoning_budget: Optional[int] = ReasoningBudget,
    threads: Optional[int] = Threads,
    no_think_prefix: bool = NoThinkPrefix,
    lora: Optional[list[str]] = Loras,
    draft: Optional[str] = Draft,
    draft_max: Optional[int] = DraftMax,
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
    from edgeds.loader import context_warning, fetch_model
    from edgeds.machine.placement import parse_moe_offload
    from edgeds.runtime.params import GenerationParams

    parse_moe_offload(moe_offload)
    loras = parse_loras(lora)
    params = GenerationParams(max_tokens=max_tokens, top_k=top_k, min_p=min_p, repeat_penalty=repeat_penalty,
                              grammar=read_grammar(grammar), reasoning_budget=reasoning_budget)
    resolved = fetch_model(model, pull="ask")  # downloads (checked, asking first) before the UI starts
    if warning := context_warning(resolved.path, n_ctx):
        print(warning, file=sys.stderr)
    if loras:
        from edgeds.runtime.lora import check_adapter

        for spec in loras:  # before the UI starts: a wrong adapter is a one-line error
            check_adapter(spec.path, resolved.path)
    from edgeds.app import run_chat

    if draft_max is not None and not draft:
        raise UsageError("--draft-max needs --draft (a draft model, ngram or auto)")
    opener = (model_opener(threads, not no_think_prefix, loras, draft, draft_max)
              if threads or no_think_prefix or loras or draft else None)
    run_chat(model, n_ctx=n_ctx, system=system, moe_offload=moe_offload, params=params, open_model=opener)
