"""``pairreg predict FILE ... --checkpoint RUN_DIR_OR_CKPT [--json|--csv]``."""

from __future__ import annotations

import csv
import json
import sys


def add_parser(sub):
    p = sub.add_parser("predict", help="predict properties of molecules in XYZ/extXYZ/SDF files")
    p.add_argument("files", nargs="+", help="molecule files (one or many molecules each)")
    p.add_argument("--checkpoint", required=True, help="run directory or .ckpt file")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")


def run(args) -> int:
    from ..evaluation.evaluate import predict_files
    from ..training.checkpoint import load_model

    model, info = load_model(args.checkpoint)
    rows = predict_files(model, args.files, info["target_names"], info["target_units"])
    if args.json:
        print(json.dumps({"checkpoint": info["path"], "predictions": rows}, indent=2))
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
