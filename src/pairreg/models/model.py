"""The molecule model: atom embedding → backbone (EGNN, PaiNN, ClofNet or SEGNN, + mitigation) → readout → physical units.

A plain ``nn.Module`` taking tensors::

    model = MoleculeModel(n_targets=1, n_layers=9, mitigation="pairreg")
    y_std, record = model(z, pos, batch)          # standardised predictions + per-layer record
    y = model.predict(z, pos, batch)              # in the targets' reporting units

Target mean and scale are buffers, so a saved model predicts physical units by itself. So are per-element
references (``atom_ref``, zero unless the data have molecules of several compositions): a molecule's
prediction is Σ_atoms ref[element] + mean + scale · output.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data.graphs import complete_graph_edges, radius_graph
from .backbones import BACKBONES
from .backbones.clofnet import ClofNetBackbone
from .backbones.egnn import EGNNBackbone
from .backbones.painn import PaiNNBackbone
from .mitigations import GraphContext, build_mitigation
from .radial import polynomial_envelope

DEFAULT_ELEMENTS = (1, 6, 7, 8, 9)  # H, C, N, O, F


class UnknownElementError(ValueError):
    """An atomic number the model has no embedding for."""


class AtomFeatures(nn.Module):
    """EGNN's QM9 node features: one-hot(element) × (Z / charge_scale)^p for p = 0 … charge_power."""

    def __init__(self, elements=DEFAULT_ELEMENTS, charge_scale: float = 9.0, charge_power: int = 2):
        super().__init__()
        self.elements = tuple(int(e) for e in elements)
        lookup = torch.full((max(self.elements) + 1,), -1, dtype=torch.long)
        lookup[list(self.elements)] = torch.arange(len(self.elements))
        self.register_buffer("lookup", lookup, persistent=False)
        self.charge_scale = charge_scale
        self.charge_power = charge_power
        self.dim = len(self.elements) * (charge_power + 1)

    def forward(self, z: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
        bad = (z < 0) | (z >= len(self.lookup))
        idx = self.lookup[z.clamp(0, len(self.lookup) - 1)]
        if bool((bad | (idx < 0)).any()):
            unknown = sorted({int(v) for v in z[bad | (idx < 0)].tolist()})
            raise UnknownElementError(f"atomic number(s) {unknown} not known to this model (it knows {list(self.elements)})")
        one_hot = nn.functional.one_hot(idx, len(self.elements)).to(dtype)  # (n_atoms, n_elements)
        powers = (z.to(dtype) / self.charge_scale).unsqueeze(-1) ** torch.arange(self.charge_power + 1, device=z.device)
        return (one_hot.unsqueeze(-1) * powers.unsqueeze(1)).flatten(1)  # (n_atoms, n_elements * (power+1))


def complete_graph(batch: torch.Tensor, n_molecules: int | None = None) -> torch.Tensor:
    """Edge index (2, n_edges) of the complete graph inside each molecule; atoms must be grouped by molecule."""
    counts = torch.bincount(batch, minlength=n_molecules or 0).cpu().numpy()
    return torch.from_numpy(complete_graph_edges(counts)).to(batch.device)


class MoleculeModel(nn.Module):
    """Molecular property model: a message-passing backbone with a pluggable oversmoothing mitigation.

    Args:
        n_targets: number of graph-level outputs (default 1).
        hidden: feature width H (default 128, as EGNN).
        n_layers: number of layers (default 9, PairReg's depth; EGNN used 7).
        backbone: ``"egnn"`` (default; models/backbones/egnn.py) or ``"painn"`` (models/backbones/painn.py,
            which needs ``cutoff_A`` and ``n_rbf`` and reads neither ``node_attr`` nor ``coord_act``) or
            ``"clofnet"`` (models/backbones/clofnet.py: moves coordinates like EGNN and takes the same options
            but ``node_attr``; SE(3)-, not reflection-equivariant), or ``"segnn"`` (models/backbones/segnn.py:
            steerable features up to ``l_max``; reads neither ``node_attr`` nor ``coord_act``; ``n_rbf`` > 0
            adds a radial basis to its messages, beyond the paper).
        mitigation: registered name, ``"pairreg"`` (default), ``"none"``, ``"residual"``.
        mitigation_options: keyword options of the mitigation (e.g. ``{"reg_weight": 1.0}``).
        node_attr: concatenate the input atom features into φ_h of every layer (EGNN's QM9 model; default True).
        coord_act: hidden activation of φ_x, ``"tanh"`` (default) or ``"silu"``.
        coord_init: EGNN's φ_x last layer, ``"egnn"`` (default) or ``"authors"`` (backbones/egnn.py).
        l_max: SEGNN only: the highest degree l of its steerable features and spherical harmonics (default 1).
        n_rbf, rbf_max_A: optional Gaussian distance basis in φ_e (default 0: off, as EGNN; see backbones/egnn.py).
        rbf: the basis, ``"gaussian"`` (default) or ``"bessel"`` (needs ``cutoff_A``; models/radial.py).
        cutoff_A: radius cutoff in Å (default None: the complete graph of each molecule, as EGNN). When set,
            only pairs closer than it are edges, every message is multiplied by the smooth envelope u(d)
            of its input distance (zero, with two derivatives, at the cutoff: the energy is continuous as
            atoms cross it), and the Bessel basis uses it as r_c. C = 1/(N−1) stays per molecule.
        elements, charge_power: atom features (default H, C, N, O, F and powers 0..2 of Z/9).
        target_mean, target_scale: per-target standardisation (reporting units); prediction = mean + scale · output.
        atom_ref: (n_elements, n_targets) per-element references in reporting units, in the order of ``elements``
            (default zeros); the prediction adds their sum over the molecule's atoms.
    """

    def __init__(
        self,
        n_targets: int = 1,
        hidden: int = 128,
        n_layers: int = 9,
        mitigation: str = "pairreg",
        mitigation_options: dict | None = None,
        node_attr: bool = True,
        coord_act: str = "tanh",
        n_rbf: int = 0,
        rbf_max_A: float = 10.0,
        rbf: str = "gaussian",
        cutoff_A: float | None = None,
        elements=DEFAULT_ELEMENTS,
        charge_power: int = 2,
        target_mean=None,
        target_scale=None,
        atom_ref=None,
        backbone: str = "egnn",
        l_max: int = 1,
        coord_init: str = "egnn",
    ):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone={backbone!r} is not valid; choose one of {list(BACKBONES)}")
        self.features = AtomFeatures(elements, charge_power=charge_power)
        self.embedding = nn.Linear(self.features.dim, hidden)
        self.node_attr = node_attr and backbone == "egnn"  # only EGNN's φ_h reads the atom features again
        self.cutoff_A = None if cutoff_A is None else float(cutoff_A)
        mit = build_mitigation(mitigation, n_layers, hidden, backbone=backbone, **(mitigation_options or {}))
        if backbone == "painn":
            self.backbone = PaiNNBackbone(n_layers, hidden, mit, n_rbf=n_rbf, cutoff_A=cutoff_A, rbf=rbf,
                                          rbf_max_A=rbf_max_A)
        elif backbone == "segnn":
            from .backbones.segnn import SEGNNBackbone  # e3nn takes about as long to import as torch: only when used

            self.backbone = SEGNNBackbone(n_layers, hidden, mit, l_max=l_max, n_rbf=n_rbf, rbf=rbf,
                                         rbf_max_A=rbf_max_A, cutoff_A=cutoff_A)
        elif backbone == "clofnet":
            self.backbone = ClofNetBackbone(n_layers, hidden, mit, coord_act, n_rbf=n_rbf, rbf_max_A=rbf_max_A,
                                            rbf=rbf, cutoff_A=cutoff_A)
        else:
            self.backbone = EGNNBackbone(n_layers, hidden, mit, self.features.dim if node_attr else 0, coord_act,
                                         n_rbf=n_rbf, rbf_max_A=rbf_max_A, rbf=rbf, cutoff_A=cutoff_A,
                                         coord_init=coord_init)
        self.node_head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden))
        self.graph_head = nn.Sequential(nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, n_targets))
        mean = torch.zeros(n_targets) if target_mean is None else torch.as_tensor(np.asarray(target_mean), dtype=torch.float64)
        scale = torch.ones(n_targets) if target_scale is None else torch.as_tensor(np.asarray(target_scale), dtype=torch.float64)
        self.register_buffer("target_mean", mean.reshape(n_targets).to(torch.float64))
        self.register_buffer("target_scale", scale.reshape(n_targets).to(torch.float64))
        n_el = len(self.features.elements)
        ref = torch.zeros(n_el, n_targets) if atom_ref is None else torch.as_tensor(np.asarray(atom_ref), dtype=torch.float64)
        self.register_buffer("atom_ref", ref.reshape(n_el, n_targets).to(torch.float64))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints written before per-element references existed have no atom_ref: theirs were zero
        if prefix + "atom_ref" not in state_dict:
            state_dict[prefix + "atom_ref"] = torch.zeros_like(self.atom_ref)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    @property
    def mitigation(self):
        return self.backbone.mitigation

    def forward(self, z, pos, batch, edge_index=None, n_molecules: int | None = None):
        """
        Args:
            z: (n_atoms,) atomic numbers; pos: (n_atoms, 3) Å; batch: (n_atoms,) molecule index,
            atoms grouped by molecule; edge_index: (2, n_edges) or None for the complete graphs. With
            ``cutoff_A`` the given edges are masked to pairs closer than it (so batches may carry the
            complete graphs).
        Returns:
            y_std: (n_molecules, n_targets) standardised predictions; record: per-layer (h, x).
        """
        if n_molecules is None:
            n_molecules = int(batch.max()) + 1 if batch.numel() else 0
        if edge_index is None:
            edge_index = complete_graph(batch, n_molecules)
        edge_weight = None
        if self.cutoff_A is not None:
            edge_index, dist = radius_graph(edge_index, pos, self.cutoff_A)
            edge_weight = polynomial_envelope(dist, self.cutoff_A)  # (n_edges, 1), from the input positions
        counts = torch.bincount(batch, minlength=n_molecules)  # (n_molecules,)
        inv_deg = (1.0 / (counts - 1).clamp(min=1).to(pos.dtype))[batch].unsqueeze(-1)  # (n_atoms, 1) C = 1/(N−1)
        attr = self.features(z, pos.dtype)  # (n_atoms, F)
        h = self.embedding(attr)  # (n_atoms, H)
        graph = GraphContext(batch, edge_index, n_molecules, attr if self.node_attr else None, edge_weight)
        h, x, record = self.backbone(h, pos, edge_index, inv_deg, graph, attr if self.node_attr else None)
        node = self.node_head(h)  # (n_atoms, H)
        pooled = torch.zeros(n_molecules, node.shape[1], dtype=node.dtype, device=node.device).index_add_(0, batch, node)
        y_std = self.graph_head(pooled)  # (n_molecules, n_targets)
        record.graph = graph
        return y_std, record

    def reference(self, z, batch, n_molecules: int) -> torch.Tensor | None:
        """(n_molecules, n_targets) sum of the per-element references over each molecule's atoms (float64), or
        None when the model has none (all zero)."""
        if not bool(self.atom_ref.any()):
            return None
        per_atom = self.atom_ref[self.features.lookup[z]]  # z was checked by the forward pass
        out = torch.zeros(n_molecules, self.atom_ref.shape[1], dtype=torch.float64, device=per_atom.device)
        return out.index_add_(0, batch, per_atom)

    def _reference(self, z, batch, n_rows: int) -> torch.Tensor | None:
        ref = self.reference(z, batch, n_rows) if z is not None else None
        if ref is None and z is None and bool(self.atom_ref.any()):  # never a number without its references
            raise ValueError("this model has per-element energy references: pass z and batch to "
                             "to_physical / to_standard")
        return ref

    def to_physical(self, y_std: torch.Tensor, z=None, batch=None) -> torch.Tensor:
        """Standardised outputs → reporting units (float64). ``z`` and ``batch`` (the molecules' atoms) are needed
        when the model has per-element references."""
        y = self.target_mean + self.target_scale * y_std.to(torch.float64)
        ref = self._reference(z, batch, y.shape[0])
        return y if ref is None else y + ref

    def to_standard(self, y: torch.Tensor, z=None, batch=None) -> torch.Tensor:
        y = y.to(torch.float64)
        ref = self._reference(z, batch, y.shape[0])
        if ref is not None:
            y = y - ref
        return ((y - self.target_mean) / self.target_scale).to(torch.get_default_dtype())

    @torch.no_grad()
    def predict(self, z, pos, batch, edge_index=None, n_molecules=None) -> torch.Tensor:
        """(n_molecules, n_targets) predictions in reporting units."""
        y_std, _ = self(z, pos, batch, edge_index, n_molecules)
        return self.to_physical(y_std, z, batch)

    def energy_and_forces(self, z, pos, batch, edge_index=None, n_molecules=None, create_graph: bool = False):
        """Energy and forces F = −∂E/∂x by autograd, for a single-target (energy) model.

        Returns (y_std (n_molecules, 1), forces_std (n_atoms, 3), record). Forces in reporting units
        are ``target_scale · forces_std`` (E = mean + scale · y_std). ``create_graph=True`` keeps the
        graph so a force loss can be backpropagated (training).
        """
        if self.target_mean.numel() != 1:
            raise ValueError("forces need a model with exactly one target (the energy)")
        with torch.enable_grad():
            pos = pos.detach().requires_grad_(True)
            y_std, record = self(z, pos, batch, edge_index, n_molecules)
            (grad,) = torch.autograd.grad(y_std.sum(), pos, create_graph=create_graph)
        return y_std, -grad, record

    def predict_energy_forces(self, z, pos, batch, edge_index=None, n_molecules=None):
        """(energy (n_molecules,), forces (n_atoms, 3)) in reporting units (e.g. meV, meV/Å), float64."""
        y_std, f_std, _ = self.energy_and_forces(z, pos, batch, edge_index, n_molecules)
        return self.to_physical(y_std.detach(), z, batch)[:, 0], self.target_scale * f_std.detach().to(torch.float64)

    def extra_loss(self, record):
        return self.mitigation.extra_loss(record, record.graph)


