"""QM9 (Ramakrishnan et al., Sci. Data 2014) from the CSV files of the PyPI package ``qm9pack``.

The package ships 130,831 molecules (the 3,054 "uncharacterised" ones of the 133,885 already
left out) with coordinates in Å and properties in Hartree-based units. We read its CSV files
directly: importing ``qm9pack`` needs ``pkg_resources``, and we only need its data folder.

Targets are reported in the units of EGNN's QM9 table (Satorras et al. 2021, Table 3):

    mu D, alpha bohr^3, homo/lumo/gap meV, r2 bohr^2, zpve meV,
    U0/U/H/G meV (atomisation: atom references subtracted), Cv cal/mol/K (atom refs subtracted)

The per-element references are QM9's atomref table (figshare 1057643; PyG's ``QM9`` lists
the same numbers). They are subtracted in native units, then converted once through
:mod:`pairreg.units`.

Parsing the 225 MB of CSV takes ~40 s; the result is cached as an ``.npz`` written atomically
with a format version and a fingerprint of the source files (names, sizes, modification times).
The fingerprint is part of the cache's file name, so two installs of ``qm9pack`` (two virtual
environments, say) keep a cache each instead of re-parsing over each other's. A stale or
unreadable cache is rebuilt, never used.
"""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import units
from .molecules import MoleculeSet

CACHE_FORMAT_VERSION = 1
N_MOLECULES = 130_831
ELEMENT_Z = {"H": 1, "C": 6, "N": 7, "O": 8, "F": 9}


@dataclass(frozen=True)
class Target:
    name: str
    column: str  # qm9pack CSV column
    native_unit: str
    unit: str  # reporting unit
    atomref: int | None = None  # column of ATOMREF subtracted before conversion


# Order follows EGNN's table. Reporting units are EGNN's.
TARGETS = {
    t.name: t
    for t in [
        Target("alpha", "Polarizability_bohr3", "bohr^3", "bohr^3"),
        Target("gap", "HOMO_LUMO_gap_au", "Hartree", "meV"),
        Target("homo", "HOMO_au", "Hartree", "meV"),
        Target("lumo", "LUMO_au", "Hartree", "meV"),
        Target("mu", "Dipole_debye", "D", "D"),
        Target("Cv", "Heatcapacity_Cv_cal_mol_K", "cal/mol/K", "cal/mol/K", atomref=4),
        Target("G", "GibbsFreeEnergy_298K_au", "Hartree", "meV", atomref=3),
        Target("H", "Enthalphy_298K_au", "Hartree", "meV", atomref=2),
        Target("r2", "R2_bohr2", "bohr^2", "bohr^2"),
        Target("U", "InternalEnergy_298K_au", "Hartree", "meV", atomref=1),
        Target("U0", "InternalEnergy_0K_au", "Hartree", "meV", atomref=0),
        Target("zpve", "ZPVE_au", "Hartree", "meV"),
    ]
}
TARGET_NAMES = list(TARGETS)

# QM9 atomref (figshare 1057643): per-atom U0, U(298.15 K), H(298.15 K), G(298.15 K) in Hartree
# and Cv in cal/mol/K, indexed by atomic number.
ATOMREF = {
    1: (-0.500273, -0.498857, -0.497912, -0.510927, 2.981),
    6: (-37.846772, -37.845355, -37.844411, -37.861317, 2.981),
    7: (-54.583861, -54.582445, -54.581501, -54.598897, 2.981),
    8: (-75.064579, -75.063163, -75.062219, -75.079532, 2.981),
    9: (-99.718730, -99.717314, -99.716370, -99.733544, 2.981),
}

# EGNN / Cormorant split sizes: 100k train, 10% test, the rest validation.
SPLIT_SIZES = {"train": 100_000, "val": 17_748, "test": 13_083}


class QM9Error(RuntimeError):
    """QM9 source or cache problem; the message says which file and what to do."""


def qm9pack_data_dir() -> Path:
    """Folder holding qm9pack's CSV files, found without importing the package."""
    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise QM9Error("the qm9pack package is not installed: `pip install qm9pack==1.0.3` (a pairreg dependency)")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data"
    if not (folder / "qm9_part1.csv").exists():
        raise QM9Error(f"qm9pack is installed but {folder}/qm9_part1.csv is missing; reinstall qm9pack")
    return folder


