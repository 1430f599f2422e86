"""Complete graphs inside each molecule, built with numpy (no torch-cluster needed)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np


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
