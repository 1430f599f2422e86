"""Noisy Nodes (Godwin et al., "Simple GNN regularisation for 3D molecular property prediction
and beyond", ICLR 2022): the closest prior art to PairReg's coordinate loss.

During training the input coordinates get Gaussian noise, x̃_0 = x_0 + σ ε, and the last
layer's coordinates are regressed to the clean geometry::

    L = L_task + λ · mean_i ‖x_{L,i} − x_{0,i}‖²          (Å²)

on the plain EGNN stack (h_l = h̃_l, x_l = x̃_l, coordinates updated). It is PairReg's
machinery with ``residual="none"``, ``coord_mix="replace"`` and ``coord_noise > 0``; only σ and
λ are options here. Defaults (σ = 0.02 Å, λ = 0.1) are our choice for QM9-scale noise, not a
value taken from the paper.
"""

from __future__ import annotations

from .base import FIXED_POSITIONS, register
from .pairreg import PairReg


@register("noisynodes")
class NoisyNodes(PairReg):
    """Args: coord_noise σ in Å (default 0.02), reg_weight λ (default 0.1)."""

    def __init__(self, n_layers: int, hidden: int, coord_noise: float | None = None, reg_weight: float | None = None,
                 backbone: str = "egnn"):
        if backbone in FIXED_POSITIONS:
            raise ValueError(f"mitigation 'noisynodes' on backbone {backbone!r}: Noisy Nodes regresses the last "
                             "layer's positions to the clean input, and this backbone keeps positions fixed")
        super().__init__(
            n_layers, hidden, residual="none", coord_mix="replace", update_coords=True, reg_layers="last",
            reg_target="input", reg_weight=0.1 if reg_weight is None else reg_weight,
            coord_noise=0.02 if coord_noise is None else coord_noise, backbone=backbone,
        )
