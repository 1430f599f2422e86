"""Per-target MAE of a trained model on a dataset split, and predictions for user molecules."""

from __future__ import annotations

import numpy as np
import torch

from ..data.molecules import MoleculeSet, make_batch
from ..data.readers import InputError, read_molecules
from ..models import UnknownElementError


@torch.no_grad()
def predict_set(model, ds: MoleculeSet, batch_size: int = 96) -> np.ndarray:
    """(n_molecules, n_targets) predictions in reporting units, in dataset order."""
    model.eval()
    out = []
    for b in ds.batches(batch_size):
        out.append(model.predict(b.z, b.pos, b.batch, b.edge_index, b.num_molecules).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.target_mean)))


def mae_per_target(model, ds: MoleculeSet, batch_size: int = 96) -> dict[str, float]:
    pred = predict_set(model, ds, batch_size)
    err = np.abs(pred - ds.y).mean(0)
    return {name: float(e) for name, e in zip(ds.target_names, err)}


def predict_files(model, paths, target_names, target_units) -> list[dict]:
    """One row per molecule: source, formula, n_atoms and each target with its unit."""
    rows = []
    for path in paths:
        for mol in read_molecules(path):
            b = make_batch([mol.z], [mol.pos])
            try:
                y = model.predict(b.z, b.pos, b.batch, b.edge_index, 1)[0]
            except UnknownElementError as err:
                raise InputError(f"{mol.source}: {err}") from None
            row = {"source": mol.source, "formula": mol.formula, "n_atoms": int(len(mol.z))}
            for name, unit, value in zip(target_names, target_units, y.tolist()):
                row[f"{name}_{unit}"] = value
            rows.append(row)
    return rows
