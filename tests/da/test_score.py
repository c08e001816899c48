import pytest
import torch

from tfda.da.schedule import Schedule
from tfda.da.score import mixture_score, paired_score


def reference_score(z: torch.Tensor, x0: torch.Tensor, t: float, s: Schedule) -> torch.Tensor:
    """Independent reference: autograd of log Q(z, t), Q the Gaussian mixture
    (1/M) sum_j N(z; alpha x_j, beta^2 I) whose score Eq. (8) estimates."""
    z = z.clone().requires_grad_(True)
    sq = (z[:, None, :] - s.alpha(t) * x0[None, :, :]).square().sum(-1)
    log_q = torch.logsumexp(-sq / (2 * s.beta2(t)), dim=1).sum()
    (grad,) = torch.autograd.grad(log_q, z)
    return grad


def broadcast_score(z: torch.Tensor, x0: torch.Tensor, t: float, s: Schedule) -> torch.Tensor:
    """The N x M x d form, with the weights: the way Eq. (8) reads on paper."""
    diff = z[:, None, :] - s.alpha(t) * x0[None, :, :]
    w = torch.softmax(-diff.square().sum(-1) / (2 * s.beta2(t)), dim=1)
    return -(w[:, :, None] * diff).sum(1) / s.beta2(t)


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.mark.parametrize("t", [1e-3, 0.02, 0.5, 0.98, 1.0])
@pytest.mark.parametrize("n,m", [(7, 13), (20, 20), (30, 5)])
def test_mixture_score_matches_autograd_reference_float64(t, n, m):
    g = torch.Generator().manual_seed(n * 100 + m)
    s = Schedule()
    x0 = 3.0 + torch.randn(m, 11, generator=g, dtype=torch.float64)
    z = s.alpha(t) * x0[torch.randint(m, (n,), generator=g)] + s.beta2(t) ** 0.5 * torch.randn(
        n, 11, generator=g, dtype=torch.float64
    )
    assert rel(mixture_score(z, x0, t, s), reference_score(z, x0, t, s)) < 1e-8


def test_trailing_shapes_chunks_and_eps_offsets_do_not_change_the_answer():
    g = torch.Generator().manual_seed(1)
    s = Schedule(eps_a=0.05, eps_b=0.01)
    x0 = torch.randn(9, 3, 4, 5, generator=g, dtype=torch.float64)
    z = torch.randn(6, 3, 4, 5, generator=g, dtype=torch.float64)
    ref = reference_score(z.flatten(1), x0.flatten(1), 0.3, s).reshape(z.shape)
    for chunk in (None, 1, 7, 60, 1000):
        out = mixture_score(z, x0, 0.3, s, chunk_size=chunk)
        assert out.shape == z.shape and rel(out, ref) < 1e-10


def test_batched_prior_sets_and_per_row_times_equal_separate_calls():
    g = torch.Generator().manual_seed(2)
    s = Schedule()
    x0 = torch.randn(3, 8, 10, generator=g, dtype=torch.float64)
    z = torch.randn(3, 5, 10, generator=g, dtype=torch.float64)
    t_batch = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    out = mixture_score(z, x0, t_batch, s, batch_dims=1)
    for b in range(3):
        torch.testing.assert_close(out[b], mixture_score(z[b], x0[b], float(t_batch[b]), s))
    t_rows = torch.rand(3, 5, generator=g, dtype=torch.float64) * 0.9 + 0.05
    out = mixture_score(z, x0, t_rows, s, batch_dims=1)
    for b in range(3):
        for i in range(5):
            one = mixture_score(z[b, i : i + 1], x0[b], float(t_rows[b, i]), s)
            torch.testing.assert_close(out[b, i : i + 1], one)


