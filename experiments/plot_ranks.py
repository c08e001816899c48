"""Rank histograms of Lorenz-96 twin runs (``l96_twin --rank-png``): one panel per
setting, one bar series per filter, frequencies normalised so a flat histogram is 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from experiments.rundir import atomic_path  # noqa: E402


def plot_rank_histograms(rows: list[dict[str, Any]], path: Path) -> None:
    """Write the rank histograms of ``rows`` (l96_twin results) to ``path`` atomically."""
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.2),
                             squeeze=False)
    for ax, name in zip(axes[0], settings, strict=True):
        runs = [r for r in rows if r["setting"] == name]
        width = 0.8 / len(runs)
        for i, r in enumerate(runs):
            counts = np.asarray(r["rank_histogram"], dtype=float)
            freq = counts / counts.mean()
            ranks = np.arange(counts.size)
            label = (f"{r['filter']} (chi2/dof {r['rank_chi2'] / r['rank_chi2_dof']:.0f}, "
                     f"spread/rmse {r['spread_over_rmse']:.2f})")
            ax.bar(ranks + (i - (len(runs) - 1) / 2) * width, freq, width=width, label=label)
        ax.axhline(1.0, color="k", lw=0.8)
        ax.set_title(f"{name} ({len(runs[0].get('seeds', [0]))} seed(s))")
        ax.set_xlabel("rank of the truth among the members")
        ax.set_ylabel("frequency / flat")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=path.suffix) as tmp:
        fig.savefig(tmp, dpi=120)
    plt.close(fig)
