"""``pairreg bench {depth,ablation,qm9-table,backbones,backbones-qm9,budget-check} --preset cpu|paper|budget [--seeds K] --out DIR``.

Runs the unfinished cells of a study (a finished cell is never re-run; an interrupted one resumes
from its last checkpoint), then writes ``table.md`` and PNG plots into DIR. ``--report`` only
rewrites the table and plots from the cells finished so far; ``--list`` prints the cells;
``--compare A B`` prints the evidence for a verdict (row B against row A, Welch's and the rank test's p over seeds).
``--jobs N`` trains N cells at once, each in a worker process (this command for one cell, ``--worker``) pinned to
cores of its own (bench/parallel.py).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys


def add_parser(sub):
    p = sub.add_parser("bench", help="reproduce the paper's studies (depth, ablation, qm9-table) and compare backbones")
    p.add_argument("study", choices=["depth", "ablation", "qm9-table", "backbones", "backbones-qm9", "budget-check"],
                   help="budget-check: the 8-layer none/residual/pairreg cells at the budget B (--set "
                        "time_budget_min=B minutes, default 60, or step_budget=B optimiser steps) and at 3 B, and "
                        "whether B is within 15 %% of 3 B")
    p.add_argument("--preset", choices=["cpu", "paper", "budget"], default="cpu",
                   help="cpu: sized for ~2 h on 2 CPU cores (default); paper: the paper's protocol (GPU); budget: "
                        "the one-hour presets' recipe, every cell the same wall time (60 min; --set "
                        "time_budget_min=M to change it)")
    p.add_argument("--depths", type=int, nargs="+", metavar="L",
                   help="depth study: only these depths of the preset's grid (e.g. --depths 2 4 8 16)")
    p.add_argument("--seeds", type=int, help="seeds per configuration (default: the study's, 2 or 3)")
    p.add_argument("--molecule", default="aspirin", help="rMD17 molecule for depth and ablation (default aspirin)")
    p.add_argument("--out", help="study folder (default runs/bench/<study>-<preset>)")
    p.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                   help="extra config overrides for every cell (e.g. data_root=DIR accelerator=gpu)")
    p.add_argument("--row-set", nargs="+", default=[], metavar="ROW:KEY=VALUE",
                   help="an override for one row's cells only, applied after --set (e.g. --set lr=1e-3 --row-set "
                        "residual:lr=4e-3 pairreg:lr=2e-3: each method at its own tuned rate); ROW@DEPTH:KEY=VALUE "
                        "only at that depth, after the row's own (e.g. pairnorm@16:step_budget=11307); the table "
                        "says so")
    p.add_argument("--reuse", nargs="+", default=[], metavar="DIR",
                   help="other study folders whose finished cells with the same configuration are copied, "
                        "not trained again (e.g. the ablation reuses the depth study's 9-layer cells); a cell cut "
                        "part-way there (a checkpoint, no result) is copied in and resumes here")
    p.add_argument("--only", nargs="+", default=[], metavar="ROW",
                   help="run only these rows of the table (mitigations or variants, e.g. --only none coord-only); "
                        "--list shows the rows")
    p.add_argument("--cells", nargs="+", default=[], metavar="KEY",
                   help="run only these cells, by the keys --list prints (e.g. --cells pairreg-90min-s0): split a "
                        "study across cores or sittings, each part in its own --out, then join them with --reuse; they run in "
                        "the study's order (--list), not in the order given")
    p.add_argument("--jobs", type=int, default=1, metavar="N",
                   help="train N cells at once, each in a process of its own pinned to its own CPU cores (as many "
                        "as its threads; e.g. --jobs 2 --set threads=1 on 2 cores) and, with accelerator=gpu, one "
                        "GPU each in turn; each cell's output goes to OUT/logs/<cell>.log (default 1: one cell at a "
                        "time, in this process)")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # set by --jobs for its workers: cores to pin to, or "any"
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--report", action="store_true", help="only write the table and plots from finished cells")
    mode.add_argument("--list", action="store_true", help="print the cells and which are finished, run nothing")
    mode.add_argument("--compare", nargs=2, metavar=("A", "B"),
                      help="run nothing; print row B against row A from the finished cells: means, difference "
                           "and Welch's t-test and rank-test p over seeds, per target (and depth); "
                           "ROW@DEPTH compares two depths, "
                           "e.g. --compare none@9 none@12")


def run(args) -> int:
    from pathlib import Path

    from ..bench.report import compare_table, write_report
    from ..bench.runner import (RUN_PLACE_KEYS, adoptable_runs, cell_config, cell_file, describe_cell, load_results,
                                reuse_sources, run_study)
    from ..bench.studies import budget_amount, budget_unit, build_study, cell_keys
    from ..config import parse_overrides

    if args.worker:  # a worker of --jobs: on the cores it was given, its one cell, no report (the parent writes it)
        _pin_to(args.worker)
    if args.jobs < 1:  # before --list, which plans the wall time of --jobs N
        raise ValueError(f"--jobs {args.jobs}: give at least 1 (cells trained at once)")
    extra = list(args.set)
    budget_min = budget_steps = None
    if args.study == "budget-check":  # its cells train for B and 3 B: --set gives B, not every cell's budget
        budget_min, budget_steps, extra = _take_budget(extra)
    study = build_study(args.study, args.preset, args.seeds, args.molecule, args.depths, budget_min, budget_steps)
    # before --only: a study split across sittings keeps one --row-set list (and one study.json) for every part
    study.set_rows(args.row_set, cell_keys(study), RUN_PLACE_KEYS)
    if args.only:
        study.only(args.only)
    if args.cells:
        study.keep_cells(args.cells)
    collide = sorted(set(parse_overrides(extra)) & cell_keys(study))
    if collide:
        raise ValueError(f"--set {' '.join(collide)}: the {args.study} study sets {'it' if len(collide) == 1 else 'them'} "
                         "per cell (its grid); use --only / --depths / --seeds to choose cells")
    out = Path(args.out or f"runs/bench/{args.study}-{args.preset}")
    if args.list:
        print(study.describe() + (f"; --set {' '.join(extra)}" if extra else ""))
        todo = [c for c in study.cells if not cell_file(out, c).is_file()]
        copies = reuse_sources(study, todo, out, extra, args.reuse)
        partway = adoptable_runs(study, [c for c in todo if c not in copies], out, extra, args.reuse)
        for k, cell in enumerate(study.cells, 1):
            state = "to do" if cell in todo else "done "
            where = f"  <- copied from {copies[cell][1]}" if cell in copies else ""
            where += f"  <- resumes the part-way run {partway[cell]}" if cell in partway else ""
            print(f"{k:3d}. {'reuse' if cell in copies else state}  {cell.key:28s} {describe_cell(cell)}{where}")
        train = [c for c in todo if c not in copies]
        # to a wall budget the cost of what is left is known in advance: say it (a sitting's plan)
        minutes = [cell_config(study, c, out, extra).time_budget_min for c in train]
        cost = ""
        if train and all(minutes):
            at_once = "one run at a time" if args.jobs <= 1 else \
                f"{args.jobs} at a time: about {_makespan(minutes, args.jobs):g} minutes of wall time"
            cost = f" ({sum(minutes):g} minutes of training, {at_once})"
        resumed = f", {len(partway)} of them from part-way runs (--reuse)" if partway else ""
        print(f"{len(study.cells) - len(todo)} done, {len(copies)} to copy (--reuse), "
              f"{len(train)} to train{resumed}{cost}")
        return 0
    keys = {c.key for c in study.cells}
    if args.compare:
        (a, depth_a), (b, depth_b) = (_row_at_column(name) for name in args.compare)
        a, b = study.resolve([a, b], "--compare")
        columns = {}
        if study.name == "budget-check":  # its columns are budgets, not depths
            unit = budget_unit(study)
            columns = {"column": "budget", "column_label": lambda x: f"{budget_amount(x, unit)} {unit}"}
        print(compare_table([r for r in load_results(out) if r["cell"] in keys], a, b,
                            depth_a=depth_a, depth_b=depth_b, **columns))
        return 0
    if args.report:
        results = load_results(out)
    else:
        results = run_study(study, out, extra, reuse=args.reuse, jobs=args.jobs,
                            launch=lambda cell, slot, log_path: _launch_worker(args, out, cell.key, slot, log_path))
    if args.worker:
        return 0
    results = [r for r in results if r["cell"] in keys]
    for path in write_report(study, results, out):
        print(f"wrote {path}", file=sys.stderr)
    print((out / "table.md").read_text(), end="")
    return 0


def _take_budget(overrides: list[str]) -> tuple[float | None, int | None, list[str]]:
    """budget-check's B out of ``--set``: ``time_budget_min=B`` (minutes) or ``step_budget=B`` (optimiser steps),
    the last one of each wins as for other keys; ``time_budget_min=null`` beside a step budget only clears the
    preset's. Returns (minutes or None, steps or None, the rest)."""
    from ..config import parse_overrides

    minutes, steps, rest, minutes_given = None, None, [], False
    for item in overrides:
        parsed = parse_overrides([item])  # the config's own key=value parsing
        if "time_budget_min" in parsed:
            minutes, minutes_given = parsed["time_budget_min"], True
            if minutes is not None and (isinstance(minutes, bool) or not isinstance(minutes, (int, float))):
                raise ValueError(f"--set time_budget_min: expected a number of minutes, got {item.split('=', 1)[1]!r}")
            minutes = None if minutes is None else float(minutes)
        elif "step_budget" in parsed:
            steps = parsed["step_budget"]
            if isinstance(steps, bool) or not isinstance(steps, int):
                raise ValueError(f"--set step_budget: expected a whole number of steps, got {item.split('=', 1)[1]!r}")
        else:
            rest.append(item)
    if minutes_given and minutes is None and steps is None:
        raise ValueError("--set time_budget_min=null: budget-check needs a budget B; give step_budget=B to count "
                         "it in optimiser steps")
    return minutes, steps, rest


