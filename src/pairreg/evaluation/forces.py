"""Energy and force errors of an energy model (rMD17): forces are F = −∂E/∂x of the model."""

from __future__ import annotations

import numpy as np

from ..data.molecules import MoleculeSet
from ..devices import model_device


def predict_energy_forces(model, ds: MoleculeSet, batch_size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """(energies (n_molecules,), forces (n_atoms, 3)) in reporting units, in dataset order."""
    model.eval()
    device = model_device(model)
    energies, forces = [], []
    for b in ds.batches(batch_size):
        b = b.to(device)
        e, f = model.predict_energy_forces(b.z, b.pos, b.batch, b.edge_index, b.num_molecules)
        energies.append(e.cpu().numpy())
        forces.append(f.cpu().numpy())
    return np.concatenate(energies), np.concatenate(forces)


def energy_force_mae(model, ds: MoleculeSet, batch_size: int = 96) -> dict[str, float]:
    """{"energy": MAE per molecule, "forces": MAE per force component}, reporting units."""
    if ds.forces is None:
        raise ValueError("this dataset has no reference forces")
    e, f = predict_energy_forces(model, ds, batch_size)
    return {"energy": float(np.abs(e - ds.y[:, 0]).mean()), "forces": float(np.abs(f - ds.forces).mean())}
