"""Whether a registry download makes sense here, before a byte of it is fetched.

A quant is refused, with the numbers, when it cannot run on this machine (the fit verdict on the
free RAM and VRAM is "no", even at 1k context: what `edgeds fit` and `doctor` say) or when what
is left to download is larger than the free space on the disk of the hub cache. `edgeds pull
--force` downloads it anyway. `catalog.resolve` runs this check before it pulls (it takes it
as its `check` callback: the catalog sits below this layer).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from edgeds.catalog.registry import QuantSource, RegistryEntry
from edgeds.catalog.resolve import size_text
from edgeds.errors import EdgedsError
from edgeds.machine import fit
from edgeds.machine.hardware import detect


class DownloadRefused(EdgedsError):
    """A download that cannot run on this machine or does not fit its disk."""


def hub_cache() -> Path:
    """Where huggingface-hub keeps downloads (HF_HUB_CACHE, HF_HOME)."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def free_disk(path: Path) -> int:
    """Free bytes on the filesystem that holds `path`, or would hold it (its nearest existing folder)."""
    folder = next(p for p in (path, *path.parents) if p.exists())
    return shutil.disk_usage(folder).free


def bytes_to_fetch(source: QuantSource) -> int:
    """The registry's size of the files of `source` that are not in the hub cache yet."""
    from edgeds.catalog.hub import cached_file

    return sum(f.size for f in source.files if cached_file(source.repo, f.name, source.revision) is None)


def _gib(n: int) -> str:
    return f"{n / (1 << 30):.1f} GiB"


def download_problems(entry: RegistryEntry, source: QuantSource) -> list[str]:
    """Why `source` should not be downloaded here (empty when nothing stands in the way)."""
    hw = detect()
    result = fit.verdict(fit.Footprint.from_registry(entry, source), ram=hw.ram_available, vram=hw.vram_free)
    problems = []
    if result.mode == fit.NO:
        problems.append(f"it needs {_gib(result.estimate.total)} of memory even at 1k context and this machine "
                        f"has {_gib(hw.ram_available)} RAM + {_gib(hw.vram_free)} VRAM free")
    need, cache = bytes_to_fetch(source), hub_cache()
    free = free_disk(cache)
    if need > free:
        problems.append(f"{size_text(need)} to download but {size_text(free)} free on the disk of {cache}")
    return problems


def check_download(entry: RegistryEntry, source: QuantSource) -> None:
    """Refuse a download that cannot run here or does not fit the disk.

    Raises:
        DownloadRefused: one line with the numbers, `edgeds fit` for details and `--force`.
    """
    problems = download_problems(entry, source)
    if problems:
        label = f"{entry.id}:{source.quant}"
        raise DownloadRefused(f"{label} ({size_text(source.size)}) is not downloaded: {'; '.join(problems)} "
                              f"(`edgeds fit {label}` shows the memory; `edgeds pull {label} --force` "
                              "downloads it anyway)")
