"""llama.cpp's process-wide state: backend initialisation and its log.

The log goes through one callback: shown on stderr only when EDGEDS_LLAMA_LOG is set (errors
always, unless a caller captures them to report them itself).
"""

from __future__ import annotations

import ctypes
import os
import sys
import threading
from contextlib import contextmanager
from typing import Callable, Iterator

import llama_cpp


_log_sinks: list[Callable[[str], None]] = []
_log_to_stderr = bool(os.environ.get("EDGEDS_LLAMA_LOG"))
_LOG_ERROR, _LOG_CONT = 4, 5  # ggml_log_level
_last_level = 0
_backend_lock = threading.Lock()
_backend_ready = False


@llama_cpp.llama_log_callback
def _on_llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    if level != _LOG_CONT:
        _last_level = level
    message = text.decode("utf-8", errors="replace")
    for sink in tuple(_log_sinks):
        sink(message)
    if _log_to_stderr or (_last_level == _LOG_ERROR and not _log_sinks):
        sys.stderr.write(message)


def init_backend() -> None:
    global _backend_ready
    with _backend_lock:
        if not _backend_ready:
            llama_cpp.llama_log_set(_on_llama_log, ctypes.c_void_p(0))
            llama_cpp.llama_backend_init()
            _backend_ready = True


@contextmanager
def captured_llama_log() -> Iterator[list[str]]:
    """Collect llama.cpp's log lines written while the block runs (its errors are not echoed:
    the caller reports them)."""
    init_backend()
    lines: list[str] = []
    _log_sinks.append(lines.append)
    try:
        yield lines
    finally:
        _log_sinks.remove(lines.append)


def gpu_offload_supported() -> bool:
    init_backend()
    return bool(llama_cpp.llama_supports_gpu_offload())
