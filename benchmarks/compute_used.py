"""Core-hours that finished cells cost: every `pairreg bench` and time-to-accuracy cell under the given folders,
each counted once however many folders hold a copy of it.

Cells are copied between folders (`pairreg bench --reuse`, the committed records), so a plain sum counts a
trained network two or three times. A copy keeps its original's wall time and test errors to the last digit, so
those (with the cell's name and seed) identify it. A cell costs its wall time (training plus evaluation where the
cell records it; for a resumed cell every sitting's, except in step-budget cells recorded before 2026-12-07,
which kept their last sitting's alone) times the threads it ran on. Runs that left no cell JSON (single
`pairreg train` runs, probes that were stopped) are not counted, so the total is a lower bound of the compute spent.

Run:  .venv/bin/python benchmarks/compute_used.py [FOLDER ...]      (default: benchmarks/records)
e.g.  .venv/bin/python benchmarks/compute_used.py benchmarks/records runs/bench --by molecule
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from pairreg.bench.cost import cell_cost


def identity(cell: dict) -> tuple:
    """What a copy shares with its original: name, seed, training time and test errors."""
    name = cell.get("cell") or f"{cell.get('model')}-{cell.get('molecule')}-{cell.get('budget_min')}"
    trained = cell.get("train_wall_time_s") or cell.get("training_time_s")
    test = cell.get("test") or {k: v for k, v in cell.items() if k.endswith(("_meV", "_Angstrom"))}
    return name, cell.get("seed"), trained, json.dumps(test, sort_keys=True)


def group_of(cell: dict, path: Path, by: str) -> str:
    if by == "molecule":
        config = cell.get("config") or {}
        if config.get("dataset", "rmd17") != "rmd17":
            return config["dataset"]  # QM9 configs carry rMD17's default molecule too
        return cell.get("molecule") or config.get("molecule") or "?"
    return path.parent.parent.name  # the study folder holding cells/


def tally(folders: list[Path], by: str = "folder") -> tuple[dict[str, float], int, int]:
    """Core-hours per group, cells counted, copies skipped."""
    hours: dict[str, float] = defaultdict(float)
    seen: set[tuple] = set()
    counted = copies = 0
    for folder in folders:
        if not folder.is_dir():
            raise SystemExit(f"compute_used: {folder}: no such folder")
        for path in sorted(folder.rglob("cells/*.json")):
            try:
                cell = json.loads(path.read_text())
                seconds, threads = cell_cost(cell)
            except (json.JSONDecodeError, ValueError) as err:
                raise SystemExit(f"compute_used: {path}: not a finished cell ({err})")
            key = identity(cell)
            if key in seen:
                copies += 1
                continue
            seen.add(key)
            counted += 1
            hours[group_of(cell, path, by)] += seconds * threads / 3600
    return dict(hours), counted, copies


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[Path("benchmarks/records")])
    parser.add_argument("--by", choices=["folder", "molecule"], default="folder",
                        help="group the core-hours by study folder (default) or by molecule / dataset")
    args = parser.parse_args(argv)
    hours, counted, copies = tally(args.folders, args.by)
    width = max([len(g) for g in hours] + [len(args.by), 5])
    print(f"| {args.by:<{width}} | core-hours |")
    print(f"|{'-' * (width + 2)}|-----------:|")
    for group in sorted(hours):
        print(f"| {group:<{width}} | {hours[group]:10.2f} |")
    print(f"| {'total':<{width}} | {sum(hours.values()):10.2f} |")
    print(f"{counted} cells counted once each, {copies} copies skipped; runs without a cell JSON are not counted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
