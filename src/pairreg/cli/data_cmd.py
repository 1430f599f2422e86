"""``pairreg data qm9 [--json]`` and ``pairreg data rmd17 --molecule NAME [--root DIR] [--split S] [--json]``."""

from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("data", help="describe a dataset: sizes, split, units")
    p.add_argument("dataset", choices=["qm9", "rmd17"])
    p.add_argument("--molecule", default="aspirin", help="rMD17 molecule (aspirin, ethanol, ...)")
    p.add_argument("--root", help="rMD17 folder (split files or the extracted archive); default: "
                                  "$PAIRREG_RMD17_ROOT, then the cache")
    p.add_argument("--split", default="official-1", help="rMD17 split: official-1 .. official-5 or ratio")
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    if args.dataset == "rmd17":
        return _rmd17(args)
    from ..data import qm9

    info = qm9.describe()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"QM9: {info['molecules']} molecules; split {info['split']}")
        print(f"  {'target':>6}  {'unit':<10} test MAE of the training mean (the floor a model must beat)")
        for name, t in info["targets"].items():
            print(f"  {name:>6}  {t['unit']:<10} {t['test_mae_of_training_mean']:.4g}")
    return 0


def _rmd17(args) -> int:
    from ..data import rmd17

    info = rmd17.describe(args.molecule, args.split, args.root, split_seed=args.split_seed)
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        u = info["units"]
        print(f"rMD17 {info['molecule']} ({info['formula']}, {info['atoms']} atoms) from {info['source']} "
              f"[{info['layout']}]\nsplit {info['split']}: {info['frames']}\n  {info['split_procedure']}\n"
              f"units: energy {u['energy']}, forces {u['forces']}, coordinates {u['coordinates']} "
              f"(source: {u['native']['energy']}, {u['native']['forces']}; 1 kcal/mol = {u['kcal/mol in meV']} meV)")
        floor = info["floor"]
        print(f"floor a model must beat on the test frames: energy MAE of the training mean "
              f"{floor['energy_test_mae_of_training_mean_meV']:.1f} meV, force MAE of zero forces "
              f"{floor['forces_test_mae_of_zero_forces_meV_per_Angstrom']:.1f} meV/Å")
    return 0
