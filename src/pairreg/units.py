"""Unit conversions, in one place, by name.

Every number that crosses a unit boundary in `pairreg` goes through :func:`convert`.
Constants are CODATA 2018 (the values ASE and SciPy ship).

Units are written as plain strings: ``"Hartree"``, ``"meV"``, ``"eV"``, ``"kcal/mol"``,
``"D"`` (debye), ``"bohr^3"``, ``"bohr^2"``, ``"cal/mol/K"``, ``"Angstrom"``, ``"bohr"``,
``"kcal/mol/Angstrom"``, ``"meV/Angstrom"``.
"""

from __future__ import annotations

HARTREE_IN_EV = 27.211386245988  # CODATA 2018
KCAL_PER_MOL_IN_EV = 4.184 / 96.48533212331  # kJ/mol -> eV: 1 eV = N_A * e J = 96.485 kJ/mol
BOHR_IN_ANGSTROM = 0.529177210903  # CODATA 2018

# Factor to multiply a value in the key unit by to get eV (energies) or the base of its family.
_ENERGY_IN_EV = {
    "Hartree": HARTREE_IN_EV,
    "eV": 1.0,
    "meV": 1e-3,
    "kcal/mol": KCAL_PER_MOL_IN_EV,
}
_LENGTH_IN_ANGSTROM = {"Angstrom": 1.0, "bohr": BOHR_IN_ANGSTROM}
_FORCE_IN_EV_PER_ANGSTROM = {
    "Hartree/bohr": HARTREE_IN_EV / BOHR_IN_ANGSTROM,
    "eV/Angstrom": 1.0,
    "meV/Angstrom": 1e-3,
    "kcal/mol/Angstrom": KCAL_PER_MOL_IN_EV,
}
# Units that have no conversion partner here: only the identity is allowed.
_FIXED = {"D", "bohr^3", "bohr^2", "cal/mol/K", "1"}


def factor(src: str, dst: str) -> float:
    """Multiplicative factor taking a value in unit ``src`` to unit ``dst``.

    >>> round(factor("Hartree", "meV"), 6)
    27211.386246
    >>> round(factor("kcal/mol", "meV"), 3)
    43.364
    """
    if src == dst and (src in _FIXED or _family(src) is not None):
        return 1.0
    for family in (_ENERGY_IN_EV, _LENGTH_IN_ANGSTROM, _FORCE_IN_EV_PER_ANGSTROM):
        if src in family and dst in family:
            return family[src] / family[dst]
    raise ValueError(f"cannot convert unit {src!r} to {dst!r}: known units are {sorted(known_units())}")


def convert(value, src: str, dst: str):
    """Convert ``value`` (float, numpy array or tensor) from unit ``src`` to ``dst``."""
    return value * factor(src, dst)


def known_units() -> set[str]:
    return set(_ENERGY_IN_EV) | set(_LENGTH_IN_ANGSTROM) | set(_FORCE_IN_EV_PER_ANGSTROM) | _FIXED


def _family(unit: str):
    for family in (_ENERGY_IN_EV, _LENGTH_IN_ANGSTROM, _FORCE_IN_EV_PER_ANGSTROM):
        if unit in family:
            return family
    return None
