"""EGNN's equivariant graph convolutional layer and a stack of them.

Satorras, Hoogeboom & Welling, "E(n) Equivariant Graph Neural Networks", ICML 2021.
Fully connected variant, for atoms i, j of one molecule::

    m_ij = φ_e(h_i, h_j, ‖x_i − x_j‖²)                 (edge MLP, SiLU)
    e_ij = σ(Linear(m_ij)),   m_ij ← e_ij · m_ij        (soft edges)
    x̃_i  = x_i + C Σ_{j≠i} (x_i − x_j) φ_x(m_ij),  C = 1/(N−1)
    h̃_i  = φ_h(h_i, Σ_{j≠i} m_ij [, a_i])              (sum aggregation, no additive residual)

Departures and choices, each documented in docs/method.md:
  * The gate multiplies the message before φ_x and the sum, as EGNN's reference code does.
  * φ_x = Linear → tanh → Linear(·, 1) without bias, last layer initialised with gain 1e-3
    (the tanh hidden activation is PairReg's; the small init is EGNN's).
  * φ_e's first Linear on [h_i ‖ h_j ‖ d²] is split into W_i h_i + W_j h_j + w d² and the
    two node terms are computed per atom before gathering to edges: the same function, with
    ~N−1 times fewer multiply-adds for the widest matrix product.
  * There is no residual inside the layer: how layer outputs combine is the mitigation's job
    (models/mitigations), so "none" is the plain stack and "residual" the additive one.
  * Optional, off by default and not part of EGNN or PairReg: ``n_rbf`` radial basis functions of
    the distance ‖x_i − x_j‖ added to φ_e's input beside d² — SchNet-style Gaussians or DimeNet's
    Bessel functions with a smooth cutoff envelope (models/radial.py). On rMD17, where every frame
    has the same atoms, raw d² alone barely moves the output at initialisation and fits forces
    slowly at lr 1e-3 (our one recorded d²-only CPU run stayed at the mean predictor); the basis
    resolves small bond-length changes (docs/results.md).
  * Optional radius cutoff (``cutoff_A``; the model builds the graph, models/model.py): only pairs
    closer than r_c are edges, and the model passes each edge's envelope weight w_ij = u(d⁰_ij)
    (models/radial.py, d⁰ the input distance the graph was built from). The layer then uses
    m_ij ← w_ij · m_ij in the sum and w_ij · (x_i − x_j) φ_x(m_ij) in the coordinate update (φ_x(0) ≠ 0,
    so the message alone is not enough). d² and h_j are not zero at r_c, so without w the energy would
    jump as a pair crosses the cutoff; with it, every layer's contribution of that pair vanishes
    smoothly there. w uses the input distances, not each layer's updated ones, because the graph is
    fixed from the input: a layer-wise u(d_l) could be non-zero for a pair just entering the graph.
    C stays 1/(N−1) of the whole molecule, not 1/degree, so it does not jump either.
"""

from __future__ import annotations

import torch
from torch import nn

from ..state import LayerRecord, LayerState  # noqa: F401  (LayerRecord: re-exported)
from ..radial import build_basis


COORD_INITS = ("egnn", "authors")  # φ_x's last layer: EGNN's near-zero start, or the PairReg authors' default


