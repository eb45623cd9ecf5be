"""Running the CLI in-process, as a test sees it: exit code, stdout and stderr."""

from __future__ import annotations

import pytest

from edgeds.cli import main


def cli(args: list, capsys) -> tuple[int, str, str]:
    """`edgeds ARGS` through the CLI's error funnel; arguments may be paths or numbers."""
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in args])
    out = capsys.readouterr()
    return info.value.code or 0, out.out, out.err
