"""ClofNet: message passing with a complete local frame per edge, and a stack of its layers.

Du, Zhang, Wang, Zhang, Liu & Ma, "SE(3) Equivariant Graph Neural Networks with Complete Local Frames",
ICML 2022. Positions are taken relative to their molecule's mean, x̃_i = x_i − x̄ (x̄ over the atoms of
one molecule of the batch, recomputed from each layer's input positions), and every edge (i, j), message
j → i, gets a frame of three vectors built from the two atoms alone::

    a_ij = (x̃_i − x̃_j) / ‖x̃_i − x̃_j‖                      along the bond (a polar vector)
    b_ij = w_ij / √(‖w_ij‖² + ε²),  w_ij = x̃_i × x̃_j        normal to the plane of i, j and x̄ (a pseudo-vector)
    c_ij = a_ij × b_ij                                        in that plane, perpendicular to the bond

Scalarisation: the centred positions of both atoms projected onto the frame,
s_ij = (⟨x̃_i, a⟩, ⟨x̃_i, c⟩, ⟨x̃_j, a⟩, ⟨x̃_j, c⟩) — invariant under rotations and translations. One layer::

    m_ij = φ_e(h_i, h_j, d²_ij, s_ij [, rbf(d_ij)])          (edge MLP, SiLU; d_ij = ‖x_i − x_j‖ in Å)
    m_ij ← σ(Linear(m_ij)) · m_ij · u_ij                      (soft edge gate; u_ij the cutoff envelope, 1 without)
    x_i' = x_i + C Σ_j u_ij (α_ij a_ij + β_ij b_ij + γ_ij c_ij),  (α, β, γ)_ij = φ_x(m_ij),  C = 1/(N−1)
    h_i' = φ_h(h_i, Σ_j m_ij)                                 (sum aggregation, no additive residual)

φ_x = Linear(H, H) → ``coord_act`` → Linear(H, 3) without bias, its last weights initialised with gain 1e-3
(as EGNN's φ_x here). ``tensorisation`` in the paper's words: the three invariant coefficients become a
vector through the frame. The coordinate update is what makes the network rotation-equivariant rather
than merely invariant.

Symmetry: a and c rotate with the molecule; b, a cross product, is a pseudo-vector — under a reflection R
(det R = −1) it becomes −R b. So a layer that moves coordinates is SE(3)-equivariant but not
reflection-equivariant: its β-term points the other way in the mirror image. The scalars s_ij, however,
are reflection-invariant (b ⊥ x̃_i, x̃_j, and c → R c), because one edge with the molecule's mean is only
three points, which have no handedness. Hence: with coordinate updates off (``mitigation=none`` and the
other mitigations' default ``update_coords=False``) the model's output is E(3)-invariant; it becomes
chirality-sensitive from layer 2 on when layers move coordinates (PairReg, Noisy Nodes, or
``update_coords=True``). tests/test_clofnet.py checks both statements.

Args of :class:`ClofNetLayer` / :class:`ClofNetBackbone` (defaults in brackets):
    hidden: width H of features and messages [128 in the model].
    update_coords: compute the coordinate update [True; the backbone takes ``mitigation.update_coords``].
    coord_act: hidden activation of φ_x, ``"tanh"`` [default, PairReg's] or ``"silu"``.
    n_rbf, rbf, rbf_max_A, cutoff_A: optional distance basis added to φ_e's input, exactly as EGNN's here
        (models/radial.py) [0: off, "gaussian", 10 Å, None]. The radius cutoff itself is applied by the
        model (models/model.py), which passes each edge's envelope u_ij = u(d⁰_ij) of the input distance.
    FRAME_EPS_A2 = ε = 0.1 Å²: smooths the normalisation of b (below).

Departures from the paper and the authors' code, and why:
  * The frame is recomputed from every layer's input positions, and so is s_ij; the authors' code
    scalarises once at the input into edge features shared by all layers and recomputes only the frame for
    the coordinate update. Per-layer scalars let each layer see the geometry it is given, as EGNN's d² does
    here, and keep the layer a drop-in for the mitigations (which may change positions between layers).
  * s_ij omits the projections onto b (identically zero: b ⊥ x̃_i, x̃_j) and the authors' "pseudo-angle"
    (sin, cos between the two coefficient vectors): on an orthonormal frame that angle is a function of
    s_ij, and its √(1 − cos²) has an infinite gradient at cos = ±1, which forces −∂E/∂x would inherit.
  * a is normalised exactly (atoms of a molecule never coincide; d is clamped at 1e-6 Å as in EGNN);
    w = x̃_i × x̃_j vanishes whenever x̃_i ∥ x̃_j (every edge of a diatomic, an atom at the mean, a linear
    molecule), so b = w/√(‖w‖² + ε²) shrinks smoothly to 0 there instead of dividing by zero — the
    authors' code divides by ‖·‖ + 1 for the same reason. ε = 0.1 Å² is our choice: b is within 1 % of a
    unit vector once ‖w‖ > 0.7 Å², and its derivative is at most 1/ε = 10 Å⁻², so forces stay bounded.
  * Messages use EGNN's sum aggregation with a soft edge gate and no LayerNorm; the authors' N-body code
    aggregates with multi-head attention and LayerNorm. The layer is EGNN's (EGCL's message and feature
    update, reused), so comparing the two backbones compares their geometry (the frame), not aggregation.
  * There is no residual inside the layer (the authors add h + φ_h): how layer outputs combine is the
    mitigation's job, so ``mitigation=none`` is the plain stack and ``residual`` the additive one, as on EGNN.
  * Centring uses the plain mean of the positions (no masses), as the authors' code does; any per-molecule
    weighted mean would give the same symmetries. The mean is over the whole molecule, so with a radius
    cutoff the energy is still not local: moving an atom that is beyond r_c of every other atom shifts x̄
    and so every frame.
  * Input features come from the model's atom features through a Linear, and φ_h does not read them again
    (``node_attr`` is EGNN's only), as in the paper's node update.
"""