def _row_at_column(name: str) -> tuple[str, float | None]:
    """``none@12`` → ("none", 12); ``none@7.5`` (a budget-check column in minutes) → ("none", 7.5);
    ``coord-only`` → ("coord-only", None)."""
    row, at, where = name.rpartition("@") if "@" in name else (name, "", "")
    if not at:
        return row, None
    try:
        x = float(where)
    except ValueError:
        x = math.nan
    if not (math.isfinite(x) and x > 0):
        raise ValueError(f"--compare {name}: the number after @ must be a depth in layers (e.g. none@12) or, "
                         f"in budget-check, a budget (e.g. none@90 or none@7.5)")
    return row, int(x) if x.is_integer() else x


def _launch_worker(args, out, key: str, slot, log_path) -> subprocess.Popen:
    """One ``--jobs`` worker: this command for the single cell ``key`` (the parent already copied --reuse cells),
    pinned to ``slot.cores``, seeing only GPU ``slot.gpu`` when given, its output appended to ``log_path``."""
    command = [sys.executable, "-m", "pairreg", "bench", args.study, "--preset", args.preset,
               "--molecule", args.molecule, "--out", str(out), "--cells", key,
               "--worker", ",".join(map(str, slot.cores or [])) or "any"]
    for flag, values in (("--depths", args.depths), ("--set", args.set), ("--row-set", args.row_set),
                         ("--only", args.only)):
        if values:
            command += [flag, *map(str, values)]
    if args.seeds is not None:
        command += ["--seeds", str(args.seeds)]
    env = None if slot.gpu is None else {**os.environ, "CUDA_VISIBLE_DEVICES": slot.gpu}
    with open(log_path, "a") as log_file:  # the worker keeps its own copy of the descriptor
        return subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT, env=env)


def _pin_to(cores: str) -> None:
    """Pin this process (and the threads torch starts later) to ``cores`` ("0,1"); "any" leaves it unpinned."""
    if cores != "any":
        os.sched_setaffinity(0, {int(c) for c in cores.split(",")})


def _makespan(minutes: list[float], jobs: int) -> float:
    """Wall time of cells lasting ``minutes`` when ``jobs`` run at once, each next one on the first worker free
    (as ``--jobs`` schedules them, in the study's order)."""
    workers = [0.0] * jobs
    for m in minutes:
        workers[workers.index(min(workers))] += m
    return max(workers)
