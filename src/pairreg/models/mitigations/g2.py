"""G2, gradient gating (Rusch, Chamberlain, Mahoney, Bronstein & Mishra, ICLR 2023), with EGCLs.

A second EGCL per layer (its own weights, features only) gives rates τ̂; the per-channel gate is
the graph gradient of τ̂ on the molecule's complete graph. In a model, the gate EGCLs are built by
the backbone like its own layers (``attach_layers``), so they read the same edge features (e.g. the
``n_rbf`` distance basis) and node attributes as the main layers::

    τ̂ = σ(EGCL_gate,l(h_{l−1}, x_{l−1}))
    τ_ik = tanh( A_{j≠i} |τ̂_jk − τ̂_ik|^p )          A = Σ (paper) or mean (authors' code)
    h_l = (1 − τ) ⊙ h_{l−1} + τ ⊙ σ(h̃_l)

σ is ReLU, as in the G2 paper. Identical τ̂ over a molecule gives τ = 0 and h_l = h_{l−1}.

On PaiNN the gates are PaiNN layers (their scalar output gives τ̂), and the same per-channel τ, an
invariant, gates the vector features: v_l = (1 − τ) ⊙ v_{l−1} + τ ⊙ ṽ_l (no σ on vectors: a ReLU of
a vector's components would break rotation equivariance).

On SEGNN the gates are SEGNN layers (τ̂ from their l=0 output) and τ gates the scalars as above. Its l>0
channels do not correspond one to one to the scalar channels (m_l < H of them per degree), so they share
one invariant rate per atom, the mean of τ over the channels:

    τ̄_i = mean_k τ_ik,     f_l = (1 − τ̄) f_{l−1} + τ̄ f̃_l      (every l>0 component of atom i; no σ)

An invariant factor per atom keeps f equivariant, and τ = 0 still keeps the previous layer.
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.egnn import EGCL
from .base import LayerState, Mitigation, register


@register("g2")
class GradientGating(Mitigation):
    """Gradient gating.

    Args:
        g2_p: exponent p ≥ 1 of the gradient (default 2).
        g2_aggregation: ``"sum"`` over neighbours (default, the paper's equation) or ``"mean"``
            (the authors' code).
        update_coords: let layers move coordinates (default False).
    """

    def __init__(self, n_layers: int, hidden: int, g2_p: float | None = None, g2_aggregation: str | None = None,
                 update_coords: bool | None = None, backbone: str = "egnn"):
        super().__init__(n_layers, hidden, backbone)
        self.refuse_moving_positions(update_coords)
        self.p = 2.0 if g2_p is None else float(g2_p)
        if self.p < 1:
            raise ValueError(f"g2_p must be >= 1, got {self.p}")
        self.aggregation = (g2_aggregation or "sum").lower()
        if self.aggregation not in ("sum", "mean"):
            raise ValueError(f"g2_aggregation={g2_aggregation!r} is not valid; choose one of ['sum', 'mean']")
        self.update_coords = bool(update_coords) if update_coords is not None else False
        # bare gates for use on its own; a backbone rebuilds them like its layers (attach_layers)
        self.attach_layers(lambda: EGCL(hidden, update_coords=False))  # EGCL.gate_scalars runs them

    def attach_layers(self, make_layer) -> None:
        self.gates = nn.ModuleList(make_layer() for _ in range(self.n_layers))

    def extra_repr(self) -> str:
        return f"g2_p={self.p}, g2_aggregation={self.aggregation}, update_coords={self.update_coords}"

    def rates(self, tau_hat, edge_index, edge_weight=None):
        """(n_atoms, H) τ in [0, 1) from per-atom rates τ̂ over each molecule's edges.

        With a radius cutoff, ``edge_weight`` (n_edges, 1) is each edge's envelope: terms and degrees are
        weighted by it, so τ does not jump as a pair crosses the cutoff."""
        i, j = edge_index[0], edge_index[1]
        grad = (tau_hat.index_select(0, j) - tau_hat.index_select(0, i)).abs() ** self.p  # (n_edges, H)
        if edge_weight is not None:
            grad = grad * edge_weight
        agg = torch.zeros_like(tau_hat).index_add_(0, i, grad)  # (n_atoms, H)
        if self.aggregation == "mean":
            if edge_weight is None:
                deg = torch.bincount(i, minlength=len(tau_hat)).to(tau_hat.dtype).unsqueeze(-1)
            else:
                deg = torch.zeros(len(tau_hat), 1, dtype=tau_hat.dtype, device=tau_hat.device).index_add_(0, i, edge_weight)
            agg = agg / deg.clamp(min=1)
        return torch.tanh(agg)

    def gate(self, layer: int, prev: LayerState, graph) -> torch.Tensor:
        """(n_atoms, H) τ of layer ``layer`` from its input state."""
        tau_hat = self.gates[layer].gate_scalars(prev, graph)
        return self.rates(torch.relu(tau_hat), graph.edge_index, graph.edge_weight)

    def combine(self, layer, h_prev, x_prev, h_new, x_new, graph, record):
        tau = self.gate(layer, LayerState(h_prev, x_prev), graph)
        return (1 - tau) * h_prev + tau * torch.relu(h_new), x_new

    def combine_state(self, layer, prev, new, graph, record):
        if new.v is None and new.f is None:
            return super().combine_state(layer, prev, new, graph, record)
        tau = self.gate(layer, prev, graph)  # (n_atoms, H), one τ for a channel's scalar and its vector
        h = (1 - tau) * prev.h + tau * torch.relu(new.h)
        v = None if new.v is None else (1 - tau).unsqueeze(1) * prev.v + tau.unsqueeze(1) * new.v  # (n_atoms, 3, H)
        f = None
        if new.f is not None:  # SEGNN's l>0 features: one rate per atom (module docstring)
            tau_atom = tau.mean(-1, keepdim=True)  # (n_atoms, 1)
            f = (1 - tau_atom) * prev.f + tau_atom * new.f  # (n_atoms, D)
        return LayerState(h, new.x, v, f)
