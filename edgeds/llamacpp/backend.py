"""llama.cpp's process-wide state: backend initialisation and its log.

The log goes through one callback: shown on stderr only when EDGEDS_LLAMA_LOG is set (errors
always, unless a caller captures them to report them itself).

A Ctrl-C that arrives while llama.cpp holds the main thread (loading a model) runs Python's
signal handler inside this callback, where ctypes would print and discard the KeyboardInterrupt.
The callback keeps it instead, and `captured_llama_log` raises it once llama.cpp has returned.
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
_interrupted = threading.Event()  # a Ctrl-C caught in the callback, for captured_llama_log to raise


@llama_cpp.llama_log_callback
def _on_llama_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    global _last_level
    try:
        if level != _LOG_CONT:
            _last_level = level
        message = text.decode("utf-8", errors="replace")
        for sink in tuple(_log_sinks):
            sink(message)
        if _log_to_stderr or (_last_level == _LOG_ERROR and not _log_sinks):
            sys.stderr.write(message)
    except KeyboardInterrupt:
        _interrupted.set()


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
    the caller reports them). A Ctrl-C that landed in the log callback meanwhile is raised as
    KeyboardInterrupt when the block ends."""
    init_backend()
    lines: list[str] = []
    if threading.current_thread() is threading.main_thread():
        _interrupted.clear()  # one caught outside a block is too old to act on now
    _log_sinks.append(lines.append)
    try:
        yield lines
    finally:
        _log_sinks.remove(lines.append)
    if _interrupted.is_set() and threading.current_thread() is threading.main_thread():
        _interrupted.clear()
        raise KeyboardInterrupt


def gpu_offload_supported() -> bool:
    init_backend()
    return bool(llama_cpp.llama_supports_gpu_offload())
