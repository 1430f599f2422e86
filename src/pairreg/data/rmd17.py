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
download is extracted); a download of the archive, verified against its size, SHA-256 and MD5.

The cache is shared safely: downloading and extracting happen under an exclusive ``flock`` on
``<cache>/.rmd17.lock``, so of several processes started together one downloads and extracts, the
others wait and then find the extracted files. The download streams to ``rmd17.tar.bz2.part``, which is
deleted on any error or Ctrl-C; a ``.part`` left by a killed process is deleted (not resumed) by the next
download, which holds the lock, so no other process can still be writing it.

Splits:

* ``official-N`` (N = 1..5): the 1,000-frame train set N as 950 train + 50 validation (a
  ``RandomState(split_seed)`` permutation), the matching test set N as test. Files of different N
  are never mixed (train sets of one N overlap test sets of another).
* ``ratio``: 80/10/10 over every distinct frame available (the paper's ratios): 9,633 frames per
  molecule in the split-file copy, 100,000 in the archive.

Reporting units: energy in meV, forces in meV/Å (1 kcal/mol = 43.364 meV).
"""

from __future__ import annotations

import contextlib
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

try:
    import fcntl
except ImportError:  # not on Windows: the cache is then not locked
    fcntl = None

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
# figshare 12672038 version 3, file rmd17.tar.bz2: its size and MD5 as figshare lists them, and its SHA-256
ARCHIVE_SIZE = 1_066_301_513  # bytes
ARCHIVE_SHA256 = "cddeea2ec2c4b22a9de16a9a65a3eeedac5b29da9c99c20bbff0153912bf922b"
ARCHIVE_MD5 = "cb1a927628d96f2e966025da4fb63d18"
ARCHIVE_NAME = "rmd17.tar.bz2"
LOCK_NAME = ".rmd17.lock"
CHUNK = 1 << 20  # bytes read and hashed at a time


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
        if "allow_pickle" in str(err):  # numpy's advice to allow unpickling must not reach users
            raise RMD17Error(f"{path}: not a readable npz file, or it holds pickled Python objects; refusing to load it") from None
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

def _say(message: str) -> None:
    print(f"[pairreg] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def cache_lock(cache: Path):
    """Hold an exclusive lock on ``cache`` while downloading or extracting into it; other processes wait."""
    cache.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield
        return
    with open(cache / LOCK_NAME, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say(f"waiting for another process that is downloading or extracting rMD17 in {cache} ...")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def file_digests(path: Path) -> tuple[int, str, str]:
    """(size in bytes, SHA-256, MD5) of a file."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(CHUNK), b""):
            size += len(block)
            sha.update(block)
            md5.update(block)
    return size, sha.hexdigest(), md5.hexdigest()


def check_digests(size: int, sha256: str, md5: str, what: str) -> None:
    """Raise RMD17Error unless size, SHA-256 and MD5 are the pinned ones of the figshare archive."""
    advice = "not the rMD17 archive or a damaged download; delete it and try again"
    if size != ARCHIVE_SIZE:
        raise RMD17Error(f"{what}: {size:,} bytes, but rmd17.tar.bz2 has {ARCHIVE_SIZE:,}; {advice}")
    if sha256 != ARCHIVE_SHA256:
        raise RMD17Error(f"{what}: checksum mismatch (sha256 {sha256[:16]}..., expected {ARCHIVE_SHA256[:16]}...); "
                         f"{advice}")
    if md5 != ARCHIVE_MD5:
        raise RMD17Error(f"{what}: checksum mismatch (md5 {md5}, expected {ARCHIVE_MD5}); {advice}")


def verify_archive(path: Path, what: str | None = None) -> None:
    size = path.stat().st_size
    if size != ARCHIVE_SIZE:  # no need to hash a file of the wrong size
        check_digests(size, ARCHIVE_SHA256, ARCHIVE_MD5, what or str(path))
    check_digests(*file_digests(path), what or str(path))


def _fetch(url: str, dest: Path, timeout: float) -> tuple[int, str, str]:
    """Stream ``url`` into ``dest``, hashing on the way; never reads more than ARCHIVE_SIZE + 1 bytes."""
    sha, md5, size = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    with urllib.request.urlopen(url, timeout=timeout) as response, open(dest, "wb") as out:
        announced = (response.headers.get("Content-Length") or "").strip()
        if announced.isdigit() and int(announced) != ARCHIVE_SIZE:
            raise RMD17Error(f"{url}: the server announces {int(announced):,} bytes, but rmd17.tar.bz2 has "
                             f"{ARCHIVE_SIZE:,}; not downloading it")
        while True:
            block = response.read(min(CHUNK, ARCHIVE_SIZE + 1 - size))
            if not block:
                return size, sha.hexdigest(), md5.hexdigest()
            size += len(block)
            if size > ARCHIVE_SIZE:
                raise RMD17Error(f"{url}: the server sent more than the {ARCHIVE_SIZE:,} bytes of rmd17.tar.bz2; "
                                 "stopped reading")
            sha.update(block)
            md5.update(block)
            out.write(block)


def download_archive(dest_dir: Path, url: str | None = None, timeout: float = 60.0) -> Path:
    """Download the archive to ``dest_dir/rmd17.tar.bz2`` (via a ``.part`` file), verify its size and checksums,
    extract ``npz_data/`` and ``splits/`` into ``dest_dir/rmd17/``. Returns the extracted folder.

    Call it holding :func:`cache_lock` on ``dest_dir`` (:func:`locate` does): it deletes any ``.part`` file
    there as left behind by a killed process.
    """
    url = url or ARCHIVE_URL
    dest_dir.mkdir(parents=True, exist_ok=True)
    archive = dest_dir / ARCHIVE_NAME
    if not archive.is_file():
        for stale in sorted(dest_dir.glob(f"{ARCHIVE_NAME}*.part")):
            _say(f"deleting {stale}, an incomplete download left by a process that was stopped")
            stale.unlink(missing_ok=True)
        part = dest_dir / f"{ARCHIVE_NAME}.part"
        _say(f"downloading rMD17 ({url}, {ARCHIVE_SIZE / 1e9:.2f} GB) to {archive} ...")
        try:
            try:
                check_digests(*_fetch(url, part, timeout), what=url)
            except RMD17Error:
                raise
            except Exception as err:  # network and disk errors; KeyboardInterrupt and SystemExit pass unchanged
                raise RMD17Error(f"download of {url} failed ({type(err).__name__}: {err})") from None
        except BaseException:
            part.unlink(missing_ok=True)  # never leave a partial GB behind, Ctrl-C included
            raise
        os.replace(part, archive)
    else:
        verify_archive(archive, what=str(archive))
    return extract_archive(archive, dest_dir)


def extract_archive(archive: Path, dest_dir: Path) -> Path:
    """Extract the npz files and split indices (only those members, never absolute or '..' paths)."""
    target = dest_dir / "rmd17"
    for stale in dest_dir.glob(".extract*"):  # left by a killed extraction (callers hold the cache lock)
        shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(dir=dest_dir, prefix=".extract"))
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = [m for m in tar.getmembers() if m.isfile()
                       and re.fullmatch(r"(?:\./)?rmd17/(npz_data/rmd17_\w+\.npz|splits/index_\w+\.csv)", m.name)]
            if not members:
                raise RMD17Error(f"{archive}: no rmd17/npz_data/*.npz inside; not the rMD17 archive")
            tar.extractall(staging, members=members, filter="data")
        if target.exists():  # move the old copy aside, so the new one appears in one rename
            os.replace(target, staging / "old")
        os.replace(staging / "rmd17", target)
    except (tarfile.TarError, OSError) as err:
        raise RMD17Error(f"{archive}: cannot extract ({type(err).__name__}: {err})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


# --- public API -----------------------------------------------------------------------------------

BUNDLED = "bundled"  # data_root value: the copy of ethanol's official-1 files shipped in the package


def bundled_root() -> Path:
    """The package folder holding ethanol's official-1 train and test files (rmd17_bundled/README.md)."""
    return Path(__file__).with_name("rmd17_bundled")


def locate(molecule: str, root: str | Path | None = None, cache_dir: str | Path | None = None,
           download: bool = True) -> tuple[str, Path]:
    """("split-files" | "archive", folder) holding ``molecule``: root, then cache, then download."""
    check_molecule(molecule)
    root = root or os.environ.get("PAIRREG_RMD17_ROOT") or None
    if root == BUNDLED:
        root = bundled_root()
        if not has_split_files(root, molecule):
            raise RMD17Error(f"data_root=bundled holds only ethanol's official-1 files ({root}); "
                             f"for {molecule} give a folder or let the archive download")
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
        with cache_lock(cache):
            if not archive_files(cache, molecule):  # else another process extracted it while this one waited
                download_archive(cache)
    except (RMD17Error, OSError) as err:
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
