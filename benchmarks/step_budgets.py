"""The optimiser steps a wall budget gave, per row and depth, and the steps it would give at a depth never run.

A study that moves to a faster machine keeps its cells comparable by training the new ones to the steps the old
machine's wall budget gave (a step budget). For a depth the old machine ran, that is the mean of its cells' steps.
For a depth it never ran, this interpolates the time per step between the nearest depths it ran on either side,
as a power law in depth (t = c · L^a through the two points; the cost per layer falls with depth, so a straight
line in L would overestimate it), and refuses to extrapolate.

A row the old machine never ran gets the reference row's budget times its speed relative to the reference,
measured side by side on the new machine (`--speed-check`: short wall-budget cells of both rows, one thread each,
at the same depths): budget(row, L) = budget(reference, L) × steps(row, L) / steps(reference, L).

Run:  .venv/bin/python benchmarks/step_budgets.py FOLDER_OR_CELL_JSON ... [--depths 12 ...]
          [--speed-check FOLDER_OR_CELL_JSON ... [--reference residual]]

e.g.  benchmarks/step_budgets.py benchmarks/records/depth-ethanol-30 --depths 12
      benchmarks/step_budgets.py benchmarks/records/depth-ethanol-30 \
          --speed-check benchmarks/records/fair-depth-speed-check-L8-L16-3min      # PairNorm and G2 at 8 and 16
"""

from __future__ import annotations

import argparse
import math
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pool_cells import load_cells  # noqa: E402

from pairreg.bench.cell_results import wall_budget_cells  # noqa: E402


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


def budget_at(per_cell: dict, budget_s: float, row: str, depth: float) -> tuple[int, int, str]:
    """(cells measured, steps, how) of `row`'s budget at `depth`: measured, or interpolated; ValueError if neither."""
    mean_steps = {x: sum(s) / len(s) for (r, x), s in per_cell.items() if r == row}
    if depth in mean_steps:
        return len(per_cell[(row, depth)]), round(mean_steps[depth]), "measured"
    if not mean_steps:
        raise ValueError(f"no wall-budget cells of {row}")
    seconds = {x: budget_s / steps for x, steps in mean_steps.items()}
    return 0, round(budget_s / interpolate(seconds, depth)), "interpolated (power law in depth)"


def speed_check_budgets(per_cell: dict, budget_s: float, sources: list[str], reference: str) -> list[str]:
    """Table lines: each speed-checked row's budget, the reference's scaled by their step ratio at that depth."""
    checked, _ = steps_per_cell(sources)
    mean = {key: sum(steps) / len(steps) for key, steps in checked.items()}
    lines = [f"\nSpeed check: steps relative to {reference}, side by side; budget = {reference}'s budget × ratio.\n",
             f"| row | depth | steps / {reference}'s | {reference}'s budget | budget |", "|---|---|---|---|---|"]
    for row, depth in sorted(checked):
        if row == reference:
            continue
        if (reference, depth) not in checked:
            lines.append(f"| {row} | {depth:g} | – | – | no {reference} cell at {depth:g} layers in the speed check |")
            continue
        ratio = mean[(row, depth)] / mean[(reference, depth)]
        try:
            _, base, how = budget_at(per_cell, budget_s, reference, depth)
        except ValueError as error:
            lines.append(f"| {row} | {depth:g} | {ratio:.3f} | – | {error} |")
            continue
        lines.append(f"| {row} | {depth:g} | {ratio:.3f} | {base:,} ({how.split(' ')[0]}) | {round(base * ratio):,} |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="study folders (their cells/*.json) or cell JSON files")
    parser.add_argument("--depths", nargs="+", type=float, default=[], help="depths to interpolate a budget for")
    parser.add_argument("--speed-check", nargs="+", default=[], metavar="SOURCE",
                        help="short wall-budget cells of other rows and the reference, run side by side on the new "
                             "machine: their step ratios scale the reference's budget")
    parser.add_argument("--reference", default="residual", help="the row the speed check compares to (residual)")
    args = parser.parse_args(argv)
    per_cell, budget_s = steps_per_cell(args.sources)
    print(f"Wall budget {budget_s / 60:g} min per cell.\n")
    print("| row | depth | cells | mean steps | ms per step | source |")
    print("|---|---|---|---|---|---|")
    for row in sorted({row for row, _ in per_cell}):
        measured = {x for r, x in per_cell if r == row}
        for x in sorted(measured | set(args.depths)):
            try:
                n, steps, source = budget_at(per_cell, budget_s, row, x)
            except ValueError as error:
                print(f"| {row} | {x:g} | 0 | – | – | {error} |")
                continue
            print(f"| {row} | {x:g} | {n} | {steps:,} | {1e3 * budget_s / steps:.2f} | {source} |")
    if args.speed_check:
        print("\n".join(speed_check_budgets(per_cell, budget_s, args.speed_check, args.reference)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
