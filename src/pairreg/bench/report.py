"""Tables (Markdown, mean ± std over seeds, units in headers) and PNG plots of a study's finished cells."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from ..atomic import write_atomic
from ..training.metric_names import FORCE_NAME, metric_name, parse_metric_name
from .cost import cell_cost
from .cell_results import SPEED_TOLERANCE, finite, probe_rates, saved_manifest, seed_stats, wall_budget_cells
from .studies import Study, budget_amount, budget_unit, layers, row_label

MITIGATION_ORDER = ("none", "residual", "pairreg", "pairnorm", "g2")


def fmt(mean: float, std: float, n: int, spec: str | None = None) -> str:
    """``mean ± std`` over seeds; one seed shows its value and says so; none is a dash. ``spec`` is the number
    format (default: 3 decimals below 10, else 1; ",.0f" for counts such as optimizer steps)."""
    if n == 0 or math.isnan(mean):
        return "–"
    spec = spec or (".3f" if abs(mean) < 10 else ".1f")
    return f"{mean:{spec}} ± {std:{spec}}" if n > 1 else f"{mean:{spec}} (1 seed)"


def pretty_unit(unit: str) -> str:
    return unit.replace("Angstrom", "Å")


def _metric(result: dict, split: str, name: str, unit: str) -> float | None:
    return result.get(split, {}).get(metric_name(split, name, unit))


def _units(results: list[dict]) -> dict[str, str]:
    """target → unit, read back from the metric names of the results (e.g. test/homo_mae_meV)."""
    units = {}
    for r in results:
        for parsed in filter(None, map(parse_metric_name, r.get("test", {}))):
            units[parsed[1]] = parsed[2]
    return units


def _target_order(units: dict[str, str]) -> list[str]:
    """The targets of ``units`` with forces, when present, last."""
    return [n for n in units if n != FORCE_NAME] + ([FORCE_NAME] if FORCE_NAME in units else [])


def _has_forces(results: list[dict]) -> bool:
    return any(_metric(r, "test", FORCE_NAME, "meV/Angstrom") is not None for r in results)


def _groups(results: list[dict]) -> list[str]:
    seen = list(dict.fromkeys(r["group"] for r in results))
    return sorted(seen, key=lambda g: (MITIGATION_ORDER.index(g) if g in MITIGATION_ORDER else len(MITIGATION_ORDER),
                                       seen.index(g)))


def mae_column(name: str, unit: str, split: str = "test") -> tuple[str, object]:
    """(header, value of a result) for the ``split`` MAE of target ``name`` in ``unit``."""
    return f"{split} {name} MAE ({pretty_unit(unit)})", lambda r: _metric(r, split, name, unit)


def ran_to_wall_budget(results: list[dict]) -> bool:
    """True when some cell stopped on ``time_budget_min``: equal wall time, so each cell's step count differs."""
    return any(r.get("stopped_by") == "time_budget_min" for r in results)


