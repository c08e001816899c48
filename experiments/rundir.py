"""Run directories that cannot lie: atomic files, stale outputs cleared, COMPLETE last.

* :func:`atomic_path` / :func:`write_text` / :func:`write_json` (from :mod:`tfda._io`,
  re-exported): every output is written to a temporary name in its directory and
  renamed over the final one, so a killed run never leaves a truncated file.
* :func:`check_out_dir`: ``--out`` must be (or be creatable as) a writable directory;
  commands call it while validating, before any work.
* :func:`begin`: removes ``COMPLETE`` first, then every earlier output, so a re-run
  with another configuration never leaves old results beside the new config.json.
* :class:`WallClock`: wall time summed over every attempt of a resumed run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tfda._io import atomic_path, write_json, write_text
from tfda.experiments._errors import UserError

__all__ = ["COMPLETE", "WallClock", "atomic_path", "begin", "check_out_dir", "finish",
           "write_json", "write_text"]

COMPLETE = "COMPLETE"


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
