"""Your own data: an extended XYZ file (``dataset=extxyz data_path=FILE``), read with ASE.

Each frame is one molecule. Its energy is the info key ``energy_key`` (files written by other codes) or,
when ASE has moved it there, the frame's calculator result of that name (files ASE itself wrote:
``energy`` and ``forces`` come back as SinglePointCalculator results, not in ``info``/``arrays``); its
forces are the per-atom array or calculator result ``forces_key`` (None: the file has no forces).
Values are converted with :mod:`pairreg.units` from ``energy_unit`` / ``forces_unit`` (default eV and
eV/Å, ASE's convention) into the reporting units used everywhere else, meV and meV/Å.

Targets (``targets=[...]``): ``energy`` is the energy above (forces are its gradient); any other name is a
per-molecule scalar of the frame's ``info`` (or calculator results), written ``name:unit`` or ``name``
(dimensionless, unit "1"). A unit pairreg.units knows is converted into its family's reporting unit
(energies → meV, forces → meV/Å); any other unit label (e.g. ``D``, ``e``) is kept as given, unconverted.

Split: a random permutation of the frames (``RandomState(split_seed)``) cut into test (``test_frac``),
validation (``val_frac``) and training (the rest); frame indices are saved in the run's ``split.npz``.

Molecules of different compositions: when the training frames do not all have the same composition,
per-element energy references are fitted by least squares (E ≈ Σ_atoms ref[element]) on the training
split and stored in the model (``atom_ref``), which subtracts them before standardising and adds them
back in its physical output (models/model.py).

Errors name the file, the frame (0-based, as ``ase.io.read(..., index=":")`` numbers them) and its
first line, and the key: ``data.xyz:23: frame 2: no energy 'energy' in info or calculator results``.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from .. import units
from .molecules import MoleculeSet
from .readers import InputError, _reason, _xyz_blocks

ENERGY_UNIT, FORCE_UNIT = "meV", "meV/Angstrom"  # reporting units, as rMD17
DEFAULT_VAL_FRAC = DEFAULT_TEST_FRAC = 0.1
ENERGY = "energy"
# keys of a preset that describe its own dataset: they give way when a preset is used with dataset=extxyz
# (from a preset: reset; set by the user: molecule, data_root and a non-random split are refused)
DATASET_KEYS = ("molecule", "split", "data_root", "targets", "subset_train", "subset_val", "subset_test")
_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_UNIT = re.compile(r"[A-Za-z0-9/^]+")


class ExtXYZError(InputError):
    """An extended XYZ file or setting that cannot be used; names the file, frame, line and key."""


def normalise_unit(unit: str) -> str:
    """``eV/Å`` → ``eV/Angstrom`` (the spelling of :mod:`pairreg.units`)."""
    return unit.replace("Å", "Angstrom")


def reporting_unit(unit: str) -> str:
    """The unit a value in ``unit`` is reported in: energies meV, forces meV/Å, other units unchanged."""
    unit = normalise_unit(unit)
    for family_unit in (ENERGY_UNIT, FORCE_UNIT, "Angstrom"):
        try:
            units.factor(unit, family_unit)
            return family_unit
        except ValueError:
            continue
    return unit


def parse_targets(specs) -> list[tuple[str, str]]:
    """``["energy", "gap:eV", "q"]`` → [(name, unit in the file)]; energy's unit is ``energy_unit`` (None here)."""
    from ..config import ConfigError

    out = []
    for spec in specs:
        name, sep, unit = str(spec).partition(":")
        name, unit = name.strip(), normalise_unit(unit.strip())
        if not _NAME.fullmatch(name):
            raise ConfigError(f"targets: {spec!r}: a target is an info key (letters, digits, _ or -), optionally "
                              "with its unit after a colon, e.g. gap:eV")
        if name == ENERGY:
            if sep:
                raise ConfigError(f"targets: {spec!r}: the energy's unit is energy_unit (e.g. energy_unit=kcal/mol), "
                                  "not part of the target")
            out.append((name, None))
            continue
        if sep and not _UNIT.fullmatch(unit):
            raise ConfigError(f"targets: {spec!r}: the unit after ':' must be letters, digits, '/' or '^' "
                              "(e.g. eV, kcal/mol, D)")
        out.append((name, unit if sep else "1"))
    return out


