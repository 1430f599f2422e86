"""An ASE calculator for trained pairreg energy models: energy (eV) and forces (eV/Å), one model or an ensemble.

    from ase.io import read
    from pairreg.ase import PairregCalculator

    atoms = read("ethanol.xyz")
    atoms.calc = PairregCalculator("runs/ethanol")        # a run directory or a .ckpt file
    atoms.get_potential_energy(), atoms.get_forces()      # eV, eV/Å

The model reports meV and meV/Å (or whatever energy unit its run used); the conversion to ASE's units goes
through :mod:`pairreg.units`. Forces are −∂E/∂x of the model by autograd, so they are exactly the gradient
of the energy the calculator returns. A list of checkpoints is an ensemble: energy and forces are the mean
over the models, and their spread (standard deviation over the models, ddof 0) is in
``calc.results["energy_std"]`` (eV) and ``calc.results["forces_std"]`` (eV/Å, per component).

Refused with one line (:class:`CalculatorError`, a ValueError): checkpoints whose targets are not the one
potential energy ``energy`` (e.g. the shipped QM9 HOMO/LUMO/gap model), elements a model has no embedding for,
molecules with more atoms than the largest training molecule (unless ``allow_larger=True``), and periodic
cells (the models see one molecule, with no cell or images). Asking for stress or any other property raises
ASE's :class:`PropertyNotImplementedError`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes
from ase.data import chemical_symbols

from .data.molecules import make_batch
from .devices import torch_device
from .training.checkpoint import load_model
from .units import convert, factor

ENERGY = "energy"  # the target name of a potential energy surface (data/rmd17.py, data/extxyz.py)
DTYPES = {"float32": torch.float32, "float64": torch.float64}


class CalculatorError(ValueError):
    """A checkpoint or a structure the calculator cannot use."""


def energy_unit(info) -> str:
    """The unit of a checkpoint's single target ``energy`` (the potential energy of rMD17 and dataset=extxyz runs);
    CalculatorError for any other targets (QM9 properties, U0 included: energies of relaxed geometries only)."""
    names, units, path = info["target_names"], info["target_units"], info["path"]
    about = f"{path}: its targets are {', '.join(f'{n} [{u}]' for n, u in zip(names, units))}"
    if names != [ENERGY]:
        raise CalculatorError(f"{about}; the calculator needs a model of one target, the potential energy "
                              f"'{ENERGY}' (an rMD17 or dataset=extxyz run with targets=energy)")
    try:
        factor(units[0], "eV")
    except ValueError:
        raise CalculatorError(f"{about}; {units[0]!r} is not an energy unit") from None
    return units[0]


def _as_list(checkpoint) -> list:
    if isinstance(checkpoint, (str, Path)):
        return [checkpoint]
    items = list(checkpoint)
    if not items:
        raise CalculatorError("no checkpoint given: pass a run directory, a .ckpt file, or a list of them")
    return items


class PairregCalculator(Calculator):
    """ASE calculator of a trained pairreg energy model (or the mean of several).

    Args:
        checkpoint: a run directory or ``.ckpt`` file, or a list of them (an ensemble; same target and unit).
        which: ``"best"`` (default) or ``"last"``: the checkpoint of a run directory. Runs trained with
            ``ema_decay`` are evaluated with their averaged weights (those are the checkpoint's weights).
        accelerator: ``"cpu"`` (default), ``"gpu"`` or ``"auto"``.
        dtype: ``"float32"`` (default, as trained) or ``"float64"`` (smoother energies for finite differences
            or long NVE runs; about twice slower).
        allow_larger: evaluate molecules with more atoms than the largest training molecule (an extrapolation).
    """

    implemented_properties = ["energy", "forces"]

    def __init__(self, checkpoint, *, which: str = "best", accelerator: str = "cpu", dtype: str = "float32",
                 allow_larger: bool = False, **kwargs):
        super().__init__(**kwargs)
        if dtype not in DTYPES:
            raise CalculatorError(f"dtype: {dtype!r} is not one of {list(DTYPES)}")
        self.dtype = DTYPES[dtype]
        self.device = torch_device(accelerator)
        self.allow_larger = allow_larger
        self.models, self.infos = [], []
        for ckpt in _as_list(checkpoint):
            model, info = load_model(ckpt, which)
            # float64 by .double(): a float32 cast would also round the float64 target mean (rMD17: ~1e7 meV)
            self.models.append((model.double() if self.dtype == torch.float64 else model).to(self.device))
            self.infos.append(info)
        self.unit = energy_unit(self.infos[0])
        for info in self.infos[1:]:
            if energy_unit(info) != self.unit or info["target_names"] != self.infos[0]["target_names"]:
                raise CalculatorError(f"an ensemble needs one target and unit: {self.infos[0]['path']} predicts "
                                      f"{self.infos[0]['target_names'][0]} [{self.unit}] but {info['path']} predicts "
                                      f"{info['target_names'][0]} [{info['target_units'][0]}]")
        sizes = [i["max_atoms_train"] for i in self.infos if i.get("max_atoms_train")]
        self.max_atoms_train = min(sizes) if sizes else None

    def get_property(self, name, atoms=None, allow_calculation=True):
        if name not in self.implemented_properties:
            raise PropertyNotImplementedError(f"PairregCalculator provides only energy and forces, not {name}")
        return super().get_property(name, atoms, allow_calculation)

    def check_atoms(self, atoms) -> None:
        """CalculatorError for a periodic cell, unknown elements, or more atoms than the model was trained on."""
        if atoms.pbc.any():
            raise CalculatorError(f"periodic cell (pbc={atoms.pbc.tolist()}) not supported: the model sees one "
                                  "isolated molecule; set atoms.pbc = False")
        z = atoms.numbers
        for model, info in zip(self.models, self.infos):
            known = [int(e) for e in model.features.elements]
            unknown = sorted(set(z.tolist()) - set(known))
            if unknown:
                raise CalculatorError(
                    f"{info['path']}: element(s) {', '.join(chemical_symbols[e] for e in unknown)} not known to this "
                    f"model, which was trained on {', '.join(chemical_symbols[e] for e in known)}")
        if self.max_atoms_train and len(z) > self.max_atoms_train and not self.allow_larger:
            raise CalculatorError(f"{atoms.get_chemical_formula()} has {len(z)} atoms, more than the largest training "
                                  f"molecule ({self.max_atoms_train} atoms); pass allow_larger=True to extrapolate")

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.check_atoms(self.atoms)
        b = make_batch([self.atoms.numbers], [self.atoms.positions], dtype=self.dtype).to(self.device)
        energies, forces = [], []
        for model in self.models:
            e, f = model.predict_energy_forces(b.z, b.pos, b.batch, b.edge_index, 1)
            energies.append(float(e[0]))
            forces.append(f.cpu().numpy())
        energies_eV = convert(np.array(energies), self.unit, "eV")  # (n_models,)
        forces_eV_A = convert(np.stack(forces), f"{self.unit}/Angstrom", "eV/Angstrom")  # (n_models, n_atoms, 3)
        if not (np.isfinite(energies_eV).all() and np.isfinite(forces_eV_A).all()):
            raise CalculatorError(f"{self.atoms.get_chemical_formula()}: the model's energy or forces are not finite; "
                                  "check the positions (Å, one molecule)")
        self.results["energy"] = float(energies_eV.mean())
        self.results["forces"] = forces_eV_A.mean(axis=0)
        if len(self.models) > 1:
            self.results["energy_std"] = float(energies_eV.std())
            self.results["forces_std"] = forces_eV_A.std(axis=0)
