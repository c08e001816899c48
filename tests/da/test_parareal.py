"""Parareal (Rafid et al., Algorithm 1): serial, batched and distributed modes against the
serial fine solve, an analytic linear ODE, iteration accounting and bad configurations."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from tfda.da.parareal import ParallelConfig, PararealInfo, parareal
from tfda.da.sampler import ode_step, sample_ode, time_grid
from tfda.da.schedule import Schedule
from tfda.da.score import mixture_score

sys.path.insert(0, str(Path(__file__).parent))
import _launch  # noqa: E402
from _mp_parareal_worker import SCHEDULE, problem  # noqa: E402

SCH = Schedule(eps_a=1e-3)
MU, S = 1.5, 0.4  # Gaussian target N(MU, S^2 I): the flow ODE is linear with a known solution


def gauss_score(z: torch.Tensor, t: float | torch.Tensor) -> torch.Tensor:
    """Exact score of N(alpha MU, alpha^2 S^2 + beta^2) -- row-wise, per-row t allowed."""
    t = torch.as_tensor(t, dtype=z.dtype).reshape(-1, *([1] * (z.ndim - 1)))
    a, b2 = SCH.alpha(t), SCH.beta2(t)
    return -(z - a * MU) / (a * a * S * S + b2)


def gauss_flow(z: torch.Tensor, t0, t1) -> torch.Tensor:
    """Exact solution of the linear flow ODE: the standardised coordinate is conserved.

    t0, t1: floats or per-row tensors."""
    t0, t1 = (torch.as_tensor(t, dtype=z.dtype).reshape(-1, *([1] * (z.ndim - 1)))
              for t in (t0, t1))

    def sd(t: torch.Tensor) -> torch.Tensor:
        return (SCH.alpha(t) ** 2 * S * S + SCH.beta2(t)).sqrt()

    return SCH.alpha(t1) * MU + sd(t1) / sd(t0) * (z - SCH.alpha(t0) * MU)


def exact_propagator(score, z, grid, schedule):
    del score, schedule
    return gauss_flow(z, grid[0], grid[-1])


@pytest.fixture(scope="module")
def mixture():
    x0, z, ts = problem()
    return (lambda zz, t: mixture_score(zz, x0, t, SCHEDULE)), z, ts


@pytest.mark.parametrize("mode", ["serial", "batched"])
@pytest.mark.parametrize("method", ["euler", "heun"])
@pytest.mark.parametrize("n_slices", [1, 2, 3, 4, 6])
def test_linear_ode_full_iterations_equal_fine_solve(mode, method, n_slices) -> None:
    z = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ts = time_grid(12, t_start=1.0, t_end=0.05)
    ref = sample_ode(gauss_score, z, ts, SCH, method=method, progress=False)
    out, info = parareal(gauss_score, z, ts, SCH,
                         config=ParallelConfig(n_slices=n_slices, tol=1e-300, mode=mode,
                                               fine_method=method))
    assert info.iterations == n_slices and info.converged
    assert (out - ref).abs().max() < 1e-10
    # and the fine solve itself approximates the analytic flow (Heun: second order)
    exact = gauss_flow(z, 1.0, 0.05)
    assert (ref - exact).abs().max() < (0.05 if method == "euler" else 5e-3)


@pytest.mark.parametrize("mode", ["serial", "batched"])
def test_exact_fine_propagator_gives_the_analytic_solution(mode) -> None:
    z = torch.randn(4, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    ts = time_grid(8, t_end=0.02)
    out, info = parareal(gauss_score, z, ts, SCH,
                         config=ParallelConfig(n_slices=4, tol=1e-300, mode=mode,
                                               fine=exact_propagator))
    assert (out - gauss_flow(z, 1.0, 0.02)).abs().max() < 1e-10
    # the coarse Euler sweep alone is far off: Parareal did the work
    coarse, _ = parareal(gauss_score, z, ts, SCH,
                         config=ParallelConfig(n_slices=4, tol=1e-300, max_iters=0))
    assert (coarse - gauss_flow(z, 1.0, 0.02)).abs().max() > 1e-3
    assert info.update_norms[0] > 1e-3


@pytest.mark.parametrize("mode", ["serial", "batched"])
@pytest.mark.parametrize("method", ["euler", "heun"])
def test_mixture_full_iterations_equal_fine_solve(mixture, mode, method) -> None:
    score, z, ts = mixture
    ref = sample_ode(score, z, ts, SCHEDULE, method=method, progress=False)
    for n_slices in (2, 4, 8):
        out, info = parareal(score, z, ts, SCHEDULE,
                             config=ParallelConfig(n_slices=n_slices, tol=1e-300, mode=mode,
                                                   fine_method=method))
        assert info.iterations == n_slices
        assert (out - ref).abs().max() < 1e-10


@pytest.mark.parametrize("mode", ["serial", "batched"])
def test_tolerance_stops_early_with_error_of_its_order(mixture, mode) -> None:
    score, z, ts = mixture
    ref = sample_ode(score, z, ts, SCHEDULE, progress=False)
    for tol in (1e-2, 1e-4):
        out, info = parareal(score, z, ts, SCHEDULE,
                             config=ParallelConfig(n_slices=8, tol=tol, mode=mode))
        assert info.converged and info.iterations < 8
        assert info.update_norms[-1] < tol <= min(info.update_norms[:-1])
        assert (out - ref).abs().max() < 10 * tol
    # an iteration cap below convergence is reported as not converged
    _, capped = parareal(score, z, ts, SCHEDULE,
                         config=ParallelConfig(n_slices=8, tol=1e-12, max_iters=2, mode=mode))
    assert capped.iterations == 2 and not capped.converged


def test_first_k_slices_exact_and_only_the_rest_recomputed(mixture) -> None:
    score, z, ts = mixture
    n_c, per = 6, (ts.numel() - 1) // 6
    seen: list[torch.Tensor] = []
    ref = sample_ode(score, z, ts, SCHEDULE, progress=False,
                     callback=lambda k, t, zz: seen.append(zz))
    for k in range(n_c + 1):
        ends: list[torch.Tensor] = []
        _, info = parareal(score, z, ts, SCHEDULE,
                           config=ParallelConfig(n_slices=n_c, tol=1e-300, max_iters=k),
                           callback=lambda step, t, zz, ends=ends: ends.append(zz))
        for i in range(k):  # after k iterations, slices 0..k-1 end exactly on the fine solve
            assert torch.equal(ends[i], seen[(i + 1) * per - 1])
        assert info.fine_evals == per * sum(n_c - j for j in range(k))
        assert info.coarse_evals == n_c + sum(n_c - j - 1 for j in range(k))
    assert torch.equal(ends[-1], ref)


def test_batched_mode_calls_the_score_once_per_fine_step_with_per_row_times(mixture) -> None:
    score, z, ts = mixture
    calls: list[tuple[int, torch.Tensor | float]] = []

    def spy(zz, t):
        calls.append((zz.shape[0], t))
        return score(zz, t)

    _, info = parareal(spy, z, ts, SCHEDULE,
                       config=ParallelConfig(n_slices=4, tol=1e-300, mode="batched", max_iters=1))
    per = (ts.numel() - 1) // 4
    batched = [(rows, t) for rows, t in calls if rows == 4 * z.shape[0]]
    assert len(batched) == per  # the 4 slices' fine steps share one call per step
    rows_t = batched[0][1]
    assert isinstance(rows_t, torch.Tensor) and rows_t.shape == (4 * z.shape[0],)
    assert torch.equal(rows_t.reshape(4, -1)[:, 0], ts[[0, per, 2 * per, 3 * per]])
    assert info.fine_evals == 4 * per


def test_batched_mode_on_cpu_groups_slices_by_state_bytes(mixture, monkeypatch) -> None:
    """Above CPU_BATCH_BYTES of state the batched fine solve goes in groups of slices
    (glibc would page-fault every large temporary afresh); same iterates and counts."""
    import tfda.da.parareal_modes as pr

    score, z, ts = mixture
    n = z.shape[0]
    ref, ref_info = parareal(score, z, ts, SCHEDULE,
                             config=ParallelConfig(n_slices=6, tol=1e-2, mode="serial"))
    monkeypatch.setattr(pr, "CPU_BATCH_BYTES", 2 * z.numel() * z.element_size())
    rows: list[int] = []

    def spy(zz, t):
        rows.append(zz.shape[0])
        return score(zz, t)

    out, info = parareal(spy, z, ts, SCHEDULE,
                         config=ParallelConfig(n_slices=6, tol=1e-2, mode="batched"))
    assert (out - ref).abs().max() < 1e-10
    assert info.iterations == ref_info.iterations < 6
    assert info.update_norms == pytest.approx(ref_info.update_norms, rel=1e-8)
    assert (info.fine_evals, info.coarse_evals) == (ref_info.fine_evals, ref_info.coarse_evals)
    assert max(rows) == 2 * n and 2 * n in rows  # groups of two slices, never more


def test_sample_ode_switch(mixture) -> None:
    score, z, ts = mixture
    infos: list[PararealInfo] = []
    cfg = ParallelConfig(n_slices=4, tol=1e-300, mode="batched", fine_method="heun",
                         on_info=infos.append)
    out = cfg(score, z, ts, SCHEDULE)
    ref = sample_ode(score, z, ts, SCHEDULE, method="heun", progress=False)
    assert (out - ref).abs().max() < 1e-10
    assert len(infos) == 1 and infos[0].iterations == 4
    assert infos[0].fine_evals == 2 * (24 + 18 + 12 + 6)  # Heun: 2 evaluations a step


def test_custom_coarse_propagator_and_coarse_steps(mixture) -> None:
    score, z, ts = mixture
    ref = sample_ode(score, z, ts, SCHEDULE, progress=False)

    def heun_coarse(sc, zz, grid, schedule):
        return ode_step(sc, zz, float(grid[0]), float(grid[-1]), schedule, "heun")

    _, plain = parareal(score, z, ts, SCHEDULE,
                        config=ParallelConfig(n_slices=4, tol=1e-300, max_iters=2))
    out, info = parareal(score, z, ts, SCHEDULE,
                         config=ParallelConfig(n_slices=4, tol=1e-300, coarse=heun_coarse))
    assert (out - ref).abs().max() < 1e-10
    out3, info3 = parareal(score, z, ts, SCHEDULE,
                           config=ParallelConfig(n_slices=4, tol=1e-300, coarse_steps=3,
                                                 max_iters=2))
    # a finer coarse propagator corrects faster
    assert info3.update_norms[1] < plain.update_norms[1]
    assert info3.coarse_evals == 3 * plain.coarse_evals


def _never_called(z, t):
    raise AssertionError("the score was evaluated before the configuration was checked")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_slices": 13}, "larger than the number of fine steps"),
        ({"n_slices": 5}, "not aligned with the slice boundaries"),
        ({"n_slices": 0}, "n_slices"),
        ({"n_slices": 4, "tol": 0.0}, "tol must be > 0"),
        ({"n_slices": 4, "tol": -1e-3}, "tol must be > 0"),
        ({"n_slices": 4, "max_iters": -1}, "max_iters"),
        ({"n_slices": 4, "coarse_steps": 2}, "coarse_steps"),
        ({"n_slices": 4, "mode": "threads"}, "mode"),
        ({"n_slices": 4, "mode": "distributed"}, "slice_group"),
        ({"n_slices": 4, "result_on": 4}, "result_on"),
    ],
)
def test_bad_configuration_raises_before_any_work(kwargs, match) -> None:
    z = torch.zeros(3, 2, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        parareal(_never_called, z, time_grid(12), SCH, config=ParallelConfig(**kwargs))
    with pytest.raises(ValueError, match="timesteps"):
        parareal(_never_called, z, torch.tensor([0.5, 0.7]), SCH, config=ParallelConfig(n_slices=1))


def _check_distributed(out: Path, launcher: str) -> None:
    x0, z, ts = problem()
    score = lambda zz, t: mixture_score(zz, x0, t, SCHEDULE)  # noqa: E731
    refs = {m: sample_ode(score, z, ts, SCHEDULE, method=m, progress=False)
            for m in ("euler", "heun")}
    serial = {m: parareal(score, z, ts, SCHEDULE,
                          config=ParallelConfig(n_slices=4, tol=0.1, fine_method=m))[1]
              for m in ("euler", "heun")}
    for rank in range(4):
        res = _launch.load_pt(out, rank)
        assert _launch.load_json(out, rank)["launcher"] == launcher
        for m in ("euler", "heun"):
            state, info = res[f"full/{m}/1e-30"]
            assert (state - refs[m]).abs().max() < 1e-10
            assert info.iterations == 4 and info.fine_evals == (2 if m == "heun" else 1) * 60
            early, einfo = res[f"full/{m}/0.1"]
            assert einfo.iterations == serial[m].iterations < 4
            assert einfo.update_norms == pytest.approx(serial[m].update_norms, abs=1e-12)
            assert (early - refs[m]).abs().max() < 1.0  # tol 0.1: its order, not exact
        state0, _ = res["result_on0"]
        if rank == 0:
            assert (state0 - refs["euler"]).abs().max() < 1e-10
        sharded, sinfo, lo, hi = res["sharded"]
        assert (sharded - refs["euler"][:, lo:hi]).abs().max() < 1e-10
        assert sinfo.iterations == 2
        assert "slice_group has 4 ranks but n_slices = 2" in res["mismatch"]


@pytest.mark.multiprocess
@pytest.mark.skipif(_launch.MPIRUN is None, reason=_launch.NO_MPIRUN)
def test_distributed_under_mpirun_equals_serial(tmp_path) -> None:
    _launch.run_mpirun("parareal", tmp_path)
    _check_distributed(tmp_path, "mpi")


@pytest.mark.multiprocess
def test_distributed_under_torch_multiprocessing_equals_serial(tmp_path) -> None:
    _launch.run_spawn("parareal", tmp_path)
    _check_distributed(tmp_path, "torchrun")
