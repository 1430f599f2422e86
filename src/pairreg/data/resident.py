"""A molecule set kept on the training device, batched there (``data_on_device``).

On a GPU the host-side path (numpy slices, one ``complete_graph_edges`` per batch, a host → device copy) is a
large share of a step once the model is fast: the H200 run of docs/results.md trained 15,400 QM9 molecules/s end
to end against 33,700/s for the model alone. Here the whole split lives on the device (all of QM9 is ~2.4 M atoms,
about 60 MB) and a batch is a few gathers and index computations on it, with one host sync for the batch's atom
and edge counts. The batch equals :meth:`MoleculeSet.collate`'s, element by element (tests/test_resident.py).
"""

from __future__ import annotations

import numpy as np
import torch

from .molecules import MoleculeBatch, MoleculeSet, centred


class ResidentSet:
    """``ds``'s molecules as tensors on ``device``; :meth:`collate` takes molecule indices like ``ds.collate``."""

    def __init__(self, ds: MoleculeSet, device, dtype=torch.float32):
        self.device = torch.device(device)
        # each molecule centred in float64 before the cast, by make_batch's own helper: the same float32
        # coordinates as a host batch (once per split; ~1.4 s for 130,000 molecules here)
        pos = np.concatenate([centred(ds.atoms(i)[1]) for i in range(len(ds))]) if len(ds) else ds.pos

        def put(a, dt):
            return torch.as_tensor(np.ascontiguousarray(a)).to(device=self.device, dtype=dt)

        self.z = put(ds.z, torch.long)
        self.pos = put(pos, dtype)
        self.n_atoms = put(ds.n_atoms, torch.long)
        self.starts = put(ds.offsets[:-1], torch.long)
        self.y = put(ds.y, torch.float64)  # targets stay float64 (rMD17 energies ~1e7 meV)
        self.forces = None if ds.forces is None else put(ds.forces, dtype)

    def __len__(self) -> int:
        return int(self.n_atoms.numel())

    def __getitem__(self, i: int) -> int:  # a DataLoader over this set yields molecule indices
        return int(i)

    def collate(self, indices) -> MoleculeBatch:
        dev = self.device
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64)).to(dev)
        n = self.n_atoms[idx]  # (B,)
        per_mol_edges = n * (n - 1)
        n_total, e_total = torch.stack([n.sum(), per_mol_edges.sum()]).tolist()  # the one host sync
        mols = torch.arange(len(idx), device=dev)

        # atoms: molecule b's atoms are starts[b] + 0..n_b-1, placed back to back
        batch = torch.repeat_interleave(mols, n, output_size=n_total)
        first = torch.cumsum(n, 0) - n  # first atom of each molecule inside the batch
        atom = self.starts[idx][batch] + torch.arange(n_total, device=dev) - first[batch]

        # complete graph of each molecule, edges (i, j) sorted by i then j, as graphs.complete_graph_edges
        edge_mol = torch.repeat_interleave(mols, per_mol_edges, output_size=e_total)
        k = torch.arange(e_total, device=dev) - (torch.cumsum(per_mol_edges, 0) - per_mol_edges)[edge_mol]
        others = (n - 1)[edge_mol]  # ≥ 1 wherever an edge exists
        i = torch.div(k, others, rounding_mode="floor")
        j = k - i * others
        j = j + (j >= i).long()  # skip the self-pair
        edge_index = torch.stack([i, j]) + first[edge_mol]

        forces = None if self.forces is None else self.forces[atom]
        return MoleculeBatch(self.z[atom], self.pos[atom], batch, edge_index, n, self.y[idx], idx, forces)
