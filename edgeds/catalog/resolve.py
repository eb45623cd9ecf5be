"""Model resolution: from what a user typed (a path or `id[:QUANT]`) to a local GGUF file.

Every command resolves its model here, in this order:
1. an existing path is used as is;
2. Ollama's names for the DeepSeek models (`deepseek-r1:7b`) become registry ids, or, where
   Ollama's name is ambiguous, an error that says which ids to use;
3. a model added with `edgeds add` (`catalog.local`);
4. a registry id, from the hub cache (all parts of a split GGUF must be there), pulled when
   the caller allows it.

Before a pull the caller's `check` runs (the fit and disk check lives above the catalog, in
`edgeds.machine.downloads`), then `approve_download` asks: a download over LARGE_DOWNLOAD
asks on a terminal with No as the default, and is refused without a terminal unless the
user said yes beforehand (`edgeds pull --yes`).
"""

from __future__ import annotations

import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal

from edgeds.catalog import local
from edgeds.catalog.registry import QuantSource, Registry, RegistryEntry, load_registry, split_spec
from edgeds.errors import ModelNotFound

LARGE_DOWNLOAD = 10 * 10**9  # bytes; a larger download asks first, with No as the default

# Ollama's library names (ollama.com/library: deepseek-r1, deepseek-v3, deepseek-v2,
# deepseek-coder-v2) → registry ids. A tag may end in a quant (`7b-qwen-distill-q8_0`).
OLLAMA_NAMES: dict[str, str] = {
    "deepseek-r1:1.5b": "r1-distill-qwen-1.5b",
    "deepseek-r1:1.5b-qwen-distill": "r1-distill-qwen-1.5b",
    "deepseek-r1:7b": "r1-distill-qwen-7b",
    "deepseek-r1:7b-qwen-distill": "r1-distill-qwen-7b",
    "deepseek-r1:8b-llama-distill": "r1-distill-llama-8b",
    "deepseek-r1:8b-0528-qwen3": "r1-0528-qwen3-8b",
    "deepseek-r1:14b": "r1-distill-qwen-14b",
    "deepseek-r1:14b-qwen-distill": "r1-distill-qwen-14b",
    "deepseek-r1:32b": "r1-distill-qwen-32b",
    "deepseek-r1:32b-qwen-distill": "r1-distill-qwen-32b",
    "deepseek-r1:70b": "r1-distill-llama-70b",
    "deepseek-r1:70b-llama-distill": "r1-distill-llama-70b",
    "deepseek-v3": "v3",
    "deepseek-v3:671b": "v3",
    "deepseek-v2:16b": "v2-lite-chat",
    "deepseek-v2:16b-lite-chat": "v2-lite-chat",
    "deepseek-coder-v2": "coder-v2-lite-instruct",
    "deepseek-coder-v2:16b": "coder-v2-lite-instruct",
    "deepseek-coder-v2:16b-lite-instruct": "coder-v2-lite-instruct",
}
# Ollama names whose model changed over time or is not in the registry: what to type instead.
OLLAMA_AMBIGUOUS: dict[str, str] = {
    "deepseek-r1": "Ollama's deepseek-r1 is now R1-0528-Qwen3-8B: use r1-0528-qwen3-8b, or "
                   "r1-distill-qwen-1.5b / -7b / -14b / -32b, r1-distill-llama-8b / -70b",
    "deepseek-r1:8b": "Ollama's deepseek-r1:8b is R1-0528-Qwen3-8B (R1-Distill-Llama-8B before May 2025): "
                      "use r1-0528-qwen3-8b or r1-distill-llama-8b",
    "deepseek-r1:671b": "Ollama's deepseek-r1:671b is R1-0528, which the registry does not have: "
                        "use r1 (DeepSeek-R1)",
    "deepseek-v2": "Ollama's deepseek-v2 is the 16B Lite: use v2-lite-chat",
}


@dataclass(frozen=True)
class ResolvedModel:
    path: Path                   # the GGUF to load (the first part of a split GGUF)
    entry: RegistryEntry | None  # None for a plain file or an added id the registry does not know
    quant: str | None


def size_text(n: int) -> str:
    """Decimal gigabytes, as the hub shows file sizes."""
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def canonical(spec: str) -> str:
    """`spec` with an Ollama name replaced by its registry id (a quant at the end of its tag is kept).

    Raises:
        ModelNotFound: an Ollama name that stands for more than one model; the message says which.
    """
    name = spec.lower()
    head, _, quant = name.rpartition("-")
    for known in (name, head if ":" in head else None):
        if known in OLLAMA_AMBIGUOUS:
            raise ModelNotFound(f"{spec}: {OLLAMA_AMBIGUOUS[known]}")
    if name in OLLAMA_NAMES:
        return OLLAMA_NAMES[name]
    if ":" in head and head in OLLAMA_NAMES:
        return f"{OLLAMA_NAMES[head]}:{quant.upper()}"
    return spec


