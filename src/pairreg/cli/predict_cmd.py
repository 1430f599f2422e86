"""``pairreg predict FILE ... [--checkpoint RUN_DIR_OR_CKPT ...] [--json|--csv]``.

Without ``--checkpoint`` the default model shipped in ``pairreg/pretrained/`` is used (QM9 HOMO/LUMO/gap);
``--checkpoint pretrained:NAME`` picks another shipped one.
Several checkpoints are an ensemble: each target is the mean over the models, beside a ``<target>_std_<unit>``
column, their standard deviation (ddof 0): a per-molecule uncertainty.
Which model is used (and its test MAE, when known) is printed on stderr, so stdout stays machine-readable.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

# = evaluation.evaluate.DEFAULT_MAX_ATOMS (why 500 is explained there); not imported, so that parsing the
# command line does not load torch. tests/test_predict_bounds.py checks that the two agree.
DEFAULT_MAX_ATOMS = 500

NO_PRETRAINED = ("no --checkpoint given and no pretrained model is shipped with this version; "
                 "train one with `pairreg train ...` and pass --checkpoint RUN_DIR")


def add_parser(sub):
    p = sub.add_parser("predict", help="predict properties of molecules in XYZ/extXYZ/SDF/MOL files")
    # nargs="*": `--checkpoint A mol.xyz` (files after one checkpoint) must keep working now that --checkpoint takes
    # several values; split_files moves the molecule files it swallowed back
    p.add_argument("files", nargs="*", help="molecule files (.xyz, .extxyz, .sdf, .mol; one or many molecules each)")
    p.add_argument("--checkpoint", nargs="+", metavar="RUN_DIR_OR_CKPT",
                   help="run directory, .ckpt file or pretrained:NAME (a shipped model; default: pretrained:"
                        "qm9-homo-lumo-gap-pairreg); several: an ensemble, "
                        "mean and spread (standard deviation over the models) per target")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"],
                   help="where the model runs: auto = the CUDA GPU when PyTorch sees one, else the CPU (default auto)")
    p.add_argument("--max-atoms", type=_atom_limit, default=DEFAULT_MAX_ATOMS, metavar="N",
                   help="refuse molecules with more than N atoms before building their graph; memory and time "
                        "grow as N² (default %(default)s: under 1 GB and 30 s on 2 CPU cores with the shipped "
                        "model; 1,000 atoms: 2 GB and 1 min)")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")


def _atom_limit(text: str) -> int:
    """argparse type of --max-atoms: an integer ≥ 2 (a molecule needs two atoms)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of atoms, got {text!r}") from None
    if n < 2:
        raise argparse.ArgumentTypeError(f"must be at least 2 (a molecule has two atoms or more), got {n}")
    return n


def pretrained_checkpoint():
    """The default shipped model's file (pairreg.pretrained.DEFAULT); InputError when it is not shipped."""
    from .. import pretrained
    from ..data.readers import InputError

    if pretrained.DEFAULT not in pretrained.names():
        raise InputError(NO_PRETRAINED)
    return pretrained.resolve(pretrained.PREFIX + pretrained.DEFAULT)


def describe_model(info) -> str:
    """One line: checkpoint, targets with units, and the test MAE from the run's metrics.json if present."""
    targets = ", ".join(f"{n} [{u}]" for n, u in zip(info["target_names"], info["target_units"]))
    line = f"model: {info['path']}"
    if info.get("epoch") is not None:
        line += f" (epoch {info['epoch'] + 1})"  # Lightning counts epochs from 0
    line += f"; targets: {targets}"
    test = (info.get("metrics") or {}).get("test") or _test_metrics_beside(Path(info["path"]))
    maes = [f"{n} {test[f'test/{n}_mae_{u}']:.4g} {u}" for n, u in zip(info["target_names"], info["target_units"])
            if isinstance(test.get(f"test/{n}_mae_{u}"), (int, float))]
    if maes:
        line += f"; test MAE: {', '.join(maes)}"
    return line


def _test_metrics_beside(ckpt: Path) -> dict:
    """The "test" section of the run's metrics.json next to (or one folder above) a checkpoint file."""
    for metrics_file in (ckpt.parent / "metrics.json", ckpt.parent.parent / "metrics.json"):
        if metrics_file.is_file():
            try:
                test = json.loads(metrics_file.read_text()).get("test") or {}
            except (OSError, ValueError, AttributeError):
                return {}  # a damaged metrics file must not stop predictions
            return test if isinstance(test, dict) else {}
    return {}


