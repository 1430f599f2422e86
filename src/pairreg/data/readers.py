"""Read user molecules (XYZ, extended XYZ, SDF/MOL, anything ASE reads) into (z, pos) arrays.

ASE is used because it reads every common coordinate format with one call and is pure Python;
its errors are re-raised as :class:`InputError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


class InputError(ValueError):
    """A user input file that cannot be used; the message names the file (and molecule)."""


@dataclass
class Molecule:
    z: np.ndarray  # (n_atoms,) atomic numbers
    pos: np.ndarray  # (n_atoms, 3) Å
    source: str  # "file.xyz" or "file.xyz#2" for the second molecule of a file
    formula: str


def read_molecules(path: str | Path) -> list[Molecule]:
    """All molecules in ``path``; raises :class:`InputError` on unreadable or unusable input."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: the file is empty")
    try:
        frames = ase.io.read(str(path), index=":")
    except Exception as err:  # ASE raises many types for malformed input
        raise InputError(f"{path}: cannot read molecules ({type(err).__name__}: {err})") from None
    if not frames:
        raise InputError(f"{path}: no molecule found")
    out = []
    for k, atoms in enumerate(frames):
        source = str(path) if len(frames) == 1 else f"{path}#{k + 1}"
        z = np.asarray(atoms.get_atomic_numbers(), dtype=np.int64)
        pos = np.asarray(atoms.get_positions(), dtype=np.float64)
        if len(z) == 0:
            raise InputError(f"{source}: molecule has no atoms")
        if len(z) == 1:
            raise InputError(f"{source}: molecule has a single atom; the model needs at least two")
        if not np.isfinite(pos).all():
            raise InputError(f"{source}: coordinates contain NaN or infinity")
        out.append(Molecule(z, pos, source, atoms.get_chemical_formula()))
    return out
