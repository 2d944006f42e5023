"""Fetching raw archives: download to a temporary file, verify its published md5, rename, extract safely.

Used for CIFAR-10, the one data set here with a stable, unauthenticated download and a published
checksum (torchvision's). Nothing here runs unless asked (params.yaml `data.download: true`).

- `download_verified` streams a URL into a temporary file beside the target, checks its md5 and only
  then renames it into place, so the target is either absent or complete and verified; a mismatch
  deletes the temporary file and raises ChecksumError.
- `safe_extract_tar` refuses archives with absolute paths, `..` components, links or device files
  before extracting anything, so a hostile archive cannot write outside its destination.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import secrets
import shutil
import tarfile
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from pfgm.data.store import ChecksumError, DataError, MissingFilesError

logger = logging.getLogger(__name__)

Fetch = Callable[[str, Path], None]
"""fetch(url, dest): write the bytes at url into the file dest (created or truncated)."""

TIMEOUT_S = 60.0


class DownloadError(MissingFilesError):
    """A download that could not run (offline, server error): the raw files are still missing."""


def md5_file(path: str | os.PathLike) -> str:
    """The hex md5 of a file, read in 1 MiB blocks (a checksum against corruption, not security)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_url(url: str, dest: Path, timeout: float = TIMEOUT_S) -> None:
    """Stream url (https, http or file) into dest; urllib's errors (URLError, timeouts) propagate.

    `timeout` bounds each blocking socket operation, not the whole transfer, so a slow but live
    connection finishes while a dead one fails within a minute.
    """
    request = urllib.request.Request(url, headers={"User-Agent": "pfgm-data"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as f:
        shutil.copyfileobj(response, f, 1 << 20)


def download_verified(url: str, target: str | os.PathLike, md5: str, *, fetch: Fetch | None = None) -> Path:
    """Download url to target, verified against md5; return target.

    The bytes go to a hidden temporary file beside target (same file system, so the final rename
    is atomic); target appears only once its md5 matches. On a mismatch or any error the temporary
    file is removed: ChecksumError for a mismatch, DownloadError (a MissingFilesError) when the
    fetch itself fails. `fetch` defaults to fetch_url, looked up at call time.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{secrets.token_hex(6)}"  # .dvcignore skips .*.tmp-*
    fetch = fetch or fetch_url
    try:
        logger.info("downloading %s to %s", url, target)
        try:
            fetch(url, tmp)
        except (OSError, http.client.HTTPException) as err:  # URLError, timeouts, resets, TLS, short reads
            reason = getattr(err, "reason", None) or err
            raise DownloadError(f"download of {url} failed ({reason})") from err
        actual = md5_file(tmp)
        if actual != md5:
            raise ChecksumError(
                f"{url}: downloaded file has md5 {actual}, not the published {md5}; deleted it, nothing "
                f"was written to {target.parent}"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def _checked_member(archive: Path, member: tarfile.TarInfo) -> tarfile.TarInfo:
    """The member itself if it is a plain file or folder with a relative path inside the archive."""
    path = PurePosixPath(member.name)
    if path.is_absolute() or ".." in path.parts or member.name.startswith(("/", "\\")) or "\\" in member.name:
        raise DataError(f"{archive}: member {member.name!r} points outside the archive; refusing to extract")
    if not (member.isfile() or member.isdir()):
        raise DataError(f"{archive}: member {member.name!r} is a link or special file; refusing to extract")
    return member


def safe_extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Extract a (possibly compressed) tar archive into dest after checking every member.

    Every member must be a regular file or a folder with a relative path free of `..`; otherwise
    DataError names the member and nothing is extracted. Returns the member names. Where Python
    has tarfile's `data` filter (3.12, 3.11.4, 3.10.12) it is applied too, which also drops
    set-uid bits and foreign ownership.
    """
    archive, dest = Path(archive), Path(dest)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [_checked_member(archive, m) for m in tar.getmembers()]
            dest.mkdir(parents=True, exist_ok=True)
            if hasattr(tarfile, "data_filter"):
                tar.extractall(dest, members=members, filter="data")
            else:  # members are checked above; this Python predates extraction filters
                tar.extractall(dest, members=members)
    except (tarfile.TarError, EOFError, zlib.error) as err:
        raise DataError(f"{archive}: not a readable tar archive ({type(err).__name__}: {err})") from err
    return [m.name for m in members]
