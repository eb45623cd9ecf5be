"""The Typer app every command module registers on."""

import typer

app = typer.Typer(
    name="edgeds",
    help="Run DeepSeek-R1 distills and DeepSeek MoE models locally: convert, run, chat, batch, serve.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)


@app.callback()
def _root() -> None:
    """Run DeepSeek-R1 distills and DeepSeek MoE models locally: convert, run, chat, batch, serve."""
