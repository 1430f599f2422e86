"""``pairreg export RUN_DIR OUT.ckpt``: a slim checkpoint (weights, config, units, test MAE) to share or ship."""

from __future__ import annotations

import sys


def add_parser(sub):
    p = sub.add_parser("export", help="write a slim copy of a run's best checkpoint (no optimiser state)")
    p.add_argument("run_dir", help="a pairreg run directory")
    p.add_argument("out", help="the .ckpt file to write")


def run(args) -> int:
    from pathlib import Path

    from ..training.checkpoint import export_checkpoint, find_checkpoint

    source = find_checkpoint(args.run_dir, "best")
    dest = export_checkpoint(args.run_dir, args.out)
    print(f"wrote {dest} ({Path(dest).stat().st_size / 1e6:.2f} MB; from {source}, "
          f"{source.stat().st_size / 1e6:.2f} MB)", file=sys.stderr)
    return 0
