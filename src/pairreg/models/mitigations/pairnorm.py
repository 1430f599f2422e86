"""PairNorm (Zhao & Akoglu, "PairNorm: Tackling Oversmoothing in GNNs", ICLR 2020) on node scalars.

Applied to each layer's output features, per molecule of the batch (x̄ and the norms are
taken over the atoms of one molecule, never across molecules)::

    PN:      x_i ← s · (x_i − x̄) / sqrt(mean_i ‖x_i − x̄‖²)
    PN-SI:   x_i ← s · (x_i − x̄) / ‖x_i − x̄‖
    PN-SCS:  x_i ← s · x_i / ‖x_i‖ − x̄           (scale individually, then centre; as the
                                                 PairNorm authors' code writes it)

PN and PN-SI are PyTorch Geometric's ``PairNorm`` (given the batch vector); PN-SCS is ours.
Coordinates are handled as in the plain stack. Vector features (PaiNN) are not normalised and pass on
as the layer gave them: centring each channel of a vector over a molecule's atoms and dividing by a
norm is fine for scalars, but PairNorm's per-channel statistics over the three components of a vector
would mix them and break rotation equivariance. The same holds for SEGNN's steerable l>0 features: PairNorm
acts on their l=0 part (``LayerState.h``) and f_l = f̃_l.
"""

from __future__ import annotations

from torch_geometric.nn.norm import PairNorm as PyGPairNorm
from torch_geometric.utils import scatter

from .base import Mitigation, register

MODES = ("pn", "pn-si", "pn-scs")


@register("pairnorm")
class PairNormMitigation(Mitigation):
    """PairNorm after every layer: h_l = PairNorm(h̃_l).

    Args:
        pairnorm_mode: ``"pn"`` (default), ``"pn-si"`` or ``"pn-scs"``.
        pairnorm_scale: s > 0 (default 1.0).
        update_coords: let layers move coordinates (default False, as plain EGNN on QM9).
    """

    def __init__(self, n_layers: int, hidden: int, pairnorm_mode: str | None = None,
                 pairnorm_scale: float | None = None, update_coords: bool | None = None, backbone: str = "egnn"):
        super().__init__(n_layers, hidden, backbone)
        self.refuse_moving_positions(update_coords)
        mode = (pairnorm_mode or "pn").lower().replace("_", "-")
        if mode not in MODES:
            raise ValueError(f"pairnorm_mode={pairnorm_mode!r} is not valid; choose one of {list(MODES)}")
        self.mode = mode
        self.scale = 1.0 if pairnorm_scale is None else float(pairnorm_scale)
        if self.scale <= 0:
            raise ValueError(f"pairnorm_scale must be > 0, got {self.scale}")
        self.update_coords = bool(update_coords) if update_coords is not None else False
        self.norm = PyGPairNorm(scale=self.scale, scale_individually=(mode == "pn-si"))

    def extra_repr(self) -> str:
        return f"pairnorm_mode={self.mode}, pairnorm_scale={self.scale}, update_coords={self.update_coords}"

    def normalise(self, h, batch, n_molecules):
        if self.mode == "pn-scs":
            mean = scatter(h, batch, 0, dim_size=n_molecules, reduce="mean")  # (n_mols, H)
            return self.scale * h / (h.norm(dim=-1, keepdim=True) + 1e-5) - mean.index_select(0, batch)
        return self.norm(h, batch, n_molecules)

    def combine(self, layer, h_prev, x_prev, h_new, x_new, graph, record):
        return self.normalise(h_new, graph.batch, graph.n_molecules), x_new
