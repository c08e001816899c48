"""Sharded == single-process checks run inside real processes (one per shard).

Launched two ways by tests/da/test_sharded_score.py, each time with 4 processes
that check P = 1, 2, 3, 4 on the groups of their first P ranks:

* ``mpirun -n 4 python tests/da/_mp_sharded_checks.py OUT.json`` (mpich wheel); the
  process group comes from :func:`da.distributed.init` (mpi4py under mpirun).
* ``torch.multiprocessing.spawn(spawn_worker, ...)`` with a gloo group made here.

Every rank builds the same tiny problem from a fixed seed, runs the single-process
reference (group=None, full d) and the sharded run on its own shard, and the
largest deviation over all ranks, relative to the largest reference value, goes
to rank 0, which writes OUT.json atomically.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

if __name__ == "__main__":  # run as a script by mpirun: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tfda.da.filters import periodic_distance  # noqa: E402
from tfda.da.filters.kernel import kernel_analysis  # noqa: E402
from tfda.da.sampler import sample_ode, sample_sde, time_grid  # noqa: E402
from tfda.da.schedule import Schedule  # noqa: E402
from tfda.da.score import mixture_score  # noqa: E402
from tfda.da.sharding import (  # noqa: E402
    BlockNoise,
    CountingComm,
    ShardLayout,
    gather_features,
    local_shard,
    scatter_features,
    sharded_score,
)
from tfda.observations.operators import Identity  # noqa: E402

FEATURES = (5, 11, 19)  # d = 1045: not divisible by 2, 3 or 4
N_POINTS, N_PRIOR, N_STEPS = 12, 10, 16
SCHEDULE = Schedule(eps_a=1e-3, eps_b=1e-3)


def _problem(dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """A prior ensemble (M, *FEATURES) with a non-zero mean, and N(0, I) start points."""
    g = torch.Generator().manual_seed(1234)
    mean = 3.0 * torch.randn(FEATURES, generator=g, dtype=torch.float64)
    x0 = mean + 0.7 * torch.randn(N_PRIOR, *FEATURES, generator=g, dtype=torch.float64)
    z = torch.randn(N_POINTS, *FEATURES, generator=g, dtype=torch.float64)
    return x0.to(dtype), z.to(dtype)


def _rel_dev(local: torch.Tensor, ref_local: torch.Tensor, group: dist.ProcessGroup) -> float:
    """max |local - ref| / max |ref| over every rank's shard."""
    num = (local - ref_local).abs().max().to(torch.float64).reshape(1)
    den = ref_local.abs().max().to(torch.float64).reshape(1)
    dist.all_reduce(num, op=dist.ReduceOp.MAX, group=group)
    dist.all_reduce(den, op=dist.ReduceOp.MAX, group=group)
    return float(num / den)