def elements_of(cfg) -> tuple[int, ...]:
    """Atomic numbers the model of ``cfg`` embeds, ascending: the ``elements`` key (symbols), else H, C, N, O, F."""
    if not cfg.elements:
        return DEFAULT_ELEMENTS
    from ase.data import atomic_numbers

    return tuple(sorted({atomic_numbers[symbol] for symbol in cfg.elements}))


def build_model(cfg, target_mean=None, target_scale=None, atom_ref=None) -> MoleculeModel:
    """The :class:`MoleculeModel` a :class:`pairreg.config.Config` describes (the one place that maps
    config keys to model arguments: training, checkpoint loading and the config's size check use it)."""
    return MoleculeModel(
        n_targets=len(cfg.targets), hidden=cfg.hidden, n_layers=cfg.n_layers, mitigation=cfg.mitigation,
        mitigation_options=cfg.mitigation_options(), node_attr=cfg.node_attr, coord_act=cfg.coord_act,
        n_rbf=cfg.n_rbf, rbf_max_A=cfg.rbf_max_A, rbf=cfg.rbf, cutoff_A=cfg.cutoff_A,
        elements=elements_of(cfg), target_mean=target_mean, target_scale=target_scale, atom_ref=atom_ref,
        backbone=cfg.backbone, l_max=cfg.l_max, coord_init=cfg.coord_init,
    )