def default_cache_dir() -> Path:
    return Path(os.environ.get("PAIRREG_CACHE", Path.home() / ".cache" / "pairreg"))


def _csv_files(folder: Path) -> list[Path]:
    return [folder / f"qm9_part{k}.csv" for k in (1, 2, 3)]


def _fingerprint(files) -> str:
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.name}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def cache_path(cache_dir, fingerprint: str) -> Path:
    """Where the parsed arrays of the source files with ``fingerprint`` are cached."""
    return Path(cache_dir or default_cache_dir()) / f"qm9-{fingerprint}.npz"


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.replace("[", " ").replace("]", " ").split(",") if v.strip()]


def parse_csv(files, limit: int | None = None) -> dict:
    """Parse qm9pack CSV files into flat arrays in native units. Errors name file and line."""
    csv.field_size_limit(sys.maxsize)
    cols = [t.column for t in TARGETS.values()]
    index, n_atoms, z, pos, raw = [], [], [], [], []
    for path in files:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader)
            try:
                ci = {name: header.index(name) for name in ["Index", "N_atoms", "Elements", "XYZ_Ang", *cols]}
            except ValueError as err:
                raise QM9Error(f"{path}: header lacks a column ({err})") from None
            for row in reader:
                try:
                    n = int(row[ci["N_atoms"]])
                    elements = [e.strip(" '\"") for e in row[ci["Elements"]].strip("[]").split(",")]
                    zz = [ELEMENT_Z[e] for e in elements]
                    xyz = _floats(row[ci["XYZ_Ang"]])
                    if len(zz) != n or len(xyz) != 3 * n:
                        raise ValueError(f"N_atoms={n} but {len(zz)} elements and {len(xyz) // 3} positions")
                    values = [float(row[ci[c]]) for c in cols]
                except (ValueError, KeyError, IndexError) as err:
                    raise QM9Error(f"{path}, line {reader.line_num}: cannot parse molecule ({err})") from None
                index.append(int(row[ci["Index"]]))
                n_atoms.append(n)
                z.extend(zz)
                pos.extend(xyz)
                raw.append(values)
                if limit is not None and len(index) >= limit:
                    break
        if limit is not None and len(index) >= limit:
            break
    order = np.argsort(index, kind="stable")  # canonical order: QM9 index
    n_atoms = np.array(n_atoms, dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(n_atoms)])
    atom_order = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in order])
    return {
        "index": np.array(index, dtype=np.int64)[order],
        "n_atoms": n_atoms[order],
        "z": np.array(z, dtype=np.uint8)[atom_order],
        "pos": np.array(pos, dtype=np.float64).reshape(-1, 3)[atom_order],
        "raw": np.array(raw, dtype=np.float64)[order],  # (n_mols, 12) in TARGETS order, native units
    }


def to_reporting_units(raw: np.ndarray, z: np.ndarray, n_atoms: np.ndarray) -> np.ndarray:
    """Subtract atom references and convert each column of ``raw`` to its reporting unit."""
    mol = np.repeat(np.arange(len(n_atoms)), n_atoms)
    ref_per_atom = np.array([ATOMREF[int(k)] for k in z])  # (n_atoms_total, 5)
    ref = np.zeros((len(n_atoms), 5))
    np.add.at(ref, mol, ref_per_atom)
    out = np.empty_like(raw)
    for col, t in enumerate(TARGETS.values()):
        values = raw[:, col] - (ref[:, t.atomref] if t.atomref is not None else 0.0)
        out[:, col] = units.convert(values, t.native_unit, t.unit)
    return out


