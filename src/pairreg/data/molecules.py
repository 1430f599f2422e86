"""A flat, in-memory set of molecules and the batch it collates into.

Atoms of all molecules are stored back to back (``z``, ``pos_A``) with an offset per
molecule, so a batch is a few slices and one concatenation: no per-molecule Python objects.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .graphs import complete_graph_edges


@dataclass
class MoleculeBatch:
    """A batch of molecules, each a complete graph without self-loops.

    Attributes (shapes beside):
        z:          (n_atoms,) long, atomic numbers
        pos:        (n_atoms, 3) float, coordinates in Å (each molecule centred on its centroid by make_batch)
        batch:      (n_atoms,) long, molecule index of each atom
        edge_index: (2, n_edges) long, rows (i, j): message from j to i, sorted by i; the complete graphs
                    (a model with ``cutoff_A`` masks them to pairs within it: data/graphs.py radius_graph)
        n_atoms:    (n_mols,) long
        y:          (n_mols, n_targets) float64 in reporting units, or None
        idx:        (n_mols,) long, index of each molecule in its dataset
        forces:     (n_atoms, 3) float reference forces in the dataset's force unit, or None
    """

    z: torch.Tensor
    pos: torch.Tensor
    batch: torch.Tensor
    edge_index: torch.Tensor
    n_atoms: torch.Tensor
    y: torch.Tensor | None = None
    idx: torch.Tensor | None = None
    forces: torch.Tensor | None = None

    @property
    def num_molecules(self) -> int:
        return int(self.n_atoms.numel())

    def to(self, device) -> "MoleculeBatch":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in self.__dict__.items()}
        return MoleculeBatch(**moved)


def centred(pos) -> np.ndarray:
    """(n, 3) positions minus their centroid, in float64."""
    pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
    return pos - pos.mean(0) if len(pos) else pos


def make_batch(zs, positions, ys=None, idx=None, dtype=torch.float32, forces=None, centre: bool = True) -> MoleculeBatch:
    """Collate lists of per-molecule arrays (z: (n,), pos: (n, 3)) into a :class:`MoleculeBatch`.

    With ``centre`` (the default) each molecule's centroid is subtracted in float64 before positions are
    cast to ``dtype``: the models are translation invariant, but float32 keeps only ~0.06 Å of a coordinate
    near 1e6 Å, which changed a prediction by meV. Coordinates in a model's layer record are then relative
    to the molecule's centroid. ``centre=False`` passes positions as given (the equivariance checks use it
    to test the model's own translation equivariance).
    """
    n_atoms = np.array([len(z) for z in zs], dtype=np.int64)
    z = torch.from_numpy(np.concatenate(zs).astype(np.int64))
    pos64 = np.concatenate([centred(p) if centre else np.asarray(p, dtype=np.float64).reshape(-1, 3)
                            for p in positions]) if len(positions) else np.zeros((0, 3))
    pos = torch.from_numpy(pos64).to(dtype)
    batch = torch.from_numpy(np.repeat(np.arange(len(n_atoms)), n_atoms))
    edge_index = torch.from_numpy(complete_graph_edges(n_atoms))
    # targets stay float64: rMD17 energies are ~1e7 meV, where float32 rounds to ~1 meV
    y = None if ys is None else torch.as_tensor(np.asarray(ys), dtype=torch.float64)
    idx_t = None if idx is None else torch.as_tensor(np.asarray(idx), dtype=torch.long)
    f = None if forces is None else torch.from_numpy(np.concatenate(forces).astype(np.float64)).to(dtype)
    return MoleculeBatch(z, pos, batch, edge_index, torch.from_numpy(n_atoms), y, idx_t, f)


class MoleculeSet(torch.utils.data.Dataset):
    """Molecules stored flat. ``y`` is (n_mols, n_targets) in the reporting units of ``target_units``.

    Indexing returns the molecule index; :meth:`collate` builds the batch, so a
    ``DataLoader(ds, batch_size=..., collate_fn=ds.collate)`` works as usual.
    """

    def __init__(self, z, pos, n_atoms, y, target_names, target_units, mol_ids=None, forces=None, force_unit=None):
        self.z = np.asarray(z, dtype=np.uint8)
        # float64: collate centres each molecule before the cast to float32 (see make_batch)
        self.pos = np.asarray(pos, dtype=np.float64).reshape(-1, 3)
        self.n_atoms = np.asarray(n_atoms, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.n_atoms)])
        self.y = np.asarray(y, dtype=np.float64).reshape(len(self.n_atoms), -1)
        self.target_names = list(target_names)
        self.target_units = list(target_units)
        self.mol_ids = np.arange(len(self.n_atoms)) if mol_ids is None else np.asarray(mol_ids)
        # per-atom reference forces (rMD17), float64 so meV/Å values keep their precision
        self.forces = None if forces is None else np.asarray(forces, dtype=np.float64).reshape(-1, 3)
        self.force_unit = force_unit
        if len(self.z) != self.offsets[-1] or len(self.pos) != self.offsets[-1]:
            raise ValueError("z/pos length does not match the sum of n_atoms")
        if self.forces is not None and len(self.forces) != len(self.z):
            raise ValueError("forces length does not match the number of atoms")

    def __len__(self) -> int:
        return len(self.n_atoms)

    def __getitem__(self, i: int) -> int:
        return int(i)

    def atoms(self, i: int):
        a, b = self.offsets[i], self.offsets[i + 1]
        return self.z[a:b], self.pos[a:b]

    def collate(self, indices) -> MoleculeBatch:
        indices = np.asarray(indices, dtype=np.int64)
        zs, ps = zip(*(self.atoms(i) for i in indices))
        fs = None if self.forces is None else [self.forces[self.offsets[i]:self.offsets[i + 1]] for i in indices]
        return make_batch(zs, ps, self.y[indices], indices, forces=fs)

    def batches(self, batch_size: int):
        """Consecutive batches in dataset order (for evaluation)."""
        for start in range(0, len(self), batch_size):
            yield self.collate(np.arange(start, min(start + batch_size, len(self))))

    def subset(self, indices) -> "MoleculeSet":
        """A new set holding only ``indices`` (copies the atoms, keeps target metadata)."""
        indices = np.asarray(indices, dtype=np.int64)
        atom_idx = np.concatenate([np.arange(self.offsets[i], self.offsets[i + 1]) for i in indices]) if len(indices) else np.zeros(0, np.int64)
        return MoleculeSet(
            self.z[atom_idx], self.pos[atom_idx], self.n_atoms[indices], self.y[indices],
            self.target_names, self.target_units, self.mol_ids[indices],
            None if self.forces is None else self.forces[atom_idx], self.force_unit,
        )

    def select_targets(self, names) -> "MoleculeSet":
        """Keep only the target columns ``names`` (in that order)."""
        cols = []
        for name in names:
            if name not in self.target_names:
                raise KeyError(f"unknown target {name!r}; this dataset has {self.target_names}")
            cols.append(self.target_names.index(name))
        out = MoleculeSet.__new__(MoleculeSet)
        out.__dict__.update(self.__dict__)
        out.y = self.y[:, cols]
        out.target_names = [self.target_names[c] for c in cols]
        out.target_units = [self.target_units[c] for c in cols]
        return out
