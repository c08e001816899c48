"""Power check of the statistical sampler tests: each must fail on a broken sampler.

    python tests/da/_sampler_power.py

runs test_gaussian_target_mean_and_covariance and test_eight_gaussians_energy_distance
(every parametrisation) with the correct sampler and with three deliberate faults
patched in: the score off by 20 % (x0.8 and x1.25), the diffusion coefficient
sigma^2(t) doubled (SDE noise and drift, the ODE's 1/2 sigma^2 score term) and the
drift b(t) halved. It prints PASS/FAIL per case (FAIL on a fault = the fault is caught)
and exits 1 if a correct sampler fails.

Result (measured when the tests were made faster; the old versions, M = 2000-4000 prior
samples, were run through the same script): the new tests catch every fault the old
ones caught, and five more, all at d = 2 (SDE: score x0.8, x1.25, sigma^2 x2; ODE: score
x1.25, sigma^2 x2; the old d = 2 tests caught only b(t) x0.5, and score x0.8 with the
ODE). Neither version catches the score factors at d = 50 or with the SDE on the eight
Gaussians: the mixture score of a few hundred or thousand points collapses the
samples onto the prior points near t = 0, whatever the factor.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).parents[2])]
import test_sampler as ts  # noqa: E402

from tfda.da.schedule import Schedule  # noqa: E402

CASES = [(ts.test_gaussian_target_mean_and_covariance, {"d": d, "m": m, "n_gen": n})
         for d, m, n in ((2, 500, 1000), (50, 500, 400))] + [
    (ts.test_eight_gaussians_energy_distance, {})]


def _faults():
    score, drift, diffusion2 = ts.mixture_score, Schedule.drift, Schedule.diffusion2
    yield "correct", lambda: None
    for factor in (0.8, 1.25):
        yield f"score x{factor}", lambda f=factor: setattr(
            ts, "mixture_score", lambda *a, **k: f * score(*a, **k))
    yield "sigma^2 x2", lambda: setattr(Schedule, "diffusion2",
                                        lambda self, t: 2 * diffusion2(self, t))
    yield "b(t) x0.5", lambda: setattr(Schedule, "drift", lambda self, t: 0.5 * drift(self, t))

    def restore() -> None:
        ts.mixture_score, Schedule.drift, Schedule.diffusion2 = score, drift, diffusion2

    _faults.restore = restore


def main() -> int:
    torch.set_num_threads(1)
    ok = True
    faults = list(_faults())
    for test, kwargs in CASES:
        for sampler in ("sde", "ode"):
            for name, patch in faults:
                patch()
                try:
                    test(sampler=sampler, **kwargs)
                    passed = True
                except AssertionError:
                    passed = False
                finally:
                    _faults.restore()
                ok &= passed or name != "correct"
                print(f"{test.__name__}[{sampler}, {kwargs}] {name:<11} "
                      f"{'PASS' if passed else 'FAIL'}", flush=True)
    print("correct samplers pass:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
