"""Per-target MAE of a trained model on a dataset split, and predictions for user molecules."""

from __future__ import annotations

import numpy as np
import torch

from ..data.molecules import MoleculeSet, make_batch
from ..data.readers import InputError, read_inputs
from ..devices import model_device
from ..models import UnknownElementError

# Predictions use the complete graph of each molecule: N(N-1) edges, each an MLP message, so memory and time
# grow as N². Measured with the shipped model (width 96, 9 layers) on 2 shared CPU cores: 1,000 atoms took
# 53 s and 2.1 GB, 500 atoms 25 s and 0.95 GB. QM9's largest molecule has 29 atoms, rMD17's 21.
DEFAULT_MAX_ATOMS = 500


@torch.no_grad()
def predict_set(model, ds: MoleculeSet, batch_size: int = 96) -> np.ndarray:
    """(n_molecules, n_targets) predictions in reporting units, in dataset order."""
    model.eval()
    device = model_device(model)
    out = []
    for b in ds.batches(batch_size):
        b = b.to(device)
        out.append(model.predict(b.z, b.pos, b.batch, b.edge_index, b.num_molecules).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, len(model.target_mean)))


def mae_per_target(model, ds: MoleculeSet, batch_size: int = 96) -> dict[str, float]:
    pred = predict_set(model, ds, batch_size)
    err = np.abs(pred - ds.y).mean(0)
    return {name: float(e) for name, e in zip(ds.target_names, err)}


def predict_files(model, paths, target_names, target_units, max_atoms_train=None, warn=None,
                  max_atoms: int | None = DEFAULT_MAX_ATOMS) -> list[dict]:
    """One row per molecule of the files: :func:`~pairreg.data.readers.read_inputs` then :func:`predict_molecules`.

    Every file is read and checked before the model runs, so a bad file fails fast; a molecule with more
    than ``max_atoms`` atoms (None: no limit) is refused before any graph is built.
    """
    return predict_molecules(model, read_inputs(paths, max_atoms=max_atoms, warn=warn), target_names, target_units,
                             max_atoms_train=max_atoms_train, warn=warn)


def predict_molecules(model, molecules, target_names, target_units, max_atoms_train=None, warn=None) -> list[dict]:
    """One row per molecule: source, formula, n_atoms and each target with its unit.

    Elements the model has no embedding for raise :class:`InputError` naming them, before the model runs;
    molecules more than twice the size of the largest training molecule (``max_atoms_train``, skipped when
    None) only produce a warning through ``warn`` (default: a line on stderr), since the prediction is
    possible but an extrapolation. A prediction that is not finite raises :class:`InputError` naming the
    molecule, so no NaN or infinity ever reaches the output.
    """
    import sys

    from ase.data import chemical_symbols

    if warn is None:
        def warn(message):
            print(f"warning: {message}", file=sys.stderr)
    known = [int(e) for e in model.features.elements]
    known_names = ", ".join(chemical_symbols[e] for e in known)
    for mol in molecules:
        unknown = sorted(set(mol.z.tolist()) - set(known))
        if unknown:
            names = ", ".join(f"{chemical_symbols[z]} (Z={z})" for z in unknown)
            raise InputError(f"{mol.where}: element {names} cannot be predicted: atomic number(s) {unknown} "
                             f"not known to this model, which was trained on {known_names}")
        if max_atoms_train and len(mol.z) > 2 * max_atoms_train:
            warn(f"{mol.where}: {mol.formula} has {len(mol.z)} atoms, more than twice the largest training "
                 f"molecule ({max_atoms_train} atoms); its prediction is an extrapolation and may be unreliable")
    rows = []
    for mol in molecules:
        b = make_batch([mol.z], [mol.pos]).to(model_device(model))
        try:
            y = model.predict(b.z, b.pos, b.batch, b.edge_index, 1)[0].cpu()
        except UnknownElementError as err:  # not expected after the check above; kept as a safety net
            raise InputError(f"{mol.where}: {err}") from None
        if not torch.isfinite(y).all():  # e.g. coordinates beyond float32's range (1e200 Å) become inf
            values = ", ".join(f"{n}={v}" for n, v in zip(target_names, y.tolist()))
            raise InputError(f"{mol.where}: {mol.formula}: the prediction is not finite ({values}); "
                             "check the coordinates (they must be in Å, with the atoms of one molecule)")
        row = {"source": mol.source, "formula": mol.formula, "n_atoms": int(len(mol.z))}
        for name, unit, value in zip(target_names, target_units, y.tolist()):
            row[f"{name}_{unit}"] = value
        rows.append(row)
    return rows
