import math

import pytest
import torch

from tfda.da.sampler import ode_step, sample_ode, sample_sde, time_grid
from tfda.da.schedule import Schedule
from tfda.da.score import mixture_score

SCHEDULE = Schedule(eps_a=0.025)


def gaussian_target(
    d: int, n: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean, a non-diagonal covariance, and n samples of N(mean, cov)."""
    a = torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    cov = a @ a.T + 0.5 * torch.eye(d, dtype=torch.float64)
    mean = torch.linspace(-2.0, 2.0, d, dtype=torch.float64)
    samples = (
        mean + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    )
    return mean, cov, samples


def eight_gaussians(n: int, g: torch.Generator) -> torch.Tensor:
    angles = torch.randint(8, (n,), generator=g).double() * (2 * math.pi / 8)
    centres = 4.0 * torch.stack([angles.cos(), angles.sin()], dim=1)
    return centres + 0.3 * torch.randn(n, 2, generator=g, dtype=torch.float64)


def energy_distance(a: torch.Tensor, b: torch.Tensor, b_self: float | None = None) -> float:
    """V-statistic energy distance 2E|A-B| - E|A-A'| - E|B-B'| (Szekely & Rizzo);
    ``b_self`` = E|B-B'| may be passed when b is reused."""
    if b_self is None:
        b_self = float(torch.cdist(b, b).mean())
    return float(2 * torch.cdist(a, b).mean() - torch.cdist(a, a).mean()) - b_self


def exact_draws(prior: torch.Tensor, n: int, t: float, g: torch.Generator) -> torch.Tensor:
    """n draws of what an exact sampler returns at time t: the training-free score is
    that of the prior samples' empirical mixture (1/M) sum_i N(alpha_t x_i, beta_t^2 I),
    so its marginal at t is a uniformly chosen sample, scaled, plus N(0, beta_t^2 I)."""
    idx = torch.randint(len(prior), (n,), generator=g)
    noise = torch.randn(n, prior.shape[1], generator=g, dtype=prior.dtype)
    return SCHEDULE.alpha(t) * prior[idx] + SCHEDULE.beta2(t) ** 0.5 * noise


def run_sampler(sampler: str, prior: torch.Tensor, z1: torch.Tensor, steps: int,
                g: torch.Generator) -> torch.Tensor:
    score = lambda z, t: mixture_score(z, prior, t, SCHEDULE)  # noqa: E731
    grid = time_grid(steps, t_end=T_END)
    if sampler == "sde":
        return sample_sde(score, z1, grid, SCHEDULE, generator=g, progress=False)
    return sample_ode(score, z1, grid, SCHEDULE, method="heun", progress=False)


T_END = 1e-3


@pytest.mark.parametrize("sampler", ["sde", "ode"])
@pytest.mark.parametrize("d,m,n_gen", [(2, 500, 1000), (50, 500, 400)])
def test_gaussian_target_mean_and_covariance(sampler, d, m, n_gen):
    """M prior samples of a non-diagonal Gaussian. The training-free score is that of the
    samples' empirical mixture, so the generated points must follow that mixture at
    t_end (see exact_draws), whose mean and covariance are known exactly: the mean
    must lie within 5 standard errors of n_gen draws, the covariance's Frobenius error
    within 3x the median error of 16 exact n_gen-point draws (a perfect sampler's own
    sampling error). Comparing with the mixture rather than the Gaussian removes the
    prior's sampling error from the bounds, so a few hundred points test as sharply
    as thousands did against the Gaussian. A score off by 20 %, a doubled diffusion
    coefficient or a halved drift b(t) fail (checked when these sizes were chosen)."""
    g = torch.Generator().manual_seed(d)
    _, _, prior = gaussian_target(d, m, g)
    z1 = torch.randn(n_gen, d, generator=g, dtype=torch.float64)
    out = run_sampler(sampler, prior, z1, 300, g)
    alpha, beta2 = SCHEDULE.alpha(T_END), SCHEDULE.beta2(T_END)
    mean = alpha * prior.mean(0)
    cov = alpha**2 * torch.cov(prior.T, correction=0) + beta2 * torch.eye(d, dtype=prior.dtype)
    std_err = (torch.diagonal(cov) / n_gen).sqrt()
    assert bool(((out.mean(0) - mean).abs() < 5 * std_err).all())
    exact_err = torch.stack([torch.linalg.matrix_norm(torch.cov(exact_draws(prior, n_gen,
                                                                            T_END, g).T) - cov)
                             for _ in range(16)])
    assert torch.linalg.matrix_norm(torch.cov(out.T) - cov) < 3 * exact_err.median()


@pytest.mark.parametrize("sampler", ["sde", "ode"])
def test_eight_gaussians_energy_distance(sampler):
    """1000 generated points are within 1.5x of the 90th percentile of the energy
    distances that 64 exact 1000-point draws of the prior samples' empirical mixture
    (exact_draws) have, all measured against the (scaled) prior samples themselves.

    Measuring against the mixture the training-free score describes, not against the
    eight Gaussians, leaves only the generated points' own sampling error in both the
    statistic and its yardstick. With 8 separated modes the energy distance of one
    draw is dominated by its multinomial mode counts and spreads like a chi-square
    with 7 degrees of freedom, so one draw is no yardstick: hence the percentile of
    64. A score off by 20 %, a doubled diffusion coefficient or a halved drift b(t)
    give ratios of several times the bound."""
    g = torch.Generator().manual_seed(11)
    prior = eight_gaussians(1000, g)
    reference = SCHEDULE.alpha(T_END) * prior
    ref_self = float(torch.cdist(reference, reference).mean())
    exact = torch.tensor([energy_distance(exact_draws(prior, 1000, T_END, g), reference,
                                          ref_self) for _ in range(64)])
    z1 = torch.randn(1000, 2, generator=g, dtype=torch.float64)
    out = run_sampler(sampler, prior, z1, 200 if sampler == "sde" else 50, g)
    assert energy_distance(out, reference, ref_self) < 1.5 * float(exact.quantile(0.9))


def test_heun_is_second_order_on_a_linear_ode():
    """With a Gaussian prior N(0, I) (exact score -z / (alpha^2 + beta^2)) the ODE is
    linear; halving the step must cut Heun's error by ~4 and Euler's by ~2."""
    s = Schedule(eps_a=0.05)
    score = lambda z, t: -z / (s.alpha(t) ** 2 + s.beta2(t))  # noqa: E731
    z1 = torch.ones(1, 1, dtype=torch.float64)
    exact = sample_ode(score, z1, time_grid(20000, t_end=0.1), s, method="heun", progress=False)
    for method, order in (("euler", 1), ("heun", 2)):
        errs = [
            float(
                (
                    sample_ode(score, z1, time_grid(n, t_end=0.1), s, method=method, progress=False)
                    - exact
                ).abs()
            )
            for n in (50, 100)
        ]
        assert errs[0] / errs[1] == pytest.approx(2**order, rel=0.1)


def test_sde_is_reproducible_from_a_seed_and_calls_back_every_step():
    prior = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    score = lambda z, t: mixture_score(z, prior, t, SCHEDULE)  # noqa: E731
    grid = time_grid(20)
    seen = []
    runs = [
        sample_sde(
            score,
            torch.zeros(4, 3, dtype=torch.float64),
            grid,
            SCHEDULE,
            generator=torch.Generator().manual_seed(9),
            progress=False,
            callback=lambda k, t, z: seen.append((k, t)),
        )
        for _ in range(2)
    ]
    torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)
    assert [k for k, _ in seen[:20]] == list(range(20)) and seen[19][1] == pytest.approx(1e-3)


