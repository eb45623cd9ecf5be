"""The header line: model, quant, where the weights sit and context use."""

from __future__ import annotations

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


def engine_line(engine, context_used: int) -> str:
    """name · quant · placement · ctx used/n_ctx (pct); no placement part when the engine has none."""
    pct = 100 * context_used / engine.n_ctx if engine.n_ctx else 0
    parts = (engine.name, quant_name(engine.model.metadata), engine.placement,
             f"ctx {context_used}/{engine.n_ctx} ({pct:.0f}%)")
    return " · ".join(part for part in parts if part)


class ChatHeader(Static):
    """Model, quant, placement and context use; or a note, e.g. while a model loads."""

    def show(self, engine, context_used: int, note: str | None = None) -> None:
        """Describe `engine` (None: no model loaded), unless there is a note to show instead."""
        if note is not None or engine is None:
            self.update(note or NO_MODEL)
        else:
            self.update(engine_line(engine, context_used))
