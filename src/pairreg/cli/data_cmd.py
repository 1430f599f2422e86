"""``pairreg data qm9 [--json]``: molecule count, split sizes, targets and units."""

from __future__ import annotations

import json


def add_parser(sub):
    p = sub.add_parser("data", help="describe a dataset")
    p.add_argument("dataset", choices=["qm9"])
    p.add_argument("--json", action="store_true")


def run(args) -> int:
    from ..data import qm9

    info = qm9.describe()
    if args.json:
        print(json.dumps(info, indent=2))
    else:
        print(f"QM9: {info['molecules']} molecules; split {info['split']}")
        for name, t in info["targets"].items():
            print(f"  {name:>6}  {t['unit']}")
    return 0