class EGCL(nn.Module):
    """One E(n)-equivariant graph convolutional layer.

    Args:
        hidden: width H of node features and messages (default EGNN: 128).
        node_attr_dim: width of static node attributes a_i concatenated into φ_h (EGNN's QM9
            model feeds the input features again; 0 disables).
        update_coords: compute x̃ (True) or return x unchanged (False, EGNN on QM9).
        coord_act: hidden activation of φ_x, ``"tanh"`` (PairReg) or ``"silu"`` (EGNN).
        n_rbf: number of radial basis functions of the distance fed to φ_e (0: EGNN's d² only).
        rbf_max_A: Gaussians: the last centre in Å; centres are evenly spaced from 0, width = spacing.
        rbf: ``"gaussian"`` (default) or ``"bessel"`` (models/radial.py).
        cutoff_A: Bessel: r_c in Å (required). The graph cutoff itself is applied by the model, which
            passes the envelope weights to :meth:`forward`.
        coord_init: φ_x's last layer, ``"egnn"`` (default: no bias, Xavier gain 1e-3, so coordinates barely
            move at first, as EGNN's code) or ``"authors"`` (the PairReg authors' scripts: with a bias and
            PyTorch's default init, so coordinates move from the first step; docs/method.md §3).
    """

    def __init__(self, hidden: int, node_attr_dim: int = 0, update_coords: bool = True, coord_act: str = "tanh",
                 n_rbf: int = 0, rbf_max_A: float = 10.0, rbf: str = "gaussian", cutoff_A: float | None = None,
                 coord_init: str = "egnn"):
        super().__init__()
        self.hidden = hidden
        self.update_coords = update_coords
        self.edge_in_i = nn.Linear(hidden, hidden)  # W_i h_i + b  (part of φ_e's first layer)
        self.edge_in_j = nn.Linear(hidden, hidden, bias=False)  # W_j h_j
        self.edge_in_d2 = nn.Parameter(torch.empty(hidden))  # w · d²_ij
        self.n_rbf = n_rbf
        if n_rbf:
            self.rbf = build_basis(rbf, n_rbf, rbf_max_A, cutoff_A)  # (n_edges, 1) Å → (n_edges, n_rbf)
            self.edge_in_rbf = nn.Linear(n_rbf, hidden, bias=False)
        self.edge_out = nn.Linear(hidden, hidden)
        self.gate = nn.Linear(hidden, 1)
        self.node_mlp = nn.Sequential(nn.Linear(2 * hidden + node_attr_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        if coord_init not in COORD_INITS:
            raise ValueError(f"coord_init={coord_init!r} is not valid; choose one of {list(COORD_INITS)}")
        if update_coords and coord_init == "authors":
            last = nn.Linear(hidden, 1)  # bias and PyTorch's default init, as the authors' coord_mlp
        elif update_coords:
            last = nn.Linear(hidden, 1, bias=False)
            nn.init.xavier_uniform_(last.weight, gain=1e-3)
        if update_coords:
            act = {"tanh": nn.Tanh(), "silu": nn.SiLU()}[coord_act]
            self.coord_mlp = nn.Sequential(nn.Linear(hidden, hidden), act, last)
        # Initialise the split first layer like one nn.Linear(2H + 1 + n_rbf, H) on [h_i ‖ h_j ‖ d² ‖ basis]
        # would be: uniform in ±1/√(fan-in of the whole layer) — except the basis weights, which keep their
        # own Linear's default, ±1/√n_rbf (about 3× wider at H = 64, n_rbf = 16). Measured: with the joint
        # bound for them too, ethanol forces after 3 minutes were 197 meV/Å against 148 with their own
        # (docs/results.md, "Recipe search"); the distance features must move the output from the start.
        bound = 1.0 / (2 * hidden + 1 + n_rbf) ** 0.5
        for p in (self.edge_in_i.weight, self.edge_in_i.bias, self.edge_in_j.weight, self.edge_in_d2):
            nn.init.uniform_(p, -bound, bound)

    def forward(self, h, x, edge_index, inv_deg, node_attr=None, edge_weight=None):
        """
        Args:
            h: (n_atoms, H) invariant features; x: (n_atoms, 3) coordinates in Å
            edge_index: (2, n_edges) rows (i, j), message j → i
            inv_deg: (n_atoms, 1) C = 1/(N−1) of each atom's molecule
            node_attr: (n_atoms, A) or None
            edge_weight: (n_edges, 1) cutoff envelope u(d⁰_ij) multiplying each message, or None (complete graph)
        Returns:
            h̃ (n_atoms, H), x̃ (n_atoms, 3)
        """
        i, j = edge_index[0], edge_index[1]
        # index_select, not x[i]: its backward is a fast index_add, advanced indexing's is a slow index_put
        diff = x.index_select(0, i) - x.index_select(0, j)  # (n_edges, 3)
        d2 = (diff * diff).sum(-1, keepdim=True)  # (n_edges, 1) Å²
        m = self.messages(h, edge_index, d2, edge_weight)  # (n_edges, H)
        h_new = self.update_features(h, m, i, node_attr)  # (n_atoms, H)
        if not self.update_coords:
            return h_new, x
        coord = self.coord_mlp(m)  # (n_edges, 1)
        if edge_weight is not None:
            coord = coord * edge_weight  # φ_x(0) ≠ 0: switch the coordinate term off too
        shift = torch.zeros_like(x).index_add_(0, i, diff * coord)  # (n_atoms, 3)
        return h_new, x + shift * inv_deg

    def messages(self, h, edge_index, d2, edge_weight=None, extra=None) -> torch.Tensor:
        """(n_edges, H) gated messages m_ij from features, squared distances d2 (n_edges, 1) Å² and the cutoff
        envelope; ``extra`` (n_edges, H) adds more edge terms to φ_e's first layer (ClofNet's frame scalars)."""
        i, j = edge_index[0], edge_index[1]
        pre = torch.addcmul(self.edge_in_j(h).index_select(0, j), d2, self.edge_in_d2)  # (n_edges, H) W_j h_j + w d²
        pre = pre + self.edge_in_i(h).index_select(0, i)  # (n_edges, H) + W_i h_i + b
        if extra is not None:
            pre = pre + extra
        if self.n_rbf:
            dist = d2.clamp_min(1e-12).sqrt()  # (n_edges, 1) Å
            pre = pre + self.edge_in_rbf(self.rbf(dist))  # + W_rbf basis(d)
        m = nn.functional.silu(self.edge_out(nn.functional.silu(pre)))  # (n_edges, H)
        m = m * torch.sigmoid(self.gate(m))  # (n_edges, H) soft edges
        if edge_weight is not None:
            m = m * edge_weight  # switched off smoothly at the cutoff
        return m

    def update_features(self, h, m, receiver, node_attr=None) -> torch.Tensor:
        """(n_atoms, H) h̃ = φ_h(h, Σ_j m_ij [, a]) (sum of the messages at their receivers)."""
        agg = torch.zeros_like(h).index_add_(0, receiver, m)  # (n_atoms, H)
        parts = [h, agg] if node_attr is None else [h, agg, node_attr]
        return self.node_mlp(torch.cat(parts, dim=-1))

    def gate_scalars(self, state, graph) -> torch.Tensor:
        """(n_atoms, H) this layer's features from a :class:`LayerState`, positions unused by the caller: how
        G2 runs a gate layer (C is irrelevant without a coordinate update)."""
        ones = torch.ones(len(state.h), 1, dtype=state.h.dtype, device=state.h.device)
        h, _ = self(state.h, state.x, graph.edge_index, ones, graph.node_attr, graph.edge_weight)
        return h


class EGNNBackbone(nn.Module):
    """A stack of ``n_layers`` EGCLs; after each, the mitigation combines (h, x) with the previous pair.

    The forward pass returns the last layer's (h, x) and a :class:`LayerRecord` of every layer,
    which the mitigation's extra loss and the oversmoothing diagnostics read.
    """

    def __init__(self, n_layers: int, hidden: int, mitigation, node_attr_dim: int = 0, coord_act: str = "tanh",
                 n_rbf: int = 0, rbf_max_A: float = 10.0, rbf: str = "gaussian", cutoff_A: float | None = None,
                 coord_init: str = "egnn"):
        super().__init__()
        self.mitigation = mitigation
        # one place for what every EGCL of the model sees (edge features, node attributes)
        options = dict(node_attr_dim=node_attr_dim, coord_act=coord_act, n_rbf=n_rbf, rbf_max_A=rbf_max_A, rbf=rbf,
                       cutoff_A=cutoff_A)
        self.layers = nn.ModuleList(
            EGCL(hidden, update_coords=mitigation.update_coords, coord_init=coord_init, **options)
            for _ in range(n_layers)
        )
        # a mitigation's own EGCLs (G2's gates) are built like these layers, with coordinate updates off
        mitigation.attach_layers(lambda: EGCL(hidden, update_coords=False, **options))

    def layer_step(self, layer, state, edge_index, inv_deg, graph, node_attr):
        """One layer's output (h̃, x̃) from the current state; a backbone whose layers read more of the graph
        (ClofNet: each molecule's mean) overrides this and inherits the rest of the forward pass."""
        return layer(state.h, state.x, edge_index, inv_deg, node_attr, graph.edge_weight)

    def forward(self, h, x, edge_index, inv_deg, graph, node_attr=None):
        record = LayerRecord(x_input=x)
        h, x = self.mitigation.begin(h, x, graph)
        state = LayerState(h, x)
        record.append(state.h, state.x)
        for layer_idx, layer in enumerate(self.layers):
            h_new, x_new = self.layer_step(layer, state, edge_index, inv_deg, graph, node_attr)
            state = self.mitigation.combine_state(layer_idx, state, LayerState(h_new, x_new), graph, record)
            record.append(state.h, state.x)
        return state.h, state.x, record
