"""The kernel (Gaussian-mixture) EnSF: its posterior mixture against a dense Bayes
computation, its Gaussian limit against the ETKF/LETKF, localisation limits, and
the linear-Gaussian gain against the Kalman gain."""

import math

import pytest
import torch

from tfda.da.filters import LETKF, EnSF, grid_distance, periodic_distance
from tfda.da.filters.kernel import centred_basis, kernel_analysis, posterior_mixture
from tfda.da.filters.local import grid_sites
from tfda.da.schedule import Schedule
from tfda.observations.operators import Arctan, Identity

F64 = torch.float64


def _dense_posterior(centres, h2, ypert, r, d):
    """Bayes for each component N(c_j, h2 I) x N(d; Y u, diag(r)) with dense algebra."""
    k = centres.shape[1]
    prec = torch.eye(k, dtype=F64) / h2 + ypert.T @ torch.diag(1 / r) @ ypert
    cov = torch.linalg.inv(prec)
    means = (cov @ (centres.T / h2 + (ypert.T @ (d / r))[:, None])).T
    marg = torch.distributions.MultivariateNormal(
        centres @ ypert.T, covariance_matrix=h2 * ypert @ ypert.T + torch.diag(r))
    return means, cov, torch.log_softmax(marg.log_prob(d), 0)


