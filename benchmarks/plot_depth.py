"""Fig. 2 from pooled cells: test MAE against depth, one line per row, from depth cells in several folders.

A fair depth study is assembled from many sittings (each column its own folder, rates chosen per row and depth,
seeds trained to a wall budget on one machine and to its step count on another), so no single study folder holds
it and `pairreg bench --report` cannot draw it. This script pools the cells the way `pool_cells.py` does, refuses
what would make the figure lie (one seed from two sources, or one row and depth at two learning rates), prints
the tables behind the figure (mean ± std (seeds) per row and depth, and the rate of each), and draws the figure.

Run:  .venv/bin/python benchmarks/plot_depth.py FOLDER_OR_CELL_JSON ... --out PNG

e.g.  benchmarks/plot_depth.py benchmarks/records/depth-aspirin-L{2,8,16} --out docs/figures/fair_depth_aspirin.png
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from pool_cells import budget, load_cells, refuse_duplicate_seeds  # noqa: E402

from pairreg.bench.report import _groups, _label, depth_table, mae_column, plot_mae_vs_depth  # noqa: E402
from pairreg.training.metric_names import FORCE_NAME  # noqa: E402


def depth_cells(sources: list[str]) -> list[dict]:
    """The depth cells of the sources; one (row, depth, seed) from two sources or at two rates is refused."""
    cells = [r for r in load_cells(sources) if isinstance(r.get("x"), (int, float)) and r.get("study") == "depth"]
    if not cells:
        raise SystemExit("plot_depth: no depth-study cells among the sources")
    refuse_duplicate_seeds(cells, "plot_depth")
    rates = defaultdict(set)
    for r in cells:
        rates[(r["group"], r["x"])].add(r["config"]["lr"])
    for (row, depth), found in rates.items():
        if len(found) > 1:
            raise SystemExit(f"plot_depth: {row} at {depth} layers was trained at more than one learning rate "
                             f"({', '.join(f'{lr:g}' for lr in sorted(found))}); pass the folders of one rate")
    return cells


def _entry(here: list[dict]) -> str:
    """"lr; budget(s); seeds", with the cells whose rate the divergence guard (or a plateau) lowered."""
    if not here:
        return "–"
    seeds = f"{len(here)} seed{'s' * (len(here) != 1)}"
    text = f"{here[0]['config']['lr']:g}; " + ", ".join(sorted({budget(r) for r in here})) + f"; {seeds}"
    lowered = [f"s{r['seed']} ×{r['lr_scale']:g}" for r in sorted(here, key=lambda r: r["seed"]) if r.get("lr_scale")]
    return text + (f" (lr lowered: {', '.join(lowered)})" if lowered else "")


def rate_table(cells: list[dict]) -> str:
    """Peak learning rate, budget and seeds of each row at each depth (a fair Fig. 2 tunes each row's rate).

    Cells recorded before 2026-12-07 do not carry the guard's lr_scale; their sections in docs/results.md say
    which were rolled back."""
    depths = sorted({r["x"] for r in cells})
    lines = ["| peak lr; budget; seeds | " + " | ".join(f"{d:g} layers" for d in depths) + " |",
             "|---|" + "---|" * len(depths)]
    for group in _groups(cells):
        entries = [_entry([r for r in cells if r["group"] == group and r["x"] == d]) for d in depths]
        lines.append(f"| {_label(cells, group)} | " + " | ".join(entries) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", help="study folders (their cells/*.json) or cell JSON files")
    parser.add_argument("--out", type=Path, required=True, help="the PNG to write")
    args = parser.parse_args(argv)
    cells = depth_cells(args.sources)
    print(depth_table(cells, *mae_column("energy", "meV")))
    if any(FORCE_NAME in k for r in cells for k in r.get("test", {})):
        print()
        print(depth_table(cells, *mae_column(FORCE_NAME, "meV/Angstrom")))
    print()
    print(rate_table(cells))
    print(f"\nwrote {plot_mae_vs_depth(cells, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
