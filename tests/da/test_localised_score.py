"""The localised mixture score against Eq. (8) and against a per-component loop."""

import math

import torch

from tfda.da.filters.local import gaspari_cohn
from tfda.da.localised_score import localised_mixture_score, ring_taper
from tfda.da.schedule import Schedule
from tfda.da.score import mixture_score

F64 = torch.float64


def _data(seed=0, n=5, m=7, d=12):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=F64),
            3 + torch.randn(m, d, generator=g, dtype=F64))


def test_a_window_over_everything_is_eq8():
    z, x0 = _data()
    whole = lambda v: v.sum(-1, keepdim=True).expand_as(v)  # noqa: E731  rho = 1
    for t in (0.01, 0.3, 0.9):
        torch.testing.assert_close(localised_mixture_score(z, x0, t, Schedule(0.05), whole),
                                   mixture_score(z, x0, t, Schedule(0.05)))


def test_against_a_loop_over_components():
    z, x0 = _data(1)
    d, radius, t, schedule = x0.shape[1], 1.5, 0.2, Schedule(0.05)
    taper = ring_taper(d, radius)
    a, b2 = schedule.alpha(t), schedule.beta2(t)
    ref = torch.empty_like(z)
    for k in range(d):
        dist = torch.tensor([min(abs(k - l), d - abs(k - l)) for l in range(d)], dtype=F64)
        rho = gaspari_cohn(dist / (radius * math.sqrt(10 / 3)))
        logits = (a / b2) * (z * rho) @ x0.T - 0.5 * a * a / b2 * (x0 * x0 * rho).sum(1)
        w = torch.softmax(logits, dim=1)
        ref[:, k] = -(z[:, k] - a * (w @ x0[:, k])) / b2
    torch.testing.assert_close(localised_mixture_score(z, x0, t, schedule, taper), ref)
