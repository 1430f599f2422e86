"""Baselines without a mitigation: the plain EGNN stack and the additive residual."""

from __future__ import annotations

from .base import Mitigation, register


@register("none")
class NoMitigation(Mitigation):
    """Plain EGNN: each layer's output is the next layer's input, h_l = h̃_l, x_l = x̃_l.

    Args:
        update_coords: let layers move coordinates (default False: EGNN on QM9 keeps them fixed,
            the targets being invariant).
    """

    def __init__(self, n_layers: int, hidden: int, update_coords: bool | None = None):
        super().__init__(n_layers, hidden)
        self.update_coords = bool(update_coords) if update_coords is not None else False

    def combine(self, layer, h_prev, x_prev, h_new, x_new, graph, record):
        return h_new, x_new


@register("residual")
class AdditiveResidual(NoMitigation):
    """Additive residual, h_l = h_{l−1} + h̃_l (as in EGNN's reference code, ``recurrent=True``).

    Args:
        update_coords: as for ``none`` (default False).
    """

    def combine(self, layer, h_prev, x_prev, h_new, x_new, graph, record):
        return h_prev + h_new, x_new
