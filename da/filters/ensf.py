"""Ensemble score filter (EnSF): a training-free diffusion analysis step.

Bao, Zhang & Zhang, "An ensemble score filter for tracking high-dimensional
nonlinear dynamical systems" (arXiv 2309.00983), Eqs. (3.8)-(3.10), and Bao et
al. (arXiv 2404.00844) for the standardised SQG version. Given a forecast
ensemble x_1..x_M and observations y = H(x) + eps, eps ~ N(0, R), the posterior
score at diffusion time t is approximated by

    S_post(z, t) = S_prior(z, t) + h(t) grad_z log p(y | z),
    grad_z log p(y | z) = J_H(z)^T R^{-1} (y - H(z))          (autograd),

with S_prior the training-free estimate of Rafid et al. Eq. (8)
(:func:`da.score.mixture_score`) or the paired one-sample estimate of the
published EnSF code (:func:`da.score.paired_score`), and the damping h(t) = 1 - t
(any callable allowed). Starting from z ~ N(0, I) at t = 1 and integrating the
reverse SDE (Eq. 6) or the probability-flow ODE (Eq. 9) to t ~ 0 gives the
analysis ensemble.

The score is row-wise (row i of z depends on z_i only, and on x_i for the paired
estimator), so batched Parareal may stack several copies of the rows with one
time per row. Observations that are NaN are "not observed": their residual is
set to zero (exact for a diagonal R; for a correlated R it zero-pads the residual
rather than inverting the observed block) and a :class:`MaskedObservationWarning`
says how many.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import torch

from tfda.da import sampler as _sampler
from tfda.da._checks import check_ensemble, check_fields, observation_mask
from tfda.da.devices import randn
from tfda.da.filters.halo import check_shardable, sharded_analysis, sharding
from tfda.da.filters.inflation import check_adaptive_inflation, innovation_inflation
from tfda.da.filters.kernel import kernel_analysis
from tfda.da.localised_score import localised_mixture_score
from tfda.da.protocols import ObservationOperator
from tfda.da.sampler import Sampler, as_sampler
from tfda.da.schedule import Schedule
from tfda.da.score import mixture_score, paired_score, prepare_prior
from tfda.da.stability import curvature_bound, pad_to_multiple, stable_time_grid

Damping = Callable[[Any], Any]


def linear_damping(t: Any) -> Any:
    """h(t) = 1 - t: no likelihood at t = 1 (pure noise), all of it at t = 0."""
    return 1.0 - t


@dataclass(frozen=True)
class EnSF:
    """The EnSF analysis step; configuration only, call :meth:`analysis`.

    Attributes:
        score: "kernel" (the default: a localised Gaussian-mixture prior of bandwidth
            ``bandwidth`` whose posterior score is exact for linear or ensemble-linearised
            H, :mod:`da.filters.kernel`), "mixture" (Eq. 8, softmax-weighted) or "paired"
            (the published EnSF code's estimator), or "localised" (Eq. 8 with softmax
            weights per component from tapered logits, :mod:`da.localised_score`;
            needs ``taper``).
        bandwidth: kernel only: h in (0, 1]; 1 is the Gaussian (ETKF) limit.
        transport: kernel only: "flow" (deterministic probability flow, one path per
            member; below h ~ 1 it keeps members in their own components) or "resample"
            (systematic resampling of the posterior components, then the
            within-component draw: samples the mixture posterior,
            :mod:`da.filters.kernel_transport`).
        linearisation: kernel only: "ensemble" (one linearisation of H for every
            component, as in the LETKF) or "centres" (each component's innovation
            through the nonlinear H at its centre: a Gaussian-sum update).
        ess_min: kernel only, with transport "resample": a bandwidth per local domain,
            the smallest from ``bandwidth`` up to 1 whose posterior weights keep an
            effective sample size >= ess_min * M (None: ``bandwidth`` everywhere).
        radius, distance: kernel only: localisation as for :class:`da.filters.LETKF`
            (None = global).
        domains_per_batch: kernel only: state components per batched local analysis.
        sites: kernel only: a :class:`da.filters.local.Sites` (e.g. ``grid_sites``) when
            the taper depends only on position: one local analysis per grid point.
        taper: localised only: rho applied along the flattened state, e.g.
            :func:`da.localised_score.ring_taper`.
        damping: h(t); None means 1 - t (mixture and paired: the likelihood heuristic).
        sampler: how the reverse process is integrated, a :class:`da.sampler.Sampler`:
            ``SDE()`` (Euler-Maruyama, Eq. 6), ``ODE(method)`` (probability flow, Eq. 9,
            "euler" or "heun" steps) or a :class:`da.parareal.ParallelConfig` (the ODE
            parallel in time, paired and mixture scores); the strings "sde" and "ode"
            (Euler) are shortcuts for the first two.
        steps: number of time steps from t = 1 to ``t_end`` (kernel: flow steps each way).
        t_end: last time of the grid (> 0).
        eps_a, eps_b: schedule offsets (da.schedule.Schedule); eps_a > 0 is needed
            by the mixture and paired samplers. The kernel transport always uses
            eps_a = eps_b = 0: it needs alpha_1 = 0 (prior and posterior then meet in the
            same N(0, I) at t = 1) and beta_0 = 0, and its integrator needs no drift.
            to start at t = 1 (the EnSF code uses 0.05).
        standardise: sample in per-component standardised coordinates
            ((x - mean) / std of the prior) and map back (Bao et al. 2404.00844).
        score_clip: clip each component of the likelihood score to +-score_clip.
        inflation: multiplicative inflation of the prior perturbations (kernel: of the
            covariance, as the LETKF's; mixture, paired, localised: of the perturbations).
        adaptive_inflation: kernel only: lambda_max >= 1 of an innovation-driven
            inflation (None: off): each analysis multiplies the covariance further by
            lambda^2 = (d^T R^-1 d - p) / tr(R^-1 Y Y^T) clipped to [1, lambda_max]
            (Desroziers et al. 2005; Li, Kalnay & Miyoshi 2009;
            :mod:`da.filters.inflation`), the LETKF's estimate; not with ``group``.
        minibatch, chunk_size: passed to mixture_score.
        seed: seeds a fresh generator per call when none is given to analysis().
        progress: tqdm bar over the sampler steps.
        stable_grid: mixture and paired: shorten the steps where the likelihood's
            stiffness makes the explicit step overshoot (:mod:`da.stability`); the
            curvature of J^T R^-1 J is measured by power iteration at the prior members
            (x 1.2 for the states the sampler visits). False: the uniform grid of
            ``steps`` steps, which diverges for small R.
        group: kernel only: a process group; each rank analyses a slab of the local
            domains from its halo of observations (:mod:`da.filters.halo`); needs
            ``radius`` and a geometry ``distance``.
    """

    score: Literal["kernel", "localised", "mixture", "paired"] = "kernel"
    bandwidth: float = 0.95
    transport: Literal["flow", "resample"] = "flow"
    linearisation: Literal["ensemble", "centres"] = "ensemble"
    ess_min: float | None = None
    radius: float | None = None
    distance: Any = None
    domains_per_batch: int = 1024
    taper: Any = None
    sites: Any = None
    damping: Damping | None = None
    sampler: Literal["sde", "ode"] | Sampler = "sde"
    steps: int = 100
    t_end: float = 1e-3
    eps_a: float = 0.05
    eps_b: float = 0.0
    standardise: bool = False
    score_clip: float | None = None
    inflation: float = 1.0
    adaptive_inflation: float | None = None
    minibatch: int | None = None
    chunk_size: int | None | Literal["auto"] = "auto"
    seed: int | None = None
    progress: bool = False
    stable_grid: bool = True
    group: Any = None

    def __post_init__(self) -> None:
        check_fields(self)  # types and finite numbers first, each error naming its field
        if self.score not in ("kernel", "localised", "mixture", "paired"):
            raise ValueError("score must be 'kernel', 'localised', 'mixture' or 'paired', "
                             f"got {self.score!r}")
        sampler = as_sampler(self.sampler)
        if self.score == "localised" and (self.taper is None or sampler.row_wise):
            raise ValueError("score='localised' needs taper= and does not run under parareal")
        if not 0.0 < self.bandwidth <= 1.0:
            raise ValueError(f"bandwidth must lie in (0, 1], got {self.bandwidth}")
        if self.transport not in ("flow", "resample"):
            raise ValueError(f"transport must be 'flow' or 'resample', got {self.transport!r}")
        if self.linearisation not in ("ensemble", "centres"):
            raise ValueError("linearisation must be 'ensemble' or 'centres', "
                             f"got {self.linearisation!r}")
        if self.ess_min is not None and not 0.0 < self.ess_min <= 1.0:
            raise ValueError(f"ess_min must lie in (0, 1] or be None, got {self.ess_min}")
        if self.radius is not None and not self.radius > 0:
            raise ValueError(f"radius must be > 0 or None, got {self.radius}")
        if (self.radius is not None or self.sites is not None) and self.score != "kernel":
            raise ValueError(f"radius and sites apply to score='kernel', not {self.score!r} "
                             "(score='localised' takes taper=)")
        if self.radius is not None and self.distance is None:
            raise ValueError("a localisation radius needs distance= (callable or matrix)")
        if self.domains_per_batch < 1:
            raise ValueError(f"domains_per_batch must be >= 1, got {self.domains_per_batch}")
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0.0 < self.t_end < 1.0:
            raise ValueError(f"t_end must lie in (0, 1), got {self.t_end}")
        if self.eps_a <= 0.0:
            raise ValueError("eps_a must be > 0: the sampler starts at t = 1 where b(t) "
                             f"= -1/eps_a, got {self.eps_a}")
        Schedule(self.eps_a, self.eps_b)  # validates the ranges
        if self.score_clip is not None and not self.score_clip > 0:
            raise ValueError(f"score_clip must be > 0 or None, got {self.score_clip}")
        if not self.inflation >= 1.0:
            raise ValueError(f"inflation must be >= 1, got {self.inflation}")
        check_adaptive_inflation(self.adaptive_inflation)
        if self.adaptive_inflation is not None and (self.score != "kernel"
                                                    or self.group is not None):
            raise ValueError("adaptive_inflation applies to score='kernel' without group=, "
                             f"got score={self.score!r}, group={self.group!r}")
        if self.group is not None and self.score != "kernel":
            raise ValueError(f"group= shards the kernel analysis, not score={self.score!r}")
        check_shardable(self.group, self.radius, self.distance)
        if sampler.row_wise and self.score == "kernel":
            raise ValueError("parareal applies to the paired and mixture samplers, not to "
                             "score='kernel'")

    @property
    def schedule(self) -> Schedule:
        return Schedule(self.eps_a, self.eps_b)

    def settings(self) -> dict[str, Any]:
        """The configuration as JSON-friendly values (for results files)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if name == "damping":
                value = "1 - t" if value is None else getattr(value, "__name__", repr(value))
            elif name == "sampler" and not isinstance(value, str):
                value = repr(value)
            elif name in ("distance", "taper", "sites", "group") and value is not None:
                value = repr(value)
            out[name] = value
        return out

    def __call__(self, prior: torch.Tensor, y: torch.Tensor, obs_operator: ObservationOperator, *,
                 generator: torch.Generator | None = None) -> torch.Tensor:
        return self.analysis(prior, y, obs_operator, generator=generator)

    def analysis(
        self,
        prior_ensemble: torch.Tensor,
        y: torch.Tensor,
        obs_operator: ObservationOperator,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Posterior ensemble (member, *state_shape) from the prior ensemble and y.

        Args:
            prior_ensemble: forecast ensemble (M, *state_shape), M >= 2.
            y: observations shaped like H(x)[0]; NaN marks "not observed".
            obs_operator: H with an ``error`` model (std, precision_matvec).
            generator: random source (initial noise and SDE increments); if None,
                one seeded with ``seed`` (or torch's global generator if seed is None).
        """
        if self.score == "kernel":
            inflation, hx = self.inflation, None
            if self.adaptive_inflation is not None:
                lam2, hx = innovation_inflation(prior_ensemble, y, obs_operator,
                                                inflation=self.inflation,
                                                maximum=self.adaptive_inflation)
                inflation = self.inflation * lam2
            kernel = partial(kernel_analysis, bandwidth=self.bandwidth, steps=self.steps,
                             schedule=Schedule(), inflation=inflation, radius=self.radius,
                             distance=self.distance, chunk=self.domains_per_batch,
                             transport=self.transport, linearisation=self.linearisation,
                             ess_min=self.ess_min,
                             generator=generator if generator is not None or self.seed is None
                             else torch.Generator().manual_seed(self.seed))
            if sharding(self.group):
                return sharded_analysis(kernel, prior_ensemble, y, obs_operator,
                                        geometry=self.distance, radius=self.radius,
                                        sites=self.sites, group=self.group)
            if hx is not None:
                return kernel(prior_ensemble, y, obs_operator, sites=self.sites, hx=hx)
            return kernel(prior_ensemble, y, obs_operator, sites=self.sites)
        check_ensemble("prior_ensemble", prior_ensemble)
        x0 = prior_ensemble
        m, state_shape = x0.shape[0], tuple(x0.shape[1:])
        with torch.no_grad():
            hx = obs_operator(x0)
        y = torch.as_tensor(y, dtype=x0.dtype, device=x0.device)
        y_filled, valid = observation_mask(y, hx, obs_operator.error.std)
        if generator is None and self.seed is not None:
            generator = torch.Generator(device=x0.device).manual_seed(self.seed)

        xf = x0.reshape(m, -1)
        if self.inflation != 1.0:
            mean = xf.mean(0, keepdim=True)
            xf = mean + self.inflation * (xf - mean)
        if self.standardise:
            mu = xf.mean(0, keepdim=True)
            # A component with no spread keeps scale 1: it then behaves unstandardised.
            sd = xf.std(0, keepdim=True)
            sd = torch.where(sd > 1e-12 * (1.0 + mu.abs()), sd, torch.ones_like(sd))
        else:
            mu = torch.zeros(1, xf.shape[1], dtype=xf.dtype, device=xf.device)
            sd = torch.ones_like(mu)
        x_prior = (xf - mu) / sd
        schedule = self.schedule
        damping = self.damping or linear_damping
        error = obs_operator.error

        # the prior does not change during the analysis: centre it and take norms once
        prepared = None if self.score != "mixture" else prepare_prior(
            x_prior, chunk_size=self.chunk_size, n_points=m, keep_centred=True,
            check_inputs=False)

        def likelihood_score(z: torch.Tensor) -> torch.Tensor:
            with torch.enable_grad():
                zz = z.detach().requires_grad_(True)
                x = (zz * sd + mu).reshape(zz.shape[0], *state_shape)
                residual = torch.where(valid, y_filled - obs_operator(x), 0.0)
                weighted = error.precision_matvec(residual)
                loglik = -0.5 * (residual * weighted).sum()
                (grad,) = torch.autograd.grad(loglik, zz)
            if self.score_clip is not None:
                grad = grad.clamp(-self.score_clip, self.score_clip)
            return grad

        def prior_score(z: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
            if self.score == "paired":
                reps = z.shape[0] // m
                if reps * m != z.shape[0]:
                    raise ValueError(f"paired score: {z.shape[0]} rows are not a multiple of M={m}")
                x_rows = x_prior if reps == 1 else x_prior.repeat(reps, 1)
                return paired_score(z, x_rows, t, schedule, check_inputs=False)
            if self.score == "localised":
                return localised_mixture_score(z, x_prior, float(t), schedule, self.taper)
            return mixture_score(z, prepared, t, schedule, minibatch=self.minibatch,
                                 generator=generator, check_inputs=False)

        def score(z: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
            h = damping(t)
            if isinstance(h, torch.Tensor) and h.ndim > 0:
                h = h.to(z.dtype).reshape(-1, *([1] * (z.ndim - 1)))
            return prior_score(z, t) + h * likelihood_score(z)

        sampler = as_sampler(self.sampler)
        if self.stable_grid:
            timesteps = stable_time_grid(
                self.steps, self.t_end, schedule, damping=damping, ode=sampler.ode,
                curvature=1.2 * curvature_bound(likelihood_score, x_prior),
                prior_stiffness=True)
            if sampler.steps_multiple > 1:
                timesteps = pad_to_multiple(timesteps, sampler.steps_multiple)
        else:
            timesteps = _sampler.time_grid(self.steps, t_start=1.0, t_end=self.t_end)
        z = randn(xf.shape, generator=generator, dtype=xf.dtype, device=xf.device)
        z = sampler(score, z, timesteps, schedule, generator=generator, progress=self.progress)
        return (z.detach() * sd + mu).reshape(m, *state_shape)
