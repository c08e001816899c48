"""Run directories that cannot lie: atomic files, stale outputs cleared, COMPLETE last.

* :func:`atomic_path` / :func:`write_text`: every output is written to a temporary
  name in its directory and renamed over the final one, so a killed run never leaves
  a truncated file; the file gets the permissions of an ordinary ``open`` (0666 less
  the user's umask), not ``mkstemp``'s 0600.
* :func:`check_out_dir`: ``--out`` must be (or be creatable as) a writable directory;
  commands call it while validating, before any work.
* :func:`begin`: removes ``COMPLETE`` first, then every earlier output, so a re-run
  with another configuration never leaves old results beside the new config.json.
* :class:`WallClock`: wall time summed over every attempt of a resumed run.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tfda.experiments._errors import UserError

COMPLETE = "COMPLETE"


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``.

    ``suffix`` keeps a file-type extension for writers that infer the format from the
    name (matplotlib, netCDF)."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f".part{suffix}",
                                dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, _file_mode())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike[str], data: object) -> Path:
    return write_text(path, json.dumps(data, indent=1, default=str) + "\n")


def check_out_dir(path: str | os.PathLike[str], option: str = "--out") -> Path:
    """``path`` is a directory that exists or can be created, and can be written."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"{option} {p}: exists and is not a directory")
    parent = p
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{option} {p}: {parent} is a file, not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {p}: {parent} is not writable")
    return p


def begin(out: str | os.PathLike[str], outputs: Iterable[str], *,
          config: object | None = None) -> Path:
    """Make ``out``; un-mark it (COMPLETE first), remove earlier ``outputs`` (file
    names or glob patterns; directories too), then write config.json if given."""
    out = check_out_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / COMPLETE).unlink(missing_ok=True)
    for pattern in outputs:
        for old in out.glob(pattern):
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
    if config is not None:
        write_json(out / "config.json", config)
    return out


def finish(out: str | os.PathLike[str], info: dict[str, object]) -> None:
    """Write COMPLETE, last: its presence means every other output is whole."""
    write_json(Path(out) / COMPLETE, info)


class WallClock:
    """Wall seconds over all attempts of a run, kept in a small JSON file.

    ``checkpoint()`` (call it whenever the run saves a checkpoint) records this
    attempt's time so far; an attempt killed later loses only the time since, the
    same work the resumed run then repeats and counts."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.start = time.perf_counter()
        self.before = 0.0
        if self.path.is_file():
            try:
                self.before = float(json.loads(self.path.read_text())["seconds"])
            except (ValueError, KeyError, TypeError):
                self.before = 0.0

    def total(self) -> float:
        return self.before + time.perf_counter() - self.start

    def checkpoint(self) -> None:
        write_json(self.path, {"seconds": self.total()})

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def fingerprint(config: dict[str, Any]) -> str:
    """A stable hash of a JSON-able configuration: checkpoints of another set-up are ignored."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]
