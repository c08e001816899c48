"""The AFNO network of FourCastNet v1 (Pathak et al. 2022, arXiv 2202.11214).

Adaptive Fourier Neural Operator token mixing (Guibas et al. 2021, arXiv
2111.13587): patch embedding, ``depth`` blocks of [LayerNorm -> AFNO filter
(+skip) -> LayerNorm -> MLP (+skip)], a linear head back to patches.

The module and parameter names follow the official ``networks/afnonet.py`` so
that the published ``backbone.ckpt`` loads unchanged (docs/design.md section 4)::

    pos_embed                      [1, (H/p)(W/p), E]
    patch_embed.proj.{weight,bias} [E, C_in, p, p], [E]
    blocks.i.norm1.{weight,bias}   [E]
    blocks.i.filter.w1 / w2        [2, num_blocks, E/num_blocks, E/num_blocks]
    blocks.i.filter.b1 / b2        [2, num_blocks, E/num_blocks]
    blocks.i.norm2.{weight,bias}   [E]
    blocks.i.mlp.fc1.{weight,bias} [mlp_ratio*E, E], [mlp_ratio*E]
    blocks.i.mlp.fc2.{weight,bias} [E, mlp_ratio*E], [E]
    norm.{weight,bias}             [E]  (present in the checkpoint, unused in forward)
    head.weight                    [C_out p p, E]

The AFNO filter (Guibas et al., Eq. 5-6) on the 2-D token grid X (B, h, w, E):
X_hat = rfft2(X, ortho); per channel block b a complex two-layer MLP
    O1 = ReLU(W1_b X_hat + b1_b),  O2 = W2_b O1 + b2_b
applied to the real/imaginary parts as a complex product, soft-shrinkage
(lambda = sparsity_threshold), and irfft2 back, plus the filter's own skip.
Only modes [H//2+1 - kept, H//2+1 + kept) along latitude and [0, kept) along
longitude are processed, kept = int((H//2+1) * hard_thresholding_fraction), as
in the official implementation (with fraction 1 every latitude mode is kept but
zonal wavenumbers >= H//2+1 are zeroed); we reproduce that mode set exactly
because the published weights were trained with it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["AFNOConfig", "AFNONet", "AFNOFilter", "AFNOBlock"]


@dataclass(frozen=True)
class AFNOConfig:
    """Network size; the defaults are FourCastNet v1 (docs/design.md section 4)."""

    img_size: tuple[int, int] = (720, 1440)
    patch_size: int = 8
    in_chans: int = 20
    out_chans: int = 20
    embed_dim: int = 768
    depth: int = 12
    mlp_ratio: float = 4.0
    num_blocks: int = 8
    sparsity_threshold: float = 0.01
    hard_thresholding_fraction: float = 1.0
    double_skip: bool = True
    norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        h, w = self.img_size
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"img_size {self.img_size} must be divisible by patch_size {p}")
        if self.embed_dim % self.num_blocks:
            raise ValueError(f"embed_dim {self.embed_dim} must be divisible by num_blocks "
                             f"{self.num_blocks}")
        if not 0 < self.hard_thresholding_fraction <= 1:
            raise ValueError("hard_thresholding_fraction must lie in (0, 1]")

    @property
    def grid(self) -> tuple[int, int]:
        return self.img_size[0] // self.patch_size, self.img_size[1] // self.patch_size


class AFNOFilter(nn.Module):
    """Block-diagonal complex MLP in the 2-D Fourier domain (official name: ``filter``)."""

    def __init__(self, dim: int, num_blocks: int, sparsity_threshold: float,
                 hard_thresholding_fraction: float) -> None:
        super().__init__()
        self.num_blocks = num_blocks
        self.block_size = dim // num_blocks
        self.sparsity_threshold = sparsity_threshold
        self.hard_thresholding_fraction = hard_thresholding_fraction
        nb, bs = num_blocks, self.block_size
        # index 0 = real part, 1 = imaginary part of the complex weights
        self.w1 = nn.Parameter(0.02 * torch.randn(2, nb, bs, bs))
        self.b1 = nn.Parameter(0.02 * torch.randn(2, nb, bs))
        self.w2 = nn.Parameter(0.02 * torch.randn(2, nb, bs, bs))
        self.b2 = nn.Parameter(0.02 * torch.randn(2, nb, bs))

    @staticmethod
    def _real_block_weight(w: torch.Tensor, b: torch.Tensor, dtype: torch.dtype
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """The complex product (re + i im)(w0 + i w1) + (b0 + i b1) as one real product.

        [re, im] (nb, rows, 2 bs) times [[w0, w1], [-w1, w0]] (nb, 2 bs, 2 bs), plus
        the bias [b0, b1] shaped (nb, 1, 2 bs).
        """
        big = torch.cat([torch.cat([w[0], w[1]], dim=-1),
                         torch.cat([-w[1], w[0]], dim=-1)], dim=-2)
        bias = torch.cat([b[0], b[1]], dim=-1).unsqueeze(1)
        return big.to(dtype), bias.to(dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x
        dtype = x.dtype
        bsz, h, w, c = x.shape
        nb, bs = self.num_blocks, self.block_size
        with torch.autocast(device_type=x.device.type, enabled=False):
            # FFTs in at least float32 (no half-precision FFTs), as in the official code
            spec = torch.fft.rfft2(x.to(torch.promote_types(dtype, torch.float32)),
                                   dim=(1, 2), norm="ortho")
        wf = w // 2 + 1
        total = h // 2 + 1
        kept = int(total * self.hard_thresholding_fraction)
        r0, r1 = max(total - kept, 0), min(total + kept, h)
        sub = spec.reshape(bsz, h, wf, nb, bs)[:, r0:r1, :kept]
        rows = sub.shape[0] * sub.shape[1] * sub.shape[2]
        # Only the kept modes enter the MLP, laid out (block, mode, [re, im]) so that each
        # layer is one batched product with the block's (2 bs, 2 bs) weight: the weight
        # is never broadcast over the modes (that broadcast asked 91 GiB for 20 members).
        z = torch.cat([sub.real, sub.imag], dim=-1).reshape(rows, nb, 2 * bs).transpose(0, 1)
        big1, bias1 = self._real_block_weight(self.w1, self.b1, z.dtype)
        o = torch.baddbmm(bias1, z, big1).relu_()
        del z
        big2, bias2 = self._real_block_weight(self.w2, self.b2, o.dtype)
        o = F.softshrink(torch.baddbmm(bias2, o, big2).to(spec.real.dtype),
                        lambd=self.sparsity_threshold)
        o = o.transpose(0, 1).reshape(bsz, r1 - r0, kept, nb, 2 * bs)
        # modes outside the kept set are zero, as in the official filter
        full = torch.zeros(bsz, h, wf, c, dtype=spec.dtype, device=x.device)
        del spec, sub
        parts = torch.view_as_real(full).reshape(bsz, h, wf, nb, bs, 2)[:, r0:r1, :kept]
        parts[..., 0] = o[..., :bs]
        parts[..., 1] = o[..., bs:]
        del o, parts
        with torch.autocast(device_type=x.device.type, enabled=False):
            y = torch.fft.irfft2(full, s=(h, w), dim=(1, 2), norm="ortho")
        return y.to(dtype) + skip


class Mlp(nn.Module):
    """Token-wise two-layer perceptron with exact (erf) GELU."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class AFNOBlock(nn.Module):
    """norm1 -> filter (+ residual when double_skip) -> norm2 -> mlp -> + residual."""

    def __init__(self, cfg: AFNOConfig) -> None:
        super().__init__()
        e = cfg.embed_dim
        self.norm1 = nn.LayerNorm(e, eps=cfg.norm_eps)
        self.filter = AFNOFilter(e, cfg.num_blocks, cfg.sparsity_threshold,
                                 cfg.hard_thresholding_fraction)
        self.norm2 = nn.LayerNorm(e, eps=cfg.norm_eps)
        self.mlp = Mlp(e, int(e * cfg.mlp_ratio))
        self.double_skip = cfg.double_skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        x = self.filter(self.norm1(x))
        if self.double_skip:
            x = x + residual
            residual = x
        return self.mlp(self.norm2(x)) + residual


