"""The import graph: imports only go downward through the layers, and no modules import each
other in a cycle (lazy imports inside functions count too). The layers are data: a new package
goes into one of them, and a test fails when a module reaches up."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# Lowest first. A module may import modules of its own layer or of the layers below it.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("vocabulary", ("edgeds.errors", "edgeds.events", "edgeds.paths")),
    ("llama.cpp", ("edgeds.llamacpp",)),
    ("catalog", ("edgeds.catalog",)),
    ("machine", ("edgeds.machine",)),
    ("runtime", ("edgeds.runtime",)),
    ("composition", ("edgeds.loader",)),
    ("services", ("edgeds.serving", "edgeds.measure", "edgeds.store")),
    ("apps", ("edgeds.app", "edgeds.convert")),
    ("command line", ("edgeds.cli", "edgeds.__main__", "edgeds")),
]
SOURCES = {"edgeds": REPO / "edgeds", "edgeds.app": REPO / "app", "edgeds.convert": REPO / "convert"}


def modules() -> dict[str, Path]:
    found = {}
    for package, root in SOURCES.items():
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([package, *parts])
            if package == "edgeds" and name.startswith(("edgeds.app", "edgeds.convert")):
                continue
            found[name] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The edgeds modules `name` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                out.add(target)
    return out


def layer_of(module: str) -> int:
    best, rank = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{module} is in no layer: add it to LAYERS"
    return rank


def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(name, path, set(found)) for name, path in found.items()}


def test_every_module_has_a_layer():
    for module in graph():
        layer_of(module)


def test_imports_only_go_down():
    upward = [f"{m} ({LAYERS[layer_of(m)][0]}) imports {t} ({LAYERS[layer_of(t)][0]})"
              for m, targets in graph().items() for t in sorted(targets)
              if layer_of(t) > layer_of(m) and not (m == "edgeds" or t == "edgeds")]
    assert not upward, "\n".join(upward)


def test_no_import_cycles():
    g = {m: {t for t in ts if t != "edgeds"} for m, ts in graph().items()}
    cycles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(g.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = 2

    for node in sorted(g):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_a_violation(tmp_path):
    """The checker itself: an upward import and a cycle are found in a made-up graph."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from edgeds.cli import main\n")
    assert "edgeds.cli" in imports("edgeds.events", bad, {"edgeds.cli", "edgeds.events"})
    assert layer_of("edgeds.cli.run") > layer_of("edgeds.events")