def depth_table(results: list[dict], title: str, value, depths=None, groups=None, spec: str | None = None) -> str:
    """Rows = mitigations, columns = depths (the planned ones when given; "–" = not run (yet)).

    Each cell holds ``value(result)`` over the seeds of that mitigation and depth (``spec``: see ``fmt``).
    """
    depths = sorted(depths or {r["x"] for r in results})
    lines = [f"| {title} | " + " | ".join(layers(d) for d in depths) + " |", "|---|" + "---|" * len(depths)]
    for group in groups or _groups(results):
        cells = []
        for d in depths:
            vals = [value(r) for r in results if r["group"] == group and r["x"] == d]
            cells.append(fmt(*seed_stats(vals), spec=spec))
        lines.append(f"| {_label(results, group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _label(results: list[dict], group: str) -> str:
    """The row's label for the backbone its cells trained (a depth study may run on --set backbone=painn)."""
    backbones = {r.get("config", {}).get("backbone", "egnn") for r in results if r["group"] == group}
    return row_label(group, backbones.pop() if len(backbones) == 1 else "egnn")


def variant_table(results: list[dict], order: list[str] | None = None, split: str = "test") -> str:
    """Rows = groups (variants or mitigations), columns = every target's MAE plus E_L/E_1 (and, at equal wall
    time, the optimizer steps each row's cost left it: a cheaper variant trains more)."""
    units = _units(results)
    names = _target_order(units)
    groups = order or _groups(results)
    columns = [mae_column(n, units[n], split) for n in names]
    steps = ran_to_wall_budget(results)
    header = [title for title, _ in columns] + [
        "E_L/E_1 of h (probe)", "E_x,L/E_x,0 of coordinates (probe)", *(["optimizer steps"] if steps else []), "seeds"]
    lines = ["| variant | " + " | ".join(header) + " |", "|---|" + "---|" * len(header)]
    for group in groups:
        rows = [r for r in results if r["group"] == group]
        if not rows:
            continue
        cells = [fmt(*seed_stats([value(r) for r in rows])) for _, value in columns]
        cells.append(fmt(*seed_stats([dirichlet_ratio(r) for r in rows])))
        cells.append(fmt(*seed_stats([coordinate_ratio(r) for r in rows])))
        if steps:
            cells.append(fmt(*seed_stats([r.get("optimizer_steps") for r in rows]), spec=",.0f"))
        cells.append(str(len(rows)))
        lines.append(f"| {_label(results, group)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def target_table(results: list[dict], split: str = "test") -> str:
    """QM9: rows = targets (with units), columns = mitigations."""
    units = _units(results)
    groups = _groups(results)
    lines = [f"| {split} MAE | " + " | ".join(_label(results, g) for g in groups) + " |", "|---|" + "---|" * len(groups)]
    for name, unit in units.items():
        cells = []
        for g in groups:
            rows = [r for r in results if r["group"] == g and (r["x"] is None or r["x"] == name)]
            cells.append(fmt(*seed_stats([_metric(r, split, name, unit) for r in rows])))
        lines.append(f"| {name} ({pretty_unit(unit)}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def budget_check_table(results: list[dict], groups: list[str], budgets: list[float], split: str = "test",
                       unit: str = "min") -> str:
    """Rows = mitigations; per target the MAE at the budget B and at 3 B and their ratio; the last column says
    whether B is long enough (every ratio within the tolerance; "–" while a cell is missing)."""
    from .studies import BUDGET_CHECK_TOLERANCE

    lo, hi = min(budgets), max(budgets)
    short, long_ = (budget_amount(b, unit) for b in (lo, hi))
    units = _units(results)
    names = _target_order(units)
    head = ["row"]
    for name in names:
        head += [f"{split} {name} ({pretty_unit(units[name])}), {short} {unit}", f"{long_} {unit}",
                 f"ratio {short} / {long_}"]
    head.append(f"within {BUDGET_CHECK_TOLERANCE:.0%}")
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for group in groups:
        row, ratios = [_label(results, group)], []
        for name in names:
            a, b = (seed_stats([_metric(r, split, name, units[name]) for r in results
                                if r["group"] == group and r["x"] == x]) for x in (lo, hi))
            ratio = a[0] / b[0] if a[2] and b[2] and b[0] > 0 else float("nan")
            ratios.append(ratio)
            row += [fmt(*a), fmt(*b), "–" if math.isnan(ratio) else f"{ratio:.2f}"]
        done = ratios and not any(math.isnan(q) for q in ratios)
        row.append(("yes" if max(ratios) <= 1 + BUDGET_CHECK_TOLERANCE else "no") if done else "–")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def published_table(study: Study) -> str:
    """Each backbone's published number on the study's molecule (or QM9 HOMO), or that there is none."""
    from .studies import PUBLISHED_QM9_HOMO, PUBLISHED_RMD17

    backbones = dict.fromkeys(g.split()[0] for g in study.rows())
    if study.dataset == "qm9":
        lines = ["Published: QM9 HOMO test MAE (meV; 1,000 epochs or more on GPUs)", "",
                 "| backbone | HOMO | source |", "|---|---|---|"]
        for backbone in backbones:
            homo, source = PUBLISHED_QM9_HOMO.get(backbone, ("–", "no published QM9 number"))
            lines.append(f"| {backbone} | {homo} | {source} |")
        return "\n".join(lines)
    molecule = next((o.split("=", 1)[1] for o in study.base_overrides if o.startswith("molecule=")), "")
    lines = [f"Published ({molecule}): energy MAE (meV) / forces MAE (meV/Å)", "",
             "| backbone | energy | forces | source |", "|---|---|---|---|"]
    for backbone in backbones:
        e, f, source = PUBLISHED_RMD17.get((backbone, molecule), ("–", "–", "no published rMD17 number"))
        lines.append(f"| {backbone} | {e} | {f} | {source} |")
    return "\n".join(lines)


def _signed(d: float) -> str:
    return f"{d:+.{3 if abs(d) < 10 else 1}f}"


def welch_p(a, b) -> float:
    """Two-sided p-value of Welch's t-test (no equal-variance assumption) that a and b share a mean.

    NaN with fewer than two finite values on a side, or no spread on either, where there is
    nothing to test against.
    """
    a, b = finite(a), finite(b)
    if len(a) < 2 or len(b) < 2 or (np.ptp(a) == 0 and np.ptp(b) == 0):
        return float("nan")
    from scipy.stats import ttest_ind

    return float(ttest_ind(a, b, equal_var=False).pvalue)


def rank_p(a, b) -> float:
    """Two-sided exact p of the Mann–Whitney rank test that a and b come from one distribution.

    Beside Welch's p because with 2–3 seeds one stuck seed inflates a row's std and hides a difference that
    every seed shows (3 vs 3 seeds, all of one row below all of the other: 0.10, the smallest 3 vs 3 can give;
    2 vs 2: 0.33). NaN with fewer than two finite values on a side, as for welch_p.
    """
    a, b = finite(a), finite(b)
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(a, b, alternative="two-sided", method="exact").pvalue)


def compare_table(results: list[dict], a: str, b: str, split: str = "test",
                  depth_a: int | None = None, depth_b: int | None = None, column: str = "depth",
                  column_label=layers) -> str:
    """Row ``b`` against row ``a`` for every target, at every depth both have (depth studies).

    ``column`` / ``column_label``: what the cells' x is and how one prints (budget-check: "budget", "30 min").

    With ``depth_a``/``depth_b`` (one given: both the same) it compares those two cells of the
    grid instead, e.g. EGNN at 9 layers against EGNN at 12. The evidence behind a verdict: both
    means ± std over seeds, the difference b − a, Welch's p and the rank test's p over the seeds.
    """
    units = _units(results)
    names = _target_order(units)
    if depth_a is not None or depth_b is not None:
        depth_a, depth_b = (depth_a if depth_a is not None else depth_b), (depth_b if depth_b is not None else depth_a)
        pairs, by_depth = [(depth_a, depth_b)], False
        label_a, label_b = f"{a}, {column_label(depth_a)}", f"{b}, {column_label(depth_b)}"
    else:
        xs = sorted({r["x"] for r in results if r["group"] in (a, b)}, key=lambda x: -1 if x is None else x)
        pairs, by_depth = [(x, x) for x in xs], any(x is not None for x in xs)
        label_a, label_b = a, b
    head = ["target"] + ([column] if by_depth else []) + [label_a, label_b, f"{label_b} − {label_a}", "Welch p", "rank p", "seeds"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---|" * (len(head) - 1)]
    for name in names:
        unit = units[name]
        for xa, xb in pairs:
            va = [_metric(r, split, name, unit) for r in results if r["group"] == a and r["x"] == xa]
            vb = [_metric(r, split, name, unit) for r in results if r["group"] == b and r["x"] == xb]
            (ma, sa, na), (mb, sb, nb) = seed_stats(va), seed_stats(vb)
            if not (na and nb):
                continue
            p, p_rank = welch_p(va, vb), rank_p(va, vb)
            row = [f"{split} {name} MAE ({pretty_unit(unit)})"] + ([column_label(xa)] if by_depth else [])
            row += [fmt(ma, sa, na), fmt(mb, sb, nb), _signed(mb - ma),
                    *("–" if math.isnan(q) else f"{q:.2g}" for q in (p, p_rank)), f"{na} vs {nb}"]
            lines.append("| " + " | ".join(row) + " |")
    if len(lines) == 2:
        raise ValueError(f"{label_a!r} and {label_b!r} have no finished cells to compare")
    note = machine_speed_note([r for r in results if r["group"] in (a, b)])
    return "\n".join(lines) + (f"\n\n{note}" if note else "")


def machine_speed_note(results: list[dict]) -> str | None:
    """A warning when cells trained to a wall budget (``time_budget_min``) ran at machine speeds more than
    SPEED_TOLERANCE apart (their ``speed_probes``, training/speed_probe.py), or when some of them carry no probe
    (recorded before pairreg kept one, or trained on a GPU) beside cells that do. None when nothing is amiss.

    Equal minutes on a faster machine are more training: a join of such cells compares machines, not methods.
    """
    timed = wall_budget_cells(results)
    rates = {r["cell"]: probe_rates(r) for r in timed}
    known = {cell: v for cell, v in rates.items() if v}
    if not known or len(timed) < 2:
        return None
    slowest = min(known, key=lambda cell: min(known[cell]))
    fastest = max(known, key=lambda cell: max(known[cell]))
    slow, fast = min(known[slowest]), max(known[fastest])
    problems = []
    if fast > slow * (1 + SPEED_TOLERANCE):
        problems.append(f"the speed probes of these wall-budget cells differ {fast / slow:.2f}x ({slowest}: "
                        f"{slow:.1f}, {fastest}: {fast:.1f} force steps/s), so equal minutes were not equal "
                        "training; compare their optimizer steps, or train them again with step_budget")
    unknown = sorted(cell for cell, v in rates.items() if not v)
    if unknown:
        shown = ", ".join(unknown[:4]) + (f" and {len(unknown) - 4} more" if len(unknown) > 4 else "")
        problems.append(f"{len(unknown)} wall-budget cell(s) carry no speed probe, so their machine's speed is "
                        f"unknown ({shown})")
    return "Warning (machine speed): " + "; ".join(problems) + "." if problems else None


def dirichlet_ratio(result: dict) -> float:
    """E_L / E_1 of the node features on the probe molecules (index 1 = after layer 1)."""
    e = result.get("diagnostics", {}).get("dirichlet_h", [])
    return e[-1] / e[1] if len(e) > 2 and e[1] > 0 else float("nan")


def coordinate_ratio(result: dict) -> float:
    """Dirichlet energy of the coordinates after the last layer over the input's (< 1: the molecule contracts)."""
    e = result.get("diagnostics", {}).get("dirichlet_x_A2", [])
    return e[-1] / e[0] if len(e) > 1 and e[0] > 0 else float("nan")


def compute_used(results: list[dict]) -> str:
    """What the finished cells cost: each cell's wall time × its threads (`cost.cell_cost`), summed; cells copied
    with --reuse count too (their cost, wherever they were trained)."""
    core_seconds, unrecorded = 0.0, 0
    for result in results:
        try:
            seconds, threads = cell_cost(result)
        except ValueError:  # a cell that kept no wall time: say so rather than guess
            unrecorded += 1
            continue
        core_seconds += seconds * threads
    copied = sum(bool(r.get("reused_from")) for r in results)
    cells = "this cell" if len(results) == 1 else f"these {len(results)} cells"
    return (f"Compute of {cells}: {core_seconds / 3600:.1f} core-hours (wall time × threads"
            + (f"; {copied} of them trained in another study folder and copied with --reuse" if copied else "")
            + (f"; {unrecorded} without a recorded wall time or thread count, not counted" if unrecorded else "")
            + ").")


def study_tables(study: Study, results: list[dict], extra: list[str] | None = None) -> str:
    note = machine_speed_note(results)
    return _tables(study, results, extra) + "\n\n" + compute_used(results) + (f"\n\n{note}" if note else "")


def _tables(study: Study, results: list[dict], extra: list[str] | None = None) -> str:
    settings = f"; --set {' '.join(extra)}" if extra else ""
    head = f"<!-- {study.describe()}{settings}; {len(results)} of {len(study.cells)} cells finished -->"
    if row_settings := study.row_settings():  # visible, not only in the comment: the rows were not trained alike
        head += f"\n\nRows trained with their own settings (--row-set): {row_settings}."
    planned_groups = list(dict.fromkeys(c.group for c in study.cells))
    if study.name == "depth":
        planned = {c.x for c in study.cells}
        columns = [mae_column("energy", "meV")] + ([mae_column(FORCE_NAME, "meV/Angstrom")] if _has_forces(results) else [])
        columns.append(("E_L/E_1 of h (probe; < 1: features flatten with depth)", dirichlet_ratio))
        parts = [depth_table(results, title, value, depths=planned, groups=planned_groups) for title, value in columns]
        if ran_to_wall_budget(results):  # at equal wall time a costlier layer buys fewer steps: show how many
            parts.append(depth_table(results, "optimizer steps in the budget", lambda r: r.get("optimizer_steps"),
                                     depths=planned, groups=planned_groups, spec=",.0f"))
        return "\n\n".join([head, *parts])
    if study.name == "ablation":
        return head + "\n\n" + variant_table(results, planned_groups)
    if study.name == "budget-check":
        budgets = list(study.columns)  # B and 3 B even when --cells ran only one of them
        return head + "\n\n" + budget_check_table(results, planned_groups, budgets, unit=budget_unit(study))
    if study.name in ("backbones", "backbones-qm9"):
        return head + "\n\n" + variant_table(results, planned_groups) + "\n\n" + published_table(study)
    return head + "\n\n" + target_table(results)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_mae_vs_depth(results: list[dict], path: Path) -> Path:
    plt = _plt()
    panels = [("energy", "meV")] + ([(FORCE_NAME, "meV/Angstrom")] if _has_forces(results) else [])
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 3.8), squeeze=False)
    for ax, (name, unit) in zip(axes[0], panels):
        for group in _groups(results):
            depths = sorted({r["x"] for r in results if r["group"] == group})
            stats = [seed_stats([_metric(r, "test", name, unit) for r in results if r["group"] == group and r["x"] == d])
                     for d in depths]
            line = ax.errorbar(depths, [s[0] for s in stats], yerr=[s[1] for s in stats], marker="o", ms=4, capsize=3,
                               label=_label(results, group))
            # each seed as a dot: with 2-3 seeds one stuck seed makes the mean and std misleading on their own
            seeds = [(r["x"], _metric(r, "test", name, unit)) for r in results if r["group"] == group]
            seeds = [(x, v) for x, v in seeds if v is not None]
            if seeds:
                ax.scatter(*zip(*seeds), s=10, alpha=0.5, color=line.lines[0].get_color())
        ax.set_xlabel("number of layers")
        ax.set_ylabel(f"test {name} MAE ({pretty_unit(unit)})")
        ax.set_title(f"{name} MAE vs depth (mean ± std; dots: seeds)", fontsize=10)
        ax.legend(fontsize=8)
    return _save(plt, fig, path)


