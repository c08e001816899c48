"""Atomic file checkpointer for :func:`da.cycle.run_cycle` (da/ itself does no I/O).

``FileCheckpointer(path).save(state)`` writes the state dict (tensors, generator
states, metric lists) with ``torch.save`` to a temporary file in the same
directory, flushes it to disk and ``os.replace``s it over ``path``: a run killed
at any moment leaves either the previous complete checkpoint or the new one,
never a torn file. ``load()`` returns None when there is no checkpoint yet.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


class FileCheckpointer:
    """Checkpointer protocol of da.cycle backed by one file, written atomically."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def save(self, state: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp",
                                   dir=self.path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                torch.save(state, fh)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def load(self) -> dict[str, Any] | None:
        if not self.path.exists():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=False)
        except Exception as exc:  # noqa: BLE001 - re-raised with the file named
            raise ValueError(f"checkpoint {self.path} cannot be read: {exc}") from exc

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"FileCheckpointer({str(self.path)!r})"
