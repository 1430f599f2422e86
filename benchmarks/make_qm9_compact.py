"""Write QM9 as one compressed .npz (~28 MB for HOMO) for machines without qm9pack or ASE.

The GPU machine has neither qm9pack (a 103 MB wheel) nor a network, and what travels to it is limited
to 64 MiB. This keeps only what ``benchmarks/gpu.py`` needs to rebuild the same :class:`MoleculeSet`:

    z        (n_atoms,) uint8 atomic numbers
    pos_A    (n_atoms, 3) float32 coordinates in Å (the cache holds float64; float32 is what the model sees)
    n_atoms  (n_molecules,) uint8
    y        (n_molecules, n_targets) float64 targets in reporting units (atom references subtracted)
    mol_ids  (n_molecules,) int32 QM9 index, in the loader's order (so the EGNN split is the same)
    target_names, target_units  (n_targets,) strings
    format   "pairreg-qm9-compact-1"

Usage (here, where qm9pack is installed; the first run parses its CSVs, ~40 s, then reads the cache)::

    python benchmarks/make_qm9_compact.py --out .gpu/qm9_homo.npz [--targets homo]
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

from pairreg.atomic import write_atomic

FORMAT = "pairreg-qm9-compact-1"
KEYS = ("z", "pos_A", "n_atoms", "y", "mol_ids", "target_names", "target_units", "format")


class CompactError(ValueError):
    """A compact file that cannot be used; the message names the file and what is wrong."""


def save_compact(ds, path: str | Path) -> Path:
    """Write the :class:`~pairreg.data.molecules.MoleculeSet` ``ds`` to ``path`` (compressed, atomic)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(ds) and int(ds.n_atoms.max()) > 255:
        raise CompactError(f"{path}: a molecule has {int(ds.n_atoms.max())} atoms; the compact format stores counts as uint8")
    arrays = {
        "z": ds.z.astype(np.uint8), "pos_A": ds.pos.astype(np.float32), "n_atoms": ds.n_atoms.astype(np.uint8),
        "y": ds.y.astype(np.float64), "mol_ids": np.asarray(ds.mol_ids).astype(np.int32),
        "target_names": np.array(ds.target_names), "target_units": np.array(ds.target_units), "format": np.array(FORMAT),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    write_atomic(path, buffer.getvalue())  # never a half-written file, temp file removed on failure
    return path


def load_compact(path: str | Path):
    """The :class:`~pairreg.data.molecules.MoleculeSet` stored by :func:`save_compact`."""
    from pairreg.data.molecules import MoleculeSet

    path = Path(path)
    if not path.is_file():
        raise CompactError(f"{path}: no such file; write it with `python benchmarks/make_qm9_compact.py --out {path}`")
    try:
        with np.load(path, allow_pickle=False) as f:
            missing = [k for k in KEYS if k not in f.files]
            if missing:
                raise CompactError(f"{path}: not a pairreg compact QM9 file (missing {missing})")
            data = {k: f[k] for k in KEYS}
    except CompactError:
        raise
    except Exception as err:  # truncated zip, not an npz, object arrays
        raise CompactError(f"{path}: cannot be read as an .npz ({type(err).__name__}: {err})") from None
    if str(data["format"]) != FORMAT:
        raise CompactError(f"{path}: format {str(data['format'])!r}, expected {FORMAT!r}")
    n_atoms = data["n_atoms"].astype(np.int64)
    if int(n_atoms.sum()) != len(data["z"]) or len(data["pos_A"]) != len(data["z"]) or len(data["y"]) != len(n_atoms):
        raise CompactError(f"{path}: array lengths disagree (sum of n_atoms {int(n_atoms.sum())}, z {len(data['z'])}, "
                           f"pos_A {len(data['pos_A'])}, molecules {len(n_atoms)}, y {len(data['y'])})")
    return MoleculeSet(data["z"], data["pos_A"], n_atoms, data["y"], [str(s) for s in data["target_names"]],
                       [str(s) for s in data["target_units"]], mol_ids=data["mol_ids"].astype(np.int64))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=".gpu/qm9_homo.npz", help="output file (default %(default)s)")
    p.add_argument("--targets", default="homo", help="comma-separated QM9 targets (default %(default)s)")
    args = p.parse_args(argv)
    from pairreg.data import qm9

    try:
        ds = qm9.load_qm9([t.strip() for t in args.targets.split(",") if t.strip()])
    except (KeyError, qm9.QM9Error) as err:
        print(f"make_qm9_compact: error: {err}", file=sys.stderr)
        return 2
    out = save_compact(ds, args.out)
    print(f"wrote {out}: {len(ds)} molecules, {len(ds.z)} atoms, targets {ds.target_names}, "
          f"{out.stat().st_size / 2**20:.1f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
