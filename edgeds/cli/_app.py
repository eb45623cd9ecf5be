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


def _version(value: bool) -> None:
    if value:
        from edgeds import __version__

        typer.echo(f"edgeds {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Run DeepSeek-R1 distills and DeepSeek MoE models locally: convert, run, chat, batch, serve."""
