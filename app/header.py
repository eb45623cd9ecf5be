"""The header line: the model as the user named it, quant, where the weights sit and context use.

The model part is cut with an ellipsis on a narrow terminal; the context counter at the right
always stays in view.
"""

from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.containers import Horizontal
from textual.widgets import Static

NO_MODEL = "no model loaded · Ctrl+L or Ctrl+P → Switch model"


def quant_name(metadata: dict[str, str]) -> str:
    """The GGUF's file type as llama.cpp names quants (Q4_K_M, F16, …)."""
    import gguf

    try:
        name = gguf.LlamaFileType(int(metadata["general.file_type"])).name
    except (KeyError, ValueError):
        return "?"
    return name.removeprefix("MOSTLY_").removeprefix("ALL_")


def model_label(spec: str) -> str:
    """What the user opened, as they would name it: a file's name, or the registry id as given."""
    path = Path(spec).expanduser()
    return path.name if spec.endswith(".gguf") or path.is_file() else spec


def engine_line(engine, label: str | None = None) -> str:
    """label · quant · placement; the label defaults to the GGUF's file name, and the
    placement part is left out when the engine has none."""
    parts = (label or engine.model.path.name, quant_name(engine.model.metadata), engine.placement)
    return " · ".join(part for part in parts if part)


def context_line(engine, context_used: int) -> str:
    """ctx used/n_ctx (pct), after the draft's acceptance rate when the engine speculates."""
    pct = 100 * context_used / engine.n_ctx if engine.n_ctx else 0
    line = f"ctx {context_used}/{engine.n_ctx} ({pct:.0f}%)"
    speculation = getattr(engine, "speculation", None)
    if speculation is not None:
        rate = speculation.acceptance
        line = f"draft {'-' if rate is None else f'{100 * rate:.0f}%'} · " + line
    return line


class ChatHeader(Horizontal):
    """Model, quant and placement (cut to fit), then context use; or a note, e.g. while a model loads."""

    def compose(self) -> ComposeResult:
        yield Static("", classes="model", markup=False)
        yield Static("", classes="context", markup=False)

    def show(self, engine, context_used: int, *, label: str | None = None, note: str | None = None) -> None:
        """Describe `engine` (None: no model loaded), unless there is a note to show instead."""
        model, context = self.query_one(".model", Static), self.query_one(".context", Static)
        if note is not None or engine is None:
            model.update(note or NO_MODEL)
            context.update("")
        else:
            model.update(engine_line(engine, label))
            context.update(context_line(engine, context_used))

    @property
    def text(self) -> str:
        """The whole line, before any cut."""
        parts = (str(self.query_one(s, Static).render()) for s in (".model", ".context"))
        return " · ".join(p for p in parts if p)
