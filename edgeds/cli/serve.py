"""`edgeds serve [MODEL]`: an OpenAI-compatible server (reasoning_content split out)."""

from __future__ import annotations

from typing import Optional

import typer

from edgeds.cli._app import app
from edgeds.cli.options import MoeOffload
from edgeds.errors import UsageError


@app.command("serve")
def serve(
    model: Optional[str] = typer.Argument(None, help="A GGUF file or a registry id."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0 exposes it to the network)."),
    port: int = typer.Option(8080, "--port", min=0, max=65535, help="Port (0 picks a free one)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="EDGEDS_API_KEY", help="Require 'Authorization: Bearer KEY'."),
    parallel: int = typer.Option(4, "--parallel", "-p", min=1, max=64, help="Requests decoded together (slots)."),
    n_ctx: Optional[int] = typer.Option(None, "--n-ctx", min=256, help="Context length of each slot (default 4096)."),
    moe_offload: str = MoeOffload,
) -> None:
    """Serve /v1/chat/completions (streaming too), /v1/models and /health."""
    import sys

    from edgeds.loader import open_scheduler
    from edgeds.serving.server import Server

    if not model:
        raise UsageError("give a MODEL (a GGUF file or registry id)")
    scheduler = open_scheduler(model, parallel=parallel, seq_ctx=n_ctx, moe_offload=moe_offload)
    try:
        server = Server(scheduler, host=host, port=port, api_key=api_key)
        print(f"edgeds serve: {scheduler.name} on {server.url}/v1 ({parallel} slots × {scheduler.seq_ctx} tokens; "
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
