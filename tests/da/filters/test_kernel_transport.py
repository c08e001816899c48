"""The kernel EnSF's transports against the Gaussian-mixture posterior they target.

The reference is the mixture posterior itself (Bayes on the kernel prior, closed
form): mean xbar + X sum_j pi_j m_j^a and covariance X (C_a + sum_j pi_j (m_j^a -
mbar)(m_j^a - mbar)^T) X^T. The "resample" transport must reproduce both within
sampling error at bandwidths well below 1; the deterministic "flow" transport does not
(it keeps every member in its own component), which the last test pins down.
"""

import math

import pytest
import torch

from tfda.da.filters.kernel import kernel_analysis, posterior_mixture
from tfda.da.filters.kernel_transport import centre_posterior_mixture, systematic_resample
from tfda.da.schedule import Schedule
from tfda.observations.operators import FromCallable, Identity


@pytest.fixture(autouse=True)
def _float64():
    """float64 for these tests only (the default dtype is global: restore it)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _mixture_moments(prior, y, std, h):
    """Mean and covariance (physical space) of the kernel prior's exact posterior, H = I."""
    m = prior.shape[0]
    xmean = prior.mean(0)
    xpert = (prior - xmean).T / math.sqrt(m - 1)  # (n, M)
    members = math.sqrt(m - 1) * (torch.eye(m) - 1.0 / m)
    centres = math.sqrt(1 - h * h) * members
    r_inv = 1.0 / std**2
    ypert = xpert
    d = y - xmean
    big_g = (ypert.T @ ypert * r_inv)[None]
    q, means_a, var_a, log_w = posterior_mixture(centres, h * h, big_g, (ypert.T @ d * r_inv)[None],
                                                 (d @ d * r_inv)[None])
    pi = torch.softmax(log_w[0], -1)
    means = means_a[0] @ q[0].T  # (M, K) in ensemble coordinates
    mbar = pi @ means
    cov_u = q[0] @ torch.diag(var_a[0]) @ q[0].T + (means - mbar).T @ ((means - mbar) * pi[:, None])
    return xmean + xpert @ mbar, xpert @ cov_u @ xpert.T


def _transported(prior, y, std, h, transport, seed):
    gen = torch.Generator().manual_seed(seed)
    return kernel_analysis(prior, y, Identity(std), bandwidth=h, steps=40, schedule=Schedule(),
                           transport=transport, generator=gen)


def _check_moments(prior, y, std, h, transport, draws=300):
    mean_ref, cov_ref = _mixture_moments(prior, y, std, h)
    means, covs = [], []
    for seed in range(draws):
        xa = _transported(prior, y, std, h, transport, seed)
        means.append(xa.mean(0))
        covs.append(torch.cov(xa.T).reshape(cov_ref.shape))
    means, covs = torch.stack(means), torch.stack(covs)
    return mean_ref, cov_ref, means, covs


@pytest.mark.parametrize("h", [0.5, 0.8, 0.95])
def test_resample_samples_the_mixture_posterior_in_1d(h):
    # 1-D, 20 members, forecast variance ~ R = 1: the mixture's mean is close to the Kalman one
    gen = torch.Generator().manual_seed(3)
    prior = torch.randn(20, 1, generator=gen)
    y = torch.tensor([1.5])
    mean_ref, cov_ref, means, covs = _check_moments(prior, y, 1.0, h, "resample")
    se = means.std(0) / math.sqrt(len(means))
    assert (means.mean(0) - mean_ref).abs().item() < 4 * se.item() + 1e-9
    # the ensemble variance (unbiased) estimates the mixture's: mean over draws within 5 %
    assert covs.mean(0).item() == pytest.approx(cov_ref.item(), rel=0.05)


