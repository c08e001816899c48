"""FourCastNet v1: official parameter layout, checkpoint round trip, reference forward."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tfda.models.base import ForecastModel, rollout
from tfda.models.fourcastnet import (
    FOURCASTNET_VARIABLES,
    AFNOConfig,
    AFNONet,
    build_network,
    load_fourcastnet,
    load_normalisation,
    load_state_dict,
    load_weights,
    save_checkpoint,
)

TINY = AFNOConfig(img_size=(16, 32), patch_size=4, in_chans=3, out_chans=3, embed_dim=16,
                  depth=2, num_blocks=4)


def official_shapes() -> dict[str, tuple[int, ...]]:
    """Names and shapes of backbone.ckpt (docs/design.md section 4; Pathak et al. 2022 Table/config:
    720x1440, patch 8, embed 768, depth 12, mlp ratio 4, 8 blocks, 20 channels)."""
    e, c, p, nb = 768, 20, 8, 8
    bs = e // nb
    shapes = {
        "pos_embed": (1, (720 // p) * (1440 // p), e),
        "patch_embed.proj.weight": (e, c, p, p),
        "patch_embed.proj.bias": (e,),
    }
    for i in range(12):
        b = f"blocks.{i}."
        shapes |= {
            b + "norm1.weight": (e,), b + "norm1.bias": (e,),
            b + "filter.w1": (2, nb, bs, bs), b + "filter.b1": (2, nb, bs),
            b + "filter.w2": (2, nb, bs, bs), b + "filter.b2": (2, nb, bs),
            b + "norm2.weight": (e,), b + "norm2.bias": (e,),
            b + "mlp.fc1.weight": (4 * e, e), b + "mlp.fc1.bias": (4 * e,),
            b + "mlp.fc2.weight": (e, 4 * e), b + "mlp.fc2.bias": (e,),
        }
    shapes |= {"norm.weight": (e,), "norm.bias": (e,), "head.weight": (c * p * p, e)}
    return shapes


def test_full_size_network_on_meta_has_the_official_names_and_shapes():
    net = build_network(device="meta")
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    want = official_shapes()
    assert got == want
    # spot checks quoted in docs/design.md section 4
    assert got["pos_embed"] == (1, 16200, 768)
    assert got["patch_embed.proj.weight"] == (768, 20, 8, 8)
    assert got["blocks.0.filter.w1"] == (2, 8, 96, 96)
    assert got["head.weight"] == (1280, 768)
    assert sum(int(np.prod(s)) for s in want.values()) == sum(
        p.numel() for p in net.parameters())


# ----------------------------------------------------------------------------- reference


def ref_filter(x, w1, b1, w2, b2, num_blocks, lam, fraction):
    """AFNO filter written out part by part (Guibas et al. 2021, Eq. 5-6; official mode set)."""
    bsz, h, w, c = x.shape
    bs = c // num_blocks
    X = torch.fft.rfft2(x.double(), dim=(1, 2), norm="ortho").reshape(bsz, h, w // 2 + 1,
                                                                       num_blocks, bs)
    total = h // 2 + 1
    kept = int(total * fraction)
    rows = slice(total - kept, total + kept)
    xr, xi = X.real[:, rows, :kept], X.imag[:, rows, :kept]
    w1, b1, w2, b2 = (t.double() for t in (w1, b1, w2, b2))

    def mm(a, wt):
        return torch.einsum("...ki,kio->...ko", a, wt)

    o1r = torch.relu(mm(xr, w1[0]) - mm(xi, w1[1]) + b1[0])
    o1i = torch.relu(mm(xi, w1[0]) + mm(xr, w1[1]) + b1[1])
    o2r = mm(o1r, w2[0]) - mm(o1i, w2[1]) + b2[0]
    o2i = mm(o1i, w2[0]) + mm(o1r, w2[1]) + b2[1]
    out = torch.zeros_like(X)
    out[:, rows, :kept] = torch.complex(F.softshrink(o2r, lam), F.softshrink(o2i, lam))
    y = torch.fft.irfft2(out.reshape(bsz, h, w // 2 + 1, c), s=(h, w), dim=(1, 2), norm="ortho")
    return y + x.double()


def ref_forward(net: AFNONet, x: torch.Tensor) -> torch.Tensor:
    """FourCastNet forward from the parameters alone, in float64, index by index."""
    cfg = net.config
    sd = {k: v.double() for k, v in net.state_dict().items()}
    p, e = cfg.patch_size, cfg.embed_dim
    hh, ww = cfg.grid
    bsz = x.shape[0]
    patches = x.double().reshape(bsz, cfg.in_chans, hh, p, ww, p).permute(0, 2, 4, 1, 3, 5)
    t = torch.einsum("bhwcij,ecij->bhwe", patches, sd["patch_embed.proj.weight"])
    t = t + sd["patch_embed.proj.bias"] + sd["pos_embed"].reshape(hh, ww, e)
    for i in range(cfg.depth):
        b = f"blocks.{i}."
        res = t
        y = F.layer_norm(t, (e,), sd[b + "norm1.weight"], sd[b + "norm1.bias"], cfg.norm_eps)
        y = ref_filter(y, sd[b + "filter.w1"], sd[b + "filter.b1"], sd[b + "filter.w2"],
                       sd[b + "filter.b2"], cfg.num_blocks, cfg.sparsity_threshold,
                       cfg.hard_thresholding_fraction)
        t = y + res
        y = F.layer_norm(t, (e,), sd[b + "norm2.weight"], sd[b + "norm2.bias"], cfg.norm_eps)
        y = F.gelu(y @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        t = y @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"] + t
    t = t @ sd["head.weight"].T                     # (b, h, w, p1*p2*c) ordered (p1, p2, c)
    out = torch.empty(bsz, cfg.out_chans, hh * p, ww * p, dtype=torch.float64)
    for p1 in range(p):
        for p2 in range(p):
            for c in range(cfg.out_chans):
                out[:, c, p1::p, p2::p] = t[..., (p1 * p + p2) * cfg.out_chans + c]
    return out


@pytest.mark.parametrize("fraction", [1.0, 0.5])
def test_network_matches_reference_forward(fraction):
    torch.manual_seed(0)
    cfg = AFNOConfig(**{**TINY.__dict__, "hard_thresholding_fraction": fraction})
    net = AFNONet(cfg).double()
    with torch.no_grad():  # non-trivial norms and biases so that every parameter matters
        for name, prm in net.named_parameters():
            if "norm" in name or name.endswith("bias"):
                prm.add_(0.1 * torch.randn_like(prm))
    x = torch.randn(2, 3, 16, 32, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref_forward(net, x), rtol=1e-9, atol=1e-9)


# ----------------------------------------------------------------------------- checkpoints


def _write_release(tmp_path, net, *, n_norm=4):
    save_checkpoint(net, tmp_path / "backbone.ckpt")
    g = np.random.default_rng(1)
    means = g.normal(size=(1, n_norm, 1, 1)) * 100
    stds = g.uniform(1, 5, size=(1, n_norm, 1, 1))
    np.save(tmp_path / "global_means.npy", means)
    np.save(tmp_path / "global_stds.npy", stds)
    return means.reshape(-1), stds.reshape(-1)


def test_checkpoint_in_official_layout_loads_and_gives_identical_outputs(tmp_path):
    torch.manual_seed(1)
    net = AFNONet(TINY)
    save_checkpoint(net, tmp_path / "backbone.ckpt")
    raw = torch.load(tmp_path / "backbone.ckpt", weights_only=True)
    assert set(raw) >= {"model_state"}
    assert all(k.startswith("module.") for k in raw["model_state"])
    fresh = load_weights(AFNONet(TINY), tmp_path / "backbone.ckpt")
    x = torch.randn(2, 3, 16, 32)
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))
    torch.save(net.state_dict(), tmp_path / "bare.pt")          # bare state dict also loads
    assert set(load_state_dict(tmp_path / "bare.pt")) == set(net.state_dict())


def test_load_fourcastnet_end_to_end_and_normalisation(tmp_path):
    torch.manual_seed(2)
    net = AFNONet(TINY)
    means, stds = _write_release(tmp_path, net, n_norm=4)     # one extra channel, as (1,21,1,1)
    m = load_fourcastnet(tmp_path, config=TINY)
    assert isinstance(m, ForecastModel)
    assert m.dt == dt.timedelta(hours=6)
    assert m.lat.numel() == 17 and float(m.lat[0]) == 90 and float(m.lat[-1]) == -90
    assert float(m.lon[0]) == 0 and m.lon.numel() == 32
    torch.testing.assert_close(m.mean.reshape(-1), torch.tensor(means[:3], dtype=torch.float32))
    x = torch.randn(2, 3, 17, 32, dtype=torch.float64) * 10 + torch.tensor(means[:3]).reshape(
        1, 3, 1, 1)
    mean = torch.tensor(means[:3]).reshape(1, 3, 1, 1)
    std = torch.tensor(stds[:3]).reshape(1, 3, 1, 1)
    with torch.no_grad():
        core = net.double()((x[:, :, :16] - mean) / std) * std + mean
    out = m.step(x)
    torch.testing.assert_close(out[:, :, :16], core, rtol=1e-5, atol=1e-4)
    assert torch.equal(out[:, :, 16], x[:, :, 16])          # documented re-pad: persist
    states = list(rollout(m, x, 2))
    assert len(states) == 3 and states[0] is x
    mn, sd = load_normalisation(tmp_path / "global_means.npy", tmp_path / "global_stds.npy",
                                n_channels=3)
    torch.testing.assert_close(((x - mn.reshape(1, 3, 1, 1)) / sd.reshape(1, 3, 1, 1))
                               * sd.reshape(1, 3, 1, 1) + mn.reshape(1, 3, 1, 1), x)


def test_normalisation_uses_first_20_of_21_channels(tmp_path):
    means = np.arange(21, dtype=np.float32).reshape(1, 21, 1, 1)
    stds = np.arange(1, 22, dtype=np.float32).reshape(1, 21, 1, 1)
    np.save(tmp_path / "m.npy", means)
    np.save(tmp_path / "s.npy", stds)
    mn, sd = load_normalisation(tmp_path / "m.npy", tmp_path / "s.npy")
    assert mn.shape == (20,) and float(mn[-1]) == 19 and float(sd[0]) == 1
    np.save(tmp_path / "short.npy", means[:, :5])
    with pytest.raises(ValueError, match="5 channels"):
        load_normalisation(tmp_path / "short.npy", tmp_path / "s.npy")


def test_persistence_core_through_the_fourcastnet_grid():
    from tfda.models.base import NormalisedModule
    from tfda.models.fourcastnet import fourcastnet_grid

    class Identity(torch.nn.Module):
        def forward(self, x):
            assert x.shape[2] == 720  # the -90 row is cropped before the core
            return x

    lat, lon = fourcastnet_grid()
    m = NormalisedModule(Identity(), torch.randn(20) * 1e4, torch.rand(20) + 0.1,
                         variables=FOURCASTNET_VARIABLES, lat=lat, lon=lon,
                         dt=dt.timedelta(hours=6), core_rows=720)
    x = torch.randn(1, 20, 721, 1440) * 100 + 5000
    assert torch.equal(m.step(x), x)


def test_bad_files_give_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_state_dict(tmp_path / "absent.ckpt")
    (tmp_path / "corrupt.ckpt").write_bytes(b"\x00not a torch file" * 10)
    with pytest.raises(ValueError, match="corrupt.ckpt"):
        load_state_dict(tmp_path / "corrupt.ckpt")
    torch.save({"model_state": {"a": 1}}, tmp_path / "odd.ckpt")
    with pytest.raises(ValueError, match="not a FourCastNet checkpoint"):
        load_state_dict(tmp_path / "odd.ckpt")
    wrong = AFNOConfig(**{**TINY.__dict__, "in_chans": 2, "out_chans": 2})
    save_checkpoint(AFNONet(wrong), tmp_path / "wrong.ckpt")
    with pytest.raises(ValueError, match="2 input channels"):
        load_weights(AFNONet(TINY), tmp_path / "wrong.ckpt")
    deeper = AFNOConfig(**{**TINY.__dict__, "depth": 3})
    save_checkpoint(AFNONet(deeper), tmp_path / "deep.ckpt")
    with pytest.raises(ValueError, match="unexpected"):
        load_weights(AFNONet(TINY), tmp_path / "deep.ckpt")
    with pytest.raises(FileNotFoundError, match="global_means"):
        save_checkpoint(AFNONet(TINY), tmp_path / "backbone.ckpt")
        load_fourcastnet(tmp_path, config=TINY)
    with pytest.raises(ValueError, match="patch_size"):
        AFNOConfig(img_size=(15, 32), patch_size=4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bf16_autocast_on_gpu_is_close_to_float32():
    torch.manual_seed(3)
    m32 = load_fourcastnet(None, config=TINY, device="cuda")
    m16 = load_fourcastnet(None, config=TINY, device="cuda", autocast=True)
    m16.core.load_state_dict(m32.core.state_dict())
    x = torch.randn(4, 3, 17, 32, device="cuda")
    torch.testing.assert_close(m16.step(x), m32.step(x), rtol=5e-2, atol=5e-2)


# ----------------------------------------------------------------------------- memory


class _LargestTensor(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the largest tensor (bytes) any op returns while active."""

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel() * t.element_size())
        return out


def test_spectral_filter_never_broadcasts_its_weights_over_the_modes():
    """No temporary of the filter exceeds twice its input: the complex spectrum of the
    kept modes is the largest thing it needs. Broadcasting the (2 bs, 2 bs) block
    weight over every mode (what asked 91 GiB for 20 full-size members) makes a
    tensor 2 bs times the spectrum and fails this."""
    cfg = AFNOConfig(img_size=(32, 64), patch_size=4, in_chans=3, out_chans=3, embed_dim=64,
                     depth=1, num_blocks=2)
    net = AFNONet(cfg)
    x = torch.randn(3, *cfg.grid, cfg.embed_dim)
    with torch.no_grad(), _LargestTensor() as probe:
        net.blocks[0].filter(x)
    assert probe.largest <= 2 * x.numel() * x.element_size()


def test_micro_batches_give_the_one_batch_answer():
    torch.manual_seed(3)
    net = AFNONet(TINY)
    x = torch.randn(5, 3, 16, 32)
    with torch.no_grad():
        whole = net(x)
        for k in (1, 2, 5, 8):
            net.micro_batch = k
            torch.testing.assert_close(net(x), whole, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="micro_batch"):
        net.micro_batch = 0