def run_checks(group: dist.ProcessGroup) -> dict[str, object]:
    """Every comparison for this group's size; returns the same dict on every rank."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    d = 1
    for n in FEATURES:
        d *= n
    layout = ShardLayout(d, size)
    result: dict[str, object] = {"world_size": size, "d": d, "shard_sizes": list(layout.sizes)}
    grid = time_grid(N_STEPS, t_start=1.0, t_end=1e-2)
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).removeprefix("torch.")
        x0, z = _problem(dtype)
        x_loc, z_loc = (local_shard(a, size, rank) for a in (x0, z))

        # the score alone, at a few times, against the single-process score
        devs = []
        for t in (1.0, 0.5, 0.05):
            ref = mixture_score(z, x0, t, SCHEDULE).reshape(N_POINTS, d)[:, layout.slice(rank)]
            devs.append(_rel_dev(mixture_score(z_loc, x_loc, t, SCHEDULE, group=group), ref,
                                 group))
        result[f"score_{name}"] = max(devs)

        # a full ODE (Heun) run; the payload of every all_reduce is counted
        comm = CountingComm(group)
        ode_ref = sample_ode(sharded_score(x0, group=None, schedule=SCHEDULE), z, grid,
                             SCHEDULE, method="heun", progress=False)
        ode_loc = sample_ode(sharded_score(x_loc, group=comm, schedule=SCHEDULE), z_loc, grid,
                             SCHEDULE, method="heun", progress=False)
        result[f"ode_{name}"] = _rel_dev(ode_loc, local_shard(ode_ref, size, rank), group)
        result[f"ode_calls_{name}"] = comm.calls
        result[f"ode_payload_{name}"] = comm.payload_bytes

        # a full SDE run with counter-based noise: block 128 straddles shard edges
        for estimator in ("mixture", "paired"):
            pts = z if estimator == "mixture" else z[:N_PRIOR]
            pts_loc = local_shard(pts, size, rank)
            sde_ref = sample_sde(
                sharded_score(x0, group=None, estimator=estimator, schedule=SCHEDULE), pts,
                grid, SCHEDULE, noise=BlockNoise(7, block=128), progress=False)
            sde_loc = sample_sde(
                sharded_score(x_loc, group=group, estimator=estimator, schedule=SCHEDULE),
                pts_loc, grid, SCHEDULE,
                noise=BlockNoise(7, offset=layout.offsets[rank], block=128), progress=False)
            result[f"sde_{estimator}_{name}"] = _rel_dev(
                sde_loc, local_shard(sde_ref, size, rank), group)

        # I/O at the edges: scatter from rank 0, gather the ODE result back on rank 0
        got = scatter_features(z if rank == 0 else None, group=group)
        result[f"scatter_exact_{name}"] = _rel_dev(got, z_loc, group) == 0.0
        full = gather_features(ode_loc, group=group, feature_shape=FEATURES)
        if full is not None:  # rank 0 only; it is the one that writes the result
            result[f"gather_dev_{name}"] = float((full - ode_ref).abs().max()
                                                 / ode_ref.abs().max())
    result["kernel_float64"] = _kernel_check(group, layout, d)
    result.update(_halo_checks(group))
    return result


def _halo_checks(group: dist.ProcessGroup) -> dict[str, float]:
    """LETKF and kernel EnSF given the process group (each rank a slab of the domains, its
    halo of observations fetched point to point) against the same filter in one process:
    on a ring (every 3rd component observed through arctan, one observation missing) and
    on a 2-variable lat/lon grid observed at every 2nd column (one analysis per column)."""
    from tfda.da.filters import LETKF, EnSF, grid_distance
    from tfda.da.filters.halo import fetch_halo, plan_halo
    from tfda.da.filters.local import grid_sites
    from tfda.observations.operators import Arctan, Subset

    rank = dist.get_rank(group)
    g = torch.Generator().manual_seed(7)
    out: dict[str, float] = {}
    n, m = 301, 8
    prior = 1.0 + torch.randn(m, n, generator=g, dtype=torch.float64)
    where = torch.arange(0, n, 3)
    op = Subset(0.1, indices=where)  # positions = the observed components
    y = torch.randn(len(where), generator=g, dtype=torch.float64).atan()
    y[5] = float("nan")
    arctan = _Composed(op, Arctan(0.1))
    ring = periodic_distance(n)
    filters = {"letkf_ring": LETKF(radius=5.0, distance=ring, inflation=1.05, chunk=64),
               "kernel_ring": EnSF(radius=5.0, distance=ring, steps=4, bandwidth=0.9,
                                   domains_per_batch=64)}
    for name, f in filters.items():
        import dataclasses
        ref = f(prior, y, arctan)
        got = dataclasses.replace(f, group=group)(prior, y, arctan)
        out[name] = float((got - ref).abs().max() / ref.abs().max())
    # the halo is what a slab receives, not the whole observation-space ensemble
    halo = plan_halo(ring, ring.positions(torch.arange(n)), where.to(torch.float64), 5.0, rank,
                     dist.get_world_size(group))
    own = torch.nonzero(halo.owner == rank).flatten()
    hx = arctan(prior)
    got, received = fetch_halo(hx[:, own], halo, group)
    out["halo_values"] = float((got - hx[:, halo.needed]).abs().max())
    # brute force: the observations of other slabs within 2c (the taper's support)
    slab = torch.arange(halo.domains.start, halo.domains.stop)
    near = ring(slab, where.to(torch.float64)).min(0).values <= 2.0 * 5.0 * (10.0 / 3.0) ** 0.5
    foreign = near & (halo.owner != rank)
    expected = set(torch.nonzero(near).flatten().tolist())
    out["halo_bytes_ok"] = float(received == m * int(foreign.sum()) * 8
                                 and set(halo.needed.tolist()) == expected
                                 and (dist.get_world_size(group) == 1 or received > 0))
    lat = torch.linspace(60.0, -60.0, 9, dtype=torch.float64)
    lon = torch.arange(0.0, 360.0, 20.0, dtype=torch.float64)
    nv, ng = 2, 9 * 18
    grid_prior = torch.randn(m, nv, 9, 18, generator=g, dtype=torch.float64)
    index = torch.arange(0, nv * ng, 2)
    sites = grid_sites(lat, lon, nv, obs_index=index)
    obs = Subset(0.5, indices=index)
    gy = grid_prior.reshape(m, -1)[0, index] + 0.3
    dist_km = grid_distance(lat, lon)
    for name, f in {"letkf_grid": LETKF(radius=1500.0, distance=dist_km, sites=sites),
                    "kernel_grid": EnSF(radius=1500.0, distance=dist_km, sites=sites, steps=4,
                                        bandwidth=0.9)}.items():
        import dataclasses
        ref = f(grid_prior, gy, obs)
        got = dataclasses.replace(f, group=group)(grid_prior, gy, obs)
        out[name] = float((got - ref).abs().max() / ref.abs().max())
    return out


class _Composed:
    """arctan of a subset: an operator with the subset's positions."""

    def __init__(self, subset, arctan) -> None:
        self.subset, self.arctan = subset, arctan
        self.error, self.locations = subset.error, subset.locations

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.atan(self.subset(x))


