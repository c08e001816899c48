"""The assimilation cycle: forecast -> observe -> analyse, with resumable state.

``run_cycle(model, analysis, operator, ensemble, n_cycles=..., ...)`` runs, for
cycle k = 1..n_cycles:

1. forecast: ``ensemble <- model.step(ensemble)`` ``steps_per_cycle`` times (and the
   truth likewise, for a twin experiment);
2. observe: ``y = observations(k, truth)`` if an ``observations`` callable is given
   (real or pre-made synthetic data; NaN = not observed), else, for a twin
   experiment, ``y = H(truth) + eps`` with eps drawn from ``operator.error.sample``;
3. analyse: ``ensemble <- analysis(ensemble, y, operator, generator=...)`` (the
   :class:`tfda.da.protocols.Analysis` contract; the cycle's generator is passed);
   a cycle whose y is all NaN (nothing observed) keeps the forecast;
4. metrics: rmse_f / rmse_a (ensemble mean against the truth, where there is a
   truth), spread_f / spread_a (sqrt of the mean ensemble variance), obs_rmse_f /
   obs_rmse_a (mean of H(members) against the finite y), crps_f / crps_a and the
   analysis rank histogram rank_a (cycle, rank) for a twin (:mod:`da.metrics`);
5. ``callback(k, ensemble, metrics)``; ``checkpointer.save(state)``.

The result is an ``xarray.Dataset`` with the per-cycle metrics on dim ``cycle``,
the final ``ensemble`` (dims member and the names of ``coords``, with their values;
s0, s1, ... without ``coords``) and, for a twin, the final
``truth``. Every random draw comes from one ``torch.Generator`` seeded with
``seed``, created on the ensemble's device so that the draws are made where they
are used (:mod:`da.devices` gives the policy: a CUDA run is reproducible on CUDA
but does not repeat a CPU run's numbers); the checkpoint holds it, torch's global
generator state, the ensemble, the truth and the metrics so far, so that a run
stopped after cycle k and restarted with the same arguments resumes at k + 1 and
ends identical to an uninterrupted run. ``da`` does no I/O: ``checkpointer`` is any
object with ``save(state: dict) -> None`` and ``load() -> dict | None`` (see
experiments/checkpoint.py for the atomic file implementation).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import xarray as xr
from tqdm.auto import tqdm

from tfda.da._checks import check_ensemble, check_finite, check_int
from tfda.da.metrics import crps, rank_counts
from tfda.da.protocols import Analysis, Checkpointer, Dynamics, ObservationOperator

METRICS = ("rmse_f", "rmse_a", "spread_f", "spread_a", "obs_rmse_f", "obs_rmse_a",
           "crps_f", "crps_a")


Observations = Callable[[int, "torch.Tensor | None"], torch.Tensor]
Callback = Callable[[int, torch.Tensor, dict[str, float]], None]


def _restore_generator(generator: torch.Generator, state: dict[str, Any]) -> None:
    """Set the cycle's generator from a checkpoint saved on the same device type.

    CPU and CUDA generators keep different states (Mersenne Twister, Philox), so a
    checkpoint written on one cannot continue the random stream on the other.
    """
    saved = state.get("generator_device", generator.device.type)
    if saved != generator.device.type:
        raise ValueError(f"the checkpoint's random state was saved by a {saved} run; resume "
                         f"it on {saved} (this ensemble is on {generator.device.type})")
    generator.set_state(state["generator"].cpu())


def _rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = (a - b)[torch.isfinite(b)]
    return float(diff.square().mean().sqrt()) if diff.numel() else float("nan")


def _spread(x: torch.Tensor) -> float:
    return float(x.reshape(x.shape[0], -1).var(0).mean().sqrt())


def _metrics(x: torch.Tensor, truth: torch.Tensor | None, y: torch.Tensor,
             operator: ObservationOperator,
             tag: str) -> dict[str, float]:
    with torch.no_grad():
        hx_mean = operator(x).mean(0)
    return {
        f"rmse_{tag}": _rmse(x.mean(0), truth[0]) if truth is not None else float("nan"),
        f"spread_{tag}": _spread(x),
        f"obs_rmse_{tag}": _rmse(hx_mean, y),
        f"crps_{tag}": crps(x, truth[0]) if truth is not None else float("nan"),
    }


def _check_arguments(model: Any, analysis: Any, checkpointer: Any, callback: Any,
                     observations: Any) -> None:
    """TypeError naming the argument, before its first use fails obscurely mid-run."""
    if not callable(getattr(model, "step", None)):
        raise TypeError(f"model must have a step(x) method, got {type(model).__name__}")
    if not callable(analysis):
        raise TypeError(f"analysis must be callable, got {type(analysis).__name__}")
    if checkpointer is not None and not all(
            callable(getattr(checkpointer, m, None)) for m in ("save", "load")):
        raise TypeError("checkpointer must have save and load methods, got "
                        f"{checkpointer!r}")
    for name, fn in (("callback", callback), ("observations", observations)):
        if fn is not None and not callable(fn):
            raise TypeError(f"{name} must be callable or None, got {type(fn).__name__}")


def run_cycle(
    model: Dynamics,
    analysis: Analysis,
    operator: ObservationOperator,
    ensemble: torch.Tensor,
    *,
    n_cycles: int,
    truth: torch.Tensor | None = None,
    observations: Observations | None = None,
    steps_per_cycle: int = 1,
    seed: int = 0,
    callback: Callback | None = None,
    checkpointer: Checkpointer | None = None,
    progress: bool = True,
    coords: Mapping[str, Any] | None = None,
    shock: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
) -> xr.Dataset:
    """Cycle ``analysis`` over ``n_cycles`` forecasts of ``model``; see the module docstring.

    Args:
        model: any object with ``step(x) -> x`` on (member, *state_shape).
        analysis: ``analysis(prior, y, operator, *, generator) -> posterior``.
        operator: observation operator with ``error`` (observations.operators).
        ensemble: initial ensemble (member, *state_shape), M >= 2.
        n_cycles: number of forecast/analysis cycles (>= 1).
        truth: initial true state (*state_shape) or (1, *state_shape) for a twin.
        observations: ``observations(k, truth_or_None) -> y``; needed without truth.
        steps_per_cycle: model steps between analyses.
        seed: seeds the generator behind observation noise and the analysis.
        callback: called after each cycle with (k, analysis ensemble, metrics).
        checkpointer: saves the state after each analysis; resumes from ``load()``.
        progress: tqdm bar over cycles.
        coords: names and values of the state dimensions, in order (e.g. ``{"variable":
            model.variables, "lat": model.lat, "lon": model.lon}``); they label the
            returned ensemble and truth. None: dims s0, s1, ... without values.
        shock: twin only: ``shock(k, truth) -> truth`` applied to the truth after the
            forecast of cycle k, before it is observed: model error the ensemble does not
            know (Bao et al., MWR 2024, SQG "shocks"). It must depend only on k and the
            truth (so a resumed run repeats it).
    """
    _check_arguments(model, analysis, checkpointer, callback, observations)
    check_ensemble("ensemble", ensemble)
    _check_coords(coords, tuple(ensemble.shape[1:]))
    check_int("n_cycles", n_cycles, minimum=1)
    check_int("steps_per_cycle", steps_per_cycle, minimum=1)
    check_int("seed", seed)
    if truth is not None:
        if not isinstance(truth, torch.Tensor):
            raise TypeError(f"truth must be a tensor, got {type(truth).__name__}")
        check_finite("truth", truth)
    if truth is None and observations is None:
        raise ValueError("give observations= (a callable) or truth= (a twin experiment)")
    state_shape = tuple(ensemble.shape[1:])
    if truth is not None:
        truth = truth.reshape(1, *state_shape) if tuple(truth.shape) == state_shape else truth
        if tuple(truth.shape) != (1, *state_shape):
            raise ValueError(f"truth has shape {tuple(truth.shape)}, expected {state_shape}")
        truth = truth.to(ensemble)
    generator = torch.Generator(device=ensemble.device).manual_seed(seed)
    history: dict[str, list[Any]] = {name: [] for name in (*METRICS, "rank_a")}
    start = 1
    if checkpointer is not None and (state := checkpointer.load()) is not None:
        if state.get("n_cycles_total", n_cycles) > n_cycles or state["cycle"] > n_cycles:
            raise ValueError(f"the checkpoint is at cycle {state['cycle']} > n_cycles={n_cycles}")
        if tuple(state["ensemble"].shape) != tuple(ensemble.shape):
            raise ValueError("the checkpoint's ensemble shape differs from ensemble's")
        ensemble = state["ensemble"].to(ensemble)
        truth = None if state["truth"] is None else state["truth"].to(ensemble)
        _restore_generator(generator, state)
        torch.set_rng_state(state["torch_rng"])
        history = {k: list(v) for k, v in state["history"].items()}
        start = state["cycle"] + 1

    for k in tqdm(range(start, n_cycles + 1), disable=not progress, desc="cycle",
                  initial=start - 1, total=n_cycles):
        x = ensemble
        for _ in range(steps_per_cycle):
            x = model.step(x)
            if truth is not None:
                truth = model.step(truth)
        if shock is not None and truth is not None:
            truth = shock(k, truth)
        if not bool(torch.isfinite(x).all()):
            raise FloatingPointError(f"cycle {k}: the forecast ensemble is non-finite "
                                     "(the model diverged from the last analysis)")
        if observations is not None:
            y = torch.as_tensor(observations(k, truth)).to(x)
        else:
            with torch.no_grad():
                clean = operator(truth)[0]
            noise = operator.error.sample((1, *clean.shape), generator=generator,
                                          dtype=clean.dtype, device=clean.device)
            y = clean + noise[0]
        with torch.no_grad():
            obs_shape = tuple(operator(x[:1]).shape[1:])
        if tuple(y.shape) != obs_shape:
            raise ValueError(f"cycle {k}: y has shape {tuple(y.shape)} but H(x) gives "
                             f"{obs_shape} per member")
        metrics = _metrics(x, truth, y, operator, "f")
        # a cycle without any observation (all NaN) is a forecast only
        xa = analysis(x, y, operator, generator=generator) if bool(torch.isfinite(y).any()) else x
        if tuple(xa.shape) != tuple(x.shape) or not bool(torch.isfinite(xa).all()):
            raise FloatingPointError(f"cycle {k}: the analysis returned shape "
                                     f"{tuple(xa.shape)} or non-finite values")
        metrics.update(_metrics(xa, truth, y, operator, "a"))
        ensemble = xa.detach()
        for name in METRICS:
            history[name].append(metrics[name])
        if truth is not None:
            history["rank_a"].append(rank_counts(xa, truth[0]).tolist())
        if callback is not None:
            callback(k, ensemble, metrics)
        if checkpointer is not None:
            checkpointer.save({
                "cycle": k, "n_cycles_total": n_cycles, "ensemble": ensemble,
                "truth": truth, "generator": generator.get_state(),
                "generator_device": generator.device.type,
                "torch_rng": torch.get_rng_state(), "history": history,
            })
    return _dataset(history, ensemble, truth, coords)


def _check_coords(coords: Mapping[str, Any] | None, state_shape: tuple[int, ...]) -> None:
    """coords must name every state dimension, in order, with as many values as it has."""
    if coords is None:
        return
    if len(coords) != len(state_shape):
        raise ValueError(f"coords names {len(coords)} dimension(s) {list(coords)}, the state "
                         f"has {len(state_shape)}: {state_shape}")
    for (name, values), size in zip(coords.items(), state_shape, strict=True):
        if len(values) != size:
            raise ValueError(f"coords: dimension {name!r} has {len(values)} values, the "
                             f"state has {size} there")


def _dataset(history: dict[str, list[Any]], ensemble: torch.Tensor,
             truth: torch.Tensor | None, coords: Mapping[str, Any] | None = None
             ) -> xr.Dataset:
    n = len(history["rmse_a"])
    names = list(coords) if coords is not None else [f"s{i}" for i in range(ensemble.ndim - 1)]
    dims = ["member", *names]
    data: dict[str, Any] = {name: ("cycle", np.asarray(history[name], dtype=np.float64))
                            for name in METRICS}
    if history["rank_a"]:
        data["rank_a"] = (("cycle", "rank"), np.asarray(history["rank_a"], dtype=np.int64))
    data["ensemble"] = (dims, ensemble.detach().cpu().numpy())
    if truth is not None:
        data["truth"] = (dims[1:], truth[0].detach().cpu().numpy())
    labels = {} if coords is None else {
        k: np.asarray(v.cpu() if isinstance(v, torch.Tensor) else v) for k, v in coords.items()}
    ds = xr.Dataset(data, coords={"cycle": np.arange(1, n + 1), **labels})
    ds["rmse_a"].attrs["long_name"] = "RMSE of the analysis ensemble mean against the truth"
    ds["spread_a"].attrs["long_name"] = "sqrt of the mean analysis ensemble variance"
    ds["obs_rmse_a"].attrs["long_name"] = "RMSE of mean H(x_a) against the observations"
    ds["crps_a"].attrs["long_name"] = "CRPS of the analysis ensemble, mean over components"
    if "rank_a" in ds:
        ds["rank_a"].attrs["long_name"] = "counts of the truth's rank among the analysis members"
    return ds