def test_resample_samples_a_bimodal_posterior_in_2d():
    # two clusters at (+-2, +-2); observing x_0 = 1.8 with std 0.5 picks the right-hand one
    gen = torch.Generator().manual_seed(5)
    centres = torch.tensor([[2.0, 2.0], [-2.0, -2.0]])
    prior = centres.repeat(10, 1) + 0.4 * torch.randn(20, 2, generator=gen)
    h = 0.5
    ident = FromCallable(lambda x: x[:, :1], 0.5)
    y = torch.tensor([1.8])

    # reference with the observation of x_0 only (rows of Y for component 0)
    m = 20
    xmean = prior.mean(0)
    xpert = (prior - xmean).T / math.sqrt(m - 1)
    members = math.sqrt(m - 1) * (torch.eye(m) - 1.0 / m)
    cen = math.sqrt(1 - h * h) * members
    ypert, d = xpert[:1], y - xmean[:1]
    q, means_a, var_a, log_w = posterior_mixture(cen, h * h, (ypert.T @ ypert / 0.25)[None],
                                                 (ypert.T @ d / 0.25)[None], (d @ d / 0.25)[None])
    pi = torch.softmax(log_w[0], -1)
    mu = means_a[0] @ q[0].T
    mbar = pi @ mu
    cov_u = q[0] @ torch.diag(var_a[0]) @ q[0].T + (mu - mbar).T @ ((mu - mbar) * pi[:, None])
    mean_ref, cov_ref = xmean + xpert @ mbar, xpert @ cov_u @ xpert.T
    assert mean_ref[1] > 1.5  # the unobserved x_1 follows its cluster: bimodal prior

    def run(transport, draws):
        out = [kernel_analysis(prior, y, ident, bandwidth=h, steps=40, schedule=Schedule(),
                               transport=transport, generator=torch.Generator().manual_seed(s))
               for s in range(draws)]
        return torch.stack([x.mean(0) for x in out]), torch.stack([torch.cov(x.T) for x in out])

    means, covs = run("resample", 300)
    se = means.std(0) / math.sqrt(len(means))
    assert ((means.mean(0) - mean_ref).abs() < 4 * se + 1e-9).all()
    assert torch.allclose(covs.mean(0), cov_ref, rtol=0.08, atol=0.02 * cov_ref.diag().max())
    # today's deterministic flow leaves the unobserved component far from the posterior mean
    flow_mean, _ = run("flow", 1)
    assert (flow_mean[0] - mean_ref).abs().max() > 10 * se.max()


def test_flow_does_not_honour_the_weights_below_h_one():
    """Pins the defect the resample transport removes (issue 23): 1-D, M = 20,
    forecast variance = R = 1, h = 0.5: the flow moves the mean ~0.5 of the way."""
    gen = torch.Generator().manual_seed(0)
    prior = torch.randn(20, 1, generator=gen)
    prior = (prior - prior.mean()) / prior.std()  # forecast variance exactly 1
    y = torch.tensor([2.0])
    mean_ref, _ = _mixture_moments(prior, y, 1.0, 0.5)
    flow = _transported(prior, y, 1.0, 0.5, "flow", 0).mean(0)
    assert mean_ref.item() == pytest.approx(1.0, abs=0.05)  # ~ Kalman: gain 0.5 x 2
    assert flow.item() < 0.8 * mean_ref.item()


def test_systematic_resampling_counts():
    log_w = torch.log(torch.tensor([[0.5, 0.25, 0.125, 0.125], [0.25] * 4]))
    k = systematic_resample(log_w, torch.tensor(0.3))
    assert torch.bincount(k[0], minlength=4).tolist() == [2, 1, 0, 1] or \
        torch.bincount(k[0], minlength=4).tolist() == [2, 1, 1, 0]
    assert k[1].tolist() == [0, 1, 2, 3]  # equal weights: every member keeps its component


