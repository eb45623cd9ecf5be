"""llama.cpp's quantizer (`llama_model_quantize`): its parameters, per-tensor type overrides and
importance matrix as the C structs it takes, and its log.

llama.cpp cannot stop a quantization midway, and while it holds the calling thread a Ctrl-C
lands in its log callback, where ctypes discards the KeyboardInterrupt. So the quantizer runs in a
daemon thread and the calling thread waits for it in short, interruptible steps: Ctrl-C (or a
SIGTERM the caller turned into an exception) reaches the caller at once, whose cleanup removes
the partial output while the process exits, taking the thread with it.
"""

from __future__ import annotations

import ctypes
import os
import re
import threading
from collections.abc import Sequence

import llama_cpp
import numpy as np

from edgeds.errors import EdgedsError
from edgeds.llamacpp.backend import captured_llama_log


def quantize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    ftype: int,
    *,
    overrides: Sequence[tuple[str, int]] = (),
    imatrix: Sequence[tuple[str, np.ndarray]] = (),
    pure: bool = False,
    dry_run: bool = False,
    allow_requantize: bool = False,
    nthread: int = 0,
) -> list[str]:
    """Quantize GGUF `src` into `dst` as llama.cpp file type `ftype` (enum llama_ftype).

    Args:
        overrides: (tensor name regex, ggml type) rules; the first match wins (`tt_overrides`).
        imatrix: (tensor name, float32 values) importance entries.
        pure: no mixture: every tensor gets the file type's own type unless overridden.
        dry_run: write nothing; llama.cpp logs each tensor's type and size instead.
        allow_requantize: quantize tensors that are already quantized (llama.cpp refuses by default).
        nthread: threads, 0 for llama.cpp's choice.

    Returns:
        llama.cpp's log messages written meanwhile.

    Raises:
        EdgedsError: llama.cpp failed; the message names `src` and llama.cpp's reason.
        KeyboardInterrupt: Ctrl-C while llama.cpp works; it goes on in its thread until the
            process exits, so the caller should remove `dst` and exit.
    """
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = nthread
    params.pure = pure
    params.dry_run = dry_run
    params.allow_requantize = allow_requantize
    keep: list = []  # what the structs point to, alive until llama.cpp returns
    if overrides:
        params.tt_overrides = ctypes.cast(_overrides(overrides, keep),
                                          ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    if imatrix:
        params.imatrix = ctypes.cast(_imatrix(imatrix, keep), type(params.imatrix))
    with captured_llama_log() as log:
        rc = _in_worker(lambda: llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst),
                                                                ctypes.byref(params)), [params, keep])
    if rc != 0:
        reason = re.findall(r"(?:failed to quantize|error|ERROR)[^\n]*?:\s*([^\n]+)", "".join(log))
        what = "plan" if dry_run else "quantize"
        raise EdgedsError(f"{src}: llama.cpp could not {what} it ({reason[-1].strip() if reason else f'code {rc}'})")
    return log


def _in_worker(call, keep: list):
    """`call()` in a daemon thread, waited for in steps that let signals through. The thread
    holds `keep` (what llama.cpp's structs point to), so it stays valid even after the caller
    is interrupted."""
    outcome: list = []

    def work(keep=keep):
        try:
            outcome.append(call())
        except BaseException as err:  # re-raised in the calling thread
            outcome.append(err)

    worker = threading.Thread(target=work, name="llama.cpp quantizer", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return outcome[0]


def _overrides(rules: Sequence[tuple[str, int]], keep: list):
    """The NULL-terminated `llama_model_tensor_override` array."""
    arr = (llama_cpp.llama_model_tensor_override * (len(rules) + 1))()
    for i, (pattern, ggml_type) in enumerate(rules):
        encoded = pattern.encode()
        keep.append(encoded)
        arr[i].pattern = encoded
        arr[i].type = ggml_type
    arr[len(rules)].pattern = None
    keep.append(arr)
    return arr


def _imatrix(entries: Sequence[tuple[str, np.ndarray]], keep: list):
    """The NULL-terminated `llama_model_imatrix_data` array."""
    arr = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
    for i, (name, values) in enumerate(entries):
        encoded = name.encode()
        data = np.ascontiguousarray(values, dtype=np.float32).reshape(-1)
        keep += (encoded, data)
        arr[i].name = encoded
        arr[i].data = data.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        arr[i].size = data.size
    arr[len(entries)].name = None
    keep.append(arr)
    return arr
