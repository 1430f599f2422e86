"""Revised MD17 (rMD17): energies and forces of 10 small molecules along MD trajectories.

Christensen & von Lilienfeld, Mach. Learn.: Sci. Technol. 1, 045018 (2020); figshare record
12672038 (CC0). Every npz file holds ``nuclear_charges`` (n_atoms,), ``coords`` (frames, n_atoms, 3)
in Å, ``energies`` (frames,) in kcal/mol and ``forces`` (frames, n_atoms, 3) in kcal/mol/Å, plus
``old_indices`` (the frame's index in the original MD17 trajectory).

Two folder layouts are read:

* **split files** (the copy on our machines, andersx/rmd17-npz): ``rmd17_<mol>_<train|test>_<NN>.npz``,
  1,000 frames each, NN = 01..05;
* **the archive** (``rmd17.tar.bz2`` from figshare): ``npz_data/rmd17_<mol>.npz`` (100,000 frames)
  and ``splits/index_<train|test>_<NN>.csv`` (row indices into that file).

Sources are tried in order: the ``root`` the user gives; the cache (``$PAIRREG_CACHE/rmd17``, where a
download is extracted); a download of the archive, verified against its checksum.

Splits:

* ``official-N`` (N = 1..5): the 1,000-frame train set N as 950 train + 50 validation (a
  ``RandomState(split_seed)`` permutation), the matching test set N as test. Files of different N
  are never mixed (train sets of one N overlap test sets of another).
* ``ratio``: 80/10/10 over every distinct frame available (the paper's ratios): 9,633 frames per
  molecule in the split-file copy, 100,000 in the archive.

Reporting units: energy in meV, forces in meV/Å (1 kcal/mol = 43.364 meV).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import units
from .molecules import MoleculeSet

# name -> (formula, n_atoms); the data README lists the same formulas, checked in tests
MOLECULES = {
    "aspirin": ("C9H8O4", 21), "azobenzene": ("C12H10N2", 24), "benzene": ("C6H6", 12),
    "ethanol": ("C2H6O", 9), "malonaldehyde": ("C3H4O2", 9), "naphthalene": ("C10H8", 18),
    "paracetamol": ("C8H9NO2", 20), "salicylic": ("C7H6O3", 16), "toluene": ("C7H8", 15),
    "uracil": ("C4H4N2O2", 12),
}
ENERGY_UNIT, FORCE_UNIT = "meV", "meV/Angstrom"
NATIVE_ENERGY_UNIT, NATIVE_FORCE_UNIT = "kcal/mol", "kcal/mol/Angstrom"
SPLITS = [f"official-{n}" for n in range(1, 6)] + ["ratio"]
VAL_FRACTION_OFFICIAL = 0.05  # 50 of the 1,000 training frames of an official split
RATIOS = (0.8, 0.1, 0.1)  # the paper's 80k/10k/10k, as fractions

ARCHIVE_URL = "https://figshare.com/ndownloader/files/23950376"  # figshare 12672038, rmd17.tar.bz2
# First 12 hex digits of the archive's SHA-256 as recorded by the load-atoms project
# (jla-gardner/load-atoms, database/importers/rmd17.py). The full digest was not available offline;
# a 48-bit prefix still rejects truncated or substituted downloads.
ARCHIVE_SHA256_PREFIX = "cddeea2ec2c4"
ARCHIVE_NAME = "rmd17.tar.bz2"


class RMD17Error(ValueError):
    """rMD17 file missing or malformed; the message names the file and how to provide it."""


@dataclass
class Frames:
    """All frames of one file (or the archive's file) in native units."""

    z: np.ndarray  # (n_atoms,)
    coords: np.ndarray  # (n_frames, n_atoms, 3) Å
    energies: np.ndarray  # (n_frames,) kcal/mol
    forces: np.ndarray  # (n_frames, n_atoms, 3) kcal/mol/Å
    frame_ids: np.ndarray  # (n_frames,) index in the original MD17 trajectory (split files) or archive row


def default_cache_dir() -> Path:
    return Path(os.environ.get("PAIRREG_CACHE", Path.home() / ".cache" / "pairreg")) / "rmd17"


def check_molecule(name: str) -> str:
    if name not in MOLECULES:
        import difflib

        close = difflib.get_close_matches(name, list(MOLECULES), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise RMD17Error(f"unknown rMD17 molecule {name!r}; choose one of {sorted(MOLECULES)}.{hint}")
    return name


def check_split(split: str) -> int | None:
    """Split name → N for official-N, None for ratio."""
    if split == "ratio":
        return None
    m = re.fullmatch(r"official-([1-5])", split or "")
    if not m:
        raise RMD17Error(f"unknown rMD17 split {split!r}; choose one of {SPLITS}")
    return int(m.group(1))


def read_npz(path: Path, molecule: str) -> Frames:
    """One rMD17 npz file, with its keys, shapes and values checked."""
    try:
        with np.load(path) as f:
            data = {k: f[k] for k in f.files}
    except Exception as err:
        raise RMD17Error(f"{path}: not a readable npz file ({type(err).__name__}: {err})") from None
    for key in ("nuclear_charges", "coords", "energies", "forces"):
        if key not in data:
            raise RMD17Error(f"{path}: missing key {key!r} (has {sorted(data)})")
    z = np.asarray(data["nuclear_charges"], dtype=np.int64)
    coords, energies, forces = (np.asarray(data[k], dtype=np.float64) for k in ("coords", "energies", "forces"))
    n = len(energies)
    if coords.shape != (n, len(z), 3) or forces.shape != coords.shape:
        raise RMD17Error(f"{path}: coords {coords.shape} / forces {forces.shape} do not match "
                         f"{n} energies and {len(z)} atoms")
    expected = MOLECULES[molecule][1]
    if len(z) != expected:
        raise RMD17Error(f"{path}: {len(z)} atoms, but {molecule} has {expected}")
    for key, arr in (("coords", coords), ("energies", energies), ("forces", forces)):
        if not np.isfinite(arr).all():
            raise RMD17Error(f"{path}: {key} contains NaN or infinity")
    ids = np.asarray(data.get("old_indices", np.arange(n)), dtype=np.int64)
    return Frames(z, coords, energies, forces, ids)


def _concat(parts: list[Frames]) -> Frames:
    return Frames(parts[0].z, *(np.concatenate([getattr(p, k) for p in parts])
                                for k in ("coords", "energies", "forces", "frame_ids")))


def _take(fr: Frames, rows) -> Frames:
    rows = np.asarray(rows, dtype=np.int64)
    return Frames(fr.z, fr.coords[rows], fr.energies[rows], fr.forces[rows], fr.frame_ids[rows])


def _read_index_csv(path: Path) -> np.ndarray:
    values = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        text = line.strip().split(",")[0].strip()
        if not text:
            continue
        try:
            values.append(int(float(text)))
        except ValueError:
            if line_no == 1:  # a header
                continue
            raise RMD17Error(f"{path}:{line_no}: expected a frame index, got {line.strip()!r}") from None
    return np.asarray(values, dtype=np.int64)


# --- layouts -------------------------------------------------------------------------------------

def split_file(root: Path, molecule: str, part: str, n: int) -> Path:
    return root / f"rmd17_{molecule}_{part}_{n:02d}.npz"


def archive_files(root: Path, molecule: str) -> tuple[Path, Path] | None:
    """(npz file, splits folder) when ``root`` holds the extracted archive (``root`` or ``root/rmd17``)."""
    for base in (root, root / "rmd17"):
        npz = base / "npz_data" / f"rmd17_{molecule}.npz"
        if npz.is_file():
            return npz, base / "splits"
    return None


def has_split_files(root: Path, molecule: str) -> bool:
    return any(split_file(root, molecule, "train", n).is_file() for n in range(1, 6))


def _load_from_split_files(root: Path, molecule: str, n: int | None) -> dict[str, Frames]:
    """{"train": ..., "test": ...} of split N, or {"all": ...} (distinct frames of every file)."""
    if n is not None:
        out = {}
        for part in ("train", "test"):
            path = split_file(root, molecule, part, n)
            if not path.is_file():
                raise RMD17Error(f"{path} is missing: the official-{n} split needs both "
                                 f"rmd17_{molecule}_train_{n:02d}.npz and rmd17_{molecule}_test_{n:02d}.npz")
            out[part] = read_npz(path, molecule)
        return out
    files = sorted(root.glob(f"rmd17_{molecule}_*_[0-9][0-9].npz"))
    whole = _concat([read_npz(p, molecule) for p in files])
    # the files overlap (train sets of different splits share frames): keep each MD frame once
    _, first = np.unique(whole.frame_ids, return_index=True)
    return {"all": _take(whole, np.sort(first))}


def _load_from_archive(npz: Path, splits: Path, molecule: str, n: int | None) -> dict[str, Frames]:
    frames = read_npz(npz, molecule)
    frames.frame_ids = np.arange(len(frames.energies))  # the split CSVs index rows of this file
    if n is None:
        return {"all": frames}
    out = {}
    for part in ("train", "test"):
        csv = splits / f"index_{part}_{n:02d}.csv"
        if not csv.is_file():
            raise RMD17Error(f"{csv} is missing: the archive's splits/ folder is needed for official-{n}")
        rows = _read_index_csv(csv)
        if rows.min(initial=0) < 0 or rows.max(initial=0) >= len(frames.energies):
            raise RMD17Error(f"{csv}: frame indices outside 0..{len(frames.energies) - 1}")
        out[part] = _take(frames, rows)
    return out


# --- download --------------------------------------------------------------------------------------

def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_archive(dest_dir: Path, url: str | None = None, sha256_prefix: str | None = None,
                     timeout: float = 60.0) -> Path:
    """Download the archive to ``dest_dir/rmd17.tar.bz2`` (atomically), verify its checksum, extract
    ``npz_data/`` and ``splits/`` into ``dest_dir/rmd17/``. Returns the extracted folder."""
    url, sha256_prefix = url or ARCHIVE_URL, sha256_prefix or ARCHIVE_SHA256_PREFIX
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / ARCHIVE_NAME
    if not archive.is_file():
        fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=ARCHIVE_NAME, suffix=".part")
        try:
            print(f"[pairreg] downloading rMD17 ({url}) to {archive} ...", file=sys.stderr, flush=True)
            with urllib.request.urlopen(url, timeout=timeout) as response, os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(response, out, length=1 << 20)
            verify_archive(Path(tmp), sha256_prefix, what=url)
        except BaseException as err:
            Path(tmp).unlink(missing_ok=True)
            if isinstance(err, RMD17Error):
                raise
            raise RMD17Error(f"download of {url} failed ({type(err).__name__}: {err})") from None
        os.replace(tmp, archive)
    else:
        verify_archive(archive, sha256_prefix, what=str(archive))
    return extract_archive(archive, dest_dir)


def verify_archive(path: Path, sha256_prefix: str | None = None, what: str | None = None) -> None:
    sha256_prefix = sha256_prefix or ARCHIVE_SHA256_PREFIX
    digest = sha256_of(path)
    if not digest.startswith(sha256_prefix):
        raise RMD17Error(f"{what or path}: checksum mismatch (sha256 {digest[:16]}..., expected {sha256_prefix}...); "
                         "not the rMD17 archive or a damaged download — delete it and try again")


def extract_archive(archive: Path, dest_dir: Path) -> Path:
    """Extract the npz files and split indices (only those members, never absolute or '..' paths)."""
    target = dest_dir / "rmd17"
    staging = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".extract"))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile()
                       and re.fullmatch(r"(?:\./)?rmd17/(npz_data/rmd17_\w+\.npz|splits/index_\w+\.csv)", m.name)]
            if not members:
                raise RMD17Error(f"{archive}: no rmd17/npz_data/*.npz inside; not the rMD17 archive")
            tar.extractall(staging, members=members, filter="data")
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging / "rmd17", target)
    except (tarfile.TarError, OSError) as err:
        raise RMD17Error(f"{archive}: cannot extract ({type(err).__name__}: {err})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --- public API -----------------------------------------------------------------------------------

def locate(molecule: str, root: str | Path | None = None, cache_dir: str | Path | None = None,
           download: bool = True) -> tuple[str, Path]:
    """("split-files" | "archive", folder) holding ``molecule``: root, then cache, then download."""
    check_molecule(molecule)
    root = root or os.environ.get("PAIRREG_RMD17_ROOT") or None
    if root is not None:
        root = Path(root)
        if has_split_files(root, molecule):
            return "split-files", root
        if archive_files(root, molecule):
            return "archive", root
        raise RMD17Error(
            f"{root}: no rMD17 files for {molecule} (looked for {split_file(root, molecule, 'train', 1).name} "
            f"and npz_data/rmd17_{molecule}.npz)"
        )
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    for folder in (cache, cache / "rmd17"):
        if has_split_files(folder, molecule):
            return "split-files", folder
    if archive_files(cache, molecule):
        return "archive", cache
    ways = (
        f"Provide it in one of three ways: (1) a folder with rmd17_{molecule}_train_01.npz ... or the extracted "
        f"archive (`--set data_root=DIR` for `pairreg train`, `--root DIR` for `pairreg data`, or "
        f"$PAIRREG_RMD17_ROOT); (2) the extracted archive (its rmd17/npz_data/ folder) under the cache {cache}; "
        f"(3) the download of {ARCHIVE_URL} (rmd17.tar.bz2; on a machine without internet copy it to "
        f"{cache}/{ARCHIVE_NAME} and it is verified and extracted)"
    )
    if not download and not (cache / ARCHIVE_NAME).is_file():
        raise RMD17Error(f"rMD17 {molecule} not found (no root given, nothing in the cache). {ways}")
    try:
        download_archive(cache)
    except RMD17Error as err:
        raise RMD17Error(f"rMD17 {molecule} not found locally and the download failed: {err}. {ways}") from None
    if not archive_files(cache, molecule):
        raise RMD17Error(f"{cache / ARCHIVE_NAME}: extracted, but it holds no npz_data/rmd17_{molecule}.npz")
    return "archive", cache


def to_set(fr: Frames) -> MoleculeSet:
    """Frames → :class:`MoleculeSet` with energy (meV) as its target and forces (meV/Å) per atom."""
    n_frames, n_atoms = len(fr.energies), len(fr.z)
    return MoleculeSet(
        np.tile(fr.z, n_frames), fr.coords.reshape(-1, 3), np.full(n_frames, n_atoms),
        units.convert(fr.energies, NATIVE_ENERGY_UNIT, ENERGY_UNIT)[:, None], ["energy"], [ENERGY_UNIT],
        mol_ids=fr.frame_ids, forces=units.convert(fr.forces, NATIVE_FORCE_UNIT, FORCE_UNIT).reshape(-1, 3),
        force_unit=FORCE_UNIT,
    )


def load_rmd17(molecule: str, split: str = "official-1", root=None, cache_dir=None, split_seed: int = 0,
               download: bool = True) -> tuple[MoleculeSet, dict[str, np.ndarray]]:
    """The frames of ``molecule`` needed for ``split`` and the split's row indices into that set."""
    n = check_split(split)
    layout, folder = locate(molecule, root, cache_dir, download)
    if layout == "split-files":
        parts = _load_from_split_files(folder, molecule, n)
    else:
        npz, splits = archive_files(folder, molecule)
        parts = _load_from_archive(npz, splits, molecule, n)
    rng = np.random.RandomState(split_seed)
    if n is not None:
        n_train = len(parts["train"].energies)
        n_val = int(round(VAL_FRACTION_OFFICIAL * n_train))
        perm = rng.permutation(n_train)
        frames = _concat([parts["train"], parts["test"]])
        idx = {"train": perm[: n_train - n_val], "val": perm[n_train - n_val:],
               "test": np.arange(n_train, len(frames.energies))}
    else:
        frames = parts["all"]
        total = len(frames.energies)
        perm = rng.permutation(total)
        n_train, n_val = int(RATIOS[0] * total), int(RATIOS[1] * total)
        idx = {"train": perm[:n_train], "val": perm[n_train: n_train + n_val], "test": perm[n_train + n_val:]}
    return to_set(frames), idx


def formula(z) -> str:
    """Hill formula (C, H, then alphabetical) of atomic numbers ``z``, as ASE writes it."""
    from ase import Atoms

    return Atoms(numbers=[int(v) for v in z]).get_chemical_formula(mode="hill")


def describe(molecule: str, split: str = "official-1", root=None, cache_dir=None, split_seed: int = 0) -> dict:
    """What ``pairreg data rmd17 --json`` prints."""
    ds, idx = load_rmd17(molecule, split, root, cache_dir, split_seed, download=False)
    layout, folder = locate(molecule, root, cache_dir, download=False)
    y = ds.y[:, 0]
    forces = ds.forces.reshape(len(ds), -1, 3)  # every frame holds the same atoms
    return {
        "dataset": "rMD17", "molecule": molecule, "formula": formula(ds.atoms(0)[0]),
        "atoms": int(ds.n_atoms[0]), "source": str(folder), "layout": layout, "split": split,
        "frames": {k: int(len(v)) for k, v in idx.items()},
        "split_procedure": (f"train file {split[-1]} → 950 train + 50 val (RandomState({split_seed})), test file "
                            f"{split[-1]} → test" if split != "ratio" else
                            f"80/10/10 of all distinct frames (RandomState({split_seed}))"),
        "units": {"energy": ENERGY_UNIT, "forces": FORCE_UNIT, "coordinates": "Angstrom",
                  "native": {"energy": NATIVE_ENERGY_UNIT, "forces": NATIVE_FORCE_UNIT},
                  "kcal/mol in meV": round(units.factor(NATIVE_ENERGY_UNIT, ENERGY_UNIT), 4)},
        "energy_meV": {"mean": float(y.mean()), "std": float(y.std()), "min": float(y.min()), "max": float(y.max())},
        # the trivial baselines a model must beat on the test frames
        "floor": {"energy_test_mae_of_training_mean_meV": float(np.abs(y[idx["test"]] - y[idx["train"]].mean()).mean()),
                  "forces_test_mae_of_zero_forces_meV_per_Angstrom": float(np.abs(forces[idx["test"]]).mean())},
    }