def test_centre_linearisation_equals_the_ensemble_one_for_linear_h():
    gen = torch.Generator().manual_seed(1)
    m, p = 8, 5
    ypert = torch.randn(p, m, generator=gen)
    d = torch.randn(p, generator=gen)
    members = math.sqrt(m - 1) * (torch.eye(m) - 1.0 / m)
    cen = 0.6 * members
    dj = d[:, None] - ypert @ cen.T  # linear H: y - H(centre_j)
    aug = torch.cat([ypert, dj], 1)
    ref = posterior_mixture(cen, 0.64, (ypert.T @ ypert)[None], (ypert.T @ d)[None], (d @ d)[None])
    got = centre_posterior_mixture(cen, 0.64, (aug.T @ aug)[None])
    # compare basis-free: the means and C_a in ensemble coordinates, the weights
    (q0, mu0, v0, lw0), (q1, mu1, v1, lw1) = ref, got
    assert torch.allclose(mu0 @ q0.transpose(1, 2), mu1 @ q1.transpose(1, 2), atol=1e-10)
    assert torch.allclose((q0 * v0.unsqueeze(1)) @ q0.transpose(1, 2),
                          (q1 * v1.unsqueeze(1)) @ q1.transpose(1, 2), atol=1e-10)
    assert torch.allclose(lw0, lw1, atol=1e-10)


def test_centre_linearisation_resolves_a_sign_ambiguous_observation():
    # |x| observed as 2 with members straddling 0: Y ~ 0, the ensemble linearisation
    # learns nothing, the centres' innovations put the weight on members near +-2
    gen = torch.Generator().manual_seed(2)
    prior = 2.0 * torch.randn(40, 1, generator=gen)
    absop = FromCallable(torch.abs, 0.2, locations=[0.0])
    y = torch.tensor([2.0])
    out = kernel_analysis(prior, y, absop, bandwidth=0.3, steps=10, schedule=Schedule(),
                          transport="resample", linearisation="centres",
                          generator=torch.Generator().manual_seed(0))
    assert (out.abs() - 2.0).abs().median() < 0.5
    assert (prior.abs() - 2.0).abs().median() > 0.6


def test_adaptive_bandwidth_is_exact_at_one_level_and_keeps_the_ess():
    from tfda.da.filters.kernel_transport import adaptive_posterior_mixture

    gen = torch.Generator().manual_seed(4)
    m, p = 20, 30
    members = math.sqrt(m - 1) * (torch.eye(m) - 1.0 / m)
    ypert = torch.randn(3, p, m, generator=gen)
    ypert[0] *= 0.02  # weak observations: the narrowest kernel passes
    d = torch.randn(3, p, generator=gen)
    big_g = ypert.transpose(1, 2) @ ypert
    g = (ypert.transpose(1, 2) @ d.unsqueeze(-1)).squeeze(-1)
    dd = (d * d).sum(-1)
    q, mu, var, lw = adaptive_posterior_mixture(members, 0.5, big_g, g, dd, 0.5)
    ref = posterior_mixture(0.866025403784 * members, 0.25, big_g[:1], g[:1], dd[:1])
    assert torch.allclose(mu[0] @ q[0].T, ref[1][0] @ ref[0][0].T, atol=1e-8)
    gamma = torch.linalg.eigvalsh(big_g)
    h2 = var[:, 0] / (1.0 - var[:, 0] * gamma[:, 0])  # var_a = h^2 / (1 + h^2 gamma)
    assert h2[0] == pytest.approx(0.25)
    w = torch.softmax(lw, -1)
    ess = 1.0 / (w * w).sum(-1)
    assert ((ess >= 0.5 * m - 1e-9) | (h2 > 1.0 - 1e-9)).all()
    assert (h2[1:] > 0.25 + 1e-6).all()  # strong observations widen the kernel


def test_bad_transport_options_are_named():
    from tfda.da.filters import EnSF

    with pytest.raises(ValueError, match="transport"):
        EnSF(transport="sde")
    with pytest.raises(ValueError, match="linearisation"):
        EnSF(linearisation="exact")
    with pytest.raises(ValueError, match="ess_min"):
        EnSF(ess_min=1.5)
    with pytest.raises(ValueError, match="ess_min"):
        kernel_analysis(torch.randn(5, 3), torch.zeros(3), Identity(1.0), bandwidth=0.5,
                        steps=2, schedule=Schedule(), ess_min=0.5)
