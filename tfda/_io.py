"""Plumbing every package shares: atomic writes and one timing helper.

* :func:`atomic_path` / :func:`write_text` / :func:`write_json`: an output is written
  to a temporary name in its directory and renamed over the final one
  (``os.replace`` is atomic on POSIX), so a killed run never leaves a truncated file
  under the final name; the file gets the permissions of an ordinary ``open``
  (0666 less the umask), not ``mkstemp``'s 0600.
* :func:`timed` / :func:`time_repeats`: wall seconds of a call, synchronising a CUDA
  device before and after so queued kernels are counted.

This module imports nothing from tfda; ``tfda.da`` does no I/O and must not use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "",
                part: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block succeeds it replaces
    ``path``, when it raises the temporary file is removed.

    ``suffix`` keeps a file-type extension for writers that infer the format from the
    name (matplotlib, netCDF). ``part`` names the temporary file instead of a unique
    one, for writers whose temporary name must be predictable (resumable downloads)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if part is None:
        fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".part{suffix}",
                                    dir=final.parent)
        os.close(fd)
        tmp = Path(name)
    else:
        tmp = final.with_name(part)
        tmp.unlink(missing_ok=True)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, final)
    except OSError as exc:  # name the output the user asked for, not the temporary file
        if exc.filename is None or str(tmp) not in str(exc.filename):
            raise
        raise type(exc)(exc.errno, exc.strerror, str(final)) from exc
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], data: object) -> Path:
    """Write ``data`` as indented JSON (non-JSON values through ``str``) atomically."""
    return write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def _sync(device: Any) -> None:
    if device is not None and str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def timed(fn: Callable[[], T], *, device: Any = None) -> tuple[T, float]:
    """``(fn(), wall seconds)``; on a CUDA ``device`` the clock starts after the queue
    drains and stops after ``fn``'s kernels finish."""
    _sync(device)
    start = time.perf_counter()
    out = fn()
    _sync(device)
    return out, time.perf_counter() - start


def time_repeats(fn: Callable[[], T], repeats: int, *, device: Any = None
                 ) -> tuple[T, list[float]]:
    """Call ``fn`` ``repeats`` times (>= 1): the last result and every call's seconds."""
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    seconds = []
    for _ in range(repeats):
        out, s = timed(fn, device=device)
        seconds.append(s)
    return out, seconds
