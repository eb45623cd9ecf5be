"""The model registry: `models.toml` parsed into typed, validated entries.

The packaged `models.toml` (a symlink to the repository's root file) lists the DeepSeek family;
a user's own `models.toml` in the edgeds config dir adds entries or overrides keys of existing
ones. The schema lives in the tables below; `load_registry` validates every entry against them
and reports a problem as `FILE:LINE: entry 'ID': key 'KEY': what is wrong`.
"""

from __future__ import annotations

import math
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10
    import tomli as tomllib

from edgeds.errors import EdgedsError, ModelNotFound
from edgeds.paths import config_dir

PACKAGED_REGISTRY = Path(__file__).with_name("models.toml")

# ------------------------------------------------------------------------------------------
# Schema, as data: key -> (types accepted, required).

_NUMBER = (int, float)
ENTRY_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name":           ((str,), True),
    "source":         ((str,), True),
    "architecture":   ((str,), True),
    "license":        ((str,), True),
    "params_total":   ((int,), True),
    "params_active":  ((int,), True),
    "context_length": ((int,), True),
    "default_quant":  ((str,), True),
    "generation":     ((dict,), True),
    "shape":          ((dict,), True),
    "quants":         ((dict,), True),
    "draft":          ((str,), False),  # id[:QUANT] of the default draft model (speculative decoding)
}
GENERATION_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "temperature":  (_NUMBER, True),
    "top_p":        (_NUMBER, True),
    "allow_system": ((bool,), True),
    "forces_think": ((bool,), True),
    "max_tokens":   ((int,), True),
    "top_k":          ((int,), False),  # defaults: the Generation dataclass below
    "min_p":          (_NUMBER, False),
    "repeat_penalty": (_NUMBER, False),
}
SHAPE_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "n_layers":         ((int,), True),
    "n_embd":           ((int,), True),
    "n_head":           ((int,), True),
    "n_head_kv":        ((int,), True),
    "head_dim":         ((int,), True),
    "head_dim_v":       ((int,), False),
    "n_ff":             ((int,), True),
    "n_vocab":          ((int,), True),
    "kv_lora_rank":     ((int,), False),  # MLA (deepseek2)
    "q_lora_rank":      ((int,), False),  # MLA with a compressed query (V3, R1)
    "qk_rope_head_dim": ((int,), False),
    "n_experts":        ((int,), False),  # MoE
    "n_experts_used":   ((int,), False),
    "n_shared_experts": ((int,), False),
    "expert_ff":        ((int,), False),
    "n_dense_layers":   ((int,), False),
}
QUANT_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "repo":     ((str,), True),
    "revision": ((str,), False),
    "files":    ((list,), True),
}
FILE_KEYS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name":  ((str,), True),
    "size":  ((int,), True),
    "exact": ((bool,), False),
}

# llama.cpp's quant names (file types), plus the "UD-" prefix of Unsloth's dynamic quants.
KNOWN_QUANTS = frozenset({
    "F32", "F16", "BF16", "Q8_0", "Q6_K", "Q5_K_M", "Q5_K_S", "Q5_K", "Q5_0", "Q5_1",
    "Q4_K_M", "Q4_K_S", "Q4_K", "Q4_0", "Q4_1", "Q3_K_L", "Q3_K_M", "Q3_K_S", "Q3_K",
    "Q2_K", "Q2_K_S", "Q2_K_XS", "Q2_K_L", "Q2_K_XL", "Q3_K_XL", "Q4_K_XL",
    "IQ4_XS", "IQ4_NL", "IQ3_M", "IQ3_S", "IQ3_XS", "IQ3_XXS", "IQ2_M", "IQ2_S", "IQ2_XS",
    "IQ2_XXS", "IQ1_M", "IQ1_S", "TQ1_0", "TQ2_0", "MXFP4",
})
_ID = re.compile(r"^[a-z0-9][a-z0-9._-]*$")
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # owner/name
_HEADER = re.compile(r'^\s*\[\s*models\.("?)([^"\]]+?)\1\s*[\].]')


def is_known_quant(name: str) -> bool:
    return name.upper().removeprefix("UD-") in KNOWN_QUANTS


def is_relative_name(name: str) -> bool:
    """A path inside a repository (or a revision): '/'-separated plain names, none of them empty,
    '.' or '..', no backslash or control character; the hub cache joins it onto its own folders."""
    return name.isprintable() and "\\" not in name and all(part not in ("", ".", "..") for part in name.split("/"))


