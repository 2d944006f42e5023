"""Atomic file writes: a reader sees the old file or the whole new one, never a partial one.

Every writer goes through `atomic_write`: the content goes to a hidden temporary file in the
destination's own folder (`.<name>.<random>.tmp`; the same file system, so the final `os.replace` is
one atomic rename), is flushed and fsynced (so a crash after the rename cannot leave an empty file
behind a complete-looking name), and only then replaces the destination. On any error the temporary
file is removed and the destination is left as it was. `write_text`, `write_json` and `save_torch`
are the shapes of content the pipeline writes.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import torch

PathLike = str | os.PathLike


@contextmanager
def atomic_write(path: PathLike, mode: str = "wb", **open_kwargs: Any) -> Iterator[IO]:
    """A file object to write `path` through; `path` is replaced only when the block exits cleanly.

    mode: "wb" or "w" (open_kwargs go to `os.fdopen`, e.g. newline="" for csv). Parent folders are made.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, mode, **open_kwargs) as file:
            yield file
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text(path: PathLike, text: str) -> Path:
    """Write `text` to `path` atomically; returns the path."""
    with atomic_write(path, "w") as file:
        file.write(text)
    return Path(path)


def write_json(path: PathLike, content: Any) -> Path:
    """Write `content` as indented JSON with sorted keys and a final newline, atomically."""
    return write_text(path, json.dumps(content, indent=2, sort_keys=True) + "\n")


def save_torch(path: PathLike, obj: Any) -> Path:
    """`torch.save(obj)` to `path` atomically; returns the path."""
    with atomic_write(path, "wb") as file:
        torch.save(obj, file)
    return Path(path)


@contextmanager
def staged_folder(out: PathLike, managed: Sequence[str]) -> Iterator[Path]:
    """A staging folder beside the folder `out` to write a set of files into; when the block exits cleanly
    they replace those of `out` (each by one rename), and the files named in `managed` that the block did
    not write are removed from `out` (stale ones from an earlier run). When it raises, `out` is left as it
    was. The staging folder is removed either way.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        out.mkdir(parents=True, exist_ok=True)
        produced = {p.name for p in staging.iterdir()}
        for name in set(managed) - produced:
            (out / name).unlink(missing_ok=True)
        for name in produced:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

