"""Complete graphs inside each molecule (numpy), and radius graphs masked from them (torch); no torch-cluster."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch


@lru_cache(maxsize=128)
def _template(n: int) -> np.ndarray:
    """(2, n*(n-1)) edges (i, j), i != j, of one n-atom molecule, sorted by i."""
    i, j = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    keep = i != j
    return np.stack([i[keep], j[keep]]).astype(np.int64)


def complete_graph_edges(n_atoms: np.ndarray) -> np.ndarray:
    """Edge index (2, Σ n(n-1)) of complete graphs without self-loops, one per molecule.

    Row 0 is the receiving atom i, row 1 the sending atom j; edges are sorted by i.
    """
    n_atoms = np.asarray(n_atoms, dtype=np.int64)
    if len(n_atoms) == 0:
        return np.zeros((2, 0), dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)[:-1]])
    parts = [_template(int(n)) + off for n, off in zip(n_atoms, offsets)]
    return np.concatenate(parts, axis=1)


def radius_graph(edge_index: torch.Tensor, pos: torch.Tensor, cutoff_A: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The edges of ``edge_index`` (e.g. the complete graphs) whose atoms are closer than ``cutoff_A`` Å.

    Masking the complete graph keeps edges inside each molecule and sorted by i, as it was.
    Returns (edge_index (2, n_kept), dist (n_kept, 1) in Å); ``dist`` is differentiable in ``pos``.
    """
    diff = pos.index_select(0, edge_index[0]) - pos.index_select(0, edge_index[1])  # (n_edges, 3)
    dist = (diff * diff).sum(-1, keepdim=True).clamp_min(1e-12).sqrt()  # (n_edges, 1) Å
    keep = (dist.detach() < cutoff_A).squeeze(-1).nonzero().squeeze(-1)  # (n_kept,)
    return edge_index.index_select(1, keep), dist.index_select(0, keep)