def test_ode_step_accepts_per_row_times():
    prior = torch.randn(10, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    score = lambda z, t: mixture_score(z, prior, t, SCHEDULE)  # noqa: E731
    z = torch.randn(3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    t = torch.tensor([0.9, 0.5, 0.2], dtype=torch.float64)
    out = ode_step(score, z, t, t - 0.05, SCHEDULE, "heun")
    for i in range(3):
        one = ode_step(score, z[i : i + 1], float(t[i]), float(t[i]) - 0.05, SCHEDULE, "heun")
        torch.testing.assert_close(out[i : i + 1], one)


def test_no_nan_down_to_a_tiny_final_time_in_float32():
    prior = torch.randn(20, 5, generator=torch.Generator().manual_seed(0)) * 1e-3
    score = lambda z, t: mixture_score(z, prior, t, Schedule())  # noqa: E731
    grid = time_grid(200, t_start=0.999, t_end=1e-6)
    z = torch.randn(20, 5, generator=torch.Generator().manual_seed(1))
    for out in (
        sample_sde(
            score, z, grid, Schedule(), generator=torch.Generator().manual_seed(2), progress=False
        ),
        sample_ode(score, z, grid, Schedule(), progress=False),
    ):
        assert bool(torch.isfinite(out).all())


@pytest.mark.parametrize(
    "grid,match",
    [
        (torch.tensor([1.0, 0.5, 0.6, 0.1]), "strictly decreasing"),
        (torch.tensor([1.0, 0.5, 0.0]), r"must lie in \(0, 1\]"),
        (torch.tensor([1.2, 0.5]), r"must lie in \(0, 1\]"),
        (torch.tensor([0.5]), "at least two times"),
    ],
)
def test_bad_time_grids_name_the_argument(grid, match):
    score = lambda z, t: -z  # noqa: E731
    for sampler in (sample_sde, sample_ode):
        with pytest.raises(ValueError, match=match):
            sampler(score, torch.zeros(2, 2), grid, SCHEDULE, progress=False)


def test_starting_at_one_needs_a_finite_drift():
    with pytest.raises(ValueError, match="eps_a > 0"):
        sample_ode(lambda z, t: -z, torch.zeros(2, 2), time_grid(10), Schedule(), progress=False)


def test_non_finite_start_rejected_and_non_finite_result_reported():
    with pytest.raises(ValueError, match="z holds"):
        sample_ode(
            lambda z, t: -z,
            torch.full((2, 2), float("nan")),
            time_grid(10),
            SCHEDULE,
            progress=False,
        )
    with pytest.raises(FloatingPointError, match="sample_ode produced non-finite"):
        sample_ode(
            lambda z, t: z * float("inf"), torch.ones(2, 2), time_grid(10), SCHEDULE, progress=False
        )


# ----------------------------------------------------------------------------- buffers


class _StateAllocations(torch.utils._python_dispatch.TorchDispatchMode):
    """Counts ops that return a fresh tensor of ``numel`` elements (not in place, not out=)."""

    def __init__(self, numel: int) -> None:
        super().__init__()
        self.numel, self.count = numel, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        name = func.__name__  # e.g. "mul.Tensor", "mul_.Tensor", "mul.out"
        in_place = name.split(".")[0].endswith("_") or name.endswith(".out")
        if isinstance(out, torch.Tensor) and out.numel() == self.numel and not in_place:
            self.count += 1
        return out


@pytest.mark.parametrize("kind", ["sde", "ode"])
def test_samplers_allocate_only_the_score_per_step_and_leave_z_alone(kind):
    """Per step the only fresh state-sized tensor is the score's own output; the
    caller's z is untouched and the tensors given to the callback are kept intact."""
    z = torch.randn(6, 50, generator=torch.Generator().manual_seed(0))
    before = z.clone()
    ts = time_grid(10)
    kept: list[torch.Tensor] = []

    def score(x, t):
        return x * (-1.0 / SCHEDULE.beta2(t))

    def run(callback=None):
        if kind == "sde":
            return sample_sde(score, z, ts, SCHEDULE, generator=torch.Generator().manual_seed(1),
                              progress=False, callback=callback)
        return sample_ode(score, z, ts, SCHEDULE, progress=False, callback=callback)

    with _StateAllocations(z.numel()) as probe:
        out = run()
    # one score output per step; once per call: the clone, two buffers and the two
    # finite checks (isfinite's temporaries, 4 each)
    assert probe.count <= len(ts) - 1 + 3 + 8
    assert torch.equal(z, before)
    again = run(lambda k, t, zz: kept.append(zz))
    assert torch.equal(again, out) and torch.equal(kept[-1], out)
    assert len({x.data_ptr() for x in kept}) == len(kept)


def test_sampler_objects_run_the_samplers_and_the_shortcuts_name_them():
    from tfda.da.parareal import ParallelConfig
    from tfda.da.sampler import ODE, SDE, Sampler, as_sampler

    sch = Schedule(eps_a=0.05)
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(6, 3, generator=g, dtype=torch.float64)
    z = torch.randn(6, 3, generator=g, dtype=torch.float64)
    ts = time_grid(12, t_end=0.05)

    def score(zz, t):
        return mixture_score(zz, x0, t, sch)

    heun = ODE("heun")(score, z, ts, sch)
    assert torch.equal(heun, sample_ode(score, z, ts, sch, method="heun", progress=False))
    assert not torch.equal(heun, ODE()(score, z, ts, sch))
    sde = SDE()(score, z, ts, sch, generator=torch.Generator().manual_seed(5))
    ref = sample_sde(score, z, ts, sch, generator=torch.Generator().manual_seed(5),
                     progress=False)
    assert torch.equal(sde, ref)
    assert as_sampler("sde") == SDE() and as_sampler("ode") == ODE("euler")
    assert (SDE.ode, ODE.ode, SDE.row_wise, ODE.row_wise) == (False, True, False, False)
    para = ParallelConfig(n_slices=3)
    assert isinstance(para, Sampler) and as_sampler(para) is para
    assert para.ode and para.row_wise and para.steps_multiple == 3
    with pytest.raises(ValueError, match="sampler must be 'sde', 'ode'"):
        as_sampler("heun")
    with pytest.raises(ValueError, match="sampler must be"):
        as_sampler(42)
    with pytest.raises(ValueError, match="method"):
        ODE("rk4")