def check_config(cfg) -> None:
    """The extxyz keys of ``cfg`` (config.validate calls this); the file itself is read at training time."""
    from ..config import ConfigError

    if not cfg.data_path:
        raise ConfigError("dataset=extxyz needs data_path=FILE (an extended XYZ file)")
    if cfg.split not in (None, "random"):
        raise ConfigError(f"split={cfg.split!r}: dataset=extxyz has one split, random (val_frac, test_frac, "
                          "split_seed); drop split")
    targets = parse_targets(cfg.targets)
    for key, family in (("energy_unit", ENERGY_UNIT), ("forces_unit", FORCE_UNIT)):
        unit = normalise_unit(getattr(cfg, key))
        try:
            units.factor(unit, family)
        except ValueError:
            known = sorted(u for u in units.known_units() if reporting_unit(u) == family)
            raise ConfigError(f"{key}={getattr(cfg, key)!r} is not a unit of {'energy' if family == ENERGY_UNIT else 'force'}; "
                              f"choose one of {known}") from None
    names = [name for name, _ in targets]
    if ENERGY in names and cfg.energy_key is None:
        raise ConfigError("targets: energy needs energy_key (the info key or calculator result of the energy)")
    if cfg.forces_key is not None and names != [ENERGY]:
        raise ConfigError(f"targets={cfg.targets}: with forces (forces_key={cfg.forces_key!r}) the model has one "
                          "target, energy (forces are its gradient); set forces_key=null to train on other targets")
    if cfg.force_weight > 0 and cfg.forces_key is None:
        raise ConfigError(f"force_weight={cfg.force_weight:g} needs forces, but forces_key is null; set force_weight=0 "
                          "or forces_key=KEY")
    fracs = {}
    for key, default in (("val_frac", DEFAULT_VAL_FRAC), ("test_frac", DEFAULT_TEST_FRAC)):
        value = getattr(cfg, key)
        fracs[key] = default if value is None else value
        if not 0 <= fracs[key] < 1:
            raise ConfigError(f"{key} must be in [0, 1), got {value}")
    if fracs["val_frac"] == 0:
        raise ConfigError("val_frac=0: training needs validation frames (they select the best checkpoint)")
    if fracs["test_frac"] == 0 and cfg.eval_test:
        raise ConfigError("test_frac=0 leaves no test frames; set eval_test=false as well")
    if fracs["val_frac"] + fracs["test_frac"] >= 1:
        raise ConfigError(f"val_frac + test_frac = {fracs['val_frac'] + fracs['test_frac']:g} leaves no training frames")


def settle_preset_keys(cfg, from_preset: set, from_user: set) -> None:
    """``dataset=extxyz`` with a preset: the preset's model and optimiser keys apply; its dataset keys
    (:data:`DATASET_KEYS`) go back to their defaults; the user's own molecule, data_root or a split other than
    random are refused (they describe rMD17/QM9 files, not this one)."""
    from ..config import FIELDS, ConfigError

    for key in ("molecule", "data_root"):
        if key in from_user:
            raise ConfigError(f"{key}: not used with dataset=extxyz (the molecules come from data_path); drop it")
    for key in DATASET_KEYS:
        if key in from_preset:
            field = FIELDS[key]
            setattr(cfg, key, field.default_factory() if callable(field.default_factory) else field.default)
    if "targets" not in from_user:
        cfg.targets = [ENERGY]


# --- reading ----------------------------------------------------------------------------------------

def _frame_lines(path: Path) -> list[int]:
    """1-based line number of the first line (the atom count) of each frame, for messages."""
    starts, i = [], 0
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return starts
    while i < len(lines):
        tokens = lines[i].split()
        if not tokens:
            i += 1
            continue
        if not tokens[0].isdigit():
            break
        starts.append(i + 1)
        i += int(tokens[0]) + 2
    return starts


def read_frames(path: str | Path) -> list:
    """``ase.io.read(path, index=":")`` as extended XYZ, with one-line errors naming the file (and line)."""
    import ase.io

    path = Path(path)
    if not path.is_file():
        raise ExtXYZError(f"{path}: {'not a file' if path.exists() else 'no such file'} (data_path)")
    try:
        frames = ase.io.read(str(path), index=":", format="extxyz")
    except Exception as err:  # ASE raises many types: find the line with our structural scan, else pass its reason
        try:
            text = path.read_text()
            _xyz_blocks(path, text.replace("\r\n", "\n").replace("\r", "\n").split("\n"))
        except InputError as scan:
            raise ExtXYZError(str(scan)) from None
        except (OSError, UnicodeDecodeError) as read_err:
            raise ExtXYZError(f"{path}: cannot be read ({_reason(read_err)})") from None
        raise ExtXYZError(f"{path}: not a readable extended XYZ file ({_reason(err)})") from None
    if not frames:
        raise ExtXYZError(f"{path}: no frames")
    return frames


