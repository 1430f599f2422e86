"""Radial bases of the interatomic distance, fed to φ_e beside d², and the smooth cutoff envelope.

Both bases take distances of shape (n_edges, 1) in Å and return (n_edges, n_rbf) features:

* :class:`GaussianBasis` — SchNet-style Gaussians exp(−((d − μ_k)/w)²), centres μ_k evenly spaced
  from 0 to ``rbf_max_A`` Å, width w = their spacing. Not zero at any finite distance.
* :class:`BesselBasis` — the radial Bessel functions of DimeNet (Klicpera, Groß & Günnemann,
  ICLR 2020) as NequIP uses them, e_n(d) = √(2/r_c) · sin(nπd/r_c) / d for n = 1 … n_rbf, times
  the polynomial envelope u(d) below, so each feature and its first two derivatives vanish at r_c.
  The frequencies nπ/r_c are fixed (DimeNet and NequIP can train them; we do not).

:func:`cosine_cutoff` is the cutoff of SchNet and PaiNN, f(d) = ½ (cos(πd/r_c) + 1) below r_c, 0 beyond
(zero with its first derivative at r_c).

:func:`polynomial_envelope` is DimeNet's u(d) with p = 6, x = d/r_c::

    u = 1 − (p+1)(p+2)/2 · x^p + p(p+2) · x^(p+1) − p(p+1)/2 · x^(p+2)   for x < 1,   0 for x ≥ 1

u(0) = 1, and u, u′ and u″ are 0 at r_c, so a sum over pairs switched by u is twice differentiable
as a pair crosses the cutoff.
"""

from __future__ import annotations

import math

import torch
from torch import nn

ENVELOPE_P = 6
BASES = ("gaussian", "bessel")


def polynomial_envelope(dist: torch.Tensor, cutoff_A: float, p: int = ENVELOPE_P) -> torch.Tensor:
    """u(d) of DimeNet (same shape as ``dist``, Å); 1 at 0, smoothly 0 from ``cutoff_A`` on."""
    x = dist / cutoff_A
    xp = x ** p
    u = 1 - (p + 1) * (p + 2) / 2 * xp + p * (p + 2) * xp * x - p * (p + 1) / 2 * xp * x * x
    return torch.where(x < 1, u, torch.zeros_like(u))


def cosine_cutoff(dist: torch.Tensor, cutoff_A: float) -> torch.Tensor:
    """f(d) = ½ (cos(πd/r_c) + 1) for d < r_c, else 0 (same shape as ``dist``, Å)."""
    f = 0.5 * (torch.cos(dist * (math.pi / cutoff_A)) + 1.0)
    return torch.where(dist < cutoff_A, f, torch.zeros_like(f))


class GaussianBasis(nn.Module):
    """``n_rbf`` Gaussians, centres 0 … ``rbf_max_A`` Å evenly spaced, width = the spacing (Å)."""

    def __init__(self, n_rbf: int, rbf_max_A: float):
        super().__init__()
        self.n_rbf = n_rbf
        # not saved in checkpoints: rebuilt from the config
        self.register_buffer("centres", torch.linspace(0.0, rbf_max_A, n_rbf), persistent=False)  # Å
        self.width = rbf_max_A / max(1, n_rbf - 1)  # Å

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        """(n_edges, 1) Å → (n_edges, n_rbf)."""
        return torch.exp(-(((dist - self.centres) / self.width) ** 2))

    def extra_repr(self) -> str:
        return f"n_rbf={self.n_rbf}, rbf_max_A={float(self.centres[-1]) if self.n_rbf else 0.0}"


class BesselBasis(nn.Module):
    """``n_rbf`` Bessel functions √(2/r_c)·sin(nπd/r_c)/d with fixed frequencies, times u(d); r_c = ``cutoff_A`` (Å).

    ``envelope=False`` drops u(d): PaiNN's basis, whose filters are multiplied by the cosine cutoff instead.
    """

    def __init__(self, n_rbf: int, cutoff_A: float, envelope: bool = True):
        super().__init__()
        self.n_rbf = n_rbf
        self.cutoff_A = float(cutoff_A)
        self.envelope = envelope
        # n = 1 … n_rbf as a buffer (exact in any dtype); π/r_c stays a Python float, so float64 models get
        # float64 frequencies rather than float32 ones cast up
        self.register_buffer("n", torch.arange(1, n_rbf + 1, dtype=torch.get_default_dtype()), persistent=False)
        self.prefactor = math.sqrt(2.0 / self.cutoff_A)

    def forward(self, dist: torch.Tensor) -> torch.Tensor:
        """(n_edges, 1) Å → (n_edges, n_rbf); zero from r_c on. ``dist`` must be > 0 (no self-pairs)."""
        phase = self.n * (dist * (math.pi / self.cutoff_A))  # (n_edges, n_rbf) nπd/r_c
        basis = self.prefactor * torch.sin(phase) / dist
        return basis * polynomial_envelope(dist, self.cutoff_A) if self.envelope else basis

    def extra_repr(self) -> str:
        return f"n_rbf={self.n_rbf}, cutoff_A={self.cutoff_A}" + ("" if self.envelope else ", envelope=False")


def build_basis(rbf: str, n_rbf: int, rbf_max_A: float, cutoff_A: float | None) -> nn.Module:
    """The basis named ``rbf``; Bessel needs ``cutoff_A`` (its r_c), Gaussians use ``rbf_max_A``."""
    if rbf == "gaussian":
        return GaussianBasis(n_rbf, rbf_max_A)
    if rbf == "bessel":
        if cutoff_A is None:
            raise ValueError("rbf='bessel' needs cutoff_A (Å): its functions and envelope vanish there")
        return BesselBasis(n_rbf, cutoff_A)
    raise ValueError(f"rbf={rbf!r} is not valid; choose one of {list(BASES)}")
