"""What this machine has: CPU, cores, RAM, llama.cpp's backends and devices, free VRAM.

Memory comes from the OS (/proc/meminfo, sysctl); devices from llama.cpp's own ggml device
list (what it will really use), with `nvidia-smi` as a hint for free VRAM when llama.cpp was
built without a GPU backend. Nothing here loads a model.
"""

from __future__ import annotations

import ctypes
import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Device:
    """One ggml backend device as llama.cpp sees it."""

    name: str
    description: str
    kind: str            # "cpu", "gpu", "igpu", "accel"
    free_bytes: int
    total_bytes: int


@dataclass(frozen=True)
class GpuHint:
    """A GPU reported by the vendor tool (may be invisible to this llama.cpp build)."""

    name: str
    free_bytes: int
    total_bytes: int
    source: str          # "nvidia-smi", "metal"


@dataclass(frozen=True)
class Hardware:
    cpu: str
    physical_cores: int
    logical_cores: int
    ram_total: int
    ram_available: int
    gpu_offload: bool                  # llama.cpp was built with a GPU backend
    devices: tuple[Device, ...]
    gpu_hints: tuple[GpuHint, ...]

    @property
    def gpus(self) -> tuple[Device, ...]:
        return tuple(d for d in self.devices if d.kind in ("gpu", "igpu"))

    @property
    def vram_free(self) -> int:
        """Free memory on the GPU llama.cpp would use (0 if it has none)."""
        return max((d.free_bytes for d in self.gpus), default=0) if self.gpu_offload else 0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        out = _run(["sysctl", "-n", "machdep.cpu.brand_string"])
        if out:
            return out.strip()
    return platform.processor() or platform.machine()


def physical_cores() -> int:
    """Physical cores (not hyperthreads); os.cpu_count() where the OS does not say."""
    try:
        cores = set()
        phys = None
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("physical id"):
                phys = line.split(":")[1].strip()
            elif line.startswith("core id"):
                cores.add((phys, line.split(":")[1].strip()))
        if cores:
            return min(len(cores), len(os.sched_getaffinity(0)))
    except (OSError, AttributeError):
        pass
    if sys.platform == "darwin":
        out = _run(["sysctl", "-n", "hw.physicalcpu"])
        if out and out.strip().isdigit():
            return int(out)
    return os.cpu_count() or 1


def memory() -> tuple[int, int]:
    """(total, available) RAM in bytes."""
    try:
        info = {}
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            info[key] = int(rest.split()[0]) * 1024
        return info["MemTotal"], info.get("MemAvailable", info.get("MemFree", 0))
    except (OSError, KeyError, ValueError):
        pass
    total = avail = 0
    if sys.platform == "darwin":
        out = _run(["sysctl", "-n", "hw.memsize"])
        total = int(out) if out and out.strip().isdigit() else 0
        vm = _run(["vm_stat"]) or ""
        pages = sum(int(line.split(":")[1].strip(" .")) for line in vm.splitlines()
                    if line.startswith(("Pages free", "Pages inactive", "Pages speculative")))
        avail = pages * 16384 if pages else total // 2
    elif hasattr(os, "sysconf"):
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    return total, avail


def _run(cmd: list[str]) -> str | None:
    if not shutil.which(cmd[0]):
        return None
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None


def nvidia_smi() -> tuple[GpuHint, ...]:
    out = _run(["nvidia-smi", "--query-gpu=name,memory.free,memory.total",
                "--format=csv,noheader,nounits"])
    hints = []
    for line in (out or "").splitlines():
        parts = [p.strip() for p in line.split(",")]
        if len(parts) == 3 and parts[1].isdigit() and parts[2].isdigit():
            hints.append(GpuHint(parts[0], int(parts[1]) << 20, int(parts[2]) << 20, "nvidia-smi"))
    return tuple(hints)


_DEV_KINDS = {0: "cpu", 1: "gpu", 2: "igpu", 3: "accel"}  # enum ggml_backend_dev_type


def ggml_devices() -> tuple[Device, ...]:
    """llama.cpp's device list (ggml_backend_dev_*), through edgeds' ctypes extension when it
    has it, else straight from libggml."""
    try:
        from edgeds.runtime import llama_ext  # written alongside the quantizer
        if hasattr(llama_ext, "devices"):
            return tuple(
                Device(d.name, getattr(d, "description", d.name), getattr(d, "kind", "gpu"),
                       getattr(d, "free_bytes", 0), getattr(d, "total_bytes", 0))
                for d in llama_ext.devices())
    except ImportError:
        pass
    import llama_cpp

    from edgeds.runtime.llama import _init_backend

    _init_backend()
    libdir = Path(llama_cpp.__file__).parent / "lib"
    names = {"darwin": "libggml.dylib", "win32": "ggml.dll"}
    lib = ctypes.CDLL(str(libdir / names.get(sys.platform, "libggml.so")))
    lib.ggml_backend_dev_count.restype = ctypes.c_size_t
    lib.ggml_backend_dev_get.restype = ctypes.c_void_p
    lib.ggml_backend_dev_get.argtypes = [ctypes.c_size_t]
    for fn in ("ggml_backend_dev_name", "ggml_backend_dev_description"):
        getattr(lib, fn).restype = ctypes.c_char_p
        getattr(lib, fn).argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_type.restype = ctypes.c_int
    lib.ggml_backend_dev_type.argtypes = [ctypes.c_void_p]
    lib.ggml_backend_dev_memory.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_size_t),
                                            ctypes.POINTER(ctypes.c_size_t)]
    devices = []
    for i in range(lib.ggml_backend_dev_count()):
        dev = lib.ggml_backend_dev_get(i)
        free, total = ctypes.c_size_t(0), ctypes.c_size_t(0)
        lib.ggml_backend_dev_memory(dev, ctypes.byref(free), ctypes.byref(total))
        devices.append(Device(
            lib.ggml_backend_dev_name(dev).decode(), lib.ggml_backend_dev_description(dev).decode(),
            _DEV_KINDS.get(lib.ggml_backend_dev_type(dev), "other"), free.value, total.value))
    return tuple(devices)


def detect(*, with_llama: bool = True) -> Hardware:
    """Probe the machine. `with_llama=False` skips llama.cpp (no backends, no devices)."""
    total, avail = memory()
    offload, devices = False, ()
    if with_llama:
        import llama_cpp

        from edgeds.runtime.llama import _init_backend

        _init_backend()
        offload = bool(llama_cpp.llama_supports_gpu_offload())
        devices = ggml_devices()
    return Hardware(
        cpu=cpu_name(),
        physical_cores=physical_cores(),
        logical_cores=os.cpu_count() or 1,
        ram_total=total,
        ram_available=avail,
        gpu_offload=offload,
        devices=devices,
        gpu_hints=nvidia_smi(),
    )