def is_repo_id(repo: str) -> bool:
    return bool(_REPO_ID.fullmatch(repo)) and is_relative_name(repo)


# ------------------------------------------------------------------------------------------
# Typed entries


@dataclass(frozen=True)
class GgufFile:
    """One file of a quant in its hub repo (a split GGUF has several)."""

    name: str
    size: int
    exact: bool = False  # size from an LFS pointer, not a rounded listing


@dataclass(frozen=True)
class QuantSource:
    quant: str
    repo: str
    files: tuple[GgufFile, ...]
    revision: str = "main"

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)


@dataclass(frozen=True)
class Generation:
    """A model's sampling defaults. top_k 0 (off) and min_p 0.05 cut the improbable tail the way
    llama-server does by default; repeat_penalty 1.0 is off, as DeepSeek recommends no penalty
    and reasoning repeats numbers and names on purpose (`edgeds.runtime.params.ModelDefaults`)."""

    temperature: float
    top_p: float
    allow_system: bool
    forces_think: bool
    max_tokens: int
    top_k: int = 0
    min_p: float = 0.05
    repeat_penalty: float = 1.0


@dataclass(frozen=True)
class Shape:
    """What the fit estimate needs from a model's geometry."""

    n_layers: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ff: int
    n_vocab: int
    head_dim_v: int | None = None
    kv_lora_rank: int | None = None
    q_lora_rank: int | None = None
    qk_rope_head_dim: int | None = None
    n_experts: int = 0
    n_experts_used: int = 0
    n_shared_experts: int = 0
    expert_ff: int = 0
    n_dense_layers: int = 0

    @property
    def is_mla(self) -> bool:
        return self.kv_lora_rank is not None

    @property
    def is_moe(self) -> bool:
        return self.n_experts > 0


@dataclass(frozen=True)
class RegistryEntry:
    id: str
    name: str
    source: str
    architecture: str
    license: str
    params_total: int
    params_active: int
    context_length: int
    default_quant: str
    generation: Generation
    shape: Shape
    quants: dict[str, QuantSource] = field(hash=False)
    draft: str | None = None  # registry id[:QUANT] `--draft auto` uses

    def quant(self, name: str | None) -> QuantSource:
        """The quant `name` (case-insensitive), or the default one."""
        wanted = (name or self.default_quant).upper()
        for key, source in self.quants.items():
            if key.upper() == wanted:
                return source
        raise EdgedsError(
            f"model '{self.id}' has no quant {name!r}; known: {', '.join(self.quants)}"
        )


@dataclass(frozen=True)
class Registry:
    entries: dict[str, RegistryEntry]
    default_chat: str
    sources: tuple[Path, ...]

    def get(self, model_id: str) -> RegistryEntry | None:
        return self.entries.get(model_id.lower())

    def find(self, spec: str) -> tuple[RegistryEntry, QuantSource]:
        """The entry and quant a spec `id[:QUANT]` names (the default quant without one).

        Raises:
            ModelNotFound: no such registry id. EdgedsError: no such quant of it.
        """
        model_id, quant = split_spec(spec)
        entry = self.get(model_id)
        if entry is None:
            raise ModelNotFound(f"{spec}: not a registry model (`edgeds list` shows them)")
        return entry, entry.quant(quant)

    def __iter__(self):
        return iter(self.entries.values())


# ------------------------------------------------------------------------------------------
# Loading and validation


def user_registry_path() -> Path:
    return config_dir() / "models.toml"