class PatchEmbed(nn.Module):
    """Non-overlapping p x p patches -> tokens (official name: ``patch_embed.proj``)."""

    def __init__(self, cfg: AFNOConfig) -> None:
        super().__init__()
        p = cfg.patch_size
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, kernel_size=p, stride=p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class AFNONet(nn.Module):
    """FourCastNet v1 backbone: (B, C_in, H, W) normalised fields -> (B, C_out, H, W)."""

    def __init__(self, config: AFNOConfig | None = None, *, micro_batch: int | None = None
                 ) -> None:
        super().__init__()
        cfg = config or AFNOConfig()
        self.config = cfg
        self.micro_batch = micro_batch
        h, w = cfg.grid
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, h * w, cfg.embed_dim))
        self.blocks = nn.ModuleList([AFNOBlock(cfg) for _ in range(cfg.depth)])
        # kept for checkpoint compatibility: the official forward never applies it
        self.norm = nn.LayerNorm(cfg.embed_dim, eps=cfg.norm_eps)
        p = cfg.patch_size
        self.head = nn.Linear(cfg.embed_dim, cfg.out_chans * p * p, bias=False)
        self._init_weights()

    def _init_weights(self) -> None:
        if self.pos_embed.is_meta:
            return
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    @property
    def micro_batch(self) -> int | None:
        """Members per forward pass (None: all at once). Memory of the activations
        scales with it; the result does not depend on it beyond rounding."""
        return self._micro_batch

    @micro_batch.setter
    def micro_batch(self, value: int | None) -> None:
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"micro_batch must be a positive int or None, got {value!r}")
        self._micro_batch = value

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        if x.ndim != 4 or x.shape[1] != cfg.in_chans or tuple(x.shape[2:]) != cfg.img_size:
            raise ValueError(f"AFNONet expects (batch, {cfg.in_chans}, {cfg.img_size[0]}, "
                             f"{cfg.img_size[1]}), got {tuple(x.shape)}")
        k = self.micro_batch
        if k is None or x.shape[0] <= k:
            return self._forward(x)
        # micro-batches write into one output: peak memory is that of k members
        first = self._forward(x[:k])
        out = first.new_empty((x.shape[0], *first.shape[1:]))
        out[:k] = first
        del first
        for s in range(k, x.shape[0], k):
            out[s:s + k] = self._forward(x[s:s + k])
        return out

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        bsz = x.shape[0]
        h, w = cfg.grid
        p = cfg.patch_size
        t = self.patch_embed(x) + self.pos_embed
        t = t.reshape(bsz, h, w, cfg.embed_dim)
        for blk in self.blocks:
            t = blk(t)
        t = self.head(t)                                   # (B, h, w, p*p*C) ordered (p1 p2 c)
        t = t.reshape(bsz, h, w, p, p, cfg.out_chans)
        return t.permute(0, 5, 1, 3, 2, 4).reshape(bsz, cfg.out_chans, h * p, w * p)
