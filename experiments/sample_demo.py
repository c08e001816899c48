"""Training-free sampling demo: a 2-D mixture of 8 Gaussians.

The score is estimated from prior samples alone (Rafid et al., Eq. 8, with the
softmax weights); the reverse SDE (Eq. 6) and the probability-flow ODE (Eq. 9) turn
standard-normal points into samples of the mixture. Writes a three-panel PNG::

    python -m tfda.experiments.sample_demo --out runs/demo
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from tfda._io import atomic_path
from tfda.da.sampler import sample_ode, sample_sde, time_grid  # noqa: E402
from tfda.da.schedule import Schedule  # noqa: E402
from tfda.da.score import mixture_score  # noqa: E402
from tfda.experiments import resources, rundir
from tfda.experiments._errors import ArgumentParser, UserError, command, description
from tfda.experiments.rundir import check_out_dir

COMMAND = "tfda demo"


def eight_gaussians(n: int, generator: torch.Generator) -> torch.Tensor:
    """n points of the usual 8-Gaussian ring (radius 4, std 0.3)."""
    angles = torch.randint(8, (n,), generator=generator).double() * (2 * math.pi / 8)
    centres = 4.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return centres + 0.3 * torch.randn(n, 2, generator=generator, dtype=torch.float64)


@command("tfda demo")
def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="tfda demo", description=description(__doc__))
    parser.add_argument("--out", type=Path, default=Path("runs/demo"),
                        help="directory for sample_demo.png (default runs/demo)")
    parser.add_argument("--prior", type=int, default=2000, help="prior samples M")
    parser.add_argument("--points", type=int, default=2000, help="generated points N")
    parser.add_argument("--steps", type=int, default=200, help="sampler steps (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--force", action="store_true",
                        help="write into an --out that is not a `tfda demo` run directory")
    args = parser.parse_args(argv)
    for name in ("prior", "points", "steps"):
        if getattr(args, name) < 1:
            raise UserError(f"--{name} must be >= 1, got {getattr(args, name)}")
    # sizes before any work: the score is a points x prior matrix per step
    resources.check_steps("--steps", args.steps, "sampler steps")
    resources.check_memory("--points", 4.0 * 8 * args.points * args.prior,
                           f"{args.points} points x {args.prior} prior samples")
    check_out_dir(args.out, command=COMMAND, force=args.force)

    g = torch.Generator().manual_seed(args.seed)
    schedule = Schedule(eps_a=0.025)
    prior = eight_gaussians(args.prior, g)
    z1 = torch.randn(args.points, 2, generator=g, dtype=torch.float64)
    grid = time_grid(args.steps, t_end=1e-3)

    def score(z: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
        return mixture_score(z, prior, t, schedule)

    sde = sample_sde(score, z1, grid, schedule, generator=g, progress=not args.no_progress)
    ode = sample_ode(score, z1, grid, schedule, method="heun", progress=not args.no_progress)

    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    titles = ("prior samples", "reverse SDE (Eq. 6)", "probability-flow ODE (Eq. 9)")
    for ax, pts, title in zip(axes, (prior, sde, ode), titles, strict=True):
        ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5)
        ax.set_title(title)
        ax.set_aspect("equal")
    fig.suptitle(f"training-free score from M = {args.prior} samples, {args.steps} steps")
    # through the staging directory (experiments.rundir): --out changes only when done
    staging = rundir.begin(args.out, ["sample_demo.png"], command=COMMAND, force=args.force)
    with atomic_path(staging / "sample_demo.png", suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    out = rundir.finish(staging, {"steps": args.steps})
    print(f"wrote {out / 'sample_demo.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