def test_minibatch_uses_a_random_subset_of_the_prior():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(50, 4, generator=g, dtype=torch.float64)
    z = torch.randn(6, 4, generator=g, dtype=torch.float64)
    out = mixture_score(z, x0, 0.4, minibatch=10, generator=torch.Generator().manual_seed(7))
    idx = torch.randperm(50, generator=torch.Generator().manual_seed(7))[:10]
    torch.testing.assert_close(out, mixture_score(z, x0[idx], 0.4))
    assert rel(out, mixture_score(z, x0, 0.4)) > 1e-3


@pytest.mark.slow
def test_float32_precision_at_a_million_features_needs_centring():
    """Members 1e-3 of their norm apart around a mean of size 10, z from the forward
    process: float32 within 1e-5 of float64 on the same inputs. Without centring,
    the cancellation in the logits costs several digits (measured: 1e-1 at t = 0.01)."""
    d, m = 1_000_000, 20
    g = torch.Generator().manual_seed(0)
    mean = 10.0 + torch.randn(d, generator=g, dtype=torch.float64)
    x0 = mean + 1e-3 * mean.norm() * torch.randn(m, d, generator=g, dtype=torch.float64) / d**0.5
    x32 = x0.float()
    s = Schedule()
    worst_uncentred = 0.0
    for t in (0.01, 0.1, 0.5, 0.99):
        noise = torch.randn(m, d, generator=g, dtype=torch.float64)
        z32 = (s.alpha(t) * x32.double() + s.beta2(t) ** 0.5 * noise).float()
        ref = mixture_score(z32.double(), x32.double(), t, s)
        for chunk in (None, 65536):
            assert rel(mixture_score(z32, x32, t, s, chunk_size=chunk), ref) < 1e-5, (t, chunk)
        uncentred = mixture_score(z32, x32, t, s, chunk_size=None, centre=False)
        worst_uncentred = max(worst_uncentred, rel(uncentred, ref))
    assert worst_uncentred > 1e-3


def test_matrix_form_equals_the_broadcast_form():
    g = torch.Generator().manual_seed(4)
    x0 = torch.randn(12, 30, generator=g, dtype=torch.float64)
    z = torch.randn(9, 30, generator=g, dtype=torch.float64)
    for t in (0.05, 0.6):
        assert rel(mixture_score(z, x0, t), broadcast_score(z, x0, t, Schedule())) < 1e-12


def test_paired_score_is_its_formula():
    g = torch.Generator().manual_seed(5)
    s = Schedule(eps_a=0.05)
    x0 = torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    z = torch.randn(6, 2, 3, generator=g, dtype=torch.float64)
    expected = -(z - s.alpha(0.3) * x0) / s.beta2(0.3)
    torch.testing.assert_close(paired_score(z, x0, 0.3, s), expected, rtol=0, atol=0)
    t_rows = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], dtype=torch.float64)
    rows = paired_score(z, x0, t_rows, s)
    for i in range(6):
        torch.testing.assert_close(
            rows[i], paired_score(z[i : i + 1], x0[i : i + 1], float(t_rows[i]), s)[0]
        )


def test_single_member_prior_is_the_gaussian_score():
    x0 = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    z = torch.tensor([[0.5, 0.5], [3.0, 1.0]], dtype=torch.float64)
    s = Schedule()
    expected = -(z - s.alpha(0.25) * x0) / s.beta2(0.25)
    torch.testing.assert_close(mixture_score(z, x0, 0.25, s), expected)


