"""Innovation-driven adaptive inflation (da.filters.inflation): the Desroziers / Li,
Kalnay & Miyoshi estimate, its clipping, and that the LETKF and the kernel EnSF use
the same factor, with the option off (or clipped to 1) changing nothing."""

import math

import pytest
import torch

from tfda.da.filters import LETKF, EnSF, periodic_distance
from tfda.da.filters import inflation as inflation_module
from tfda.da.filters.inflation import innovation_inflation
from tfda.observations.operators import Identity


def _standardised(m, n, generator):
    """(M, n) members whose sample mean is 0 and unbiased sample variance 1 per column."""
    x = torch.randn(m, n, generator=generator, dtype=torch.float64)
    x = x - x.mean(0)
    return x / x.std(0)


def test_one_dimensional_estimate_matches_the_formula():
    # H P H^T = 1 (the members' unbiased variance), R = 0.25: tr(R^-1 Y Y^T) = 4
    prior = 3.0 + _standardised(4, 1, torch.Generator().manual_seed(0))
    op = Identity(torch.tensor([0.5], dtype=torch.float64))
    for k in (1.5, 2.5):
        d = math.sqrt(k * 1.0 + 0.25)  # innovation variance k H P H^T + R: lambda^2 = k
        y = prior.mean(0) + d
        lam2, _ = innovation_inflation(prior, y, op, inflation=1.0, maximum=3.0)
        assert lam2 == pytest.approx(k, rel=1e-12)
        # measured on the forecast inflated by the fixed factor: k / inflation
        lam2, _ = innovation_inflation(prior, y, op, inflation=1.25, maximum=3.0)
        assert lam2 == pytest.approx(k / 1.25, rel=1e-12)
    y = prior.mean(0) + math.sqrt(10.0 + 0.25)  # lambda^2 = 10, clipped
    assert innovation_inflation(prior, y, op, inflation=1.0, maximum=3.0)[0] == 3.0


def test_many_observations_recover_k_and_clip_at_one_when_over_dispersive():
    g = torch.Generator().manual_seed(1)
    p, m, k, r = 4000, 10, 2.0, 0.5
    prior = _standardised(m, p, g)  # H P H^T = I, R = r I
    op = Identity(torch.full((p,), math.sqrt(r), dtype=torch.float64))
    y = torch.randn(p, generator=g, dtype=torch.float64) * math.sqrt(k + r)
    d = y - prior.mean(0)
    exact = ((d.square() / r).sum() - p) / (p / r)  # the formula on these very d
    lam2, hx = innovation_inflation(prior, y, op, inflation=1.0, maximum=3.0)
    assert lam2 == pytest.approx(float(exact), rel=1e-12)
    assert lam2 == pytest.approx(k, abs=4 * math.sqrt(2 / p) * (k + r) / 1.0)
    assert torch.equal(hx, prior)
    # innovation variance below what the ensemble plus R explain: lambda^2 = 1
    y = torch.randn(p, generator=g, dtype=torch.float64) * math.sqrt(0.3 + r)
    assert innovation_inflation(prior, y, op, inflation=1.0, maximum=3.0)[0] == 1.0
    # NaN observations are left out of d, p and the trace
    y_nan = y.clone()
    y_nan[::2] = float("nan")
    with pytest.warns(Warning):
        assert innovation_inflation(prior, y_nan, op, inflation=1.0, maximum=3.0)[0] == 1.0
    # no spread in observation space: 1
    flat = torch.zeros(m, p, dtype=torch.float64)
    assert innovation_inflation(flat, y, op, inflation=1.0, maximum=3.0)[0] == 1.0


def _twin(n=12, m=8, seed=2, shift=0.9):
    g = torch.Generator().manual_seed(seed)
    prior = 1.0 + 0.5 * torch.randn(m, n, generator=g, dtype=torch.float64)
    y = prior.mean(0) + shift * torch.randn(n, generator=g, dtype=torch.float64)
    op = Identity(torch.full((n,), 0.5, dtype=torch.float64),
                  locations=torch.arange(n, dtype=torch.float64))
    return prior, y, op


def _filters(**kw):
    local = {"radius": 2.0, "distance": periodic_distance(12)}
    ensf = {"score": "kernel", "transport": "resample", "linearisation": "centres", "seed": 3}
    return LETKF(**local, **kw), EnSF(**local, **ensf, **kw)


def test_off_and_clipped_to_one_change_nothing():
    prior, y, op = _twin()
    for off, one in zip(_filters(inflation=1.1), _filters(inflation=1.1, adaptive_inflation=1.0),
                        strict=True):
        assert torch.equal(off.analysis(prior, y, op), one.analysis(prior, y, op))


def test_same_factor_for_letkf_and_ensf(monkeypatch):
    prior, y, op = _twin()
    seen = []

    def spy(*args, **kwargs):
        out = innovation_inflation(*args, **kwargs)
        seen.append(out[0])
        return out

    monkeypatch.setattr("tfda.da.filters.letkf.innovation_inflation", spy)
    monkeypatch.setattr("tfda.da.filters.ensf.innovation_inflation", spy)
    adaptive = _filters(inflation=1.1, adaptive_inflation=3.0)
    fixed_by = [f.analysis(prior, y, op) for f in adaptive]
    assert len(seen) == 2 and seen[0] == seen[1] and 1.0 < seen[0] < 3.0
    # each analysis is its filter's with the fixed inflation 1.1 * lambda^2
    for f, xa in zip(_filters(inflation=1.1 * seen[0]), fixed_by, strict=True):
        assert torch.equal(f.analysis(prior, y, op), xa)
    assert inflation_module.innovation_inflation is innovation_inflation


def test_invalid_options():
    with pytest.raises(ValueError, match="adaptive_inflation"):
        LETKF(adaptive_inflation=0.5)
    with pytest.raises(ValueError, match="adaptive_inflation"):
        EnSF(adaptive_inflation=0.9)
    with pytest.raises(ValueError, match="adaptive_inflation"):
        EnSF(score="paired", adaptive_inflation=2.0)
