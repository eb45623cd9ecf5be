"""`edgeds pull | add | list | show | rm`: the registry and the local model files."""

from __future__ import annotations

from pathlib import Path

import typer

from edgeds.cli._app import app
from edgeds.cli.table import echo_table, gb


@app.command("pull")
def models_pull(
    model: str = typer.Argument(..., help="A registry id, optionally with :QUANT (e.g. r1-distill-qwen-7b:Q8_0)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    yes: bool = typer.Option(False, "--yes", "-y", help="Do not ask before a download over 10 GB."),
    force: bool = typer.Option(False, "--force", help="Download even what does not fit this machine or its disk."),
) -> None:
    """Download a model (every part of a split GGUF) into the Hugging Face cache, with checks.

    It says what it fetches and how big before it starts. A model that cannot run on this machine
    (`edgeds fit`), or that is larger than the free disk, is refused unless --force; a download
    over 10 GB asks first (No is the default), or needs --yes without a terminal.
    """
    from edgeds.catalog import hub
    from edgeds.catalog.resolve import approve_download, find, find_added, size_text
    from edgeds.machine.downloads import check_download, hub_cache

    added = find_added(model)
    if added is not None:
        typer.echo(f"{added.label} was added with `edgeds add` ({added.path}): nothing to download")
        return
    entry, source = find(model)
    label = f"{entry.id}:{source.quant}"
    if hub.cached_parts(source) is None:
        typer.echo(f"edgeds: {label}: {len(source.files)} file(s), {size_text(source.size)} from {source.repo} "
                   f"into {hub_cache()}", err=True)
        if not force:
            check_download(entry, source)
        approve_download(label, source, always_ask=False, yes=yes)
    try:
        paths = hub.pull(source, progress=not quiet, label=label)
    except KeyboardInterrupt:
        typer.echo(f"edgeds: pull interrupted; `edgeds pull {label}` resumes it", err=True)
        raise typer.Exit(130) from None
    total = sum(p.stat().st_size for p in paths)
    typer.echo(f"{label}: {len(paths)} file(s), {gb(total)}, verified: {paths[0]}")


@app.command("add")
def models_add(
    file: Path = typer.Argument(..., metavar="FILE.gguf", help="A GGUF file (for a split GGUF, any of its parts)."),
    name: str = typer.Option(..., "--as", metavar="ID[:QUANT]", help="The name every command will take: a registry "
                             "id (its defaults apply; without :QUANT its default quant) or a name of your own."),
) -> None:
    """Register a GGUF you already have under a name (like `ollama create`), with no download.

    The file is hard-linked into the edgeds data dir (a symlink where it is on another disk, and
    then it must stay where it is); every command, `list` and `rm` take the name from then on.
    """
    from edgeds.catalog import local
    from edgeds.catalog.gguf import read_gguf, split_parts
    from edgeds.catalog.registry import load_registry, split_spec
    from edgeds.catalog.resolve import canonical
    from edgeds.errors import ModelNotFound

    if not file.is_file():
        raise ModelNotFound(f"{file}: no such file")
    parts = list(split_parts(file))
    read_gguf(parts[0])  # a GGUF that llama.cpp's header rules accept, or a one-line error
    model_id, quant = split_spec(canonical(name))
    entry = load_registry().get(model_id)
    quant = quant or (entry.default_quant if entry else local.DEFAULT_QUANT)
    added, how = local.add(parts, model_id, quant)
    known = f"registry model {entry.name}" if entry else "not a registry model: no registry defaults"
    typer.echo(f"added {added.label} ({known}): {len(parts)} file(s) by {how} in {added.path.parent}")


@app.command("list")
def models_list(
    local: bool = typer.Option(False, "--local", help="Only models that are downloaded."),
) -> None:
    """The registry, with what is downloaded and its size."""
    from edgeds.catalog import hub
    from edgeds.catalog.registry import load_registry

    from edgeds.catalog import local as added

    registry = load_registry()
    rows = [(m.label, gb(sum(p.stat().st_size for p in m.parts)), str(len(m.parts)), "added", str(m.path.parent))
            for m in added.listing()]
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
        typer.echo(f"defaults        temperature {g.temperature}, top-p {g.top_p}, top-k {g.top_k or 'off'}, "
                   f"min-p {g.min_p}, repeat penalty {g.repeat_penalty}, system prompt "
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
    models: list[str] = typer.Argument(..., help="Registry id[:QUANT] to delete from the cache, or a name from `edgeds add`."),
) -> None:
    """Delete downloaded models from the Hugging Face cache, or the links `edgeds add` made."""
    from edgeds.catalog import hub, local
    from edgeds.catalog.registry import load_registry
    from edgeds.catalog.resolve import find, find_added
    from edgeds.errors import ModelNotFound

    registry = load_registry()
    for spec in models:
        added = find_added(spec, registry)
        if added is not None:
            local.remove(added)
            typer.echo(f"removed {added.label} (the links in {added.path.parent}; the original file stays)")
            continue
        entry, source = find(spec, registry)
        removed = hub.remove(source)
        if not removed:
            raise ModelNotFound(f"{entry.id}:{source.quant} is not downloaded")
        typer.echo(f"deleted {entry.id}:{source.quant} ({len(removed)} file(s))")
