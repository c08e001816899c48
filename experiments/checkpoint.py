"""Atomic file checkpointer for :func:`da.cycle.run_cycle` (da/ itself does no I/O).

``FileCheckpointer(path).save(state)`` writes the state dict (tensors, generator
states, metric lists) with ``torch.save`` to a temporary file in the same
directory (tfda._io.atomic_path), flushes it to disk and renames it over
``path``: a run killed at any moment leaves either the previous complete checkpoint
or the new one, never a torn file. ``load()`` returns None when there is no
checkpoint yet. ``on_save`` runs after every save (e.g. a WallClock's checkpoint).
``read_only``: the ranks of a multi-process run other than the writer load the
writer's checkpoint to resume at the same cycle, and save nothing.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tfda._io import atomic_path


class FileCheckpointer:
    """Checkpointer protocol of da.cycle backed by one file, written atomically."""

    def __init__(self, path: str | os.PathLike[str],
                 on_save: Callable[[], None] | None = None, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.on_save = on_save
        self.read_only = read_only  # the other ranks of a sharded run resume from rank 0's

    def save(self, state: dict[str, Any]) -> None:
        if self.read_only:
            return
        with atomic_path(self.path) as tmp, tmp.open("wb") as fh:
            torch.save(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        if self.on_save is not None:
            self.on_save()

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
