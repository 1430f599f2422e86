"""The mitigation contract: how the layers of a deep EGNN are joined, and what extra loss they carry.

A mitigation has three hooks, all optional except :meth:`combine`:

* :meth:`begin` — may change the input pair (h₀, x₀), e.g. add training noise;
* :meth:`combine` — between layers: turns the previous pair and the layer's output into the
  next pair (residuals, normalisation, gating, coordinate transmission);
* :meth:`extra_loss` — a regulariser computed from the per-layer record, added to the task loss.

Mitigations are registered by name (see :func:`register`); configs name them, never import paths.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class GraphContext:
    """What a mitigation may need about the batch: shapes beside."""

    batch: torch.Tensor  # (n_atoms,) molecule index
    edge_index: torch.Tensor  # (2, n_edges)
    n_molecules: int
    node_attr: torch.Tensor | None = None  # (n_atoms, A) the attributes every EGCL's φ_h reads, or None
    edge_weight: torch.Tensor | None = None  # (n_edges, 1) cutoff envelope u(d⁰_ij) of each edge; None: complete graph


class Mitigation(nn.Module):
    """Base class. Subclasses set ``update_coords`` and override :meth:`combine`."""

    #: whether EGCLs compute coordinate updates under this mitigation
    update_coords: bool = False

    def __init__(self, n_layers: int, hidden: int):
        super().__init__()
        self.n_layers = n_layers
        self.hidden = hidden

    def attach_layers(self, make_layer) -> None:
        """Called once by the backbone: ``make_layer()`` builds an EGCL configured like the backbone's
        own (same edge features and node attributes), coordinate updates off. Mitigations that run
        EGCLs of their own (G2's gates) build them here."""

    def begin(self, h, x, graph: GraphContext):
        return h, x

    def combine(self, layer: int, h_prev, x_prev, h_new, x_new, graph: GraphContext, record):
        raise NotImplementedError

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
