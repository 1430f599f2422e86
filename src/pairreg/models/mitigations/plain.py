"""Baselines without a mitigation: the plain EGNN stack and the additive residual."""

from __future__ import annotations

from .base import Mitigation, refuse_additive_skip, register


@register("none")
class NoMitigation(Mitigation):
    """Plain EGNN: each layer's output is the next layer's input, h_l = h̃_l, x_l = x̃_l.

    On PaiNN it is the published model: each PaiNN layer already adds its updates to its input
    (s + Δs, v + Δv), and vector features pass on unchanged, v_l = ṽ_l. So on SEGNN, whose layers add
    their update to their input too (f + φ_f), with the steerable l>0 features f_l = f̃_l.

    Args:
        update_coords: let layers move coordinates (default False: EGNN on QM9 keeps them fixed,
            the targets being invariant).
    """

    def __init__(self, n_layers: int, hidden: int, update_coords: bool | None = None, backbone: str = "egnn"):
        super().__init__(n_layers, hidden, backbone)
        self.refuse_moving_positions(update_coords)
        self.update_coords = bool(update_coords) if update_coords is not None else False

    def combine(self, layer, h_prev, x_prev, h_new, x_new, graph, record):
        return h_new, x_new


@register("residual")
class AdditiveResidual(NoMitigation):
    """Additive residual, h_l = h_{l−1} + h̃_l (as in EGNN's reference code, ``recurrent=True``).

    Refused on PaiNN and SEGNN, whose layers are residual already (a second skip would double the input).

    Args:
        update_coords: as for ``none`` (default False).
    """

    def __init__(self, n_layers: int, hidden: int, update_coords: bool | None = None, backbone: str = "egnn"):
        refuse_additive_skip("mitigation 'residual'", backbone)
        super().__init__(n_layers, hidden, update_coords, backbone)

    def combine(self, layer, h_prev, x_prev, h_new, x_new, graph, record):
        return h_prev + h_new, x_new
