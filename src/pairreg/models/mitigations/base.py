"""The mitigation contract: how the layers of a deep EGNN are joined, and what extra loss they carry.

A mitigation has these hooks, all optional except :meth:`combine`:

* :meth:`begin` — may change the input pair (h₀, x₀), e.g. add training noise;
* :meth:`combine` — between layers: turns the previous pair and the layer's output into the
  next pair (residuals, normalisation, gating, coordinate transmission);
* :meth:`combine_vectors` — the same for vector features (n_atoms, 3, H), on backbones that have
  them (PaiNN); the default keeps the layer's output;
* :meth:`combine_irreps` — the same for steerable l>0 features (n_atoms, D) in e3nn's irreps layout
  (SEGNN, whose ``LayerState.h`` is the l=0 part); the default keeps the layer's output;
* :meth:`extra_loss` — a regulariser computed from the per-layer record, added to the task loss.

Backbones call :meth:`combine_state` with the whole :class:`LayerState` (scalars, positions, vectors,
steerable features). A mitigation is built for one backbone (``backbone=``): on one that keeps positions
fixed (PaiNN, SEGNN) the
coordinate switches have nothing to act on, and each mitigation says what it does instead or refuses
by name (docs/method.md, "Mitigations on other backbones").

Mitigations are registered by name (see :func:`register`); configs name them, never import paths.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn

from ..state import LayerState


@dataclass
class GraphContext:
    """What a mitigation may need about the batch: shapes beside."""

    batch: torch.Tensor  # (n_atoms,) molecule index
    edge_index: torch.Tensor  # (2, n_edges)
    n_molecules: int
    node_attr: torch.Tensor | None = None  # (n_atoms, A) the attributes every EGCL's φ_h reads, or None
    edge_weight: torch.Tensor | None = None  # (n_edges, 1) cutoff envelope u(d⁰_ij) of each edge; None: complete graph
    edges: object | None = None  # the backbone's per-edge geometry, computed once per forward (PaiNN's basis)


#: backbones whose layers never move the positions (their equivariant information lives in vector features)
FIXED_POSITIONS = frozenset({"painn", "segnn"})
#: backbones whose layers add their updates to their input themselves (a second additive skip doubles it)
RESIDUAL_LAYERS = frozenset({"painn", "segnn"})


def refuse_additive_skip(what: str, backbone: str) -> None:
    if backbone in RESIDUAL_LAYERS:
        raise ValueError(f"{what} on backbone {backbone!r}: its layers already add their updates to their input "
                         "(PaiNN: s + Δs, v + Δv; SEGNN: f + φ_f), so a second additive skip would double it "
                         "every layer; use mitigation=none for the published model")


class Mitigation(nn.Module):
    """Base class. Subclasses set ``update_coords`` and override :meth:`combine`."""

    #: whether EGCLs compute coordinate updates under this mitigation
    update_coords: bool = False

    def __init__(self, n_layers: int, hidden: int, backbone: str = "egnn"):
        super().__init__()
        self.n_layers = n_layers
        self.hidden = hidden
        self.backbone = backbone

    @property
    def positions_fixed(self) -> bool:
        """Whether this mitigation's backbone keeps positions fixed (no coordinate updates to combine)."""
        return self.backbone in FIXED_POSITIONS

    def refuse_moving_positions(self, update_coords) -> None:
        """update_coords=True asked for on a backbone that cannot move positions: say so by name."""
        if update_coords and self.positions_fixed:
            raise ValueError(f"update_coords=True: backbone {self.backbone!r} keeps positions fixed")

    def attach_layers(self, make_layer) -> None:
        """Called once by the backbone: ``make_layer()`` builds an EGCL configured like the backbone's
        own (same edge features and node attributes), coordinate updates off. Mitigations that run
        EGCLs of their own (G2's gates) build them here."""

    def begin(self, h, x, graph: GraphContext):
        return h, x

    def combine(self, layer: int, h_prev, x_prev, h_new, x_new, graph: GraphContext, record):
        raise NotImplementedError

    def combine_vectors(self, layer: int, v_prev, v_new, graph: GraphContext, record):
        """Vector features of the next layer (n_atoms, 3, H); default: the layer's output, v_l = ṽ_l."""
        return v_new

    def combine_irreps(self, layer: int, f_prev, f_new, graph: GraphContext, record):
        """Steerable l>0 features of the next layer (n_atoms, D); default: the layer's output, f_l = f̃_l.

        Any rule must act on them linearly with invariant coefficients (per atom, or per irrep channel)
        or it breaks equivariance: no per-component nonlinearity, no bias, no statistics over components."""
        return f_new

    def combine_state(self, layer: int, prev: LayerState, new: LayerState, graph: GraphContext, record) -> LayerState:
        """The next layer's whole state from the previous one and the layer's output."""
        h, x = self.combine(layer, prev.h, prev.x, new.h, new.x, graph, record)
        v = None if new.v is None else self.combine_vectors(layer, prev.v, new.v, graph, record)
        f = None if new.f is None else self.combine_irreps(layer, prev.f, new.f, graph, record)
        return LayerState(h, x, v, f)

    def extra_loss(self, record, graph: GraphContext) -> torch.Tensor | None:
        return None


_REGISTRY: dict[str, type] = {}


def normalise_name(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def register(name: str):
    def deco(cls):
        _REGISTRY[normalise_name(name)] = cls
        cls.registry_name = normalise_name(name)
        return cls

    return deco


def mitigation_names() -> list[str]:
    return sorted(_REGISTRY)


def resolve(name: str) -> type:
    """The class registered as ``name`` (case, dashes and underscores ignored)."""
    key = normalise_name(name)
    if key not in _REGISTRY:
        close = difflib.get_close_matches(key, _REGISTRY, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown mitigation {name!r}; choose one of {mitigation_names()}.{hint}")
    return _REGISTRY[key]
