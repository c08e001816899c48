"""Run directories that cannot lie, and runs that are transactions.

* :func:`atomic_path` / :func:`write_text` / :func:`write_json` (from :mod:`tfda._io`,
  re-exported): every output is written to a temporary name in its directory and
  renamed over the final one, so a killed run never leaves a truncated file.
* :func:`check_out_dir`: ``--out`` must be (or be creatable as) a writable directory
  and, when it exists and holds anything, a run directory of the same command (its
  :data:`MARKER` file, written by tfda) unless ``--force``; commands call it while
  validating, before any work.
* :func:`begin` / :func:`finish`: the one transaction every command that writes a
  run directory goes through. A run is written into a staging directory beside
  ``--out`` (:func:`staging_dir`, ``.NAME.partial``; its checkpoints stay there, so a
  killed run resumes from it) and its files are moved into ``--out`` only once
  COMPLETE is written. Until then ``--out`` -- a previous complete run, or the user's
  files -- is not touched. The move deletes only what the previous run wrote (listed
  in its MARKER) and files of the same names; anything else in ``--out`` stays.
  Over a previous run that holds only tfda's files the move is one atomic directory
  exchange (Linux); otherwise file by file, and a commit killed half-way (``--out``
  then has no COMPLETE) is finished by the next :func:`begin` on that ``--out``.
* :class:`WallClock`: wall time summed over every attempt of a resumed run.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tfda._io import atomic_path, write_json, write_text
from tfda.experiments._errors import UserError

__all__ = ["COMPLETE", "MARKER", "WallClock", "atomic_path", "begin", "check_out_dir",
           "clear", "finish", "staging_dir", "write_json", "write_text"]

COMPLETE = "COMPLETE"
# written by tfda into every run directory it makes: the command and the files it wrote
MARKER = ".tfda-run.json"


def staging_dir(out: str | os.PathLike[str]) -> Path:
    """Where a run into ``out`` is written until it is complete: a hidden sibling."""
    p = Path(out).absolute()
    return p.parent / f".{p.name}.partial"


def _marker(d: Path) -> dict[str, Any] | None:
    try:
        meta = json.loads((d / MARKER).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def check_out_dir(path: str | os.PathLike[str], option: str = "--out", *,
                  command: str | None = None, force: bool = False) -> Path:
    """``path`` is a directory that exists or can be created, and can be written; with
    ``command``, an existing non-empty ``path`` must be a run directory of ``command``
    (tfda's MARKER in it) unless ``force``: the user's own files are never overwritten."""
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
    if command is not None and p.is_dir() and not force and any(p.iterdir()):
        meta = _marker(p)
        if meta is None:
            raise UserError(f"{option} {p}: exists and is not a tfda run directory (no "
                            f"{MARKER}); choose a new directory, or add --force to write "
                            "into it (files of the same names are replaced, others kept)")
        if meta.get("command") != command:
            raise UserError(f"{option} {p}: is a run directory of {meta.get('command')!r}, "
                            f"not of {command!r}; choose another directory, or add --force")
    staging = staging_dir(p)
    if command is not None and staging.exists() and not (staging.is_dir() and (
            not any(staging.iterdir()) or (_marker(staging) or {}).get("command") == command)):
        raise UserError(f"{option} {p}: {staging} is in the way (not {command!r}'s staging "
                        "directory); move it away")
    return p


def clear(d: str | os.PathLike[str], outputs: Iterable[str]) -> Path:
    """Make ``d``; un-mark it (COMPLETE first), then remove earlier ``outputs`` (file
    names or glob patterns; directories too) -- inside a staging directory only."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    (d / COMPLETE).unlink(missing_ok=True)
    for pattern in outputs:
        for old in d.glob(pattern):
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
    return d


def begin(out: str | os.PathLike[str], outputs: Iterable[str], *, command: str,
          config: object | None = None, force: bool = False) -> Path:
    """Open the transaction of a run into ``out``: returns the staging directory the run
    writes into (made, or kept from a killed attempt with its checkpoints; earlier
    ``outputs`` there removed; config.json written if given). ``out`` is not touched."""
    out = check_out_dir(out, command=command, force=force)
    staging = staging_dir(out)
    if (staging / COMPLETE).is_file():  # a commit killed half-way: finish it first
        _recover(staging, Path(out))
    clear(staging, outputs)
    if _marker(staging) is None:
        write_json(staging / MARKER, {"command": command})
    if config is not None:
        write_json(staging / "config.json", config)
    return staging


def finish(staging: str | os.PathLike[str], info: dict[str, object]) -> Path:
    """Write COMPLETE, last, into ``staging`` (from :func:`begin`) and move the run into
    its ``--out``; returns ``--out``. Until COMPLETE exists nothing in ``--out`` changed."""
    staging = Path(staging)
    if not (staging.name.startswith(".") and staging.name.endswith(".partial")):
        raise ValueError(f"{staging} is not a staging directory (rundir.begin makes one)")
    out = staging.parent / staging.name[1:-len(".partial")]
    meta = _marker(staging) or {}
    files = sorted(p.name for p in staging.iterdir() if p.name not in (MARKER, COMPLETE))
    before = (_marker(out) or {}).get("files", []) if out.is_dir() else []
    write_json(staging / MARKER, {"command": meta.get("command"), "files": files,
                                  "replaces": before, "stamp": time.time_ns()})
    write_json(staging / COMPLETE, info)
    _commit(staging, out)
    return out


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    else:
        p.unlink(missing_ok=True)


def _recover(staging: Path, out: Path) -> None:
    """A complete staging directory left by a killed commit: the new run not yet (fully)
    moved in -- finish the commit -- or, after an exchange, the previous run -- remove it."""
    meta, current = _marker(staging), _marker(out) if out.is_dir() else None
    if meta is not None and current is not None and (
            current.get("stamp", 0) > meta.get("stamp", 0)):
        shutil.rmtree(staging)  # --out already holds the newer run
    else:
        _commit(staging, out)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one atomic step (Linux renameat2 RENAME_EXCHANGE); False
    where the system or file system cannot, and the caller moves file by file."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return fn(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def _commit(staging: Path, out: Path) -> None:
    """Move a complete staged run into ``out``. Into a new ``out``, or over a previous run
    of tfda's alone: one atomic rename or exchange, so ``out`` is a complete run at every
    instant. Into a directory that also holds other files: file by file, idempotent, so a
    commit killed half-way is finished by running it again (MARKER before COMPLETE,
    COMPLETE last; ``out`` has no COMPLETE in between)."""
    if not out.exists():
        os.rename(staging, out)  # atomic: the whole run appears at once
        return
    meta = _marker(staging)
    current = _marker(out)
    if meta is not None and current is not None and current.get("command") == meta.get(
            "command") and {p.name for p in out.iterdir()} <= {
            *current.get("files", []), MARKER, COMPLETE} and _exchange(staging, out):
        shutil.rmtree(staging)  # now the previous run
        return
    if meta is not None:
        (out / COMPLETE).unlink(missing_ok=True)  # the mixed directory never looks complete
        files = meta.get("files", [])
        for name in meta.get("replaces", []):  # the previous run's own files
            if name not in files and name not in (MARKER, COMPLETE):
                _remove(out / name)
        for name in files:
            if (staging / name).exists() or (staging / name).is_symlink():
                if (out / name).is_dir() and not (out / name).is_symlink():
                    shutil.rmtree(out / name)
                os.replace(staging / name, out / name)
        os.replace(staging / MARKER, out / MARKER)
    os.replace(staging / COMPLETE, out / COMPLETE)
    shutil.rmtree(staging, ignore_errors=True)


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
