"""Does a deep EGNN oversmooth, and which mitigation stops it? A first look on real QM9.

For each depth and mitigation: the ratio E_last / E_first of the node features' Dirichlet
energy (molecule-averaged, complete graph; E_first is after layer 1) on the first N molecules of
the QM9 test split, for the untrained model and after a short training run (``pairreg``'s own
``train`` on a small HOMO subset). Resumable: each finished cell is a JSON file in ``--out``
and is not re-run.

Run:  .venv/bin/python benchmarks/oversmoothing.py --out runs/oversmoothing
Writes ``table.md`` (ratios, val MAE) and ``energy_per_layer.png`` (trained, deepest depth).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from pairreg.config import load_config
from pairreg.data import qm9
from pairreg.evaluation.diagnostics import diagnose_model, energy_ratio
from pairreg.evaluation.plots import plot_layer_diagnostics
from pairreg.training.checkpoint import load_model
from pairreg.training.datamodule import build_splits
from pairreg.training.module import build_model
from pairreg.training.run import train


def cell(args, ds, mitigation: str, depth: int) -> dict:
    overrides = [f"mitigation={mitigation}", f"n_layers={depth}", f"hidden={args.hidden}", f"subset_train={args.train}",
                 "subset_val=500", f"subset_test={args.molecules}", f"epochs={args.epochs}", "batch_size=32",
                 "progress=false", "eval_test=false", f"out={args.out}/runs", f"name={mitigation}-L{depth}", "seed=0"]
    cfg = load_config("qm9-demo", overrides)
    _, split = build_splits(cfg, ds)
    probe = ds.subset(split["test"])  # the first N test molecules
    torch.manual_seed(cfg.seed)
    untrained = diagnose_model(build_model(cfg), probe)
    start = time.perf_counter()
    summary = train(cfg, dataset=ds)
    model, _ = load_model(summary["run_dir"])
    trained = diagnose_model(model, probe)
    return {"mitigation": mitigation, "depth": depth, "untrained": untrained, "trained": trained,
            "ratio_untrained": energy_ratio(untrained), "ratio_trained": energy_ratio(trained),
            "ratio_trained_scale_free": energy_ratio(trained, "dirichlet_h_scale_free"),
            "val_homo_mae_meV": summary["val"]["val/homo_mae_meV"], "train_time_s": round(time.perf_counter() - start, 1)}


def fmt(x: float) -> str:
    return "nan" if math.isnan(x) else f"{x:.3g}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--mitigations", nargs="+", default=["none", "residual", "pairreg", "pairnorm", "g2", "noisynodes"])
    p.add_argument("--molecules", type=int, default=1000, help="QM9 test molecules probed")
    p.add_argument("--train", type=int, default=1500, help="training molecules (HOMO)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/oversmoothing")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    ds = qm9.load_qm9(["homo"])
    cells = [(m, d) for m in args.mitigations for d in args.depths]
    results, t0, done_now = [], time.perf_counter(), 0
    for k, (m, d) in enumerate(cells):
        path = out / "cells" / f"{m}-L{d}.json"
        if path.exists():
            results.append(json.loads(path.read_text()))
            continue
        elapsed = time.perf_counter() - t0
        eta = elapsed / done_now * (len(cells) - k) if done_now else float("nan")
        print(f"[{k + 1}/{len(cells)}] {m}, {d} layers (elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min)", flush=True)
        result = cell(args, ds, m, d)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1))
        tmp.replace(path)
        results.append(result)
        done_now += 1
    lines = ["| mitigation | " + " | ".join(f"L={d}" for d in args.depths) + " |", "|---|" + "---|" * len(args.depths)]
    for key, title in [("ratio_untrained", "E_L/E_1 untrained"), ("ratio_trained", "E_L/E_1 trained"),
                       ("ratio_trained_scale_free", "scale-free E_L/E_1 trained"), ("val_homo_mae_meV", "val HOMO MAE (meV)")]:
        lines.append(f"| **{title}** |" + " |" * len(args.depths))
        for m in args.mitigations:
            row = {r["depth"]: r[key] for r in results if r["mitigation"] == m}
            lines.append(f"| {m} | " + " | ".join(fmt(row.get(d, float("nan"))) for d in args.depths) + " |")
    table = "\n".join(lines)
    (out / "table.md").write_text(table + "\n")
    deepest = max(args.depths)
    runs = [{"label": f"{r['mitigation']}, {deepest} layers", "diagnostics": r["trained"]}
            for r in results if r["depth"] == deepest]
    plot_layer_diagnostics(runs, out / "energy_per_layer.png")
    print(table)
    print(f"wrote {out / 'table.md'} and {out / 'energy_per_layer.png'}")


if __name__ == "__main__":
    main()