def split_files(args) -> None:
    """Molecule files given after ``--checkpoint`` (``--checkpoint RUN mol.xyz``, as before ensembles) were taken
    as checkpoints: move those with a molecule file's suffix to the files. InputError when no file is left."""
    from ..data.readers import SDF_SUFFIXES, XYZ_SUFFIXES, InputError

    if args.checkpoint:
        moved = [c for c in args.checkpoint if Path(c).suffix.lower() in XYZ_SUFFIXES + SDF_SUFFIXES]
        args.files = [*args.files, *moved]
        args.checkpoint = [c for c in args.checkpoint if c not in moved]
        if not args.checkpoint:
            raise InputError(f"--checkpoint {' '.join(moved)}: a molecule file, not a run directory or .ckpt file")
    if not args.files:
        raise InputError("no molecule files given: pairreg predict FILE ... [--checkpoint RUN_DIR_OR_CKPT ...]")


def run(args) -> int:
    from ..data.readers import read_inputs

    split_files(args)

    def warn(message):
        print(f"pairreg predict: warning: {message}", file=sys.stderr)

    # Inputs first: a bad file or a too-large molecule is refused in about a second, before torch loads.
    molecules = read_inputs(args.files, max_atoms=args.max_atoms, warn=warn)

    from ..devices import torch_device
    from ..evaluation.evaluate import predict_molecules
    from ..training.checkpoint import load_model

    loaded = [load_model(checkpoint) for checkpoint in (args.checkpoint or [pretrained_checkpoint()])]
    infos = [info for _, info in loaded]
    check_same_targets(infos)
    names, units = infos[0]["target_names"], infos[0]["target_units"]
    shown = set()  # the same warning once, not once per ensemble member

    def warn_once(message):
        if message not in shown:
            shown.add(message)
            warn(message)

    per_model = []
    for model, info in loaded:
        model.to(torch_device(args.accelerator))
        print(f"pairreg predict: {describe_model(info)}", file=sys.stderr)
        per_model.append(predict_molecules(model, molecules, names, units,
                                           max_atoms_train=info.get("max_atoms_train"), warn=warn_once))
    rows = per_model[0] if len(per_model) == 1 else ensemble_rows(per_model, names, units)
    if args.json:  # predict_molecules refuses non-finite values; allow_nan=False keeps a bare NaN out regardless
        where = {"checkpoint": infos[0]["path"]} if len(infos) == 1 else {"checkpoints": [i["path"] for i in infos]}
        print(json.dumps({**where, "predictions": rows}, indent=2, allow_nan=False))
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    else:
        keys = [k for k in rows[0] if k not in ("source", "formula", "n_atoms")]
        print("source\tformula\t" + "\t".join(keys))
        for r in rows:
            print(f"{r['source']}\t{r['formula']}\t" + "\t".join(f"{r[k]:.6g}" for k in keys))
    return 0


def check_same_targets(infos) -> None:
    """An ensemble's checkpoints predict the same targets in the same units; InputError naming two that do not."""
    from ..data.readers import InputError

    def described(info):
        return ", ".join(f"{n} [{u}]" for n, u in zip(info["target_names"], info["target_units"]))

    for info in infos[1:]:
        if (info["target_names"], info["target_units"]) != (infos[0]["target_names"], infos[0]["target_units"]):
            raise InputError(f"an ensemble needs the same targets and units: {infos[0]['path']} predicts "
                             f"{described(infos[0])} but {info['path']} predicts {described(info)}")


def ensemble_rows(per_model: list[list[dict]], names, units) -> list[dict]:
    """Rows of several models' predictions (same molecules) → one row each: the mean per target and, after it,
    ``<target>_std_<unit>``, the standard deviation over the models (ddof 0)."""
    import numpy as np

    rows = []
    for members in zip(*per_model):
        row = {k: members[0][k] for k in ("source", "formula", "n_atoms")}
        for name, unit in zip(names, units):
            values = np.array([m[f"{name}_{unit}"] for m in members])
            row[f"{name}_{unit}"] = float(values.mean())
            row[f"{name}_std_{unit}"] = float(values.std())
        rows.append(row)
    return rows
