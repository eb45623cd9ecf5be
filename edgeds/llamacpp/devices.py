"""The small ctypes extension over the ggml libraries llama-cpp-python ships (llama_cpp/lib/):
the device list and tensor buffer-type overrides (`llama_model_params.tensor_buft_overrides`),
which llama-cpp-python does not expose. Expert offload uses them to keep tensors in CPU RAM."""

from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from edgeds.errors import EdgedsError
from edgeds.llamacpp.backend import init_backend

_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}  # enum ggml_backend_dev_type
_EXT = {"darwin": ".dylib", "win32": ".dll"}


@dataclass(frozen=True)
class Device:
    """One ggml backend device; memory in bytes."""

    name: str
    description: str
    kind: str  # cpu, gpu, igpu, accel
    free_bytes: int
    total_bytes: int


class _BuftOverride(ctypes.Structure):
    _fields_ = [("pattern", ctypes.c_char_p), ("buft", ctypes.c_void_p)]


def _lib(stem: str) -> ctypes.CDLL:
    import llama_cpp

    libdir = Path(llama_cpp.__file__).parent / "lib"
    suffix = _EXT.get(sys.platform, ".so")
    name = f"{stem}{suffix}" if sys.platform != "win32" else f"{stem.removeprefix('lib')}{suffix}"
    return ctypes.CDLL(str(libdir / name))


@lru_cache(maxsize=1)
def _libs():
    init_backend()  # loads the backends, so the device registry is filled
    ggml = _lib("libggml")
    ggml.ggml_backend_dev_count.restype = ctypes.c_size_t
    ggml.ggml_backend_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(ggml, fn).restype = ctypes.c_char_p
        getattr(ggml, fn).argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_type.restype = ctypes.c_int
    ggml.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    ggml.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                             ctypes.POINTER(ctypes.c_size_t)]
    ggml.ggml_backend_dev_buffer_type.restype = ctypes.c_void_p
    ggml.ggml_backend_dev_buffer_type.argtypes = [ctypes.c_void_p]
    return ggml


def _handles() -> list[tuple[Device, int]]:
    ggml = _libs()
    out = []
    for i in range(ggml.ggml_backend_dev_count()):
        dev = ggml.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        ggml.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        out.append((Device(ggml.ggml_backend_dev_name(dev).decode(), ggml.ggml_backend_dev_description(dev).decode(),
                           _KINDS.get(ggml.ggml_backend_dev_type(dev), "other"), free.value, total.value), dev))
    return out


def devices() -> list[Device]:
    """llama.cpp's devices (CPU included) with their free and total memory."""
    return [d for d, _ in _handles()]


def buffer_type(device: str) -> int:
    """The ggml buffer type handle for a device name ("CPU": the CPU device's).

    Taken from llama.cpp's own device registry, as llama.cpp's `--override-tensor` does: a GPU
    build may load its CPU backend as a separate variant library, and a buffer type from another
    copy of libggml-cpu would belong to no device llama.cpp knows."""
    ggml = _libs()
    found = _handles()
    for d, handle in found:
        if d.name == device or (device.upper() == "CPU" and d.kind == "cpu"):
            return ggml.ggml_backend_dev_buffer_type(handle)
    names = ", ".join(["CPU"] + [d.name for d, _ in found if d.kind != "cpu"])
    raise EdgedsError(f"unknown device {device!r} for a tensor override: available devices are {names}")


def buft_overrides(overrides) -> ctypes.Array:
    """A NULL-terminated `llama_model_tensor_buft_override` array for `TensorOverride`s.

    The caller keeps the returned object alive as long as the model (it owns the pattern bytes)."""
    arr = (_BuftOverride * (len(overrides) + 1))()
    patterns = []
    for i, o in enumerate(overrides):
        pattern = o.pattern.encode()
        patterns.append(pattern)
        arr[i].pattern = pattern
        arr[i].buft = buffer_type(o.device)
    arr[len(overrides)].pattern = None
    arr[len(overrides)].buft = None
    arr._patterns = patterns  # keep the strings alive with the array
    return arr
