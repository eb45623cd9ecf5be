"""`edgeds serve MODEL`: an OpenAI-compatible server (reasoning_content split out)."""

from __future__ import annotations

from typing import List, Optional

import typer

from edgeds.cli._app import app
from edgeds.cli.options import (Draft, DraftMax, Loras, MinP, MoeOffload, NoThinkPrefix, ReasoningBudget, RepeatPenalty,
                                Threads, TopK, parse_loras)
from edgeds.errors import UsageError
from edgeds.serving.http import HttpLimits


@app.command("serve")
def serve(
    model: str = typer.Argument(..., help="A GGUF file or a registry id."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port (0 picks a free one)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="EDGEDS_API_KEY", help="Require 'Authorization: Bearer KEY'."),
    parallel: int = typer.Option(4, "--parallel", "-p", min=1, max=64, help="Requests decoded together (slots)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", min=256, help="Context length of each slot (default 4096)."),
    threads: Optional[int] = Threads,
    top_k: Optional[int] = TopK,
    min_p: Optional[float] = MinP,
    repeat_penalty: Optional[float] = RepeatPenalty,
    reasoning_budget: Optional[int] = ReasoningBudget,
    no_think_prefix: bool = NoThinkPrefix,
    moe_offload: str = MoeOffload,
    lora: Optional[list[str]] = Loras,
    draft: Optional[str] = Draft,
    draft_max: Optional[int] = DraftMax,
    max_queue: Optional[int] = typer.Option(None, "--max-queue", min=0, help="Requests that may wait for a slot; "
                                            "more get 503 with Retry-After (default: 4 per slot)."),
    max_body_bytes: int = typer.Option(HttpLimits.max_body_bytes, "--max-body-bytes", min=1024,
                                       help="Largest request body (413 above)."),
    read_timeout: float = typer.Option(HttpLimits.read_timeout_s, "--read-timeout", min=0.1,
                                       help="Seconds a client has to send its request headers, and again its body "
                                       "(408 or a closed connection after)."),
    alias: Optional[str] = typer.Option(None, "--alias", help="The model id /v1/models lists and replies name "
                                        "(default: the registry id, or the GGUF file's stem). Requests naming "
                                        "another model are served all the same."),
    cors_origin: Optional[List[str]] = typer.Option(None, "--cors-origin", metavar="ORIGIN",
                                                    help="Let web pages of ORIGIN (e.g. http://localhost:3000, "
                                                    "or * for any) call the server from a browser; repeatable. "
                                                    "Default: no CORS."),
) -> None:
    """Serve /v1/chat/completions and /v1/completions (streaming too), /v1/models and /health.

    --top-k, --min-p and --repeat-penalty are the server's defaults for requests that do not set them.
    Requests may carry OpenAI `tools` and `tool_choice` where the model's chat template renders tool
    calls (DeepSeek's do); calls come back as `tool_calls`.
    """
    import sys

    from edgeds.loader import open_scheduler
    from edgeds.runtime.params import GenerationParams
    from edgeds.serving.cors import CorsPolicy, check_origin
    from edgeds.serving.server import Server, model_id_of

    cors = CorsPolicy(tuple(check_origin(origin) for origin in cors_origin or ()))
    model_id = alias.strip() if alias is not None else model_id_of(model)
    if not model_id or any(c.isspace() for c in model_id):
        raise UsageError(f"--alias {alias!r}: give a name without spaces")
    defaults = GenerationParams(top_k=top_k, min_p=min_p, repeat_penalty=repeat_penalty,
                                reasoning_budget=reasoning_budget)
    scheduler = open_scheduler(model, parallel=parallel, seq_ctx=n_ctx, n_threads=threads, moe_offload=moe_offload,
                               think_prefix=not no_think_prefix, loras=parse_loras(lora), draft=draft,
                               draft_max=draft_max)
    try:
        server = Server(scheduler, host=host, port=port, api_key=api_key, defaults=defaults, max_queue=max_queue,
                        limits=HttpLimits(max_body_bytes=max_body_bytes, read_timeout_s=read_timeout),
                        model_id=model_id, cors=cors)
        print(f"edgeds serve: {model_id} on {server.url}/v1 ({parallel} slots × {scheduler.seq_ctx} tokens; "
              f"{scheduler.engine.placement})"
              + ("" if host in ("127.0.0.1", "localhost", "::1") else "; reachable from the network"),
              file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.shutdown()
    finally:
        scheduler.close()
        scheduler.engine.close()