def _lookup(atoms, key: str, kind: str):
    """(value, where it was found) of ``key`` in the frame's info (kind "info") or arrays, else its calculator
    results (where ASE puts energy, forces and other known properties of files it wrote); (None, None)."""
    store = atoms.info if kind == "info" else atoms.arrays
    if key in store:
        return store[key], f"{kind} key {key!r}"
    results = getattr(atoms.calc, "results", None) or {}
    if key in results:
        return results[key], f"calculator result {key!r}"
    return None, None


def _available(atoms, kind: str) -> str:
    store = atoms.info if kind == "info" else {k: v for k, v in atoms.arrays.items() if k not in ("numbers", "positions")}
    results = getattr(atoms.calc, "results", None) or {}
    return f"{kind} has {sorted(store) or 'nothing'}, calculator results {sorted(results) or 'none'}"


def _scalar(value, where: str, what: str) -> float:
    if isinstance(value, (bool, np.bool_)) or isinstance(value, str):
        raise ExtXYZError(f"{where}: {what} is {value!r}, not a number")
    arr = np.asarray(value)
    if arr.dtype.kind not in "iuf":
        raise ExtXYZError(f"{where}: {what} is {value!r}, not a number")
    if arr.size != 1:
        raise ExtXYZError(f"{where}: {what} has {arr.size} values (shape {arr.shape}); a target is one number per "
                          "molecule")
    number = float(arr.reshape(-1)[0])
    if not np.isfinite(number):
        raise ExtXYZError(f"{where}: {what} is {number}; NaN and infinite values cannot be trained on")
    return number


def load_extxyz(path, energy_key: str | None = "energy", forces_key: str | None = "forces", targets=(ENERGY,),
                energy_unit: str = "eV", forces_unit: str = "eV/Angstrom", elements=None) -> MoleculeSet:
    """All frames of ``path`` as a :class:`MoleculeSet` (targets and forces in reporting units; ``mol_ids`` are
    the frame indices). ``elements``: atomic numbers the model embeds (others are refused by symbol)."""
    from ase.data import chemical_symbols

    path = Path(path)
    specs = parse_targets(targets)
    energy_unit, forces_unit = normalise_unit(energy_unit), normalise_unit(forces_unit)
    frames = read_frames(path)
    lines = _frame_lines(path)
    names = [name for name, _ in specs]
    out_units = [ENERGY_UNIT if name == ENERGY else reporting_unit(unit) for name, unit in specs]
    factors = [units.factor(energy_unit, ENERGY_UNIT) if name == ENERGY else
               (units.factor(unit, out) if out != unit else 1.0) for (name, unit), out in zip(specs, out_units)]
    f_factor = units.factor(forces_unit, FORCE_UNIT)
    zs, ps, ys, fs = [], [], [], []
    known = None if elements is None else {int(e) for e in elements}
    for k, atoms in enumerate(frames):
        where = f"{path}:{lines[k]}: frame {k}" if k < len(lines) else f"{path}: frame {k}"
        if any(bool(p) for p in atoms.pbc):
            raise ExtXYZError(f"{where}: the frame is periodic (pbc {' '.join('T' if p else 'F' for p in atoms.pbc)}); "
                              "the models here predict isolated molecules: remove Lattice= and pbc= from the file")
        z = np.asarray(atoms.get_atomic_numbers(), dtype=np.int64)
        pos = np.asarray(atoms.get_positions(), dtype=np.float64)
        if len(z) == 0:
            raise ExtXYZError(f"{where}: the frame has no atoms")
        if (z < 1).any():
            raise ExtXYZError(f"{where}: the frame has a dummy atom (X, atomic number 0)")
        if known is not None and not set(z.tolist()) <= known:
            bad = sorted(set(z.tolist()) - known)
            raise ExtXYZError(f"{where}: element {', '.join(chemical_symbols[b] for b in bad)} is not one the model "
                              f"embeds ({', '.join(chemical_symbols[e] for e in sorted(known))}); add it to elements=...")
        if not np.isfinite(pos).all():
            raise ExtXYZError(f"{where}: coordinates contain NaN or infinity")
        row = []
        for (name, _), factor in zip(specs, factors):
            key = energy_key if name == ENERGY else name
            value, found = _lookup(atoms, key, "info")
            if found is None:
                what = f"energy {key!r} (energy_key)" if name == ENERGY else f"target {key!r}"
                raise ExtXYZError(f"{where}: no {what} in info or calculator results ({_available(atoms, 'info')})")
            row.append(_scalar(value, where, found) * factor)
        if forces_key is not None:
            value, found = _lookup(atoms, forces_key, "arrays")
            if found is None:
                raise ExtXYZError(f"{where}: no forces {forces_key!r} (forces_key) in arrays or calculator results "
                                  f"({_available(atoms, 'arrays')}); set forces_key=null for energy-only data")
            forces = np.asarray(value)
            if forces.dtype.kind not in "iuf" or forces.shape != (len(z), 3):
                raise ExtXYZError(f"{where}: {found} has shape {forces.shape}, expected ({len(z)}, 3) numbers")
            if not np.isfinite(forces).all():
                atom = int(np.argwhere(~np.isfinite(forces))[0][0])
                raise ExtXYZError(f"{where}: {found} of atom {atom} is NaN or infinite")
            fs.append(forces.astype(np.float64) * f_factor)
        zs.append(z)
        ps.append(pos)
        ys.append(row)
    n_atoms = np.array([len(z) for z in zs])
    return MoleculeSet(np.concatenate(zs), np.concatenate(ps), n_atoms, np.asarray(ys, dtype=np.float64), names,
                       out_units, mol_ids=np.arange(len(frames)),
                       forces=np.concatenate(fs) if forces_key is not None else None,
                       force_unit=FORCE_UNIT if forces_key is not None else None)


