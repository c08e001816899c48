"""How far is an EnSF analysis from the Bayesian answer? A 1-D linear-Gaussian check.

Prior N(0, 1) given by M samples, one observation y = 1 with R = 1, H = I: the exact
posterior is N(0.5, 0.5). Prints the EnSF posterior mean and variance for each score
estimator, sampler and final time, which shows the two failure modes behind the
Lorenz-96 and Lee results::

    python -m experiments.ensf_kalman_check            # M = 2000
    python -m experiments.ensf_kalman_check --members 20

* paired score: the prior term -(z_i - alpha_t x_i) / beta_t^2 grows like 1/t while the
  likelihood term stays bounded, so each sample is pulled back onto its own prior member
  as t -> 0 and the update is a small fraction of the Kalman one;
* mixture score: right mean for large M, but in many dimensions with few members the
  softmax weights become one-hot and the ensemble collapses onto single members.
"""

from __future__ import annotations

import argparse

import torch

from da.filters import EnSF
from observations.operators import Identity


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ensf_kalman_check", description=__doc__.split("\n")[0])
    parser.add_argument("--members", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    g = torch.Generator().manual_seed(args.seed)
    prior = torch.randn(args.members, 1, generator=g, dtype=torch.float64)
    y = torch.ones(1, dtype=torch.float64)
    print(f"prior: {args.members} samples of N(0, 1); y = 1, R = 1; exact posterior N(0.5, 0.5)")
    print("| score | sampler | t_end | mean | variance |\n|---|---|---|---|---|")
    for score in ("paired", "mixture"):
        for sampler in ("sde", "ode"):
            for t_end in (1e-3, 1e-2, 5e-2):
                ensf = EnSF(score=score, sampler=sampler, steps=args.steps, t_end=t_end, seed=1)
                post = ensf.analysis(prior, y, Identity(1.0))
                print(f"| {score} | {sampler} | {t_end:g} | {float(post.mean()):.3f} | "
                      f"{float(post.var()):.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