def _write_npz_atomic(path: Path, arrays: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _read_cache(path: Path, fingerprint: str) -> dict | None:
    """The cached arrays, or None when missing, stale, or unreadable."""
    if not path.exists():
        return None
    try:
        with np.load(path) as f:
            data = {k: f[k] for k in f.files}
        ok = (
            int(data.get("format_version", -1)) == CACHE_FORMAT_VERSION
            and str(data.get("fingerprint")) == fingerprint
            and data["raw"].shape == (len(data["n_atoms"]), len(TARGETS))
            and len(data["z"]) == int(data["n_atoms"].sum()) == len(data["pos"])
        )
    except Exception:  # truncated zip, bad header, missing key: rebuild
        return None
    return data if ok else None


def load_qm9_arrays(cache_dir: Path | None = None, source_dir: Path | None = None, verbose: bool = True) -> dict:
    """Parsed QM9 arrays (native units), from the cache when it is valid, else from the CSV files."""
    source_dir = source_dir or os.environ.get("PAIRREG_QM9_SOURCE")  # a folder of qm9_part{1,2,3}.csv
    source = Path(source_dir) if source_dir else qm9pack_data_dir()
    files = _csv_files(source)
    for f in files:
        if not f.exists():
            raise QM9Error(f"QM9 source file {f} is missing")
    fingerprint = _fingerprint(files)
    cache = cache_path(cache_dir, fingerprint)
    data = _read_cache(cache, fingerprint)
    if data is None:
        if verbose:
            print(f"[pairreg] parsing QM9 from {source} (once; cached at {cache}) ...", file=sys.stderr, flush=True)
        data = parse_csv(files)
        data["format_version"] = np.array(CACHE_FORMAT_VERSION)
        data["fingerprint"] = np.array(fingerprint)
        _write_npz_atomic(cache, data)
        (cache.parent / "qm9.npz").unlink(missing_ok=True)  # the single cache of versions before 2026-11-29
    return data


def load_qm9(targets=None, cache_dir=None, source_dir=None, verbose: bool = True) -> MoleculeSet:
    """All QM9 molecules as a :class:`MoleculeSet` with ``targets`` (default: all 12) in reporting units."""
    data = load_qm9_arrays(cache_dir, source_dir, verbose)
    y = to_reporting_units(data["raw"], data["z"], data["n_atoms"])
    ds = MoleculeSet(
        data["z"], data["pos"], data["n_atoms"], y,
        TARGET_NAMES, [t.unit for t in TARGETS.values()], mol_ids=data["index"],
    )
    return ds.select_targets(targets) if targets else ds


def egnn_split(n_molecules: int = N_MOLECULES, seed: int = 0) -> dict[str, np.ndarray]:
    """Cormorant/EGNN split: numpy legacy ``RandomState(seed).permutation``, 100k train,
    ``int(0.1 * N)`` test, the rest validation (17,748 / 13,083 for the 130,831 molecules)."""
    perm = np.random.RandomState(seed).permutation(n_molecules)
    n_train = min(SPLIT_SIZES["train"], n_molecules)
    n_test = int(0.1 * n_molecules)
    n_val = n_molecules - n_train - n_test
    if n_val < 0:
        # small sources (tests, fixtures): 80/10/10
        n_train, n_val = int(0.8 * n_molecules), n_molecules - int(0.8 * n_molecules) - n_test
    # kept in permutation order, so the first k of a split are a random subset of it
    return {"train": perm[:n_train], "val": perm[n_train : n_train + n_val], "test": perm[n_train + n_val :]}


def describe() -> dict:
    """What ``pairreg data qm9 --json`` prints."""
    data = load_qm9_arrays(verbose=False)
    source = os.environ.get("PAIRREG_QM9_SOURCE") or qm9pack_data_dir()
    split = egnn_split(len(data["n_atoms"]))
    # The trivial baseline every model must beat: predict the training split's mean for every molecule
    y = to_reporting_units(data["raw"], data["z"], data["n_atoms"])
    floor = np.abs(y[split["test"]] - y[split["train"]].mean(0)).mean(0)
    return {
        "dataset": "QM9",
        "source": str(source),
        "molecules": int(len(data["n_atoms"])),
        "atoms_per_molecule": {"min": int(data["n_atoms"].min()), "max": int(data["n_atoms"].max()),
                               "mean": round(float(data["n_atoms"].mean()), 3)},
        "split": {k: int(len(v)) for k, v in split.items()},
        "split_procedure": "numpy RandomState(0).permutation over molecules sorted by QM9 index (Cormorant/EGNN)",
        "targets": {t.name: {"unit": t.unit, "native_unit": t.native_unit, "atomref_subtracted": t.atomref is not None,
                             "test_mae_of_training_mean": round(float(floor[col]), 6)}
                    for col, t in enumerate(TARGETS.values())},
    }
