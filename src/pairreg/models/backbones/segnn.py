"""SEGNN: steerable E(3)-equivariant graph neural network, and a stack of its layers.

Brandstetter, Hesselink, van der Pol, Bekkers & Welling, "Geometric and Physical Quantities Improve E(3)
Equivariant Message Passing", ICLR 2022. Every atom carries one steerable feature vector f_i, a direct sum
of irreducible representations of O(3) (e3nn's ``Irreps``)::

    f_i = h_i ⊕ f_i⁽¹⁾ ⊕ … ⊕ f_i⁽ᴸ⁾          h_i: H scalars (0e); f_i⁽ˡ⁾: m_l channels of degree l, parity (−1)^l
    m_l = max(1, H // (2l + 1))              so each degree carries about as many numbers as the H scalars

L = ``l_max`` (1 or 2 in the tests; at most 3), H = ``hidden``. At H = 64: 64x0e + 21x1o (+ 12x2e at L = 2).
Geometry enters through attributes, spherical harmonics Y = (Y⁰, …, Yᴸ) of unit vectors (e3nn, "component"
normalisation: Y⁰ = 1, ‖Yˡ‖² = 2l + 1), r_ij = x_j − x_i::

    a_ij = Y(r_ij / ‖r_ij‖)                                   edge attribute
    a_i  = C Σ_{j≠i} w_ij a_ij,   C = 1/(N − 1)               node attribute: the mean of its edges' a_ij

A steerable linear layer conditioned on an attribute a is W_a(f) = the Clebsch–Gordan tensor product f ⊗ a
with one learned weight per path (l_f, l_a → l_out) and pair of input/output channels (e3nn's
``FullyConnectedTensorProduct``: every path parity allows, outputs up to L). The gated nonlinearity σ_g
takes W's output [scalars ‖ gates ‖ l>0 channels] to [SiLU(scalars) ‖ sigmoid(gate_c) · channel_c], one
gate scalar per l>0 channel c: an invariant factor, so σ_g commutes with rotations and reflections.
One layer (the paper's message and update functions, each a two-layer steerable MLP)::

    embedding:  f_i ← W^emb_{a_i}(h_i)                                  h_i: the model's atom embedding, H scalars
    message:    m_ij = σ_g(W^m2_{a_ij}(σ_g(W^m1_{a_ij}(f_i ‖ f_j ‖ ‖r_ij‖² [‖ rbf(‖r_ij‖)]))))
    aggregate:  M_i  = Σ_{j≠i} w_ij m_ij
    update:     f_i ← f_i + W^u2_{a_i}(σ_g(W^u1_{a_i}(f_i ‖ M_i)))       (no σ_g after the last layer of φ_f)
    normalise:  f_i ← InstanceNorm(f_i) over the atoms of i's molecule    (the paper's QM9 models: ``--norm=instance``)

rbf is an optional radial basis (``n_rbf`` > 0; Gaussians or Bessel functions, models/radial.py), extra invariant
scalars of the message input as in EGNN's φ_e here. The paper has none (its messages see the squared distance
only); force fields need a finer view of bond lengths than one scalar gives (docs/results.md: SEGNN on rMD17).

The instance norm (:class:`SteerableInstanceNorm`) centres each scalar channel over the molecule's atoms and
divides it by its root mean square there; each l>0 channel c is divided by the root mean square over the atoms
of its norm ‖f_ic‖/√(2l+1), which is invariant, so the norm commutes with rotations and reflections; then a learned
scale per channel (and a bias per scalar channel). It is what keeps a sum over a complete graph's ~17 neighbours
(QM9) from multiplying the features layer after layer. Its statistics run over the whole molecule, so even with
``cutoff_A`` an atom's features depend (smoothly) on atoms beyond the cutoff, as in the paper's model.

The graph is the complete graph of each molecule (default, w_ij = 1), or with ``cutoff_A`` the model's
radius graph, w_ij = u(d⁰_ij) its smooth envelope (models/radial.py), so that a pair crossing the cutoff
changes neither the energy nor the forces abruptly. Positions never move (as in SEGNN's molecular models):
``LayerState.x`` is the input throughout, and the sums read the input geometry.

Differences from the paper, each a consequence of the rest of `pairreg` or a stated choice:
  * How one layer's output becomes the next layer's input is the mitigation's job: ``mitigation=none`` is
    the published stack (the update adds to f_i inside the layer, so ``residual`` and PairReg's
    ``residual=add`` are refused: they would add it twice). ``LayerState.h`` is the scalar part h_i, the
    l>0 part travels as ``LayerState.f`` (models/mitigations/base.py says what each mitigation does to it).
  * The readout is the model's (models/model.py: an MLP on the last layer's scalars, summed over atoms),
    not SEGNN's steerable pre-pooling layers.
  * σ_g is SiLU / sigmoid without e3nn's ``nn.Gate`` rescaling of each activation to unit second moment:
    a constant per activation that the weights absorb, and whose estimate (10⁶ random samples) would keep
    the model from being built on the ``meta`` device, where the config's size check counts parameters.
  * The graph is complete by default (the paper's QM9 models use a 2 Å radius graph; ``cutoff_A=2`` gives it).
    Two aggregations were tried before the instance norm: the bare sum multiplied the features ~5x per layer
    on QM9 (the readout started hundreds of standard deviations off and training diverged), and with the mean
    (C = 1/(N − 1)) 10 minutes of ethanol barely left the zero-force floor (818 meV/Å; 2026-11-28,
    docs/results.md).
  * a_i uses C = 1/(N − 1) of the molecule rather than 1/degree: the mean on the complete graph, and with a
    cutoff it does not jump as a pair enters or leaves (as EGNN's C here).
  * The multiplicity rule m_l above is ours; SEGNN's own rule balances all degrees including the scalars
    around one total dimension, while here H stays the scalar width every other backbone has.
  * Clebsch–Gordan coefficients are re-derived after every dtype change (``ExactTensorProduct``): e3nn
    stores them in the default dtype, so a float32-built model cast to float64 would otherwise carry
    coefficients rounded to float32, and equivariance would hold only to ~1e-7.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from e3nn import o3
from torch import nn
from torch_geometric.utils import scatter

from ..radial import build_basis
from ..state import LayerRecord, LayerState

MAX_L = 3
_W3J = re.compile(r"_w3j_(\d+)_(\d+)_(\d+)$")


def multiplicity(hidden: int, l: int) -> int:
    """Channels of degree l > 0 for H = ``hidden`` scalars: about as many numbers as the scalars."""
    return max(1, hidden // (2 * l + 1))


def hidden_irreps(hidden: int, l_max: int) -> o3.Irreps:
    """H x0e + m_1 x1o + … + m_L xLp, parity (−1)^l (the parity of the spherical harmonics)."""
    if not 1 <= l_max <= MAX_L:
        raise ValueError(f"l_max={l_max} is not valid for backbone 'segnn'; choose 1 … {MAX_L}")
    return o3.Irreps([(hidden, (0, 1))] + [(multiplicity(hidden, l), (l, (-1) ** l)) for l in range(1, l_max + 1)])


def stacked(irreps: o3.Irreps, copies: int, extra_scalars: int = 0) -> o3.Irreps:
    """Irreps of ``copies`` tensors of ``irreps`` (scalars first) joined degree by degree (:func:`join`)."""
    return o3.Irreps([(copies * mul + (extra_scalars if ir.l == 0 else 0), ir) for mul, ir in irreps])


def join(parts, irreps: o3.Irreps, extra_scalars: torch.Tensor | None = None) -> torch.Tensor:
    """Concatenate tensors of the same ``irreps`` block by block (all scalars, then all l=1 channels, ...),
    with ``extra_scalars`` after the scalars: one irrep per degree, so the tensor product that reads it has
    one path per degree triple, not one per pair of blocks (about half as many)."""
    blocks = []
    for b, sl in enumerate(irreps.slices()):
        blocks += [t[:, sl] for t in parts]
        if b == 0 and extra_scalars is not None:
            blocks.append(extra_scalars)
    return torch.cat(blocks, dim=-1)


def _warm_clebsch_gordan(l_max: int) -> None:
    """Compute (and let e3nn cache) every Clebsch–Gordan tensor up to l_max on the CPU, so that a model can
    then be built on the ``meta`` device (e3nn's derivation calls ``.item()``, which meta tensors refuse)."""
    with torch.device("cpu"):
        for l1 in range(l_max + 1):
            for l2 in range(l_max + 1):
                for l3 in range(abs(l1 - l2), min(l1 + l2, l_max) + 1):
                    o3.wigner_3j(l1, l2, l3)


class ExactTensorProduct(o3.FullyConnectedTensorProduct):
    """e3nn's fully connected tensor product whose Clebsch–Gordan buffers are recomputed in the new dtype
    after ``.to`` / ``.double()`` (module docstring), not cast from the dtype they were built in.

    e3nn's contraction-order search at build time (``_optimize_einsums``) is off: it costs ~0.2 s per
    product (a 9-layer model has 36 products, twice that with G2's gates). So is torch's search at every
    call (``torch.backends.opt_einsum``, on once opt_einsum is installed, as e3nn installs it): for these
    small operands the search took longer than the contractions themselves."""

    def __init__(self, irreps_in1, irreps_in2, irreps_out):
        super().__init__(irreps_in1, irreps_in2, irreps_out, _optimize_einsums=False)

    def forward(self, x, y, weight=None):
        with torch.backends.opt_einsum.flags(enabled=False):
            return super().forward(x, y, weight)

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        with torch.no_grad():
            for name, buf in self.named_buffers():
                match = _W3J.search(name)
                if match and buf.is_floating_point():
                    buf.copy_(o3.wigner_3j(*map(int, match.groups()), dtype=buf.dtype, device=buf.device))
        return self


class SteerableGate(nn.Module):
    """σ_g: [H scalars ‖ one gate per l>0 channel ‖ l>0 channels] → [SiLU(scalars) ‖ sigmoid(gate) · channels]."""

    def __init__(self, hidden: int, gated: o3.Irreps):
        super().__init__()
        self.hidden = hidden
        self.n_gates = gated.num_irreps
        self.irreps_in = o3.Irreps(f"{hidden + self.n_gates}x0e") + gated
        # for every component of the gated part, the index of its channel's gate
        index = [c for c, ir in enumerate(ir for mul, ir in gated for _ in range(mul)) for _ in range(ir.dim)]
        self.register_buffer("gate_index", torch.tensor(index, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, H + n_gates + dim_gated) → (n, H + dim_gated)."""
        scalars, gates, gated = x.split([self.hidden, self.n_gates, x.shape[-1] - self.hidden - self.n_gates], -1)
        return torch.cat([nn.functional.silu(scalars), gated * torch.sigmoid(gates).index_select(-1, self.gate_index)],
                         dim=-1)


class SteerableInstanceNorm(nn.Module):
    """Equivariant instance norm over each molecule's atoms (module docstring), with learned affine terms.

    Args:
        irreps: the features' irreps, scalars first (``hidden_irreps``).
        eps: added to the mean squares, so that a one-atom molecule (all scalars centred to 0) stays finite.
    """

    def __init__(self, irreps: o3.Irreps, eps: float = 1e-5):
        super().__init__()
        self.n_scalars = irreps[0].mul
        self.eps = eps
        # for every component after the scalars: its channel (0 … n_channels − 1) and 1/(2l+1)
        channel, inv_dim = [], []
        self.n_channels = 0
        for mul, ir in irreps[1:]:
            for _ in range(mul):
                channel += [self.n_channels] * ir.dim
                inv_dim += [1.0 / ir.dim] * ir.dim
                self.n_channels += 1
        self.register_buffer("channel", torch.tensor(channel, dtype=torch.long), persistent=False)
        self.register_buffer("inv_dim", torch.tensor(inv_dim), persistent=False)
        self.scalar_scale = nn.Parameter(torch.ones(self.n_scalars))
        self.scalar_bias = nn.Parameter(torch.zeros(self.n_scalars))
        self.channel_scale = nn.Parameter(torch.ones(self.n_channels))

    def forward(self, full: torch.Tensor, batch: torch.Tensor, n_molecules: int) -> torch.Tensor:
        """(n_atoms, dim) → (n_atoms, dim), statistics per molecule (``batch``: each atom's molecule)."""
        def molecule_mean(values):  # (n_atoms, k) → (n_atoms, k), the mean over each atom's molecule
            return scatter(values, batch, 0, dim_size=n_molecules, reduce="mean").index_select(0, batch)

        s, v = full[:, :self.n_scalars], full[:, self.n_scalars:]
        s = s - molecule_mean(s)
        s = s * torch.rsqrt(molecule_mean(s * s) + self.eps) * self.scalar_scale + self.scalar_bias
        if v.shape[1] == 0:
            return s
        sq = torch.zeros(len(v), self.n_channels, dtype=v.dtype, device=v.device)
        sq = sq.index_add_(1, self.channel, v * v * self.inv_dim.to(v.dtype))  # (n_atoms, channels) ‖f_c‖²/(2l+1)
        factor = torch.rsqrt(molecule_mean(sq) + self.eps) * self.channel_scale  # (n_atoms, channels), invariant
        return torch.cat([s, v * factor.index_select(1, self.channel)], dim=-1)


@dataclass
class SEGNNGeometry:
    """Per-edge and per-atom attributes of the (fixed) input positions, computed once per forward pass."""

    receiver: torch.Tensor  # (n_edges,) i
    sender: torch.Tensor  # (n_edges,) j
    edge_scalars: torch.Tensor  # (n_edges, 1 + n_rbf) ‖x_j − x_i‖² (Å²), then rbf(‖x_j − x_i‖) if any
    edge_attr: torch.Tensor  # (n_edges, (L+1)²) a_ij = Y(r_ij / ‖r_ij‖)
    node_attr: torch.Tensor  # (n_atoms, (L+1)²) a_i = C Σ_j w_ij a_ij
    weight: torch.Tensor | None  # (n_edges, 1) w_ij, the cutoff envelope; None: complete graph (w = 1)
    batch: torch.Tensor  # (n_atoms,) each atom's molecule, for the instance norm
    n_molecules: int


class SEGNNLayer(nn.Module):
    """One SEGNN layer: steerable message MLP, sum, steerable update MLP with its residual, instance norm
    (module docstring).

    Args:
        hidden: H, the scalar channels (l>0 channels follow the module's multiplicity rule).
        l_max: highest degree L of the features and of the spherical harmonics (1 … 3).
        n_rbf: radial basis functions beside ‖r_ij‖² in the message input (0: the paper's message).
    """

    def __init__(self, hidden: int, l_max: int, n_rbf: int = 0):
        super().__init__()
        _warm_clebsch_gordan(l_max)
        self.hidden = hidden
        self.irreps = hidden_irreps(hidden, l_max)
        attr = o3.Irreps.spherical_harmonics(l_max)
        gated = self.irreps[1:]  # the l>0 part
        self.gate = SteerableGate(hidden, gated)
        pre = self.gate.irreps_in
        self.message1 = ExactTensorProduct(stacked(self.irreps, 2, extra_scalars=1 + n_rbf), attr, pre)
        self.message2 = ExactTensorProduct(self.irreps, attr, pre)
        self.update1 = ExactTensorProduct(stacked(self.irreps, 2), attr, pre)
        self.update2 = ExactTensorProduct(self.irreps, attr, self.irreps)
        self.norm = SteerableInstanceNorm(self.irreps)

    def forward(self, h: torch.Tensor, f: torch.Tensor, edges: SEGNNGeometry):
        """
        Args:
            h: (n_atoms, H) scalars; f: (n_atoms, dim − H) l>0 features (e3nn layout); edges: the geometry.
        Returns:
            h̃ (n_atoms, H), f̃ (n_atoms, dim − H): the layer's output, its residual and instance norm included.
        """
        full = torch.cat([h, f], dim=-1)  # (n_atoms, dim)
        i, j = edges.receiver, edges.sender
        # (n_edges, 2 dim + 1 + n_rbf)
        pair = join([full.index_select(0, i), full.index_select(0, j)], self.irreps, edges.edge_scalars)
        m = self.gate(self.message1(pair, edges.edge_attr))
        m = self.gate(self.message2(m, edges.edge_attr))  # (n_edges, dim)
        if edges.weight is not None:
            m = m * edges.weight  # switched off smoothly at the cutoff
        agg = torch.zeros_like(full).index_add_(0, i, m)  # (n_atoms, dim) the sum over neighbours
        u = self.gate(self.update1(join([full, agg], self.irreps), edges.node_attr))
        full = self.norm(full + self.update2(u, edges.node_attr), edges.batch, edges.n_molecules)
        return full[:, :self.hidden], full[:, self.hidden:]

    def gate_scalars(self, state: LayerState, graph) -> torch.Tensor:
        """(n_atoms, H) this layer's scalar output for a state: how G2 runs a gate layer."""
        h, _ = self(state.h, state.f, graph.edges)
        return h


class SEGNNBackbone(nn.Module):
    """The steerable embedding and ``n_layers`` SEGNN layers joined by a mitigation (``none``: the published stack).

    Args:
        n_layers: message-passing layers (paper: 7 on QM9).
        hidden: H scalar channels (module docstring for the l>0 channels).
        mitigation: built for ``backbone="segnn"`` (models/mitigations).
        l_max: highest degree L of features and attributes (default 1; paper: 1 or 2 on QM9).
        n_rbf, rbf, rbf_max_A, cutoff_A: optional radial basis in the message input (module docstring;
            models/radial.py) [0: off, "gaussian", 10 Å, None]; the radius cutoff itself is the model's.
    """

    def __init__(self, n_layers: int, hidden: int, mitigation, l_max: int = 1, n_rbf: int = 0,
                 rbf: str = "gaussian", rbf_max_A: float = 10.0, cutoff_A: float | None = None):
        super().__init__()
        _warm_clebsch_gordan(l_max)
        self.hidden = hidden
        self.l_max = l_max
        self.basis = build_basis(rbf, n_rbf, rbf_max_A, cutoff_A) if n_rbf else None
        self.irreps = hidden_irreps(hidden, l_max)
        self.attr_irreps = o3.Irreps.spherical_harmonics(l_max)
        self.mitigation = mitigation
        self.embedding = ExactTensorProduct(o3.Irreps(f"{hidden}x0e"), self.attr_irreps, self.irreps)
        self.layers = nn.ModuleList(SEGNNLayer(hidden, l_max, n_rbf) for _ in range(n_layers))
        mitigation.attach_layers(lambda: SEGNNLayer(hidden, l_max, n_rbf))  # G2's gate layers

    @property
    def f_irreps(self) -> o3.Irreps:
        """Irreps of ``LayerState.f``, the l>0 part."""
        return self.irreps[1:]

    def geometry(self, x, edge_index, inv_deg, batch, n_molecules: int, edge_weight=None) -> SEGNNGeometry:
        i, j = edge_index[0], edge_index[1]
        r = x.index_select(0, j) - x.index_select(0, i)  # (n_edges, 3) Å, r_ij = x_j − x_i
        d2 = (r * r).sum(-1, keepdim=True)  # (n_edges, 1) Å²
        dist = d2.clamp_min(1e-12).sqrt()  # (n_edges, 1) Å, > 0 off the diagonal; the clamp keeps gradients finite
        unit = r / dist
        edge_attr = o3.spherical_harmonics(self.attr_irreps, unit, normalize=False, normalization="component")
        weighted = edge_attr if edge_weight is None else edge_attr * edge_weight
        node_attr = torch.zeros(len(x), edge_attr.shape[1], dtype=x.dtype, device=x.device).index_add_(0, i, weighted)
        scalars = d2 if self.basis is None else torch.cat([d2, self.basis(dist)], dim=-1)
        return SEGNNGeometry(i, j, scalars, edge_attr, node_attr * inv_deg, edge_weight, batch, n_molecules)

    def forward(self, h, x, edge_index, inv_deg, graph, node_attr=None):
        """The model's backbone interface (``node_attr``, EGNN's atom features, is unused here).

        Returns the last layer's scalars, the (unchanged) positions and the :class:`LayerRecord`, whose
        ``f`` holds every layer's l>0 features and ``f_irreps`` their irreps.
        """
        record = LayerRecord(x_input=x)
        record.f_irreps = self.f_irreps
        h, x = self.mitigation.begin(h, x, graph)
        graph.edges = self.geometry(x, edge_index, inv_deg, graph.batch, graph.n_molecules, graph.edge_weight)
        full = self.embedding(h, graph.edges.node_attr)  # (n_atoms, dim)
        state = LayerState(full[:, :self.hidden], x, f=full[:, self.hidden:])
        record.append(state.h, state.x, f=state.f)
        for layer_idx, layer in enumerate(self.layers):
            h_new, f_new = layer(state.h, state.f, graph.edges)
            state = self.mitigation.combine_state(layer_idx, state, LayerState(h_new, state.x, f=f_new), graph, record)
            record.append(state.h, state.x, f=state.f)
        return state.h, state.x, record