def _not_found(spec: str, registry: Registry) -> ModelNotFound:
    names = [e.id for e in registry] + list(OLLAMA_NAMES) + [m.label for m in local.listing()]
    close = difflib.get_close_matches(spec.lower(), names, n=3, cutoff=0.4)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `edgeds list` shows the registry"
    return ModelNotFound(f"{spec}: not a file and not a registry model{hint}")


def find(spec: str, registry: Registry | None = None) -> tuple[RegistryEntry, QuantSource]:
    """The registry entry and quant `spec` names (Ollama names too), whether downloaded or not.

    Raises:
        ModelNotFound: not a registry model (close names are suggested). EdgedsError: no such quant.
    """
    registry = registry or load_registry()
    model_id, quant = split_spec(canonical(spec))
    entry = registry.get(model_id)
    if entry is None:
        raise _not_found(spec, registry)
    return entry, entry.quant(quant)


def find_added(spec: str, registry: Registry | None = None) -> local.LocalModel | None:
    """The model `spec` names among those added with `edgeds add`, if it is one."""
    model_id, quant = split_spec(canonical(spec))
    entry = (registry or load_registry()).get(model_id)
    return local.find(model_id, quant, entry.default_quant if entry else None)


def ask(question: str, *, default: bool) -> bool | None:
    """Ask a yes/no question on the terminal; None when there is no terminal to ask on. Enter
    takes the default; Ctrl-D (end of input) is no."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None
    sys.stderr.write(question + (" [Y/n] " if default else " [y/N] "))
    sys.stderr.flush()
    line = sys.stdin.readline()
    if not line:
        sys.stderr.write("\n")
        return False
    answer = line.strip().lower()
    return default if not answer else answer in ("y", "yes")


def approve_download(label: str, source: QuantSource, *, always_ask: bool, yes: bool = False) -> None:
    """Whether to download `source`: `yes` says so beforehand; a download over LARGE_DOWNLOAD,
    or any download when `always_ask`, asks on the terminal (No is the default over 10 GB).

    Raises:
        ModelNotFound: the user said no, or there is no terminal to ask on; the message says
            how to download it.
    """
    large = source.size > LARGE_DOWNLOAD
    if yes or not (large or always_ask):
        return
    what = f"{size_text(source.size)} from {source.repo}"
    answer = ask(f"{label} is not downloaded. Download {what}?", default=not large)
    if answer:
        return
    if answer is None and large:
        raise ModelNotFound(f"{label} is {what}: over {size_text(LARGE_DOWNLOAD)}, so it is only "
                            f"downloaded when asked for: run `edgeds pull {label} --yes`")
    raise ModelNotFound(f"{label} is not downloaded: run `edgeds pull {label}`")


def resolve_model(
    spec: str | Path,
    *,
    pull: bool | Literal["ask"] = "ask",
    registry: Registry | None = None,
    progress: bool = True,
    check: Callable[[RegistryEntry, QuantSource], None] | None = None,
) -> ResolvedModel:
    """Resolve `spec` to a local GGUF.

    Args:
        pull: whether a registry model that is not downloaded may be pulled: True (asking only
            over LARGE_DOWNLOAD), "ask" (asking on a terminal whatever the size), False.
        check: called before a pull; raises to refuse it (the fit and disk check).

    Raises:
        ModelNotFound: neither a file, an added model nor a registry id (close names are
            suggested), or a registry model that is not downloaded and may not be pulled
            (names `edgeds pull ID:QUANT`).
        HubError: the pull failed.
    """
    from edgeds.catalog import hub

    path = Path(spec).expanduser()
    if path.is_file():
        return ResolvedModel(path, None, None)
    registry = registry or load_registry()
    added = find_added(str(spec), registry)
    if added is not None:
        return ResolvedModel(added.path, registry.get(added.id), added.quant)
    if path.suffix == ".gguf" or "/" in str(spec):
        raise ModelNotFound(f"{spec}: no such file")
    entry, source = find(str(spec), registry)
    parts = hub.cached_parts(source)
    if parts is None:
        label = f"{entry.id}:{source.quant}"
        if pull is False:
            raise ModelNotFound(f"{label} is not downloaded: run `edgeds pull {label}`")
        if check is not None:
            check(entry, source)
        approve_download(label, source, always_ask=pull == "ask")
        parts = hub.pull(source, progress=progress, label=label)
    return ResolvedModel(parts[0], entry, source.quant)
