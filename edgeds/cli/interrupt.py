"""Ctrl-C and SIGTERM for the commands that write files (convert, quantize).

Both become a KeyboardInterrupt in the main thread, so the library's `finally` blocks remove
`OUT.partial` and every other temporary file; then one line says what happened and the process
exits 130 (143 after SIGTERM) without waiting for a llama.cpp quantizer thread, which cannot be
stopped midway (edgeds.llamacpp.quantizer).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def interruptible(command: str) -> Iterator[None]:
    """Run the block with SIGTERM raised as KeyboardInterrupt; on either, clean exit."""
    received: list[int] = []

    def on_signal(signum, frame):
        received.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_signal)
    try:
        yield
    except KeyboardInterrupt:
        print(f"edgeds: {command} interrupted; unfinished files were removed", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + (received[0] if received else signal.SIGINT))
    finally:
        signal.signal(signal.SIGTERM, previous)
