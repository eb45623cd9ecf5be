"""Modal screens: a one-line text prompt (rename, export path), the model switcher and the file
picker. Each returns a string, or None when Esc closes it; the pickers also take a typed value."""

from __future__ import annotations

from pathlib import Path

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.content import Content
from textual.screen import ModalScreen
from textual.widgets import DirectoryTree, Input, Label, OptionList
from textual.widgets.option_list import Option

from edgeds.app.header import model_label
from edgeds.app.model_choices import ModelChoice


class Dialog(ModalScreen[str | None]):
    """A modal that returns what was typed into its Input (Enter), or None (Esc)."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel", id="dialog.cancel")]

    def on_input_submitted(self, event: Input.Submitted) -> None:
        self.dismiss(event.value)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class TextPrompt(Dialog):
    """Ask for one line of text."""

    def __init__(self, title: str, value: str = ""):
        super().__init__()
        self.title_text = title
        self.value = value

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text)
            yield Input(self.value, id="dialog-input")


class Picker(Dialog):
    """A typed value on top, things to pick from below it; Down goes from the one to the other."""

    BINDINGS = [Binding("down", "app.focus_next", "Pick from the list", show=False)]


class ModelPicker(Picker):
    """The model switcher: recent and downloaded models to pick, or a GGUF path or registry id to type.

    Args:
        current: the spec of the model loaded now (the Input starts with it).
        choices: what to offer (`model_choices.model_choices()`).
    """

    def __init__(self, current: str, choices: list[ModelChoice]):
        super().__init__()
        self.current = current
        self.choices = choices

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="picker"):
            yield Label("Model: pick one, or type a GGUF path or registry id")
            yield Input(self.current, placeholder="model.gguf or r1-distill-qwen-7b:Q4_K_M", id="dialog-input")
            if self.choices:
                yield OptionList(*(Option(Content.assemble(model_label(c.spec), ("  " + c.note, "dim")), id=c.spec)
                                   for c in self.choices), id="choices")
            else:
                yield Label("No downloaded models yet: `edgeds pull ID` fetches one.", classes="hint")

    @on(OptionList.OptionSelected, "#choices")
    def _picked(self, event: OptionList.OptionSelected) -> None:
        self.dismiss(event.option.id)


class FilePicker(Picker):
    """Pick a file from a directory tree (starting at `start`), or type its path."""

    def __init__(self, title: str, start: Path):
        super().__init__()
        self.title_text = title
        self.start = start

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="picker"):
            yield Label(self.title_text)
            yield Input(placeholder=f"a path, or pick below from {self.start}", id="dialog-input")
            yield DirectoryTree(self.start, id="files")

    @on(DirectoryTree.FileSelected, "#files")
    def _picked(self, event: DirectoryTree.FileSelected) -> None:
        self.dismiss(str(event.path))
