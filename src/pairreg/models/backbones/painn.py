"""PaiNN: polarizable atom interaction neural network, and a stack of its layers.

Schütt, Unke & Gastegger, "Equivariant message passing for the prediction of tensorial properties
and molecular spectra", ICML 2021. Every atom carries invariant scalars s_i ∈ R^F and equivariant
vectors v_i ∈ R^{3×F} (v_i = 0 at the input). One layer is a message block then an update block,
each adding to its input (the paper's Eqs. 7–12; ∘ is the element-wise product, r_ij = x_j − x_i):

    message:  [Δs | Δv_v | Δv_s]_ij = φ(s_j) ∘ W(‖r_ij‖)              φ: Linear → SiLU → Linear(F, 3F)
              s_i ← s_i + Σ_j Δs_ij                                    W: Linear(rbf(‖r_ij‖), 3F) · f_cut
              v_i ← v_i + Σ_j (v_j ∘ Δv_v,ij + Δv_s,ij · r_ij/‖r_ij‖)
    update:   U v_i, V v_i  (channel-mixing Linear(F, F) without bias, applied to each of x, y, z)
              [a_vv | a_sv | a_ss] = a(s_i, ‖V v_i‖)                    a: Linear(2F) → SiLU → Linear(F, 3F)
              v_i ← v_i + a_vv ∘ U v_i
              s_i ← s_i + a_sv ∘ ⟨U v_i, V v_i⟩ + a_ss

rbf: the paper's sin(nπd/r_c)/d, n = 1 … n_rbf (20 in the paper; ``rbf="bessel"`` here, without
DimeNet's envelope) or the Gaussians of models/radial.py; f_cut the cosine cutoff ½(cos(πd/r_c) + 1),
r_c = ``cutoff_A`` (5 Å in the paper). Sums run over the radius graph the model builds from r_c.

Differences from the paper, each a consequence of the rest of `pairreg`:
  * Input scalars come from the model's atom features (one-hot × powers of Z) through a Linear, not
    a learned embedding table — the same function of the element, shared by every backbone.
  * How one layer's output becomes the next layer's input is the mitigation's job, as for EGNN;
    ``mitigation=none`` is the published stack (the residual additions above are inside the layer,
    so ``residual`` is refused: it would add the input a second time). PairReg averages vector
    features where it averages EGNN's coordinates (models/mitigations/pairreg.py).
  * ‖V v_i‖ is √(Σ_xyz (V v_i)² + ε), ε = 1e-8, so its gradient exists at v = 0 (every atom's input).
  * Positions never move (``LayerState.x`` is the input throughout); the readout is the model's
    (models/model.py), not PaiNN's atom-wise MLP and sum alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..radial import BesselBasis, GaussianBasis, cosine_cutoff
from ..state import LayerRecord, LayerState

NORM_EPS = 1e-8  # Å-free: inside the square root of ‖V v‖²


@dataclass
class EdgeGeometry:
    """Per-edge quantities of the (fixed) input positions, computed once per forward pass."""

    receiver: torch.Tensor  # (n_edges,) i
    sender: torch.Tensor  # (n_edges,) j
    basis: torch.Tensor  # (n_edges, n_rbf) rbf(‖r_ij‖)
    unit: torch.Tensor  # (n_edges, 3) r_ij / ‖r_ij‖
    cutoff: torch.Tensor  # (n_edges, 1) f_cut(‖r_ij‖)


class PaiNNLayer(nn.Module):
    """One PaiNN interaction: message block then update block (module docstring).

    Args:
        hidden: feature width F of scalars and of each vector component (paper: 128).
        n_rbf: number of radial basis functions the filters read (paper: 20).
    """

    def __init__(self, hidden: int, n_rbf: int):
        super().__init__()
        self.hidden = hidden
        self.phi = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3 * hidden))
        self.filter = nn.Linear(n_rbf, 3 * hidden)
        self.vec_u = nn.Linear(hidden, hidden, bias=False)  # U (no bias: a bias on vectors breaks equivariance)
        self.vec_v = nn.Linear(hidden, hidden, bias=False)  # V
        self.update_mlp = nn.Sequential(nn.Linear(2 * hidden, hidden), nn.SiLU(), nn.Linear(hidden, 3 * hidden))

    def forward(self, s: torch.Tensor, v: torch.Tensor, edges: EdgeGeometry):
        """
        Args:
            s: (n_atoms, F) scalars; v: (n_atoms, 3, F) vectors; edges: the graph's geometry.
        Returns:
            s̃ (n_atoms, F), ṽ (n_atoms, 3, F).
        """
        F = self.hidden
        i, j = edges.receiver, edges.sender
        # message block
        x = self.phi(s).index_select(0, j) * (self.filter(edges.basis) * edges.cutoff)  # (n_edges, 3F)
        ds, dv_v, dv_s = x.split(F, dim=-1)  # each (n_edges, F)
        dv = v.index_select(0, j) * dv_v.unsqueeze(1) + edges.unit.unsqueeze(-1) * dv_s.unsqueeze(1)  # (n_edges, 3, F)
        s = s + torch.zeros_like(s).index_add_(0, i, ds)
        v = v + torch.zeros_like(v).index_add_(0, i, dv)
        # update block
        uv, vv = self.vec_u(v), self.vec_v(v)  # (n_atoms, 3, F)
        vv_norm = torch.sqrt((vv * vv).sum(1) + NORM_EPS)  # (n_atoms, F)
        a_vv, a_sv, a_ss = self.update_mlp(torch.cat([s, vv_norm], dim=-1)).split(F, dim=-1)  # each (n_atoms, F)
        v = v + a_vv.unsqueeze(1) * uv
        s = s + a_sv * (uv * vv).sum(1) + a_ss
        return s, v

    def gate_scalars(self, state: LayerState, graph) -> torch.Tensor:
        """(n_atoms, F) this layer's scalar output for a state: how G2 runs a gate layer."""
        s, _ = self(state.h, state.v, graph.edges)
        return s


