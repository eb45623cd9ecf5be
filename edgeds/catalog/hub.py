"""Downloads from the Hugging Face hub into its standard cache, with checks.

huggingface-hub does the transfer (its metadata request, `http_get` with progress bar and
retries that resume with a Range request, the size check against the hub's X-Linked-Size);
edgeds keeps partial downloads across runs so a later pull resumes, checks the sha256 of LFS
files (the hub's etag of an LFS file is its sha256), fetches every part of a split GGUF, and
turns the hub's errors into one-line messages that name the file and say how to use a local
file instead. Files land in the standard cache layout (blobs/, snapshots/, refs/), where
huggingface-hub and other tools find them. HF_ENDPOINT, HF_HOME and HF_HUB_OFFLINE work as in
every hub client.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from edgeds.errors import HubError
from edgeds.catalog.registry import QuantSource

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


def _how_to_fetch(repo: str, filename: str, revision: str, label: str | None) -> str:
    return (f"fetch {repo}/{filename} ({file_url(repo, filename, revision)}) another way and register it with "
            f"`edgeds add /path/to/{Path(filename).name} --as {label or 'ID:QUANT'}`")


def download(repo: str, filename: str, revision: str = "main", *, progress: bool = True,
             label: str | None = None) -> Path:
    """Download one file into the hub cache, resumable across runs, size- and sha256-checked.

    huggingface-hub's own `hf_hub_download` (2.x) throws a partial download away when it fails,
    so a multi-GB pull cut by Ctrl-C would start over. Here the bytes go to
    `blobs/<etag>.incomplete` in the standard cache layout, and the next pull continues from
    there with a Range request (huggingface-hub's `http_get` does the transfer, progress bar and
    retries); the finished blob is checked, renamed, and linked from `snapshots/<commit>/`.
    `label` (the registry's `ID:QUANT`) goes into the advice of an error.

    Raises:
        HubError: offline or unreachable, not on the hub, or the size or sha256 is wrong.
            Nothing that looks complete is left in the cache after a failed check.
    """
    from filelock import FileLock
    from huggingface_hub import constants, get_hf_file_metadata
    from huggingface_hub.file_download import repo_folder_name
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    name = f"{repo}/{filename}"
    cached = cached_file(repo, filename, revision)
    if cached is not None:
        return cached
    if constants.HF_HUB_OFFLINE:
        raise HubError(f"{name} is not downloaded and HF_HUB_OFFLINE is set: unset it, or "
                       + _how_to_fetch(repo, filename, revision, label))
    (enable_progress_bars if progress else disable_progress_bars)()
    with _hub_errors(repo, filename, revision, label):
        meta = get_hf_file_metadata(file_url(repo, filename, revision))
    if not meta.etag or not meta.commit_hash:
        raise HubError(f"{name}: the hub's answer has no ETag or X-Repo-Commit header "
                       f"(is HF_ENDPOINT={constants.ENDPOINT} a Hugging Face hub?)")
    folder = repo_folder_name(repo_id=repo, repo_type="model")
    storage = Path(constants.HF_HUB_CACHE) / folder
    blob = storage / "blobs" / meta.etag
    pointer = storage / "snapshots" / meta.commit_hash / filename
    if not blob.is_file():
        blob.parent.mkdir(parents=True, exist_ok=True)
        lock = Path(constants.HF_HUB_CACHE) / ".locks" / folder / f"{meta.etag}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(lock)):
            partial = blob.with_name(meta.etag + ".incomplete")
            with _hub_errors(repo, filename, revision, label):
                _fetch_into(partial, meta.location, meta.size, name)
            verify_sha256(partial, name, etag=meta.etag)
            os.replace(partial, blob)
    pointer.parent.mkdir(parents=True, exist_ok=True)
    if pointer.is_symlink() or pointer.exists():
        pointer.unlink()
    try:
        os.symlink(os.path.relpath(blob, pointer.parent), pointer)
    except OSError:  # no symlinks (Windows without developer mode): a copy, as huggingface-hub does
        shutil.copyfile(blob, pointer)
    if revision != meta.commit_hash:
        ref = storage / "refs" / revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(meta.commit_hash)
    return pointer


def _fetch_into(partial: Path, url: str, size: int | None, name: str) -> None:
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    resume = partial.stat().st_size if partial.is_file() else 0
    if size is not None and resume > size:
        partial.unlink()
        resume = 0
    with open(partial, "r+b" if resume else "wb") as f:
        f.seek(resume)
        try:
            http_get(url, f, resume_size=resume, headers=build_hf_headers(), expected_size=size,
                     displayed_filename=Path(name).name)
        except OSError as err:
            if "Consistency check failed" not in str(err):
                raise
            bad = True
        else:
            bad = False
    if bad:  # the hub sent a different number of bytes than it announced
        got = partial.stat().st_size
        partial.unlink(missing_ok=True)
        raise HubError(f"{name}: download failed its size check (the hub announced {size} bytes, "
                       f"sent {got}); the partial file was removed, run the pull again")


def _transport_errors() -> tuple[type[BaseException], ...]:
    """Network failures of the HTTP client huggingface-hub uses (httpx2 in 2.x, requests before)."""
    found: list[type[BaseException]] = []
    try:
        import httpx2

        found.append(httpx2.TransportError)
    except ImportError:
        pass
    try:
        import requests

        found += [requests.ConnectionError, requests.Timeout]
    except ImportError:
        pass
    return tuple(found)


@contextmanager
def _hub_errors(repo: str, filename: str, revision: str, label: str | None) -> Iterator[None]:
    """huggingface-hub's and the network's errors as one-line HubErrors."""
    from huggingface_hub import constants
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
    )

    name = f"{repo}/{filename}"
    try:
        yield
    except GatedRepoError:
        raise HubError(f"{repo} is gated: accept its terms on the hub and log in (`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise HubError(f"{repo}: no such repository on the hub ({constants.ENDPOINT})") from None
    except EntryNotFoundError:
        raise HubError(f"{name}: no such file in the repository (revision {revision})") from None
    except HfHubHTTPError as err:
        raise HubError(f"{name}: download failed: {str(err).splitlines()[0]}") from None
    except (OfflineModeIsEnabled, ConnectionError, *_transport_errors()) as err:
        raise HubError(f"cannot reach the hub ({constants.ENDPOINT}) to download {name} "
                       f"({type(err).__name__}): check the network or HF_ENDPOINT, or "
                       + _how_to_fetch(repo, filename, revision, label)
                       + "; a later pull resumes what was downloaded") from None


def verify_sha256(path: Path, name: str, *, etag: str | None = None) -> None:
    """Check an LFS file against its etag (by default the blob's name in the cache, which is
    the etag); on a mismatch the file is deleted."""
    blob = path.resolve()
    etag = etag or blob.name
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


def pull(source: QuantSource, *, progress: bool = True, label: str | None = None) -> list[Path]:
    """Download every file of a quant (all parts of a split GGUF); returns their paths. `label`
    is its registry `ID:QUANT`, for error messages."""
    return [download(source.repo, f.name, source.revision, progress=progress, label=label) for f in source.files]


def remove(source: QuantSource) -> list[Path]:
    """Delete a quant's files (snapshot links and their blobs) from the cache.

    Only what lies in the repository's own cache folder is deleted: a snapshot entry whose
    folder leads out of the cache is left alone, and a link to a file outside the repository's
    blobs/ loses the link, never the file it points to.
    """
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    storage = Path(constants.HF_HUB_CACHE).resolve() / repo_folder_name(repo_id=source.repo, repo_type="model")
    removed = []
    for f in source.files:
        path = cached_file(source.repo, f.name, source.revision)
        if path is None or not path.parent.resolve().is_relative_to(storage / "snapshots"):
            continue
        blob = path.resolve()
        path.unlink(missing_ok=True)
        if blob.parent == storage / "blobs":
            blob.unlink(missing_ok=True)
        removed.append(path)
    return removed
