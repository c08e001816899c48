"""Noise schedule of the forward diffusion SDE.

Rafid et al., "A Scalable Training-Free Diffusion Model for Uncertainty
Quantification", Eqs. (3)-(5), with the offsets of the published EnSF code
(Bao, Zhang, Zhang, arXiv 2309.00983):

    alpha_t   = 1 - (1 - eps_a) t
    beta_t^2  = eps_b + (1 - eps_b) t
    b(t)      = d log(alpha_t) / dt           = -(1 - eps_a) / alpha_t
    sigma^2(t)= d beta_t^2 / dt - 2 b(t) beta_t^2
              = (1 - eps_b) + 2 (1 - eps_a) beta_t^2 / alpha_t

``eps_a = eps_b = 0`` is the paper's Eq. (5); ``eps_a > 0`` keeps b(1) finite so a
sampler may start exactly at t = 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar

import torch

TimeLike = TypeVar("TimeLike", float, torch.Tensor)


@dataclass(frozen=True)
class Schedule:
    """The linear alpha / beta^2 schedule of Eq. (5), vectorised over ``t``.

    Every method accepts a Python float or a tensor of times and returns the same
    kind (tensors broadcast elementwise).
    """

    eps_a: float = 0.0
    eps_b: float = 0.0

    def __post_init__(self) -> None:
        for name in ("eps_a", "eps_b"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"Schedule: {name} must lie in [0, 1), got {value}")

    def alpha(self, t: TimeLike) -> TimeLike:
        """alpha_t = 1 - (1 - eps_a) t (Eq. 5)."""
        return 1.0 - (1.0 - self.eps_a) * t

    def beta2(self, t: TimeLike) -> TimeLike:
        """beta_t^2 = eps_b + (1 - eps_b) t (Eq. 5)."""
        return self.eps_b + (1.0 - self.eps_b) * t

    def drift(self, t: TimeLike) -> TimeLike:
        """b(t) = d log(alpha_t)/dt (Eq. 4); infinite at t = 1 when eps_a = 0."""
        alpha = self.alpha(t)
        if isinstance(alpha, torch.Tensor):
            return -(1.0 - self.eps_a) / alpha
        return -(1.0 - self.eps_a) / alpha if alpha != 0.0 else float("-inf")

    def diffusion2(self, t: TimeLike) -> TimeLike:
        """sigma^2(t) = d(beta_t^2)/dt - 2 b(t) beta_t^2 (Eq. 4)."""
        alpha = self.alpha(t)
        beta2 = self.beta2(t)
        if isinstance(alpha, torch.Tensor):
            return (1.0 - self.eps_b) + 2.0 * (1.0 - self.eps_a) * beta2 / alpha
        if alpha == 0.0:
            return float("inf")
        return (1.0 - self.eps_b) + 2.0 * (1.0 - self.eps_a) * beta2 / alpha

    def perturb(
        self, x0: torch.Tensor, t: float | torch.Tensor, noise: torch.Tensor
    ) -> torch.Tensor:
        """Sample the forward process: Z_t = alpha_t x0 + beta_t noise."""
        beta = self.beta2(t) ** 0.5
        return self.alpha(t) * x0 + beta * noise
