"""Downloads from the Hugging Face hub into its standard cache, with checks.

huggingface-hub does the transfer (progress bar, retries that resume with a Range request,
the size check against the hub's X-Linked-Size). On top of it edgeds checks the sha256 of LFS
files (the hub's etag of an LFS file is its sha256), fetches every part of a split GGUF, and
turns the hub's errors into one-line messages that name the file and say how to use a local
file instead. HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE work as in every hub client.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from edgeds.errors import HubError
from edgeds.registry import QuantSource

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def file_url(repo: str, filename: str, revision: str = "main") -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo, filename, revision=revision)


def cached_file(repo: str, filename: str, revision: str = "main") -> Path | None:
    """The cached copy of one hub file, or None (no network)."""
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, revision=revision)
    return Path(found) if isinstance(found, str) and Path(found).is_file() else None


def cached_parts(source: QuantSource) -> list[Path] | None:
    """All files of a quant from the cache, or None unless every part is there."""
    paths = [cached_file(source.repo, f.name, source.revision) for f in source.files]
    return paths if all(paths) else None  # type: ignore[return-value]


def _how_to_fetch(repo: str, filename: str, revision: str) -> str:
    return (f"fetch {repo}/{filename} ({file_url(repo, filename, revision)}) another way and run "
            f"`edgeds run /path/to/{Path(filename).name}`")


def download(repo: str, filename: str, revision: str = "main", *, progress: bool = True) -> Path:
    """Download one file into the hub cache (resuming and size-checked) and verify its sha256.

    Raises:
        HubError: offline or unreachable, not on the hub, or the size or sha256 is wrong.
            Nothing that looks complete is left in the cache after a failed check.
    """
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    name = f"{repo}/{filename}"
    if constants.HF_HUB_OFFLINE and cached_file(repo, filename, revision) is None:
        raise HubError(f"{name} is not downloaded and HF_HUB_OFFLINE is set: unset it, or "
                       + _how_to_fetch(repo, filename, revision))
    (enable_progress_bars if progress else disable_progress_bars)()
    try:
        path = Path(hf_hub_download(repo, filename, revision=revision))
    except (OfflineModeIsEnabled, LocalEntryNotFoundError):
        raise HubError(f"cannot reach the hub ({constants.ENDPOINT}) to download {name}: check the "
                       "network or HF_ENDPOINT, or " + _how_to_fetch(repo, filename, revision)) from None
    except GatedRepoError:
        raise HubError(f"{repo} is gated: accept its terms on the hub and log in (`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise HubError(f"{repo}: no such repository on the hub ({constants.ENDPOINT})") from None
    except EntryNotFoundError:
        raise HubError(f"{name}: no such file in the repository (revision {revision})") from None
    except HfHubHTTPError as err:
        raise HubError(f"{name}: download failed: {str(err).splitlines()[0]}") from None
    except OSError as err:  # huggingface-hub's size check ("Consistency check failed")
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise HubError(f"{name}: download failed its size check: {first}") from None
    verify_sha256(path, name)
    return path


def verify_sha256(path: Path, name: str) -> None:
    """Check an LFS file against its etag (the blob's name in the cache is the etag)."""
    blob = path.resolve()
    etag = blob.name
    if not _SHA256.match(etag):
        return  # not an LFS file: the hub gives a git hash, not a sha256
    digest = hashlib.sha256()
    with open(blob, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    if digest.hexdigest() != etag:
        blob.unlink(missing_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink(missing_ok=True)
        raise HubError(f"{name}: sha256 mismatch (hub says {etag[:12]}…, got "
                       f"{digest.hexdigest()[:12]}…); the download was removed, run the pull again")


def pull(source: QuantSource, *, progress: bool = True) -> list[Path]:
    """Download every file of a quant (all parts of a split GGUF); returns their paths."""
    return [download(source.repo, f.name, source.revision, progress=progress) for f in source.files]


def remove(source: QuantSource) -> list[Path]:
    """Delete a quant's files (snapshot links and their blobs) from the cache."""
    removed = []
    for f in source.files:
        path = cached_file(source.repo, f.name, source.revision)
        if path is None:
            continue
        blob = path.resolve()
        path.unlink(missing_ok=True)
        if blob != path:
            blob.unlink(missing_ok=True)
        removed.append(path)
    return removed