from __future__ import annotations

import torch
from torch import nn

from ..state import LayerState
from .egnn import EGCL, EGNNBackbone

FRAME_EPS_A2 = 0.1  # Å²: ε in b = w / √(‖w‖² + ε²)
N_FRAME_SCALARS = 4  # ⟨x̃_i, a⟩, ⟨x̃_i, c⟩, ⟨x̃_j, a⟩, ⟨x̃_j, c⟩


def centred_positions(x: torch.Tensor, batch: torch.Tensor, n_molecules: int) -> torch.Tensor:
    """(n_atoms, 3) Å: each atom's position minus its own molecule's mean position (never across molecules)."""
    counts = torch.bincount(batch, minlength=n_molecules).clamp(min=1).to(x.dtype).unsqueeze(-1)  # (n_mols, 1)
    mean = torch.zeros(n_molecules, 3, dtype=x.dtype, device=x.device).index_add_(0, batch, x) / counts
    return x - mean.index_select(0, batch)


def local_frames(x_centred: torch.Tensor, edge_index: torch.Tensor, eps_A2: float = FRAME_EPS_A2):
    """Each edge's frame and the squared distance.

    Args:
        x_centred: (n_atoms, 3) positions relative to their molecule's mean, Å.
        edge_index: (2, n_edges) rows (i, j), message j → i.
    Returns:
        frame (n_edges, 3, 3) whose rows are a_ij, b_ij, c_ij (module docstring); d² (n_edges, 1) Å².
    """
    xi, xj = x_centred.index_select(0, edge_index[0]), x_centred.index_select(0, edge_index[1])
    diff = xi - xj  # (n_edges, 3)
    d2 = (diff * diff).sum(-1, keepdim=True)  # (n_edges, 1) Å²
    a = diff / d2.clamp_min(1e-12).sqrt()
    w = torch.linalg.cross(xi, xj, dim=-1)  # (n_edges, 3) Å², a pseudo-vector
    b = w / ((w * w).sum(-1, keepdim=True) + eps_A2 ** 2).sqrt()
    c = torch.linalg.cross(a, b, dim=-1)
    return torch.stack([a, b, c], dim=1), d2


