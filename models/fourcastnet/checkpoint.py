"""Loading (and, for tests and fine-tuned copies, saving) FourCastNet v1 files.

The official release (NVlabs/FourCastNet, docs/design.md section 4) ships
``backbone.ckpt`` -- a ``torch.save`` dict whose ``model_state`` holds the
network's parameters with a ``module.`` prefix (the net was trained under
DistributedDataParallel) -- and ``global_means.npy`` / ``global_stds.npy`` of
shape (1, 21, 1, 1) whose first 20 entries normalise the 20 input channels.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from tfda._io import atomic_path
from tfda.models.fourcastnet.afno import AFNOConfig, AFNONet

__all__ = ["load_normalisation", "load_state_dict", "load_weights", "save_checkpoint"]


def _require_file(path: str | os.PathLike[str], what: str) -> Path:
    p = Path(path)
    if not p.is_file():
        if p.exists():
            raise ValueError(f"{what} {p}: not a regular file")
        raise FileNotFoundError(f"{what} not found: {p}")
    return p


def load_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Parameters from ``path``: ``{"model_state": {...}}`` or a bare state dict.

    A ``module.`` prefix (DDP) is stripped. Raises FileNotFoundError for a missing
    file and ValueError naming the file when it cannot be read as a checkpoint.
    """
    p = _require_file(path, "FourCastNet checkpoint")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/garbage files
        raise ValueError(f"cannot read FourCastNet checkpoint {p}: {err}") from err
    state = obj.get("model_state", obj) if isinstance(obj, dict) else None
    if not isinstance(state, dict) or not state or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ValueError(f"{p} is not a FourCastNet checkpoint: expected a dict with "
                         "'model_state' or a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_weights(net: AFNONet, path: str | os.PathLike[str]) -> AFNONet:
    """Load ``path`` into ``net``; clear errors for a wrong channel count or layout."""
    state = load_state_dict(path)
    cfg = net.config
    w = state.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4 and w.shape[1] != cfg.in_chans:
        raise ValueError(f"{path}: checkpoint has {w.shape[1]} input channels "
                         f"(patch_embed.proj.weight {tuple(w.shape)}), network expects "
                         f"{cfg.in_chans}")
    h = state.get("head.weight")
    p2 = cfg.patch_size ** 2
    if h is not None and h.ndim == 2 and h.shape[0] != cfg.out_chans * p2:
        raise ValueError(f"{path}: checkpoint head.weight {tuple(h.shape)} gives "
                         f"{h.shape[0] / p2:g} output channels, network expects {cfg.out_chans}")
    own = net.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"{path}: parameter names differ from the AFNO network: missing "
                         f"{missing[:5]}{'...' if len(missing) > 5 else ''}, unexpected "
                         f"{unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}" for k, v in own.items()
             if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{path}: parameter shapes differ from the network's "
                         f"(check AFNOConfig): {wrong[:5]}")
    net.load_state_dict(state, strict=True)
    return net


def save_checkpoint(net: AFNONet, path: str | os.PathLike[str], *, ddp_prefix: bool = True
                    ) -> Path:
    """Write ``net`` in the official layout (``model_state`` with ``module.`` keys), atomically."""
    p = Path(path)
    prefix = "module." if ddp_prefix else ""
    state = {prefix + k: v.detach().cpu() for k, v in net.state_dict().items()}
    with atomic_path(p) as tmp:
        torch.save({"model_state": state, "iters": 0, "epoch": 0}, tmp)
    return p


def load_normalisation(means: str | os.PathLike[str], stds: str | os.PathLike[str], *,
                       n_channels: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    """First ``n_channels`` of ``global_means.npy`` / ``global_stds.npy`` as float32 (n,)."""
    out = []
    for label, path in (("means", means), ("stds", stds)):
        p = _require_file(path, f"FourCastNet normalisation ({label})")
        try:
            arr = np.load(p, allow_pickle=False)
        except Exception as err:
            raise ValueError(f"cannot read {p} as a .npy array: {err}") from err
        flat = np.asarray(arr, dtype=np.float64).reshape(-1)
        if flat.size < n_channels:
            raise ValueError(f"{p}: {flat.size} channels (shape {arr.shape}), need at least "
                             f"{n_channels}")
        vals = flat[:n_channels]
        if not np.isfinite(vals).all():
            raise ValueError(f"{p}: non-finite values in the first {n_channels} channels")
        if label == "stds" and (vals <= 0).any():
            raise ValueError(f"{p}: standard deviations must be positive")
        out.append(torch.from_numpy(vals.astype(np.float32)))
    return out[0], out[1]


def build_network(config: AFNOConfig | None = None, *, device: torch.device | str = "cpu"
                  ) -> AFNONet:
    """An AFNONet on ``device`` (``"meta"`` builds the full size without memory)."""
    with torch.device(device):
        return AFNONet(config)
