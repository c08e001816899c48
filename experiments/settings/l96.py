"""Lorenz-96 twin-experiment settings, each with the RMSE it is expected to reach.

Three filters per setting: ``ensf`` (the kernel EnSF, tfda's default estimator),
``ensf-published`` (the published EnSF's paired estimator with the published
schedule and step count where the setting is the published one) and ``letkf``.
``expected_rmse_a`` holds, per filter, the analysis RMSE over cycles after burn-in,
averaged over seeds 0-4, of ``python -m tfda.experiments.l96_twin NAME --filter F --seeds 5``
(docs/ensf.md gives the table with spread, CRPS and rank-histogram flatness); the
published target is quoted in ``reference``. The issue-23 settings (``l96-dt04``,
``l96-abs``, ``l96-arctan-shocks``, ``bocquet2010``) were tuned on seed 0 and quote seeds
1-5 (``--seed 1 --seeds 5``); their ``ensf`` is the kernel EnSF with
``transport="resample"`` and ``linearisation="centres"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class L96Setting:
    """One twin experiment: model, observations, ensemble and both filters' options."""

    name: str
    nx: int
    dt: float  # model time units between observations
    rk4_dt: float
    operator: str  # "identity", "arctan", "abs" or "every" (identity on every obs_stride-th)
    obs_std: float
    members: int
    cycles: int
    burn_in: int
    init_std: float  # std of the initial ensemble around the truth
    spin_up_steps: int
    letkf: dict[str, Any] = field(default_factory=dict)
    ensf: dict[str, Any] = field(default_factory=dict)
    ensf_published: dict[str, Any] = field(default_factory=dict)
    expected_rmse_a: dict[str, float] = field(default_factory=dict)
    reference: str = ""
    obs_stride: int = 1  # observe components 0, obs_stride, 2 obs_stride, ...
    shock_std: float = 0.0  # std of the kick added to every truth component ...
    shock_every: int = 0  # ... after the forecast of every shock_every-th cycle (0: none)


SAKOV2008 = L96Setting(
    name="sakov2008", nx=40, dt=0.05, rk4_dt=0.01, operator="identity", obs_std=1.0,
    members=20, cycles=1000, burn_in=200, init_std=1.0, spin_up_steps=1000,
    letkf={"radius": 4.0, "inflation": 1.02, "rtps": 0.0},
    ensf={"score": "kernel", "bandwidth": 0.95, "radius": 4.0, "inflation": 1.02, "steps": 10},
    # The published eps_b = 0.025 gives a gain ~0.08 against the Kalman 0.5 at R = 1 and an
    # RMSE above the observation error (docs/ensf.md); eps_b = 0.5 with standardised
    # coordinates is the best paired setting measured.
    ensf_published={"score": "paired", "sampler": "sde", "steps": 200, "eps_a": 0.5,
                    "eps_b": 0.5, "standardise": True},
    expected_rmse_a={"letkf": 0.19, "ensf": 0.19, "ensf-published": 0.42},
    reference="Sakov & Oke (2008): LETKF, 20 members, loc. radius ~4: RMSE ~0.2 or below",
)

_ARCTAN = {
    "dt": 0.1, "rk4_dt": 0.01, "operator": "arctan", "obs_std": 0.05, "members": 20,
    "cycles": 200, "burn_in": 50, "init_std": 1.0, "spin_up_steps": 1000,
    "letkf": {"radius": 4.0, "inflation": 1.04, "rtps": 0.0},
    "ensf": {"score": "kernel", "bandwidth": 0.95, "radius": 4.0, "inflation": 1.04,
             "steps": 10},
    # The published EnSF's own L96 settings (its experiment scripts): eps_a 0.5,
    # eps_b 0.025, 200 Euler-Maruyama steps, paired score, no clipping needed here.
    "ensf_published": {"score": "paired", "sampler": "sde", "steps": 200, "eps_a": 0.5,
                       "eps_b": 0.025},
    # Nx 100 (5 seeds); Nx 1000 within 0.01 of these (docs/ensf.md)
    "expected_rmse_a": {"letkf": 0.04, "ensf": 0.04, "ensf-published": 0.19},
    "reference": "Bao, Zhang & Zhang (arXiv 2309.00983), Sec. 4: arctan obs, std 0.05, dt 0.1; "
                 "published EnSF 0.193, LETKF 0.138 on their runs",
}

# Issue 23: regimes where the LETKF's Gaussian assumptions break (Nx 40, 20 members).


def _weight_honouring(*, radius: float, inflation: float) -> dict[str, Any]:
    """The kernel EnSF of the non-Gaussian settings: resample transport, per-component
    innovations (docs/ensf.md), tuned radius and inflation."""
    return {"score": "kernel", "bandwidth": 0.95, "radius": radius, "inflation": inflation,
            "steps": 10, "transport": "resample", "linearisation": "centres"}


