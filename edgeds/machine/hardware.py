"""What this machine has: CPU, cores, RAM, llama.cpp's backends and devices, free VRAM.

Memory comes from the OS (/proc/meminfo, sysctl); devices from llama.cpp's own ggml device
list (what it will really use), with `nvidia-smi` as a hint for free VRAM when llama.cpp was
built without a GPU backend. Nothing here loads a model.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the runtime package imports this module
    from edgeds.llamacpp.devices import Device


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
    devices: tuple[Device, ...]        # llama.cpp's device list
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
    """Physical cores available to this process (llama.cpp decodes best with one thread each)."""
    try:
        available = os.sched_getaffinity(0)
    except AttributeError:  # macOS, Windows
        if sys.platform == "darwin":
            out = _run(["sysctl", "-n", "hw.physicalcpu"])
            if out and out.strip().isdigit():
                return int(out)
        return os.cpu_count() or 1
    siblings: set[frozenset[int]] = set()
    for cpu in available:
        path = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            siblings.add(frozenset(_cpu_list(path.read_text())) & frozenset(available))
        except OSError:
            return max(1, len(available))
    return max(1, len(siblings))


def threads_beside_ui() -> int:
    """Decode threads for an app whose UI thread shares the machine: every physical core where
    hyperthreads are left over for the UI, else one core less. llama.cpp's threads meet at a
    barrier after every op, so a UI thread that preempts one of them stalls them all (measured
    on a 2-core machine: SmolLM2 in the chat app at 93 tok/s on 2 threads, 140 on 1)."""
    cores = physical_cores()
    try:
        logical = len(os.sched_getaffinity(0))
    except AttributeError:
        logical = os.cpu_count() or cores
    return cores if logical > cores else max(1, cores - 1)


def _cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.strip().split(","):
        lo, _, hi = part.partition("-")
        cpus.extend(range(int(lo), int(hi or lo) + 1))
    return cpus


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


def detect(*, with_llama: bool = True) -> Hardware:
    """Probe the machine. `with_llama=False` skips llama.cpp (no backends, no devices)."""
    total, avail = memory()
    offload, devices = False, ()
    if with_llama:
        from edgeds.llamacpp import devices as ggml_devices
        from edgeds.llamacpp.backend import gpu_offload_supported

        offload = gpu_offload_supported()
        devices = tuple(ggml_devices.devices())
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
