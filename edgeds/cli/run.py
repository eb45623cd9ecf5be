"""`edgeds run MODEL [PROMPT]`: one generation, streamed to the terminal."""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from edgeds.cli._app import app
from edgeds.cli.options import (Draft, DraftMax, Loras, MinP, MoeOffload, NoThinkPrefix, ReasoningBudget, RepeatPenalty,
                                Threads, TopK, parse_loras, read_grammar, read_json_schema)
from edgeds.errors import EdgedsError, UsageError


@app.command("run")
def run(
    model: str = typer.Argument(..., help="A GGUF file or a registry id (see `edgeds list`); with --endpoint, the server's model name."),
    prompt: Optional[str] = typer.Argument(None, help="The prompt; read from stdin when left out."),
    hide_reasoning: bool = typer.Option(False, "--hide-reasoning", help="Do not show the model's reasoning."),
    json_lines: bool = typer.Option(False, "--json", help="Print events as JSON lines on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Print timing stats to stderr (EDGEDS_LLAMA_LOG=1 adds llama.cpp's log)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Most tokens to generate (reasoning included)."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, help="Sampling temperature (model default: 0.6)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", min=0.0, max=1.0, help="Nucleus sampling (model default: 0.95)."),
    top_k: Optional[int] = TopK,
    min_p: Optional[float] = MinP,
    repeat_penalty: Optional[float] = RepeatPenalty,
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed, for repeatable output."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", min=256, help="Context length (default: trained length, capped by RAM)."),
    threads: Optional[int] = Threads,
    no_think_prefix: bool = NoThinkPrefix,
    system: Optional[str] = typer.Option(None, "--system", help="System prompt (R1 models get it folded into the first user turn)."),
    grammar: Optional[Path] = typer.Option(None, "--grammar", help="A GBNF grammar file that constrains the answer "
                                           "(a reasoning model thinks first)."),
    json_schema: Optional[Path] = typer.Option(None, "--json-schema", help="A JSON schema file the answer follows "
                                               "(as JSON; a reasoning model thinks first)."),
    reasoning_budget: Optional[int] = ReasoningBudget,
    moe_offload: str = MoeOffload,
    lora: Optional[list[str]] = Loras,
    draft: Optional[str] = Draft,
    draft_max: Optional[int] = DraftMax,
    endpoint: Optional[str] = typer.Option(None, "--endpoint", help="Send the prompt to an OpenAI-compatible server "
                                           "(llama-server, vLLM, edgeds serve) instead; MODEL is then its model name."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="EDGEDS_API_KEY", help="API key for --endpoint."),
) -> None:
    """Generate one reply: reasoning (dim, stderr) then the answer (stdout).

    With stdout redirected and stderr on a terminal, a line on stderr counts the tokens. A reply
    that ends inside its think block says so on stderr ("stopped while thinking: ...").
    """
    from edgeds.runtime.params import GenerationParams
    from edgeds.runtime.request import with_system
    from edgeds.serving.terminal import Output, show

    if prompt is None:
        if sys.stdin.isatty():
            raise UsageError("give a PROMPT, or pipe one on stdin")
        try:
            prompt = sys.stdin.buffer.read().decode("utf-8")
        except UnicodeDecodeError as err:
            raise UsageError(f"stdin: the prompt is not UTF-8 text (byte {err.start})") from None
    if not prompt.strip():
        raise UsageError("the prompt is empty")
    if grammar and json_schema:
        raise UsageError("give --grammar or --json-schema, not both")
    grammar_text = read_grammar(grammar) or read_json_schema(json_schema)
    loras = parse_loras(lora)
    if endpoint and loras:
        raise UsageError("--lora applies to a local model, not to --endpoint")

    if endpoint:
        from edgeds.serving.remote import RemoteBackend

        if draft or draft_max:
            raise UsageError("--draft works on local models; the server at --endpoint decodes on its own")

        engine = RemoteBackend(endpoint, model=model, api_key=api_key, parallel=1)
    else:
        from edgeds.loader import open_engine

        depth = len(prompt) // 2 + max_tokens if max_tokens else None  # a short reply plans for less
        engine = open_engine(model, n_ctx=n_ctx, n_threads=threads, moe_offload=moe_offload,
                             think_prefix=not no_think_prefix, depth=depth, loras=loras, draft=draft,
                             draft_max=draft_max)
        if verbose or (sys.stderr.isatty() and not json_lines):
            print(f"edgeds: {engine.placement}", file=sys.stderr)
    messages = with_system([{"role": "user", "content": prompt}], system)
    params = GenerationParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                              repeat_penalty=repeat_penalty, seed=seed, grammar=grammar_text,
                              reasoning_budget=reasoning_budget)
    if json_schema and endpoint:  # the server compiles the schema itself (vLLM takes no GBNF)
        schema = json.loads(json_schema.read_text(encoding="utf-8"))
        params = replace(params, response_format=json.dumps({"type": "json_schema", "json_schema": {
            "name": "schema", "schema": schema}}, ensure_ascii=False))
    output = Output(json_lines, hide_reasoning, verbose,
                    progress=not json_lines and not sys.stdout.isatty() and sys.stderr.isatty())

    def interrupt(signum, frame):  # first Ctrl-C ends the generation cleanly; a second one aborts
        engine.cancel()
        signal.signal(signal.SIGINT, signal.default_int_handler)

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        stats = show(engine.generate(messages, params), output)
    finally:
        signal.signal(signal.SIGINT, previous)
    if stats.finish_reason == "error":
        raise EdgedsError(f"the generation failed: {stats.error}")
    if stats.finish_reason == "cancelled":
        raise typer.Exit(130)