def _kernel_check(group: dist.ProcessGroup, layout: ShardLayout, d: int) -> float:
    """The localised kernel EnSF with the state sharded: each rank analyses its own
    components from its forecast shard and the gathered observation-space ensemble."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    x0, _ = _problem(torch.float64)
    prior = x0.reshape(N_PRIOR, d)
    g = torch.Generator().manual_seed(99)
    y = prior.mean(0) + torch.randn(d, generator=g, dtype=torch.float64)
    op = Identity(1.0, locations=torch.arange(d, dtype=torch.float64))
    filt = {"bandwidth": 0.9, "steps": 6, "schedule": Schedule(), "radius": 30.0,
            "distance": periodic_distance(d), "chunk": 200}
    ref = kernel_analysis(prior, y, op, **filt)[:, layout.slice(rank)]
    x_loc = prior[:, layout.slice(rank)]
    width = max(layout.sizes)
    padded = torch.zeros(N_PRIOR, width, dtype=torch.float64)
    padded[:, : x_loc.shape[1]] = op(x_loc)
    parts = [torch.empty_like(padded) for _ in range(size)]
    dist.all_gather(parts, padded, group=group)
    hx = torch.cat([part[:, :n] for part, n in zip(parts, layout.sizes, strict=True)], dim=1)
    local = kernel_analysis(x_loc, y, op, **filt, hx=hx, offset=layout.offsets[rank])
    return _rel_dev(local, ref, group)


def run_all() -> dict[str, dict[str, object]]:
    """:func:`run_checks` on the first P ranks of the world, for every P up to its size.

    One launch of 4 processes covers P = 1, 2, 3, 4 (starting torch in a process
    costs more than the checks themselves on a small machine).
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    results: dict[str, dict[str, object]] = {}
    for p in range(1, world + 1):
        group = dist.new_group(list(range(p)))  # every rank takes part in new_group
        if rank < p:
            results[str(p)] = run_checks(group)
        dist.barrier()
    return results


def run_grid_checks() -> dict[str, object]:
    """The 2-D rank grid on 4 ranks: 2 Parareal slices x 2 feature shards.

    Sharded distributed Parareal, run to n_c iterations, must equal the serial
    single-process fine solve (Euler over the same grid); grids that do not fit the
    world must fail at set-up on every rank.
    """
    from tfda.da.distributed import make_grid
    from tfda.da.parareal import ParallelConfig, parareal

    result: dict[str, object] = {}
    errors = []
    for kwargs in ({"shard_size": 3}, {"shard_size": 2, "state_size": 1}):
        try:
            make_grid(**kwargs)
            errors.append("")
        except ValueError as err:
            errors.append(str(err))
    result["grid_errors"] = errors
    d = 1
    for n in FEATURES:
        d *= n
    grid = make_grid(shard_size=2, state_size=d)
    result["grid"] = [grid.n_slices, grid.shard_size]
    times = time_grid(N_STEPS, t_start=1.0, t_end=1e-2)
    for dtype in (torch.float32, torch.float64):
        name = str(dtype).removeprefix("torch.")
        x0, z = _problem(dtype)
        x_loc, z_loc = (local_shard(a, 2, grid.shard_index) for a in (x0, z))
        ref = sample_ode(sharded_score(x0, group=None, schedule=SCHEDULE), z, times, SCHEDULE,
                         progress=False)
        out, info = parareal(sharded_score(x_loc, group=grid.shard_group, schedule=SCHEDULE), z_loc,
                             times, SCHEDULE,
                             config=ParallelConfig(n_slices=grid.n_slices, tol=1e-300,
                                                   mode="distributed", slice_group=grid.slice_group,
                                                   shard_group=grid.shard_group))
        result[f"parareal_{name}"] = _rel_dev(out, local_shard(ref, 2, grid.shard_index),
                                              dist.group.WORLD)
        result[f"parareal_iterations_{name}"] = info.iterations
    return result


def _write(path: str, result: dict[str, object]) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(result, fh)
    os.replace(tmp, path)


def spawn_worker(rank: int, world_size: int, init_file: str, out: str) -> None:
    """torch.multiprocessing.spawn entry point: a gloo group over a shared file."""
    torch.set_num_threads(1)  # P ranks share a couple of cores in the tests
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    try:
        results = run_all()
        grid = run_grid_checks() if world_size == 4 else {}
        if rank == 0:
            _write(out, {"launcher": "torch.multiprocessing", "results": results,
                         "grid": grid})
    finally:
        dist.destroy_process_group()


def main(argv: list[str]) -> int:
    from tfda.da import distributed

    torch.set_num_threads(1)
    ctx = distributed.init(backend="gloo")
    try:
        results = run_all()
        grid = run_grid_checks() if ctx.world_size == 4 else {}
        if ctx.rank == 0:
            _write(argv[0], {"launcher": ctx.launcher, "results": results, "grid": grid})
    finally:
        distributed.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