class PaiNNBackbone(nn.Module):
    """A stack of ``n_layers`` PaiNN layers joined by a mitigation (``mitigation=none``: the published model).

    Args:
        n_layers: interaction blocks (paper: 3 for rMD17/QM9).
        hidden: width F (paper: 128).
        mitigation: built for ``backbone="painn"`` (models/mitigations).
        n_rbf: radial basis size (paper: 20).
        cutoff_A: r_c in Å of the cosine cutoff and of the basis (paper: 5 Å).
        rbf: ``"bessel"`` (the paper's sin(nπd/r_c)/d) or ``"gaussian"`` (centres 0 … rbf_max_A).
        rbf_max_A: Gaussians only: the last centre, Å.
    """

    def __init__(self, n_layers: int, hidden: int, mitigation, n_rbf: int = 20, cutoff_A: float = 5.0,
                 rbf: str = "bessel", rbf_max_A: float = 5.0):
        super().__init__()
        if n_rbf < 1:
            raise ValueError("backbone 'painn' needs n_rbf >= 1 radial basis functions (the paper uses 20)")
        if cutoff_A is None or cutoff_A <= 0:
            raise ValueError("backbone 'painn' needs cutoff_A > 0 Å, its cosine cutoff (the paper uses 5 Å)")
        self.hidden = hidden
        self.cutoff_A = float(cutoff_A)
        self.mitigation = mitigation
        if rbf == "bessel":
            self.rbf = BesselBasis(n_rbf, cutoff_A, envelope=False)
        elif rbf == "gaussian":
            self.rbf = GaussianBasis(n_rbf, rbf_max_A)
        else:
            raise ValueError(f"rbf={rbf!r} is not valid; choose one of ['bessel', 'gaussian']")
        self.layers = nn.ModuleList(PaiNNLayer(hidden, n_rbf) for _ in range(n_layers))
        mitigation.attach_layers(lambda: PaiNNLayer(hidden, n_rbf))  # G2's gate layers

    def edge_geometry(self, x: torch.Tensor, edge_index: torch.Tensor) -> EdgeGeometry:
        i, j = edge_index[0], edge_index[1]
        r = x.index_select(0, j) - x.index_select(0, i)  # (n_edges, 3) Å, r_ij = x_j − x_i
        dist = (r * r).sum(-1, keepdim=True).clamp_min(1e-12).sqrt()  # (n_edges, 1) Å; > 0 off the diagonal
        return EdgeGeometry(i, j, self.rbf(dist), r / dist, cosine_cutoff(dist, self.cutoff_A))

    def forward(self, h, x, edge_index, inv_deg, graph, node_attr=None):
        """The model's backbone interface (``inv_deg`` and ``node_attr`` are EGNN's and unused here).

        Returns the last layer's scalars, the (unchanged) positions and the :class:`LayerRecord`, whose
        ``v`` holds every layer's vector features.
        """
        record = LayerRecord(x_input=x)
        h, x = self.mitigation.begin(h, x, graph)
        graph.edges = self.edge_geometry(x, edge_index)
        state = LayerState(h, x, h.new_zeros(h.shape[0], 3, self.hidden))
        record.append(state.h, state.x, state.v)
        for layer_idx, layer in enumerate(self.layers):
            s_new, v_new = layer(state.h, state.v, graph.edges)
            state = self.mitigation.combine_state(layer_idx, state, LayerState(s_new, state.x, v_new), graph, record)
            record.append(state.h, state.x, state.v)
        return state.h, state.x, record
