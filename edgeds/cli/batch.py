"""`edgeds batch IN.jsonl -o OUT.jsonl`: run a JSONL file of prompts, resumably, in parallel."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from edgeds.cli._app import app
from edgeds.cli.options import (Draft, DraftMax, Loras, MinP, MoeOffload, NoThinkPrefix, ReasoningBudget, RepeatPenalty,
                                Threads, TopK, parse_loras, read_grammar)
from edgeds.errors import UsageError


@app.command("batch")
def batch(
    input_path: Path = typer.Argument(..., metavar="IN.jsonl", help='Rows {"id", "prompt"} or {"id", "messages"}; optional '
                                      "system, metadata (an object copied to the output row) and the request fields "
                                      "of serve: max_tokens, temperature, top_p, top_k, min_p, repeat_penalty, seed, "
                                      "stop, presence_penalty, frequency_penalty, logit_bias, response_format, "
                                      "grammar, reasoning_budget."),
    output: Path = typer.Option(..., "--output", "-o", metavar="OUT.jsonl", help="Output rows, in input order; an existing file is resumed."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="A GGUF file or registry id; with --endpoint, the server's model name."),
    parallel: int = typer.Option(4, "--parallel", "-p", min=1, max=64, help="Sequences decoded together (or requests in flight per server with --endpoint)."),
    endpoint: Optional[List[str]] = typer.Option(None, "--endpoint", help="An OpenAI-compatible server URL (llama-server, vLLM, edgeds serve) to send the rows to; "
                                                 "repeat it to spread the rows over several servers (a row whose server fails goes to another)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="EDGEDS_API_KEY", help="API key for --endpoint."),
    retries: int = typer.Option(8, "--retries", min=0, help="With one --endpoint: tries more for a row whose request "
                                "fails in transport (refused, reset, timeout, 408/429/5xx), with backoff; a row that "
                                "still fails is not written, so that the next run tries it again."),
    tries: int = typer.Option(3, "--tries", min=1, help="With several --endpoint: tries of a row, on any servers, before it "
                              "gets an error row (a failed server gets no rows until it answers again)."),
    request_timeout: float = typer.Option(600.0, "--request-timeout", min=1.0, help="With --endpoint: seconds a request "
                                          "may go without a byte from its server before it counts as failed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start over instead of resuming."),
    retry_errors: bool = typer.Option(True, "--retry-errors/--no-retry-errors", help="When resuming, run the rows "
                                      "whose output is an error row again (e.g. after fixing those input lines)."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", min=1, help="Default for rows without max_tokens."),
    temperature: Optional[float] = typer.Option(None, "--temperature", min=0.0, help="Default for rows without temperature (model default 0.6)."),
    top_p: Optional[float] = typer.Option(None, "--top-p", min=0.0, max=1.0, help="Default for rows without top_p (model default 0.95)."),
    top_k: Optional[int] = TopK,
    min_p: Optional[float] = MinP,
    repeat_penalty: Optional[float] = RepeatPenalty,
    reasoning_budget: Optional[int] = ReasoningBudget,
    seed: Optional[int] = typer.Option(None, "--seed", help="Default seed for rows without one, for repeatable rows (the same with any --parallel on quantized models)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", min=256, help="Context length of each sequence (default 4096)."),
    threads: Optional[int] = Threads,
    no_think_prefix: bool = NoThinkPrefix,
    moe_offload: str = MoeOffload,
    lora: Optional[list[str]] = Loras,
    draft: Optional[str] = Draft,
    draft_max: Optional[int] = DraftMax,
    grammar: Optional[Path] = typer.Option(None, "--grammar", help="A GBNF grammar file for every row."),
    json_summary: bool = typer.Option(False, "--json-summary", help="Print the summary as JSON on stdout."),
    progress: Optional[bool] = typer.Option(None, "--progress/--no-progress", help="Progress bar on stderr (default: when stderr is a terminal)."),
) -> None:
    """Run every row of IN.jsonl and write reasoning + answer rows to OUT.jsonl.

    --top-k, --min-p, --repeat-penalty (like --temperature) are defaults for rows that do not set them.
    """
    import sys

    from edgeds.serving.batch import check_paths, run_batch
    from edgeds.runtime.params import GenerationParams

    check_paths(input_path, output)
    grammar_text = read_grammar(grammar)
    loras = parse_loras(lora)
    if endpoint and loras:
        raise UsageError("--lora applies to a local model, not to --endpoint")
    if endpoint and (draft or draft_max):
        raise UsageError("--draft works on local models; the server at --endpoint decodes on its own")
    defaults = GenerationParams(max_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k, min_p=min_p,
                                repeat_penalty=repeat_penalty, seed=seed, grammar=grammar_text,
                                reasoning_budget=reasoning_budget)
    servers = len(endpoint or ())
    if servers > 1:
        from edgeds.serving.fleet import Fleet

        backend = Fleet(endpoint, model=model, api_key=api_key, parallel=parallel, timeout=request_timeout, tries=tries)
    elif endpoint:
        from edgeds.serving.remote import RemoteBackend

        backend = RemoteBackend(endpoint[0], model=model, api_key=api_key, parallel=parallel, timeout=request_timeout,
                                retries=retries)
    else:
        if not model:
            raise UsageError("give --model (a GGUF file or registry id), or --endpoint URL")
        from edgeds.loader import open_scheduler

        backend = open_scheduler(model, parallel=parallel, seq_ctx=n_ctx, n_threads=threads, moe_offload=moe_offload,
                                 think_prefix=not no_think_prefix, loras=loras, draft=draft, draft_max=draft_max)
        print(f"edgeds: {backend.engine.placement}", file=sys.stderr)
    try:
        summary = run_batch(input_path, output, backend, defaults=defaults, parallel=parallel * max(servers, 1),
                            overwrite=overwrite, retry_errors=retry_errors, progress=progress)
    finally:
        backend.close()
    if json_summary:
        print(json.dumps(summary.to_dict()))
    print(summary.line(), file=sys.stderr)
    if summary.interrupted:
        raise typer.Exit(130)
    if summary.unfinished:
        raise typer.Exit(1)
