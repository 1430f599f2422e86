"""The optimiser steps a wall budget gave, per row and depth, and the steps it would give at a depth never run.

A study that moves to a faster machine keeps its cells comparable by training the new ones to the steps the old
machine's wall budget gave (a step budget). For a depth the old machine ran, that is the mean of its cells' steps.
For a depth it never ran, this interpolates the time per step between the nearest depths it ran on either side,
as a power law in depth (t = c · L^a through the two points; the cost per layer falls with depth, so a straight
line in L would overestimate it), and refuses to extrapolate.

Run:  .venv/bin/python benchmarks/step_budgets.py FOLDER_OR_CELL_JSON ... [--depths 12 ...]

e.g.  benchmarks/step_budgets.py benchmarks/records/depth-ethanol-30 --depths 12
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pool_cells import load_cells  # noqa: E402

from pairreg.bench.runner import wall_budget_cells  # noqa: E402


def steps_per_cell(sources: list[str]) -> tuple[dict, float]:
    """{(row, depth): [optimiser steps of each wall-budget cell]} and the budget in seconds."""
    per_cell, budgets = defaultdict(list), set()
    # step- or epoch-budget cells say nothing about what a wall budget gives
    for result in wall_budget_cells(load_cells(sources)):
        if not result.get("optimizer_steps"):
            continue
        minutes = result["config"]["time_budget_min"]
        budgets.add(float(minutes))
        per_cell[(result["group"], result["x"])].append(result["optimizer_steps"])
    if not per_cell:
        raise SystemExit("step_budgets: no wall-budget cells with optimizer_steps among the sources")
    if len(budgets) > 1:
        raise SystemExit(f"step_budgets: the cells mix wall budgets {sorted(budgets)} min; pass one budget's cells")
    return per_cell, 60.0 * budgets.pop()


def interpolate(depths_to_seconds: dict[float, float], depth: float) -> float:
    """Seconds per step at `depth`, on the power law through the nearest measured depths either side."""
    below = [d for d in depths_to_seconds if d < depth]
    above = [d for d in depths_to_seconds if d > depth]
    if not below or not above:
        raise ValueError(f"depth {depth:g} is outside the measured depths {sorted(depths_to_seconds)}")
    lo, hi = max(below), min(above)
    exponent = math.log(depths_to_seconds[hi] / depths_to_seconds[lo]) / math.log(hi / lo)
    return depths_to_seconds[lo] * (depth / lo) ** exponent


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="study folders (their cells/*.json) or cell JSON files")
    parser.add_argument("--depths", nargs="+", type=float, default=[], help="depths to interpolate a budget for")
    args = parser.parse_args(argv)
    per_cell, budget_s = steps_per_cell(args.sources)
    print(f"Wall budget {budget_s / 60:g} min per cell.\n")
    print("| row | depth | cells | mean steps | ms per step | source |")
    print("|---|---|---|---|---|---|")
    rows = sorted({row for row, _ in per_cell})
    for row in rows:
        # the mean step count of a depth's cells, and the time per step it implies
        mean_steps = {x: sum(s) / len(s) for (r, x), s in per_cell.items() if r == row}
        seconds = {x: budget_s / steps for x, steps in mean_steps.items()}
        for x in sorted(set(mean_steps) | set(args.depths)):
            if x in mean_steps:
                n, steps, source = len(per_cell[(row, x)]), round(mean_steps[x]), "measured"
            else:
                try:
                    n, steps, source = 0, round(budget_s / interpolate(seconds, x)), "interpolated (power law in depth)"
                except ValueError as error:
                    print(f"| {row} | {x:g} | 0 | – | – | {error} |")
                    continue
            print(f"| {row} | {x:g} | {n} | {steps:,} | {1e3 * budget_s / steps:.2f} | {source} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
