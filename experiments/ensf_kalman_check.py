"""How far is an EnSF analysis from the Bayesian answer? 1-D linear-Gaussian checks.

    python -m tfda.experiments.ensf_kalman_check

prints three tables (docs/ensf.md quotes them):

1. the *gain* (mean analysis increment / innovation) of the published EnSF's paired
   estimator with the published schedule (eps_a 0.5, eps_b 0.025, 200 steps), for
   forecast variances s = 1 and 0.01 and observation variances R = 1 and 0.0025,
   against eps_b / (eps_b + R) and the Kalman gain s / (s + R): the paired gain does
   not depend on s;
2. the kernel EnSF's gain over the Kalman gain against its bandwidth h (20 members,
   averaged over 20 ensembles with exact moments), for the deterministic flow and
   (s = R = 1) the "resample" transport, with its variance over the Kalman variance;
3. the posterior mean and variance of the paired and mixture estimators for a prior
   N(0, 1) of ``--members`` samples, y = 1, R = 1 (exact posterior N(0.5, 0.5)).
"""

from __future__ import annotations

import argparse
import math

import torch

from tfda.da.filters import EnSF
from tfda.observations.operators import Identity

F64 = torch.float64
PUBLISHED = {"score": "paired", "eps_a": 0.5, "eps_b": 0.025, "steps": 200, "seed": 1}


def _standard(m: int, s: float, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(m, 1, generator=g, dtype=F64)
    return (x - x.mean()) / x.std() * math.sqrt(s)


def paired_gain_table(g: torch.Generator) -> list[str]:
    lines = ["| s | R | paired gain, SDE | paired gain, ODE | eps_b/(eps_b+R) | Kalman |",
             "|---|---|---|---|---|---|"]
    y = torch.tensor([0.5], dtype=F64)
    for s in (1.0, 0.01):
        prior = _standard(500, s, g)
        for r in (1.0, 0.0025):
            gains = [float(EnSF(**PUBLISHED, sampler=sampler).analysis(
                prior, y, Identity(math.sqrt(r))).mean()) / 0.5 for sampler in ("sde", "ode")]
            lines.append(f"| {s:g} | {r:g} | {gains[0]:.3f} | {gains[1]:.3f} | "
                         f"{0.025 / (0.025 + r):.3f} | {s / (s + r):.3f} |")
    return lines


def kernel_gain_table(g: torch.Generator, repeats: int = 20) -> list[str]:
    lines = ["| h | gain / Kalman, s = R = 1 | gain / Kalman, s = 4, R = 0.0025 "
             "| s = R = 1, transport='resample' (variance / Kalman's) |",
             "|---|---|---|---|"]
    cases = ((1.0, 1.0), (4.0, 0.0025))
    priors = {case: [_standard(20, case[0], g) for _ in range(repeats)] for case in cases}
    for h in (0.5, 0.8, 0.9, 0.95, 1.0):
        cells = []
        for s, r in cases:
            y = torch.tensor([math.sqrt(s + r)], dtype=F64)
            filt = EnSF(score="kernel", bandwidth=h, steps=30)
            mean = sum(float(filt.analysis(p, y, Identity(math.sqrt(r))).mean())
                       for p in priors[(s, r)]) / repeats
            cells.append(f"{mean / float(y) / (s / (s + r)):.3f}")
        s, r = cases[0]
        y = torch.tensor([math.sqrt(s + r)], dtype=F64)
        filt = EnSF(score="kernel", bandwidth=h, transport="resample", seed=1)
        posts = [filt.analysis(p, y, Identity(math.sqrt(r))) for p in priors[(s, r)]]
        gain = sum(float(p.mean()) for p in posts) / repeats / float(y) / (s / (s + r))
        var = sum(float(p.var()) for p in posts) / repeats / (s * r / (s + r))
        lines.append(f"| {h:g} | {cells[0]} | {cells[1]} | {gain:.3f} ({var:.2f}) |")
    return lines


def moments_table(members: int, g: torch.Generator) -> list[str]:
    prior = torch.randn(members, 1, generator=g, dtype=F64)
    y = torch.ones(1, dtype=F64)
    lines = [f"prior: {members} samples of N(0, 1); y = 1, R = 1; exact posterior N(0.5, 0.5)",
             "| score | sampler | mean | variance |", "|---|---|---|---|"]
    for score in ("paired", "mixture"):
        for sampler in ("sde", "ode"):
            post = EnSF(score=score, sampler=sampler, steps=100, seed=1).analysis(
                prior, y, Identity(1.0))
            lines.append(f"| {score} | {sampler} | {float(post.mean()):.3f} | "
                         f"{float(post.var()):.3f} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tfda.experiments.ensf_kalman_check",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(args.seed)
    for table in (paired_gain_table(g), kernel_gain_table(g), moments_table(args.members, g)):
        print("\n".join(table), end="\n\n", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
