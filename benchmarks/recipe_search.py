"""Recipe search for the budget presets: short wall-budget runs of candidate settings, one after another.

Each candidate is a preset plus ``--set`` overrides, trained for ``--budget`` minutes (``time_budget_min``)
on the same data; the table gives the best-validation model's validation and test MAE and the epochs it
managed. Candidates run one at a time, never side by side, so each gets the same 2 cores. Finished
candidates (``metrics.json`` present) are not re-run: the search can be continued in several sittings.

Run:  .venv/bin/python benchmarks/recipe_search.py --budget 5 --out runs/recipe-search
      [--data-root ../shared/data/rmd17] [--molecule ethanol] [--only NAME ...] [--list]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

import torch

from pairreg.config import load_config
from pairreg.training.run import train

# name → (preset, overrides); the first is the issue-14 probe's recipe (L1, MAD scale, no EMA), the baseline
CANDIDATES = {
    "probe-l1": ("rmd17-1h", ["n_layers=4", "energy_loss=l1", "forces_loss=l1", "energy_scale=mad", "force_weight=100",
                              "ema_decay=null", "stage2_frac=null", "warmup_frac=0.0"]),
    "mse-rms": ("rmd17-1h", ["n_layers=4", "stage2_frac=null"]),
    "mse-rms-stage2-L4-none": ("rmd17-1h", ["n_layers=4", "mitigation=none"]),
    "mse-rms-stage2-L4-residual": ("rmd17-1h", ["n_layers=4", "mitigation=residual"]),
    "mse-rms-stage2": ("rmd17-1h", ["n_layers=4"]),
    "mse-rms-stage2-L6": ("rmd17-1h", []),
    "mse-rms-stage2-L6-none": ("rmd17-1h", ["mitigation=none"]),
    "mse-rms-stage2-L6-lr2e-3": ("rmd17-1h", ["lr=2e-3"]),
    "mse-rms-stage2-L6-fw100": ("rmd17-1h", ["force_weight=100", "stage2_energy_weight=1000"]),
    "mse-rms-stage2-L6-bessel": ("rmd17-1h", ["rbf=bessel", "n_rbf=8", "cutoff_A=5.0"]),
}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--budget", type=float, default=5.0, help="minutes of training per candidate (default 5)")
    p.add_argument("--out", default="runs/recipe-search")
    p.add_argument("--data-root", default=None, help="rMD17 folder (default: the bundled ethanol files)")
    p.add_argument("--molecule", default="ethanol")
    p.add_argument("--only", nargs="+", help="run only these candidates")
    p.add_argument("--set", nargs="*", default=[], help="extra overrides for every candidate")
    p.add_argument("--list", action="store_true", help="list the candidates and exit")
    args = p.parse_args(argv)
    if args.list:
        for name, (preset, over) in CANDIDATES.items():
            print(f"{name}: --preset {preset} --set {' '.join(over)}")
        return 0
    out = Path(args.out) / f"{args.molecule}-{args.budget:g}min"
    names = args.only or list(CANDIDATES)
    unknown = [n for n in names if n not in CANDIDATES]
    if unknown:
        p.error(f"unknown candidates {unknown}; choose from {list(CANDIDATES)}")
    rows = []
    for name in names:
        preset, over = CANDIDATES[name]
        run = out / name
        if not (run / "metrics.json").is_file():
            if run.exists():  # an interrupted candidate: start it again (budget runs are not resumed)
                shutil.rmtree(run)
            cfg = load_config(preset, [*over, *args.set, f"molecule={args.molecule}",
                                       f"data_root={args.data_root or 'bundled'}", f"time_budget_min={args.budget}",
                                       f"out={out}", f"name={name}", "progress=false"])
            train(cfg)
        m = json.loads((run / "metrics.json").read_text())
        rows.append((name, m))
    print(f"\nrecipe search: {args.molecule}, official-1, budget {args.budget:g} min per candidate; "
          f"{os.cpu_count()} CPUs, torch {torch.__version__}, {platform.processor() or platform.machine()}; "
          f"command: {' '.join(sys.argv)}\n")
    print("| candidate | overrides | epochs | val E (meV) | val F (meV/Å) | test E (meV) | test F (meV/Å) |")
    print("|---|---|---|---|---|---|---|")
    for name, m in rows:
        v, t = m["val"], m.get("test", {})
        print(f"| {name} | {' '.join(CANDIDATES[name][1]) or '(preset)'} | {m.get('epochs_run', '?')} "
              f"| {v['val/energy_mae_meV']:.2f} | {v['val/forces_mae_meV_per_Angstrom']:.2f} "
              f"| {t.get('test/energy_mae_meV', float('nan')):.2f} | {t.get('test/forces_mae_meV_per_Angstrom', float('nan')):.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
