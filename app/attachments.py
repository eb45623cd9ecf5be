"""Attached text files: read for the next prompt and put in DeepSeek's file template."""

from __future__ import annotations

import re
from pathlib import Path

from edgeds.errors import EdgedsError

MAX_ATTACHMENT_CHARS = 200_000
# DeepSeek's official file-upload template (DeepSeek-R1 README, "Usage Recommendations").
FILE_TEMPLATE = "[file name]: {name}\n[file content begin]\n{content}\n[file content end]\n{question}"
_FILE_RE = re.compile(r"\A\[file name\]: (?P<name>[^\n]*)\n\[file content begin\]\n(?P<content>.*)\n\[file content end\]\n", re.S)


def with_file(name: str, content: str, question: str) -> str:
    """A prompt that carries a file in DeepSeek's template."""
    return FILE_TEMPLATE.format(name=name, content=content, question=question)


def file_summary(prompt: str) -> str:
    """The prompt with an attached file shown as one line (name and line count), not its content."""
    match = _FILE_RE.match(prompt)
    if match is None:
        return prompt
    n = match.group("content").count("\n") + 1
    return f"📎 {match.group('name')} ({n} lines)\n{prompt[match.end():]}"


def read_attachment(path: str | Path) -> tuple[str, str]:
    """(file name, text) of a UTF-8 text file that is short enough to attach.

    Raises:
        EdgedsError: the file cannot be read, is not UTF-8 text, or is too long.
    """
    path = Path(path).expanduser()
    try:
        content = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise EdgedsError(f"{path}: not a UTF-8 text file") from None
    except OSError as err:
        raise EdgedsError(f"{path}: {err.strerror}") from None
    if len(content) > MAX_ATTACHMENT_CHARS:
        raise EdgedsError(f"{path}: {len(content)} characters is too long to attach")
    return path.name, content.rstrip("\n")
