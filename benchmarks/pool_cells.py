"""Pool finished `pairreg bench` cells from several folders and compare two rows, with each cell's budget shown.

`pairreg bench --reuse` joins only cells that compute the same thing, so a seed trained to a step budget never
joins seeds trained to a wall budget. When the step budget was chosen to equal what the wall budget gave (say
the mean optimiser steps that 30 minutes gave the earlier seeds, on the machine they ran on), the seeds measure
the same training and may be pooled; this script does that in the open: it lists every cell with its budget and
steps, then prints `--compare`'s table (mean ± std over the pooled seeds, Welch's and the rank test's p).

Run:  .venv/bin/python benchmarks/pool_cells.py FOLDER_OR_CELL_JSON ... --compare ROW_A ROW_B [--compare ...] [--x X]

e.g.  benchmarks/pool_cells.py benchmarks/records/fair-depth-ethanol-30-L4 runs/bench/fair-L4-steps \
          --compare residual pairreg
      benchmarks/pool_cells.py FOLDERS ... --compare pairreg@2 pairreg@8    # one row at two depths, as in
                                                                             # `pairreg bench --compare none@9 none@12`
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from pairreg.bench.report import _metric, compare_table
from pairreg.cli.bench_cmd import _row_at_column
from pairreg.training.metric_names import FORCE_NAME


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


def load_cells(sources: list[str]) -> list[dict]:
    """The finished cells of the sources, each with the file it came from under "source"."""
    return [json.loads(p.read_text()) | {"source": str(p)} for p in cell_files(sources)]


def refuse_duplicate_seeds(results: list[dict], script: str) -> None:
    """Stop when one (row, column, seed) comes from more than one source: pooled, it would count twice."""
    sources_of = defaultdict(list)
    for r in results:
        sources_of[(r["group"], r["x"], r["seed"])].append(r["source"])
    for (row, x, seed), found in sources_of.items():
        if len(found) > 1:
            raise SystemExit(f"{script}: {row}, column {x}, seed {seed} comes from more than one source "
                             f"({', '.join(found)}); pass one of them")


def budget(result: dict) -> str:
    config = result.get("config") or {}
    if config.get("time_budget_min") is not None:
        return f"{config['time_budget_min']:g} min"
    if config.get("step_budget"):
        return f"{config['step_budget']:,} steps"
    return f"{config.get('epochs')} epochs"


def _columns(pair: list[str], x: float | None, parser) -> tuple[tuple[str, float | None], tuple[str, float | None]]:
    """(row, column) of each side of one --compare pair; ROW@X names a column, --x gives both sides one."""
    try:
        (row_a, x_a), (row_b, x_b) = map(_row_at_column, pair)
    except ValueError as err:  # e.g. pairreg@eight: say which argument, not a traceback
        parser.error(str(err))
    if x_a is not None or x_b is not None:  # ROW@X: one cell of the grid against another (x_a or x_b alone: both)
        if x is not None:
            raise SystemExit("pool_cells: give the columns either as ROW@X in --compare or with --x, not both")
        return (row_a, x_a if x_a is not None else x_b), (row_b, x_b if x_b is not None else x_a)
    return (row_a, x), (row_b, x)


def report(pooled: list[dict], side_a: tuple[str, float | None], side_b: tuple[str, float | None]) -> None:
    """Print the cells of one comparison with their budgets, then its table (mean ± std, Welch's and rank p)."""
    (row_a, x_a), (row_b, x_b) = side_a, side_b
    results = [r for r in pooled if any(r["group"] == row and x in (None, r["x"]) for row, x in (side_a, side_b))]
    refuse_duplicate_seeds(results, "pool_cells")
    print("| row | x | seed | budget | optimizer steps | test energy (meV) | test forces (meV/Å) | source |")
    print("|---|---|---|---|---|---|---|---|")
    for r in sorted(results, key=lambda r: ([row_a, row_b].index(r["group"]), r["x"] or 0, r["seed"])):
        energy, forces = _metric(r, "test", "energy", "meV"), _metric(r, "test", FORCE_NAME, "meV/Angstrom")
        cells = [r["group"], r["x"], r["seed"], budget(r), f"{r.get('optimizer_steps') or 0:,}",
                 "–" if energy is None else f"{energy:.3f}", "–" if forces is None else f"{forces:.2f}", r["source"]]
        print("| " + " | ".join(map(str, cells)) + " |")
    budgets = sorted({budget(r) for r in results})
    if len(budgets) > 1:
        print(f"\nPooled budgets: {', '.join(budgets)} (the comparison below treats them as the same training)")
    print()
    if x_a is not None and x_a != x_b:
        print(compare_table(results, row_a, row_b, depth_a=x_a, depth_b=x_b))
    else:
        print(compare_table(results, row_a, row_b))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="study folders (their cells/*.json) or cell JSON files")
    parser.add_argument("--compare", nargs=2, metavar=("ROW_A", "ROW_B"), action="append", required=True,
                        help="two rows (ROW or ROW@X); repeat for more comparisons of the same cells")
    parser.add_argument("--x", type=float, default=None, help="only cells at this column (e.g. depth 4)")
    args = parser.parse_args(argv)
    pairs = [_columns(pair, args.x, parser) for pair in args.compare]  # every argument checked before any loading
    pooled = load_cells(args.sources)
    for i, ((side_a, side_b), names) in enumerate(zip(pairs, args.compare)):
        if i:
            print()
        if len(pairs) > 1:
            print(f"## {' vs '.join(names)}\n")
        report(pooled, side_a, side_b)
    return 0


if __name__ == "__main__":
    sys.exit(main())
