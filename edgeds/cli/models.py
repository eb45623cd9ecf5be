"""`edgeds pull | list | show | rm`: the registry and the local model files."""

from __future__ import annotations

import typer

from edgeds.cli._app import app
from edgeds.cli.table import echo_table, gb


@app.command("pull")
def models_pull(
    model: str = typer.Argument(..., help="A registry id, optionally with :QUANT (e.g. r1-distill-qwen-7b:Q8_0)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
) -> None:
    """Download a model (every part of a split GGUF) into the Hugging Face cache, with checks."""
    from edgeds.catalog import hub
    from edgeds.catalog.registry import load_registry

    entry, source = load_registry().find(model)
    try:
        paths = hub.pull(source, progress=not quiet)
    except KeyboardInterrupt:
        typer.echo(f"edgeds: pull interrupted; `edgeds pull {entry.id}:{source.quant}` resumes it", err=True)
        raise typer.Exit(130) from None
    total = sum(p.stat().st_size for p in paths)
    typer.echo(f"{entry.id}:{source.quant}: {len(paths)} file(s), {gb(total)}, verified: {paths[0]}")


@app.command("list")
def models_list(
    local: bool = typer.Option(False, "--local", help="Only models that are downloaded."),
) -> None:
    """The registry, with what is downloaded and its size."""
    from edgeds.catalog import hub
    from edgeds.catalog.registry import load_registry

    registry = load_registry()
    rows = []
    for entry in registry:
        for source in entry.quants.values():
            parts = hub.cached_parts(source)
            if local and parts is None:
                continue
            where = f"local {gb(sum(p.stat().st_size for p in parts))}" if parts else "-"
            default = "*" if f"{entry.id}:{source.quant}" == registry.default_chat else ""
            rows.append((f"{entry.id}:{source.quant}{default}", gb(source.size),
                         str(len(source.files)), where, source.repo))
    echo_table(("MODEL", "SIZE", "FILES", "LOCAL", "REPO"), rows)
    if not local:
        typer.echo("* default chat model")


@app.command("show")
def models_show(
    model: str = typer.Argument(..., help="A GGUF file or a downloaded registry id[:QUANT]."),
    template: bool = typer.Option(False, "--template", help="Print the whole chat template."),
) -> None:
    """A GGUF's metadata: architecture, parameters, quant mix, context, template, edgeds keys."""
    from edgeds.catalog.gguf import read_gguf
    from edgeds.catalog.resolve import resolve_model

    resolved = resolve_model(model, pull=False)
    info = read_gguf(resolved.path)
    typer.echo(f"file            {info.path}" + (f" (+{len(info.parts) - 1} parts)" if len(info.parts) > 1 else ""))
    if resolved.entry:
        e = resolved.entry
        typer.echo(f"registry        {e.id}:{resolved.quant}  ({e.name}, {e.source}, {e.license})")
        g = e.generation
        typer.echo(f"defaults        temperature {g.temperature}, top-p {g.top_p}, system prompt "
                   f"{'allowed' if g.allow_system else 'folded into user turn'}, "
                   f"forces <think>: {'yes' if g.forces_think else 'no'}, max tokens {g.max_tokens}")
    typer.echo(f"architecture    {info.arch}")
    typer.echo(f"parameters      {info.n_params / 1e9:.3f} B")
    typer.echo(f"size            {gb(info.file_bytes)} (tensors {gb(info.tensor_bytes)})")
    typer.echo(f"context length  {info.context_length}")
    for key in ("block_count", "embedding_length", "attention.head_count", "attention.head_count_kv",
                "expert_count", "expert_used_count", "attention.kv_lora_rank"):
        value = info.get("{arch}." + key)
        if value is not None:
            typer.echo(f"{key:<15} {value}")
    typer.echo("quant mix")
    for kind, (count, size) in info.quant_mix.items():
        typer.echo(f"  {kind:<10}{count:>5} tensors  {gb(size):>10}  {100 * size / max(info.tensor_bytes, 1):5.1f}%")
    tmpl = info.chat_template
    if tmpl is None:
        typer.echo("chat template   (none)")
    elif template:
        typer.echo("chat template\n" + tmpl)
    else:
        typer.echo(f"chat template   {len(tmpl)} chars" + ("; opens <think>" if "<think>\\n" in tmpl or "<think>\n" in tmpl else "")
                   + " (--template prints it)")
    for key, value in info.edgeds_keys.items():
        typer.echo(f"{key:<15} {value}")


@app.command("rm")
def models_rm(
    models: list[str] = typer.Argument(..., help="Registry id[:QUANT] to delete from the cache."),
) -> None:
    """Delete downloaded models from the Hugging Face cache."""
    from edgeds.catalog import hub
    from edgeds.catalog.registry import load_registry
    from edgeds.errors import ModelNotFound

    registry = load_registry()
    for spec in models:
        entry, source = registry.find(spec)
        removed = hub.remove(source)
        if not removed:
            raise ModelNotFound(f"{entry.id}:{source.quant} is not downloaded")
        typer.echo(f"deleted {entry.id}:{source.quant} ({len(removed)} file(s))")