def test_posterior_mixture_matches_dense_bayes():
    g = torch.Generator().manual_seed(0)
    m, p = 5, 7
    centres = torch.randn(m, m, generator=g, dtype=F64)
    ypert = torch.randn(p, m, generator=g, dtype=F64)
    r = torch.rand(p, generator=g, dtype=F64) + 0.2
    d = torch.randn(p, generator=g, dtype=F64)
    h2 = 0.6
    q, means_a, var_a, log_w = posterior_mixture(
        centres, h2, (ypert.T / r @ ypert)[None], (ypert.T @ (d / r))[None],
        (d * d / r).sum()[None])
    ref_means, ref_cov, ref_logw = _dense_posterior(centres, h2, ypert, r, d)
    torch.testing.assert_close(means_a[0] @ q[0].T, ref_means, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(q[0] @ torch.diag(var_a[0]) @ q[0].T, ref_cov, rtol=1e-10,
                               atol=1e-10)
    torch.testing.assert_close(torch.log_softmax(log_w[0], 0), ref_logw, rtol=1e-10, atol=1e-10)


def test_posterior_in_the_centred_complement_matches_dense_bayes():
    """With centred perturbations and centres (as in every analysis) the posterior found
    in the (M - 1)-dimensional complement of the ones vector is the dense one."""
    g = torch.Generator().manual_seed(1)
    m, p = 6, 9
    ypert = torch.randn(p, m, generator=g, dtype=F64)
    ypert = ypert - ypert.mean(1, keepdim=True)
    r = torch.rand(p, generator=g, dtype=F64) + 0.2
    d = torch.randn(p, generator=g, dtype=F64)
    centres = 0.5 * math.sqrt(m - 1) * (torch.eye(m, dtype=F64) - 1.0 / m)
    basis = centred_basis(m, dtype=F64)
    torch.testing.assert_close(basis.T @ basis, torch.eye(m - 1, dtype=F64))
    torch.testing.assert_close(basis.sum(0), torch.zeros(m - 1, dtype=F64), atol=1e-14, rtol=0)
    q, means_a, var_a, log_w = posterior_mixture(
        centres, 0.75, (ypert.T / r @ ypert)[None], (ypert.T @ (d / r))[None],
        (d * d / r).sum()[None], basis=basis)
    assert q.shape == (1, m, m - 1) and means_a.shape == (1, m, m - 1)
    ref_means, ref_cov, ref_logw = _dense_posterior(centres, 0.75, ypert, r, d)
    torch.testing.assert_close(means_a[0] @ q[0].T, ref_means, rtol=1e-10, atol=1e-10)
    ones = torch.full((m, m), 1.0 / m, dtype=F64)  # the ones direction keeps variance h^2
    torch.testing.assert_close(q[0] @ torch.diag(var_a[0]) @ q[0].T + 0.75 * ones, ref_cov,
                               rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(torch.log_softmax(log_w[0], 0), ref_logw, rtol=1e-10, atol=1e-10)


def _ensemble(m=20, n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, n, generator=g, dtype=F64) / math.sqrt(n)
    prior = 1.0 + torch.randn(m, n, generator=g, dtype=F64) @ (torch.eye(n, dtype=F64) + base)
    y = torch.randn(n, generator=g, dtype=F64)
    return prior, y


@pytest.mark.parametrize("radius", [None, 2.5])
def test_bandwidth_one_is_the_letkf(radius):
    # h = 1: one Gaussian with the ensemble covariance; the transport through t = 1 is
    # then the symmetric square root, so the analysis is the (L)ETKF's to rounding.
    prior, y = _ensemble()
    op = Identity(0.7, locations=torch.arange(12, dtype=F64))
    dist = periodic_distance(12)
    for operator in (op, Arctan(0.3, locations=op.locations)):
        ours = EnSF(score="kernel", bandwidth=1.0, steps=3, inflation=1.1, radius=radius,
                    distance=dist).analysis(prior, y.clamp(-1, 1), operator)
        ref = LETKF(radius=radius, distance=dist, inflation=1.1).analysis(
            prior, y.clamp(-1, 1), operator)
        torch.testing.assert_close(ours, ref, rtol=1e-11, atol=1e-11)


def test_a_window_over_the_whole_state_is_the_global_analysis():
    prior, y = _ensemble(seed=1)
    op = Identity(1.0, locations=torch.arange(12, dtype=F64))
    kw = {"score": "kernel", "bandwidth": 0.8, "steps": 10}
    glob = EnSF(**kw).analysis(prior, y, op)
    wide = EnSF(**kw, radius=1e9, distance=periodic_distance(12)).analysis(prior, y, op)
    narrow = EnSF(**kw, radius=2.0, distance=periodic_distance(12)).analysis(prior, y, op)
    torch.testing.assert_close(wide, glob, rtol=1e-10, atol=1e-10)
    assert float((narrow - glob).abs().max()) > 1e-3  # the window does act


def test_linear_gaussian_gain_is_the_kalman_gain():
    # 1-D prior with variance s (20 members, exact moments), y = sqrt(s + R): the mean
    # analysis increment over y is the Kalman gain s / (s + R) at h = 1 (the ETKF) and,
    # at the default h = 0.95, within a few per cent of it (members keep part of their
    # own component in the ensemble directions nobody observes: docs/ensf.md measures
    # 0.98 of the Kalman gain at h = 0.95 and 0.54 at h = 0.5 for s = R). The paired
    # estimator's gain ignores s altogether: tests/da/filters/test_ensf_gain.py.
    g = torch.Generator().manual_seed(2)
    for s, r in ((1.0, 1.0), (4.0, 0.0025), (0.0009, 0.0025)):
        gain = s / (s + r)
        y = torch.tensor([math.sqrt(s + r)], dtype=F64)
        ratio = {1.0: 0.0, 0.95: 0.0}
        for _ in range(10):
            prior = torch.randn(20, 1, generator=g, dtype=F64)
            prior = (prior - prior.mean()) / prior.std() * math.sqrt(s)  # exact moments
            for h in ratio:
                post = EnSF(score="kernel", bandwidth=h, steps=30).analysis(
                    prior, y, Identity(math.sqrt(r)))
                ratio[h] += float(post.mean()) / float(y) / gain / 10
        assert abs(ratio[1.0] - 1) < 1e-9
        assert 0.95 < ratio[0.95] < 1.01


def test_tiny_observation_error_is_stable_at_any_step_count():
    # std 0.05 in 1-D: the explicit samplers blow up at few steps (docs/ensf.md); the
    # exponential integrator is exact for a Gaussian and cannot.
    g = torch.Generator().manual_seed(3)
    prior = torch.randn(50, 1, generator=g, dtype=F64)
    for steps in (1, 2, 5, 100):
        post = kernel_analysis(prior, torch.tensor([0.5], dtype=F64), Identity(0.05),
                               bandwidth=0.9, steps=steps, schedule=Schedule())
        assert bool(torch.isfinite(post).all())
        assert abs(float(post.mean()) - 0.5 / (1 + 0.0025 / float(prior.var()))) < 0.02


def test_grid_sites_give_the_per_component_analysis():
    # On a (variable, lat, lon) grid observed everywhere the taper depends only on the
    # grid point: one analysis per site must equal one per component.
    lat = torch.linspace(0, 20, 11, dtype=F64)
    lon = torch.linspace(270, 300, 16, dtype=F64)
    g = torch.Generator().manual_seed(5)
    prior = torch.randn(10, 3, 11, 16, generator=g, dtype=F64)
    y = torch.randn(3, 11, 16, generator=g, dtype=F64)
    sites = grid_sites(lat, lon, 3)
    op = Identity(torch.rand(3, 11, 16, generator=g, dtype=F64) + 0.5,
                  locations=sites.locations.repeat(3, 1))
    kw = {"score": "kernel", "bandwidth": 0.9, "steps": 5, "radius": 400.0,
          "distance": grid_distance(lat, lon), "domains_per_batch": 100}
    per_component = EnSF(**kw).analysis(prior, y, op)
    per_site = EnSF(**kw, sites=sites).analysis(prior, y, op)
    torch.testing.assert_close(per_site, per_component, rtol=1e-12, atol=1e-12)


def test_bad_settings_are_named():
    for bad, word in (({"bandwidth": 0.0}, "bandwidth"), ({"bandwidth": 1.5}, "bandwidth"),
                      ({"radius": 2.0}, "distance"), ({"radius": -1.0}, "radius"),
                      ({"domains_per_batch": 0}, "domains_per_batch")):
        with pytest.raises(ValueError, match=word):
            EnSF(score="kernel", **bad)
