"""Rank histograms of Lorenz-96 twin runs (``l96_twin --rank-png``): one panel per
setting, one bar series per filter, frequencies normalised so a flat histogram is 1."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tfda._io import atomic_path  # noqa: E402
from tfda.experiments._errors import ArgumentParser, UserError, command  # noqa: E402


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


@command("tfda plot-ranks")
def main(argv: list[str] | None = None) -> int:
    """Draw the rank histograms of saved ``l96_twin`` tables (DIR/table.json) into one PNG."""
    parser = ArgumentParser(prog="python -m tfda.experiments.plot_ranks",
                            description="rank histograms of saved l96_twin tables")
    parser.add_argument("tables", nargs="+", type=Path, help="table.json files of l96_twin")
    parser.add_argument("--png", required=True, type=Path, help="output PNG")
    args = parser.parse_args(argv)
    rows = []
    needed = {"setting", "filter", "rank_histogram", "rank_chi2", "rank_chi2_dof",
              "spread_over_rmse"}
    for table in args.tables:
        try:
            data = json.loads(table.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"{table}: not an l96_twin table.json ({exc})") from exc
        if not isinstance(data, list) or not all(
                isinstance(r, dict) and needed <= set(r) for r in data):
            raise UserError(f"{table}: not an l96_twin table.json (a list of runs with "
                            f"{', '.join(sorted(needed))})")
        rows.extend(data)
    plot_rank_histograms(rows, args.png)
    print(args.png)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