class _Where:
    """Finds the line of an entry's table in the TOML text, for error messages."""

    def __init__(self, path: Path, text: str):
        self.path = path
        self.lines = text.splitlines()

    def line_of(self, model_id: str, key: str | None = None) -> int | None:
        header = re.compile(r'^\s*\[\s*models\.(?:"%s"|%s)\s*[\].]' % (re.escape(model_id), re.escape(model_id)))
        start = next((i for i, line in enumerate(self.lines) if header.match(line)), None)
        if start is None:
            return None
        if key:
            key_re = re.compile(r"(^|[\s{,])" + re.escape(key) + r"\s*=")
            for i in range(start, len(self.lines)):
                other = _HEADER.match(self.lines[i])
                if i > start and other and other.group(2) != model_id:
                    break
                if key_re.search(self.lines[i]):
                    return i + 1
        return start + 1

    def error(self, model_id: str, key: str | None, problem: str) -> EdgedsError:
        line = self.line_of(model_id, key.split(".")[-1] if key else None)
        where = f"{self.path}:{line}" if line else str(self.path)
        what = f"entry '{model_id}'" + (f": key '{key}'" if key else "")
        return EdgedsError(f"{where}: {what}: {problem}")


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise EdgedsError(f"{path}: cannot read the registry: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        line = err.object[:err.start].count(b"\n") + 1
        raise EdgedsError(f"{path}:{line}: not UTF-8 text (byte {err.object[err.start]:#04x}); "
                          "TOML files are UTF-8") from None
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as err:
        line = getattr(err, "lineno", None)
        msg = getattr(err, "msg", str(err))
        if line is None:  # Python < 3.14 puts "(at line N, column M)" in the message
            m = re.search(r"\(at line (\d+), column (\d+)\)", str(err))
            line = int(m.group(1)) if m else None
            msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", str(err))
        where = f"{path}:{line}" if line else str(path)
        raise EdgedsError(f"{where}: invalid TOML: {msg}") from None


def _check_table(where: _Where, model_id: str, prefix: str, table: Any,
                 schema: dict[str, tuple[tuple[type, ...], bool]]) -> None:
    if not isinstance(table, dict):
        raise where.error(model_id, prefix.rstrip("."), f"must be a table, got {type(table).__name__}")
    for key, value in table.items():
        if key not in schema:
            raise where.error(model_id, prefix + key, f"unknown key (known: {', '.join(schema)})")
        types, _ = schema[key]
        ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
        if not ok:
            wanted = " or ".join(t.__name__ for t in types)
            raise where.error(model_id, prefix + key, f"must be {wanted}, got {type(value).__name__} {value!r}")
        if isinstance(value, float) and not math.isfinite(value):  # TOML has nan and inf
            raise where.error(model_id, prefix + key, f"must be a finite number, got {value}")
    for key, (_, required) in schema.items():
        if required and key not in table:
            raise where.error(model_id, prefix + key, "missing required key")


def _build_entry(where: _Where, model_id: str, raw: dict[str, Any]) -> RegistryEntry:
    if not _ID.match(model_id):
        raise where.error(model_id, None, "ids are lowercase letters, digits, '.', '_' and '-'")
    _check_table(where, model_id, "", raw, ENTRY_KEYS)
    _check_table(where, model_id, "generation.", raw["generation"], GENERATION_KEYS)
    _check_table(where, model_id, "shape.", raw["shape"], SHAPE_KEYS)
    if not is_repo_id(raw["source"]):
        raise where.error(model_id, "source", f"{raw['source']!r} is not a hub repo id (owner/name)")
    shape = Shape(**raw["shape"])
    if (shape.kv_lora_rank is None) != (shape.qk_rope_head_dim is None):
        raise where.error(model_id, "shape.kv_lora_rank", "MLA needs both kv_lora_rank and qk_rope_head_dim")
    quants: dict[str, QuantSource] = {}
    for qname, qraw in raw["quants"].items():
        if not is_known_quant(qname):
            raise where.error(model_id, f"quants.{qname}", "unknown quant type "
                              f"(known: {', '.join(sorted(KNOWN_QUANTS))}, optionally with 'UD-')")
        _check_table(where, model_id, f"quants.{qname}.", qraw, QUANT_KEYS)
        if not is_repo_id(qraw["repo"]):
            raise where.error(model_id, f"quants.{qname}.repo", f"{qraw['repo']!r} is not a hub repo id (owner/name)")
        if not is_relative_name(qraw.get("revision", "main")):
            raise where.error(model_id, f"quants.{qname}.revision", f"{qraw['revision']!r} is not a hub revision")
        if not qraw["files"]:
            raise where.error(model_id, f"quants.{qname}.files", "lists no files")
        files = []
        for i, fraw in enumerate(qraw["files"]):
            _check_table(where, model_id, f"quants.{qname}.files[{i}].", fraw, FILE_KEYS)
            if fraw["size"] <= 0:
                raise where.error(model_id, f"quants.{qname}.files[{i}].size", "must be positive")
            if not is_relative_name(fraw["name"]):
                raise where.error(model_id, f"quants.{qname}.files[{i}].name", f"{fraw['name']!r} is not a file "
                                  "name inside the repository (no '..', no leading '/')")
            files.append(GgufFile(fraw["name"], fraw["size"], fraw.get("exact", False)))
        quants[qname] = QuantSource(qname, qraw["repo"], tuple(files), qraw.get("revision", "main"))
    if raw["default_quant"] not in quants:
        raise where.error(model_id, "default_quant", f"{raw['default_quant']!r} is not one of its quants "
                          f"({', '.join(quants)})")
    gen = raw["generation"]
    if not 0 < gen["top_p"] <= 1:
        raise where.error(model_id, "generation.top_p", f"must be in (0, 1], got {gen['top_p']}")
    if not 0 <= gen["temperature"] <= 2:
        raise where.error(model_id, "generation.temperature", f"must be in [0, 2], got {gen['temperature']}")
    if gen["max_tokens"] < 1:
        raise where.error(model_id, "generation.max_tokens", f"must be at least 1, got {gen['max_tokens']}")
    for key, lo, hi in (("top_k", 0, None), ("min_p", 0, 1), ("repeat_penalty", 1, 2)):
        value = gen.get(key)
        if value is not None and (value < lo or (hi is not None and value > hi)):
            bounds = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
            raise where.error(model_id, f"generation.{key}", f"must be {bounds}, got {value}")
    values = {k: raw[k] for k in ENTRY_KEYS if k in raw and k not in ("generation", "shape", "quants")}
    return RegistryEntry(
        id=model_id, generation=Generation(**gen), shape=shape, quants=quants, **values
    )


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`, tables merged key by key (lists and values replaced)."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_registry(paths: list[Path] | None = None) -> Registry:
    """Load the packaged registry and, if present, the user's; later files override earlier.

    Raises:
        EdgedsError: a file is not valid TOML or an entry breaks the schema; the message names
            the file, line, entry and key.
    """
    if paths is None:
        paths = [PACKAGED_REGISTRY]
        user = user_registry_path()
        if user.is_file():
            paths.append(user)
    raw_models: dict[str, dict[str, Any]] = {}
    origin: dict[str, _Where] = {}
    default_chat = None
    for path in paths:
        data, text = _read_toml(path)
        where = _Where(path, text)
        unknown = set(data) - {"models", "defaults"}
        if unknown:
            raise EdgedsError(f"{path}: unknown top-level table(s): {', '.join(sorted(unknown))} "
                              "(expected [defaults] and [models.ID])")
        defaults = data.get("defaults", {})
        if not isinstance(defaults, dict) or not isinstance(defaults.get("chat", ""), str):
            raise EdgedsError(f"{path}: key 'defaults' must be a table whose 'chat' is a string "
                              '([defaults] chat = "ID:QUANT")')
        default_chat = defaults.get("chat", default_chat)
        models = data.get("models", {})
        if not isinstance(models, dict):
            raise EdgedsError(f"{path}: 'models' must be a table of [models.ID] entries")
        for model_id, raw in models.items():
            if not isinstance(raw, dict):
                raise where.error(model_id, None, "must be a table")
            raw_models[model_id] = _merge(raw_models.get(model_id, {}), raw)
            origin[model_id] = where
    entries = {mid: _build_entry(origin[mid], mid, raw) for mid, raw in raw_models.items()}
    for mid, entry in entries.items():
        if entry.draft is not None:
            draft_id, quant = split_spec(entry.draft)
            if draft_id not in entries or (quant and quant.upper() not in (q.upper() for q in entries[draft_id].quants)):
                raise origin[mid].error(mid, "draft", f"{entry.draft!r} names no registry model/quant")
    if default_chat:
        mid, _, quant = default_chat.partition(":")
        if mid not in entries or (quant and quant not in entries[mid].quants):
            raise EdgedsError(f"{paths[-1]}: [defaults] chat = {default_chat!r} names no registry model/quant")
    return Registry(entries=entries, default_chat=default_chat or "", sources=tuple(paths))


def split_spec(spec: str) -> tuple[str, str | None]:
    """'id:QUANT' -> ('id', 'QUANT'); 'id' -> ('id', None)."""
    model_id, sep, quant = spec.partition(":")
    return model_id.lower(), (quant or None) if sep else None