def random_split(n: int, val_frac: float | None, test_frac: float | None, seed: int, where: str = "") -> dict:
    """{"train", "val", "test"}: a ``RandomState(seed)`` permutation of ``n`` frames cut into test, val, train."""
    val_frac = DEFAULT_VAL_FRAC if val_frac is None else val_frac
    test_frac = DEFAULT_TEST_FRAC if test_frac is None else test_frac
    n_val, n_test = int(round(val_frac * n)), int(round(test_frac * n))
    if val_frac > 0:
        n_val = max(n_val, 1)
    if test_frac > 0:
        n_test = max(n_test, 1)
    n_train = n - n_val - n_test
    if n_train < 1:
        raise ExtXYZError(f"{where}{n} frames: val_frac={val_frac:g} and test_frac={test_frac:g} ({n_val} + {n_test} "
                          "frames) leave none for training")
    perm = np.random.RandomState(seed).permutation(n)
    return {"train": perm[n_val + n_test:], "val": perm[n_test:n_test + n_val], "test": perm[:n_test]}


def file_sha256(path) -> str:
    """SHA-256 of the data file (saved in split.npz, so a resumed run can tell the file changed)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_for_config(cfg) -> tuple[MoleculeSet, dict]:
    """The dataset and split a ``dataset=extxyz`` config describes."""
    from ..models.model import elements_of

    ds = load_extxyz(cfg.data_path, cfg.energy_key, cfg.forces_key, cfg.targets, cfg.energy_unit, cfg.forces_unit,
                     elements=elements_of(cfg))
    return ds, random_split(len(ds), cfg.val_frac, cfg.test_frac, cfg.split_seed, where=f"{cfg.data_path}: ")


# --- per-element references ---------------------------------------------------------------------------

def compositions(ds: MoleculeSet, elements) -> np.ndarray:
    """(n_molecules, n_elements) atom counts, columns in the order of ``elements``."""
    elements = [int(e) for e in elements]
    col = np.full(max(max(elements), int(ds.z.max(initial=0))) + 1, -1)
    col[elements] = np.arange(len(elements))
    counts = np.zeros((len(ds), len(elements)), dtype=np.int64)
    mol = np.repeat(np.arange(len(ds)), ds.n_atoms)
    np.add.at(counts, (mol, col[ds.z.astype(np.int64)]), 1)
    return counts


def fit_element_references(ds: MoleculeSet, train_idx, elements, warn=None) -> np.ndarray | None:
    """(n_elements, n_targets) per-element references of the ``energy`` target in reporting units, fitted by
    least squares on the training molecules; None when there is no energy target or all training molecules
    have the same composition (then the training mean alone is the reference, as on rMD17)."""
    if ENERGY not in ds.target_names:
        return None
    counts = compositions(ds, elements)
    train = counts[np.asarray(train_idx)]
    if len(np.unique(train, axis=0)) < 2:
        return None
    col = ds.target_names.index(ENERGY)
    ref, _, rank, _ = np.linalg.lstsq(train.astype(np.float64), ds.y[np.asarray(train_idx), col], rcond=None)
    present = train.any(0)
    if rank < int(present.sum()) and warn is not False:
        (warn or (lambda m: print(f"[pairreg] {m}", file=sys.stderr, flush=True)))(
            f"the training compositions determine only {rank} of the {int(present.sum())} per-element energy "
            "references (e.g. every molecule has the same H:C ratio); the minimum-norm solution is used")
    out = np.zeros((len(elements), len(ds.target_names)))
    out[:, col] = np.where(present, ref, 0.0)
    return out
