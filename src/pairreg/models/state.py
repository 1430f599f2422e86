"""What passes between a backbone's layers, and the record of every layer that diagnostics and losses read."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LayerState:
    """What flows between layers: invariant scalars, positions, and vector features where the backbone has them."""

    h: torch.Tensor  # (n_atoms, H) invariant features
    x: torch.Tensor  # (n_atoms, 3) positions, Å
    v: torch.Tensor | None = None  # (n_atoms, 3, H) equivariant vector features (PaiNN), or None
    f: torch.Tensor | None = None  # (n_atoms, D) steerable l>0 features (SEGNN), e3nn irreps layout, or None


class LayerRecord:
    """Node features and coordinates after each layer: ``h[0]``/``x[0]`` are the inputs to layer 1.

    ``x_input`` holds the clean input coordinates (before any training noise); ``v`` the vector
    features (n_atoms, 3, H) of backbones that have them (PaiNN), else empty; ``f`` the steerable l>0
    features (n_atoms, D) of SEGNN, whose irreps (e3nn ``Irreps``) are ``f_irreps``, else empty and None.
    """

    def __init__(self, x_input):
        self.x_input = x_input
        self.h: list[torch.Tensor] = []
        self.x: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.f: list[torch.Tensor] = []
        self.f_irreps = None

    def append(self, h, x, v=None, f=None) -> None:
        self.h.append(h)
        self.x.append(x)
        if v is not None:
            self.v.append(v)
        if f is not None:
            self.f.append(f)

    def __len__(self) -> int:
        return len(self.h)
