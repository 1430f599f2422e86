"""Pure checks of an MD trajectory: bonds, breakage, energy drift, speed. Units are in the names.

Bond rule: atoms i and j are bonded when their distance is below BOND_FACTOR × (r_i + r_j), with r the
covalent radii of ASE (``ase.data.covalent_radii``, Cordero et al. 2008). 1.2 is the usual tolerance of
bond perception from coordinates (it keeps C–H at 1.09 Å bonded while the C–H limit is 1.28 Å, and two H
of a CH2 group at 1.8 Å apart unbonded, their limit being 0.74 Å).

A molecule has *fallen apart* when a bond of the starting geometry is stretched beyond
APART_FACTOR × (r_i + r_j) (2 × the covalent sum: C–H 2.14 Å, C–C 3.04 Å; no vibration at any sane
temperature reaches it), or when two atoms come closer than MIN_DISTANCE_A (0.5 Å, shorter than any
chemical bond; H2's is 0.74 Å). Either means the simulation no longer describes the molecule it started
from; the run is stopped there.
"""

from __future__ import annotations

import math

import numpy as np

from ..data.readers import MIN_DISTANCE_A

BOND_FACTOR = 1.2
APART_FACTOR = 2.0


def distances_A(pos: np.ndarray) -> np.ndarray:
    """(n, n) interatomic distances in Å of (n, 3) positions in Å (small molecules: the full matrix)."""
    pos = np.asarray(pos, dtype=np.float64)
    return np.linalg.norm(pos[:, None, :] - pos[None, :, :], axis=-1)


def covalent_sums_A(z: np.ndarray) -> np.ndarray:
    """(n, n) sums of covalent radii r_i + r_j in Å."""
    from ase.data import covalent_radii

    r = covalent_radii[np.asarray(z, dtype=np.int64)]
    return r[:, None] + r[None, :]


def bonds(z: np.ndarray, pos: np.ndarray, factor: float = BOND_FACTOR) -> set[tuple[int, int]]:
    """Bonded pairs (i, j), i < j (0-based), by the covalent-radius rule d < factor × (r_i + r_j)."""
    bonded = distances_A(pos) < factor * covalent_sums_A(z)
    i, j = np.nonzero(np.triu(bonded, k=1))
    return {(int(a), int(b)) for a, b in zip(i, j)}


def bond_changes(start: set[tuple[int, int]], now: set[tuple[int, int]]) -> tuple[list, list]:
    """(broken, formed): bonds of ``start`` missing from ``now``, and bonds of ``now`` not in ``start``, sorted."""
    return sorted(start - now), sorted(now - start)


def label(z: np.ndarray, i: int) -> str:
    """``C3``: element and 1-based atom number, as in the input file."""
    from ase.data import chemical_symbols

    return f"{chemical_symbols[int(z[i])]}{i + 1}"


def pair_label(z: np.ndarray, pair: tuple[int, int]) -> str:
    return f"{label(z, pair[0])}-{label(z, pair[1])}"


def shortest_distance_A(pos: np.ndarray) -> tuple[float, int, int]:
    """(shortest interatomic distance in Å, atom i, atom j)."""
    d = distances_A(pos)
    np.fill_diagonal(d, np.inf)
    k = int(np.argmin(d))
    i, j = divmod(k, len(d))
    return float(d[i, j]), min(i, j), max(i, j)


def largest_force_eV_per_A(forces: np.ndarray) -> float:
    """The largest per-atom force magnitude |F_i| in eV/Å of (n, 3) forces in eV/Å."""
    return float(np.max(np.linalg.norm(np.asarray(forces, dtype=np.float64), axis=-1)))


def why_apart(z: np.ndarray, pos: np.ndarray, start_bonds: set[tuple[int, int]]) -> str | None:
    """Why the molecule has fallen apart (see the module docstring), or None while it holds together.

    Non-finite coordinates count as fallen apart: the integrator has blown up.
    """
    if not np.isfinite(pos).all():
        return "coordinates became NaN or infinite"
    d_min, i, j = shortest_distance_A(pos)
    if d_min < MIN_DISTANCE_A:
        return (f"atoms {pair_label(z, (i, j))} are {d_min:.3f} Å apart, closer than {MIN_DISTANCE_A} Å "
                "(shorter than any chemical bond)")
    d, limit = distances_A(pos), APART_FACTOR * covalent_sums_A(z)
    stretched = [(d[a, b] / limit[a, b], a, b) for a, b in start_bonds if d[a, b] > limit[a, b]]
    if stretched:
        _, a, b = max(stretched)
        return (f"bond {pair_label(z, (a, b))} stretched to {d[a, b]:.3f} Å, beyond {APART_FACTOR:g} × its "
                f"covalent-radius sum ({limit[a, b]:.3f} Å)")
    return None


def energy_drift_eV_per_atom_per_ps(time_ps: np.ndarray, energy_eV: np.ndarray, n_atoms: int) -> float:
    """Slope of a least-squares line through total energy (eV) against time (ps), per atom.

    A fit, not (last − first): the end points carry the fluctuations of the integrator, the slope the
    systematic gain or loss. NaN with fewer than two points.
    """
    t, e = np.asarray(time_ps, dtype=np.float64), np.asarray(energy_eV, dtype=np.float64)
    if len(t) < 2 or np.ptp(t) == 0:
        return math.nan
    slope = np.polyfit(t, e, 1)[0]
    return float(slope) / n_atoms


def ps_per_hour(simulated_ps: float, wall_s: float) -> float:
    """Simulated picoseconds per hour of wall time (NaN if no wall time was measured)."""
    return simulated_ps / (wall_s / 3600.0) if wall_s > 0 else math.nan