_NONGAUSS = {
    "nx": 40, "rk4_dt": 0.01, "members": 20, "init_std": 1.0, "spin_up_steps": 1000,
    "ensf_published": {"score": "paired", "sampler": "sde", "steps": 200, "eps_a": 0.5,
                       "eps_b": 0.5, "standardise": True},
}
L96_DT04 = L96Setting(
    name="l96-dt04", dt=0.4, operator="identity", obs_std=1.0, cycles=300, burn_in=100,
    letkf={"radius": 2.0, "inflation": 1.2, "rtps": 0.0},
    ensf=_weight_honouring(radius=2.0, inflation=1.1),
    expected_rmse_a={"letkf": 0.62, "ensf": 0.61},  # seeds 1-5 (docs/ensf.md)
    reference="issue 23: long observation interval (0.4 = 2 'days'), full obs, R = I",
    **_NONGAUSS,
)
L96_ABS = L96Setting(
    name="l96-abs", dt=0.1, operator="abs", obs_stride=2, obs_std=1.0, cycles=300,
    burn_in=100,
    letkf={"radius": 4.0, "inflation": 1.1, "rtps": 0.0},
    ensf=_weight_honouring(radius=4.0, inflation=1.1),
    expected_rmse_a={"letkf": 1.06, "ensf": 1.38},  # seeds 1-5 (docs/ensf.md)
    reference="issue 23: |x| (sign-ambiguous) of every 2nd variable, std 1, dt 0.1",
    **_NONGAUSS,
)
L96_ABS_80 = L96Setting(
    name="l96-abs-80", dt=0.1, operator="abs", obs_stride=2, obs_std=1.0, cycles=300,
    burn_in=100, **{**_NONGAUSS, "members": 80},
    letkf={"radius": 4.0, "inflation": 1.02, "rtps": 0.0},
    ensf=_weight_honouring(radius=4.0, inflation=1.0),
    expected_rmse_a={"letkf": 1.40, "ensf": 0.74},  # seeds 1-5 (docs/ensf.md)
    reference="issue 23: l96-abs with 80 members; both filters tuned on seed 0 over "
              "inflation {1.0, 1.02, 1.1} at radius 4 (the LETKF also at radius 2 and 6, "
              "the EnSF also at h 0.8 and 0.6)",
)
L96_ARCTAN_SHOCKS = L96Setting(
    name="l96-arctan-shocks", dt=0.1, operator="arctan", obs_std=0.05, cycles=300,
    burn_in=100, shock_std=1.0, shock_every=20,
    letkf={"radius": 2.0, "inflation": 1.2, "rtps": 0.0},
    ensf=_weight_honouring(radius=2.0, inflation=1.2),
    expected_rmse_a={"letkf": 1.71, "ensf": 1.21},  # seeds 1-5 (docs/ensf.md)
    reference="issue 23 / Bao, Chipilski, Liang, Zhang & Whitaker (MWR 2024): arctan obs, "
              "std 0.05, and every 20 cycles a N(0, 1) kick of the truth the model ignores",
    **_NONGAUSS,
)
BOCQUET2010 = L96Setting(
    name="bocquet2010", nx=10, dt=0.05, rk4_dt=0.01, operator="every", obs_stride=2,
    obs_std=1.5**0.5, members=20, cycles=1280, burn_in=400, init_std=1.0, spin_up_steps=1000,
    letkf={"radius": 4.0, "inflation": 1.02, "rtps": 0.0},
    ensf=_weight_honouring(radius=4.0, inflation=1.02),
    ensf_published={"score": "paired", "sampler": "sde", "steps": 200, "eps_a": 0.5,
                    "eps_b": 0.5, "standardise": True},
    expected_rmse_a={"letkf": 0.31, "ensf": 0.36},  # seeds 1-5 (docs/ensf.md)
    reference="DAPPER dapper/mods/Lorenz96/bocquet2010.py (commit 0fa8ee3): Nx 10, every 2nd "
              "observed, R = 1.5 I, dt 0.05, T = 64 (1280 cycles), burn-in 20 (400 cycles); "
              "its suggested tunings quote rmse.a EnKF_N(N=8) 0.31, PartFilt N=100 0.36, "
              "N=800 0.25",
)

SETTINGS: dict[str, L96Setting] = {
    "sakov2008": SAKOV2008,
    "ensf-arctan": L96Setting(name="ensf-arctan", nx=100, **_ARCTAN),
    "ensf-arctan-1000": L96Setting(name="ensf-arctan-1000", nx=1000, **_ARCTAN),
    "ensf-arctan-1e6": L96Setting(name="ensf-arctan-1e6", nx=1_000_000,
                                  **{**_ARCTAN, "cycles": 50, "burn_in": 10}),
    "l96-dt04": L96_DT04,
    "l96-abs": L96_ABS,
    "l96-abs-80": L96_ABS_80,
    "l96-arctan-shocks": L96_ARCTAN_SHOCKS,
    "bocquet2010": BOCQUET2010,
}
