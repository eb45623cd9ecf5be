"""The command line: the composition root.

Each command module parses options and calls the library; heavy imports (the TUI, the
converter, llama.cpp) happen inside the commands that need them. `main` is the one place
where user errors become a one-line message and a non-zero exit.
"""

from __future__ import annotations

import os
import sys

import click
import typer

from edgeds.cli._app import app
from edgeds.errors import EdgedsError

# Importing a command module registers its commands on `app`.
from edgeds.cli import (  # noqa: E402,F401
    run,
    chat,
    convert,
    quantize,
    models,
    doctor,
    bench,
    batch,
    serve,
    evaluate,
)

EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print `edgeds: error: …` on stderr and exit non-zero.

    Set EDGEDS_DEBUG=1 to get the traceback instead.
    """
    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="edgeds", standalone_mode=False)
    except EdgedsError as err:
        if os.environ.get("EDGEDS_DEBUG"):
            raise
        print(f"edgeds: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except (click.exceptions.Abort, KeyboardInterrupt):
        print("edgeds: interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    sys.exit(code if isinstance(code, int) else 0)
