"""``pairreg evaluate RUN_DIR_OR_CKPT [--split test] [--json]``: per-target MAE in reporting units."""

from __future__ import annotations

import json
import math


def add_parser(sub):
    p = sub.add_parser("evaluate", help="per-target MAE of a trained model on a split")
    p.add_argument("checkpoint", help="run directory or .ckpt file")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--which", default="best", choices=["best", "last"], help="checkpoint of a run directory")
    p.add_argument("--json", action="store_true")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"],
                   help="where the model runs: auto = the CUDA GPU when PyTorch sees one, else the CPU (default auto)")


def run(args) -> int:
    from ..devices import torch_device
    from ..evaluation.evaluate import mae_per_target
    from ..training.checkpoint import load_model
    from ..training.datamodule import build_splits

    model, info = load_model(args.checkpoint, args.which)
    model.to(torch_device(args.accelerator))
    cfg = info["config"]
    ds, split = build_splits(cfg)
    part = ds.subset(split[args.split])
    units = dict(zip(info["target_names"], info["target_units"]))
    if part.forces is not None:  # rMD17: energy and the forces −∂E/∂x
        from ..evaluation.forces import energy_force_mae

        maes = energy_force_mae(model, part, cfg.batch_size)
        units["forces"] = part.force_unit
    else:
        maes = mae_per_target(model, part, cfg.batch_size)
    bad = [name for name, v in maes.items() if not math.isfinite(v)]
    if bad:  # never print "MAE nan" with exit 0
        raise ValueError(f"{info['path']}: the {args.split} MAE of {', '.join(bad)} is not finite: the model "
                         "predicts NaN or infinite values on this split")
    result = {"checkpoint": info["path"], "split": args.split, "molecules": int(len(split[args.split])),
              "mae": {name: {"value": v, "unit": units[name]} for name, v in maes.items()}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{info['path']}: {args.split} split, {result['molecules']} molecules")
        for name, v in maes.items():
            print(f"  {name:>6} MAE {v:.4f} {units[name]}")
    return 0