class ClofNetLayer(EGCL):
    """One ClofNet layer (module docstring for the equations and every argument): EGNN's layer with the frame
    scalars s_ij added to φ_e's input and the coordinate update on the frame. The message and feature
    update are EGCL's own code, so the two backbones differ only in their geometry."""

    def __init__(self, hidden: int, update_coords: bool = True, coord_act: str = "tanh", n_rbf: int = 0,
                 rbf_max_A: float = 10.0, rbf: str = "gaussian", cutoff_A: float | None = None):
        super().__init__(hidden, node_attr_dim=0, update_coords=update_coords, coord_act=coord_act, n_rbf=n_rbf,
                         rbf_max_A=rbf_max_A, rbf=rbf, cutoff_A=cutoff_A)
        self.edge_in_frame = nn.Linear(N_FRAME_SCALARS, hidden, bias=False)  # W_s s_ij in φ_e's first layer
        if update_coords:
            last = nn.Linear(hidden, 3, bias=False)  # (α, β, γ): coefficients of a, b, c
            nn.init.xavier_uniform_(last.weight, gain=1e-3)
            self.coord_mlp[-1] = last
        # φ_e's first layer starts like one nn.Linear on [h_i ‖ h_j ‖ d² ‖ s_ij ‖ basis] would, except the basis
        # weights, which keep their own Linear's wider default (as EGNN's: backbones/egnn.py)
        bound = 1.0 / (2 * hidden + 1 + N_FRAME_SCALARS + n_rbf) ** 0.5
        for p in (self.edge_in_i.weight, self.edge_in_i.bias, self.edge_in_j.weight, self.edge_in_d2,
                  self.edge_in_frame.weight):
            nn.init.uniform_(p, -bound, bound)

    def forward(self, h, x, edge_index, inv_deg, batch, n_molecules: int, edge_weight=None):
        """
        Args:
            h: (n_atoms, H) invariant features; x: (n_atoms, 3) positions, Å
            edge_index: (2, n_edges) rows (i, j), message j → i
            inv_deg: (n_atoms, 1) C = 1/(N−1) of each atom's molecule
            batch: (n_atoms,) molecule index; n_molecules: their number
            edge_weight: (n_edges, 1) cutoff envelope u(d⁰_ij), or None (complete graph)
        Returns:
            h' (n_atoms, H), x' (n_atoms, 3)
        """
        i, j = edge_index[0], edge_index[1]
        xc = centred_positions(x, batch, n_molecules)
        frame, d2 = local_frames(xc, edge_index)  # (n_edges, 3, 3), (n_edges, 1)
        proj_i = torch.einsum("ekd,ed->ek", frame, xc.index_select(0, i))  # (n_edges, 3) on a, b, c
        proj_j = torch.einsum("ekd,ed->ek", frame, xc.index_select(0, j))
        scalars = torch.cat([proj_i[:, 0::2], proj_j[:, 0::2]], dim=-1)  # (n_edges, 4) s_ij; the b-parts are 0
        m = self.messages(h, edge_index, d2, edge_weight, extra=self.edge_in_frame(scalars))  # (n_edges, H)
        h_new = self.update_features(h, m, i)
        if not self.update_coords:
            return h_new, x
        coef = self.coord_mlp(m)  # (n_edges, 3) α, β, γ
        if edge_weight is not None:
            coef = coef * edge_weight  # φ_x(0) ≠ 0: switch the coordinate term off at the cutoff too
        vec = torch.einsum("ek,ekd->ed", coef, frame)  # (n_edges, 3) α a + β b + γ c
        shift = torch.zeros_like(x).index_add_(0, i, vec)
        return h_new, x + shift * inv_deg

    def gate_scalars(self, state: LayerState, graph) -> torch.Tensor:
        """(n_atoms, H) this layer's features for a state: how G2 runs a gate layer (no coordinate update)."""
        ones = torch.ones(len(state.h), 1, dtype=state.h.dtype, device=state.h.device)
        h, _ = self(state.h, state.x, graph.edge_index, ones, graph.batch, graph.n_molecules, graph.edge_weight)
        return h


class ClofNetBackbone(EGNNBackbone):
    """A stack of ``n_layers`` ClofNet layers joined by a mitigation (``mitigation=none``: the plain stack).

    Args: ``n_layers``, ``hidden``, ``mitigation`` (built for ``backbone="clofnet"``), and the layer options
    ``coord_act``, ``n_rbf``, ``rbf_max_A``, ``rbf``, ``cutoff_A`` (module docstring). The forward pass is
    EGNN's (the same interface and record); only each layer's call differs.
    """

    def __init__(self, n_layers: int, hidden: int, mitigation, coord_act: str = "tanh", n_rbf: int = 0,
                 rbf_max_A: float = 10.0, rbf: str = "gaussian", cutoff_A: float | None = None):
        nn.Module.__init__(self)  # not EGNNBackbone's: it would build EGCLs
        self.mitigation = mitigation
        options = dict(coord_act=coord_act, n_rbf=n_rbf, rbf_max_A=rbf_max_A, rbf=rbf, cutoff_A=cutoff_A)
        self.layers = nn.ModuleList(
            ClofNetLayer(hidden, update_coords=mitigation.update_coords, **options) for _ in range(n_layers)
        )
        mitigation.attach_layers(lambda: ClofNetLayer(hidden, update_coords=False, **options))  # G2's gates

    def layer_step(self, layer, state, edge_index, inv_deg, graph, node_attr):
        return layer(state.h, state.x, edge_index, inv_deg, graph.batch, graph.n_molecules, graph.edge_weight)