def plot_dirichlet_per_layer(results: list[dict], path: Path, title: str) -> Path:
    """Seed-averaged Dirichlet energy of h vs layer, one line per group (its deepest runs for the depth study)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for group in _groups(results):
        rows = [r for r in results if r["group"] == group]
        if rows and isinstance(rows[0]["x"], int):
            deepest = max(r["x"] for r in rows)
            rows = [r for r in rows if r["x"] == deepest]
            label = f"{_label(results, group)}, {deepest} layers"
        else:
            label = _label(results, group)
        curves = [r["diagnostics"]["dirichlet_h"] for r in rows if r.get("diagnostics")]
        if not curves:
            continue
        mean = np.exp(np.mean(np.log(np.maximum(np.asarray(curves), 1e-12)), axis=0))  # geometric mean over seeds
        ax.plot(range(len(mean)), mean, marker="o", ms=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("layer (0 = embedding)")
    ax.set_ylabel("Dirichlet energy E(h) (probe molecules)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(plt, fig, path)


def write_report(study: Study, results: list[dict], out: Path) -> list[Path]:
    """Write ``table.md`` and the study's PNGs into ``out``; returns the paths."""
    out = Path(out)
    table = out / "table.md"  # the head names the --set overrides the cells ran with (e.g. n_layers=12)
    saved = saved_manifest(out)
    if not study.row_overrides:  # --report without --row-set: the folder's own per-row settings
        study = dataclasses.replace(study, row_overrides=saved.get("row_overrides", {}))
    write_atomic(table, study_tables(study, results, saved.get("extra_overrides", [])) + "\n")
    paths = [table]
    if not results:
        return paths
    if study.name == "depth":
        paths.append(plot_mae_vs_depth(results, out / "mae_vs_depth.png"))
    paths.append(plot_dirichlet_per_layer(results, out / "dirichlet_per_layer.png",
                                          f"{study.name} ({study.preset} preset): Dirichlet energy per layer"))
    return paths
