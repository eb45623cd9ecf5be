"""The command line: the composition root.

Each command module parses options and calls the library; heavy imports (the TUI, the
converter, llama.cpp) happen inside the commands that need them. `main` is the one place
where user errors become a one-line message and a non-zero exit.
"""

from __future__ import annotations

import os
import sys

from edgeds.cli._app import app
from edgeds.errors import EdgedsError

# Importing a command module registers its commands on `app`.
from edgeds.cli import (  # noqa: E402,F401
    run,
    chat,
    convert,
    convert_lora,
    quantize,
    models,
    doctor,
    bench,
    batch,
    serve,
    evaluate,
    imatrix,
)
from edgeds.cli.examples import epilog  # noqa: E402

for _command in app.registered_commands:
    _command.epilog = epilog(_command.name)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user errors print `edgeds: error: …` on stderr and exit non-zero.

    Typer reports usage errors itself. Set EDGEDS_DEBUG=1 to get a traceback instead.
    """
    try:
        app(args=argv, prog_name="edgeds")
    except EdgedsError as err:
        if os.environ.get("EDGEDS_DEBUG"):
            raise
        print(f"edgeds: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
