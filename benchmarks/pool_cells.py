"""Pool finished `pairreg bench` cells from several folders and compare two rows, with each cell's budget shown.

`pairreg bench --reuse` joins only cells that compute the same thing, so a seed trained to a step budget never
joins seeds trained to a wall budget. When the step budget was chosen to equal what the wall budget gave (say
the mean optimiser steps that 30 minutes gave the earlier seeds, on the machine they ran on), the seeds measure
the same training and may be pooled; this script does that in the open: it lists every cell with its budget and
steps, then prints `--compare`'s table (mean ± std over the pooled seeds, Welch's p).

Run:  .venv/bin/python benchmarks/pool_cells.py FOLDER_OR_CELL_JSON ... --compare ROW_A ROW_B [--x X | --depths XA XB]

e.g.  benchmarks/pool_cells.py benchmarks/records/fair-depth-ethanol-30-L4 runs/bench/fair-L4-steps \
          --compare residual pairreg
      benchmarks/pool_cells.py FOLDERS ... --compare pairreg pairreg --depths 2 8    # one row across depths
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pairreg.bench.report import _metric, compare_table
from pairreg.training.module import FORCE_NAME


def cell_files(sources: list[str]) -> list[Path]:
    files = []
    for source in map(Path, sources):
        if source.is_dir():
            found = sorted((source / "cells").glob("*.json"))
            if not found:
                raise SystemExit(f"pool_cells: {source}: no finished cells (expected {source / 'cells'}/*.json)")
            files += found
        elif source.is_file():
            files.append(source)
        else:
            raise SystemExit(f"pool_cells: {source}: no such folder or file")
    return files


def budget(result: dict) -> str:
    config = result.get("config") or {}
    if config.get("time_budget_min") is not None:
        return f"{config['time_budget_min']:g} min"
    if config.get("step_budget"):
        return f"{config['step_budget']:,} steps"
    return f"{config.get('epochs')} epochs"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="study folders (their cells/*.json) or cell JSON files")
    parser.add_argument("--compare", nargs=2, metavar=("ROW_A", "ROW_B"), required=True)
    columns = parser.add_mutually_exclusive_group()
    columns.add_argument("--x", type=float, default=None, help="only cells at this column (e.g. depth 4)")
    columns.add_argument("--depths", nargs=2, type=float, metavar=("XA", "XB"), default=None,
                         help="ROW_A's cells at column XA against ROW_B's at XB (the same row twice: depth against depth)")
    args = parser.parse_args(argv)
    results = [json.loads(p.read_text()) | {"source": str(p)} for p in cell_files(args.sources)]
    keep = [args.x] if args.x is not None else args.depths
    results = [r for r in results if r["group"] in args.compare and (keep is None or r["x"] in keep)]
    seen = {(r["group"], r["x"], r["seed"]) for r in results}
    if len(seen) < len(results):
        raise SystemExit("pool_cells: the same row, column and seed comes from more than one source; pass one of them")
    print("| row | x | seed | budget | optimizer steps | test energy (meV) | test forces (meV/Å) | source |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: (args.compare.index(r["group"]), r["x"] or 0, r["seed"])):
        energy, forces = _metric(r, "test", "energy", "meV"), _metric(r, "test", FORCE_NAME, "meV/Angstrom")
        cells = [r["group"], r["x"], r["seed"], budget(r), f"{r.get('optimizer_steps') or 0:,}",
                 "–" if energy is None else f"{energy:.3f}", "–" if forces is None else f"{forces:.2f}", r["source"]]
        print("| " + " | ".join(map(str, cells)) + " |")
    budgets = sorted({budget(r) for r in results})
    if len(budgets) > 1:
        print(f"\nPooled budgets: {', '.join(budgets)} (the comparison below treats them as the same training)")
    print()
    if args.depths:
        xa, xb = (int(x) if x.is_integer() else x for x in args.depths)
        print(compare_table(results, *args.compare, depth_a=xa, depth_b=xb))
    else:
        print(compare_table(results, *args.compare))
    return 0


if __name__ == "__main__":
    sys.exit(main())
