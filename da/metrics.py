"""Probabilistic verification of an ensemble against a truth: CRPS and rank histograms.

* CRPS (Gneiting & Raftery 2007, Eq. 21) of the ensemble's empirical distribution,
  CRPS = E|X - x| - 0.5 E|X - X'|, averaged over the state components; computed from
  the sorted members as E|X - X'| = (2 / M^2) sum_i (2 i - M - 1) x_(i), O(M log M) per
  component.
* Rank histogram (Anderson 1996; Hamill 2001): the rank of the truth among the M
  members (0..M) at every component, counted into M + 1 bins. A calibrated ensemble
  has a flat histogram; U-shaped is under-dispersive, dome-shaped over-dispersive.
  :func:`rank_flatness` gives Pearson's chi^2 of the counts against the flat
  expectation with its M degrees of freedom (components and cycles are correlated,
  so read it as a flatness index, not as a calibrated test).
"""

from __future__ import annotations

import torch


def crps(ensemble: torch.Tensor, truth: torch.Tensor) -> float:
    """Mean CRPS over components of ``ensemble`` (M, ...) against ``truth`` (...)."""
    m = ensemble.shape[0]
    x = ensemble.reshape(m, -1)
    y = truth.reshape(-1)
    skill = (x - y).abs().mean(0)
    ranks = torch.arange(1, m + 1, dtype=x.dtype, device=x.device)
    coeff = (2 * ranks - m - 1).unsqueeze(1)
    spread = 2.0 / (m * m) * (coeff * x.sort(0).values).sum(0)
    return float((skill - 0.5 * spread).mean())


def rank_counts(ensemble: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Counts (M + 1,) of the truth's rank among the members over all components."""
    m = ensemble.shape[0]
    below = (ensemble.reshape(m, -1) < truth.reshape(1, -1)).sum(0)
    return torch.bincount(below, minlength=m + 1).cpu()


def rank_flatness(counts: torch.Tensor) -> tuple[float, int]:
    """Pearson's chi^2 of rank counts against a flat histogram, and its degrees of freedom."""
    counts = counts.to(torch.float64)
    expected = counts.sum() / counts.numel()
    return float(((counts - expected) ** 2 / expected).sum()), counts.numel() - 1