@pytest.mark.parametrize(
    "kwargs,name",
    [
        (dict(z=torch.zeros(3, 4), x0=torch.zeros(5, 3), t=0.5), "feature shape of x0"),
        (dict(z=torch.full((3, 4), float("nan")), x0=torch.zeros(5, 4), t=0.5), "z holds"),
        (dict(z=torch.zeros(3, 4), x0=torch.tensor([[float("inf")] * 4]), t=0.5), "x0 holds"),
        (dict(z=torch.zeros(3, 4), x0=torch.zeros(5, 4), t=0.0), "t must lie in"),
        (dict(z=torch.zeros(3, 4), x0=torch.zeros(5, 4), t=1.5), "t must lie in"),
        (dict(z=torch.zeros(3, 4), x0=torch.zeros(0, 4), t=0.5), "x0 is an empty prior"),
        (
            dict(z=torch.zeros(3, 4), x0=torch.zeros(5, 4, dtype=torch.float64), t=0.5),
            "x0 has dtype",
        ),
        (dict(z=torch.zeros(3, 4), x0=torch.zeros(5, 4), t=torch.full((4,), 0.5)), "t must be"),
    ],
)
def test_bad_input_names_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name):
        mixture_score(**kwargs)


def test_paired_score_needs_one_prior_sample_per_point():
    with pytest.raises(ValueError, match="paired_score needs"):
        paired_score(torch.zeros(3, 4), torch.zeros(5, 4), 0.5)


# ----------------------------------------------------------------------------- prepared prior


def test_a_prepared_prior_gives_the_same_numbers_as_the_raw_prior():
    """Centring and norms taken once per analysis change nothing, bit for bit,
    whatever the chunking, batch dims or whether the centred copy is kept."""
    from tfda.da.score import prepare_prior

    g = torch.Generator().manual_seed(8)
    s = Schedule()
    x0 = 5.0 + torch.randn(2, 9, 3, 70, generator=g)
    z = torch.randn(2, 6, 3, 70, generator=g)
    t_rows = torch.rand(2, 6, generator=g) * 0.9 + 0.05
    for chunk in (None, 1, 50, 77):
        raw = mixture_score(z, x0, t_rows, s, batch_dims=1, chunk_size=chunk)
        for keep in (False, True):
            prior = prepare_prior(x0, batch_dims=1, chunk_size=chunk, keep_centred=keep)
            assert torch.equal(mixture_score(z, prior, t_rows, s), raw), (chunk, keep)
    prior = prepare_prior(x0, batch_dims=1, chunk_size=50)
    with pytest.raises(ValueError, match="differs from the prepared prior"):
        mixture_score(z, prior, 0.5, s, chunk_size=7)


def test_a_prepared_prior_minibatch_is_the_score_of_the_subset():
    from tfda.da.score import prepare_prior

    g = torch.Generator().manual_seed(9)
    x0 = torch.randn(30, 40, generator=g, dtype=torch.float64)
    z = torch.randn(5, 40, generator=g, dtype=torch.float64)
    out = mixture_score(z, prepare_prior(x0, keep_centred=True), 0.3, minibatch=7,
                        generator=torch.Generator().manual_seed(4))
    idx = torch.randperm(30, generator=torch.Generator().manual_seed(4))[:7]
    torch.testing.assert_close(out, mixture_score(z, x0[idx], 0.3), rtol=1e-12, atol=1e-12)


def test_the_chunked_finite_check_finds_a_nan_in_the_last_chunk():
    x0 = torch.zeros(4, 1000)
    z = torch.zeros(3, 1000)
    z[2, 999] = float("nan")
    with pytest.raises(ValueError, match="z holds 1 non-finite"):
        mixture_score(z, x0, 0.5, chunk_size=64)


def test_auto_chunk_is_bounded_on_cpu_and_sized_by_free_memory_on_cuda(monkeypatch):
    from tfda.da import score

    cpu = torch.device("cpu")
    assert score.auto_chunk(20, 20, 10**8, 4, cpu) == score.DEFAULT_CHUNK
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device=None: (8 * 2**30, 80 * 2**30))
    cuda = torch.device("cuda")
    assert score.auto_chunk(20, 20, 10**6, 4, cuda) is None  # 240 MB of temporaries fit
    chunk = score.auto_chunk(20, 20, 10**8, 4, cuda)  # 24 GB do not: half of 8 GiB
    assert chunk == 4 * 2**30 // (60 * 4)
