"""Run a study's cells one after another, resumably.

Layout of ``--out DIR``::

    study.json          what the study is (name, preset, base overrides, extra --set); a different
                        study in the same folder is refused, so cells are never mixed
    runs/<cell>/        each cell's pairreg run directory (config, checkpoints, metrics.json)
    cells/<cell>.json   each finished cell: config, metrics, diagnostics, wall time (written last,
                        atomically: its presence means "done, do not re-run")

A cell interrupted mid-training resumes from its ``runs/<cell>/checkpoints/last.ckpt``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch

from ..atomic import write_atomic
from ..config import ConfigError, load_config
from ..devices import lightning_accelerator
from ..training.run import RESUME_OVERRIDABLE, resume_config, train
from .cell_results import (SPEED_TOLERANCE, finite, probe_rates, saved_manifest,  # noqa: F401  (re-exported)
                           seed_stats, wall_budget_cells)
from .studies import Cell, Study, budget_amount, layers

PROBE_MOLECULES = 100  # first test molecules/frames on which per-layer oversmoothing measures are taken


def cell_file(out: Path, cell: Cell) -> Path:
    """The JSON file whose presence means ``cell`` is finished."""
    return out / "cells" / f"{cell.key}.json"


def cell_config(study: Study, cell: Cell, out: Path, extra: list[str]):
    overrides = [*study.base_overrides, *cell.overrides, *extra, *study.cell_row_overrides(cell),
                 "progress=false", f"out={out / 'runs'}", f"name={cell.key}"]
    return load_config(study.base_preset, overrides)


# Config keys that name where a run lives or how it is run, not what it computes
RUN_PLACE_KEYS = ("out", "name", *RESUME_OVERRIDABLE)


def _manifest(study: Study, extra: list[str]) -> dict:
    manifest = {"study": study.name, "preset": study.preset, "base_preset": study.base_preset,
                "base_overrides": study.base_overrides, "extra_overrides": list(extra)}
    if study.row_overrides:  # only when given: folders written before --row-set existed still match
        manifest["row_overrides"] = {row: list(sets) for row, sets in study.row_overrides.items()}
    return manifest


def _what_it_computes(manifest: dict) -> dict:
    """The manifest without ``--set`` keys that only say how cells run (threads, accelerator, ...)."""
    extra = [o for o in manifest.get("extra_overrides", []) if o.split("=", 1)[0].strip() not in RUN_PLACE_KEYS]
    return {**manifest, "extra_overrides": extra}


def check_manifest(out: Path, study: Study, extra: list[str]) -> None:
    """Write ``study.json``, or check that the folder holds the same study (else refuse to mix).

    A later sitting may change how cells run (``--set threads=4 accelerator=gpu``) but not what they compute.
    """
    path = out / "study.json"
    want = _manifest(study, extra)
    if path.is_file():
        have = _what_it_computes(json.loads(path.read_text()))
        want = _what_it_computes(want)
        if have != want:
            diff = {k: (have.get(k), v) for k, v in want.items() if have.get(k) != v}
            raise ConfigError(f"{path}: this folder holds a different study or settings ({diff}, as (saved, now)); "
                              "use another --out, or the same options as before")
    else:
        out.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(want, indent=1))


def _probe_diagnostics(run_dir: Path, cfg, dataset) -> dict:
    from ..evaluation.diagnostics import diagnose_model
    from ..training.checkpoint import load_model
    from ..training.datamodule import build_splits

    model, _ = load_model(run_dir)
    ds, split = build_splits(cfg, dataset)
    return diagnose_model(model, ds.subset(split["test"][:PROBE_MOLECULES]))


def run_cell(study: Study, cell: Cell, out: Path, extra: list[str], dataset=None) -> dict:
    cfg = cell_config(study, cell, out, extra)
    run_dir = out / "runs" / cell.key
    started = time.perf_counter()
    if (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "metrics.json").is_file():
        saved = resume_config(run_dir)
        changed = [k for k, v in cfg.to_dict().items() if k not in RESUME_OVERRIDABLE and getattr(saved, k) != v]
        if changed:
            raise ConfigError(f"{run_dir}: the interrupted run was started with other values of {changed}; "
                              "delete that run directory or use another --out")
        print(f"[bench] resuming {cell.key} from its last checkpoint", file=sys.stderr, flush=True)
        summary = train(saved, dataset=dataset, resume=True)
    elif (run_dir / "metrics.json").is_file():  # trained, but the cell JSON was not written yet
        summary = json.loads((run_dir / "metrics.json").read_text())
    else:
        if run_dir.exists():  # stopped before its first checkpoint: nothing to keep, and train() refuses an existing folder
            print(f"[bench] {cell.key}: restarting (it stopped before its first checkpoint)", file=sys.stderr, flush=True)
            shutil.rmtree(run_dir)
        summary = train(cfg, dataset=dataset)
    diagnostics = _probe_diagnostics(run_dir, cfg, dataset)
    earlier = summary.get("earlier_sittings_training_s", 0.0)
    result = {
        "study": study.name, "preset": study.preset, "cell": cell.key, "group": cell.group, "x": cell.x,
        "seed": cell.seed, "overrides": list(cell.overrides), "config": cfg.to_dict(),
        "best_epoch": summary["best_epoch"], "epochs": summary["epochs"],
        # how far the cell got: under a wall budget this depends on the machine (compare steps across sittings)
        # lr_scale (present when below 1): the divergence guard or a plateau lowered the rate the config names
        **{k: summary[k] for k in ("epochs_run", "optimizer_steps", "training_time_s", "stopped_by", "lr_scale")
           if k in summary},
        "val": summary.get("val", {}), "test": summary.get("test", {}),
        # over every sitting: this one's wall time plus the training seconds of those before a resume
        "train_wall_time_s": _plus(summary.get("wall_time_s"), earlier),
        "cell_wall_time_s": _plus(time.perf_counter() - started, earlier),
        "diagnostics_probe": f"first {PROBE_MOLECULES} test molecules", "diagnostics": diagnostics,
        "torch_threads": torch.get_num_threads(), "speed_probes": _speed_probes(run_dir),
    }
    write_atomic(cell_file(out, cell), json.dumps(result, indent=1))
    return result


def _plus(seconds: float | None, earlier_s: float) -> float | None:
    return None if seconds is None else round(seconds + earlier_s, 1)


def _speed_probes(run_dir: Path) -> list[dict]:
    """The machine's speed at the run's start and resumes (runs to a wall budget on the CPU record it)."""
    path = run_dir / "environment.json"
    return json.loads(path.read_text()).get("speed_probes", []) if path.is_file() else []


def config_identity(config: dict) -> str:
    """What a cell computes: its config without the keys that only say where or how it ran. A key the config
    did not have yet when the cell ran counts as its default (new keys default to the old behaviour), so cells
    recorded by an earlier version stay reusable."""
    from ..config import Config

    full = {**Config().to_dict(), **config}
    return json.dumps({k: v for k, v in full.items() if k not in RUN_PLACE_KEYS}, sort_keys=True)


def reusable_cells(folders: list[Path]) -> dict[str, Path]:
    """Finished cells of other study folders, by what they compute (``--reuse``)."""
    found = {}
    for folder in folders:
        if not (folder / "cells").is_dir() and not (folder / "runs").is_dir():
            raise ConfigError(f"--reuse {folder}: no finished cells there (expected {folder / 'cells'}/*.json)")
        for path in sorted((folder / "cells").glob("*.json")):
            found.setdefault(config_identity(json.loads(path.read_text())["config"]), path)
    return found


def partway_runs(folders: list[Path]) -> dict[str, Path]:
    """Cells of other study folders that a sitting's end cut (a checkpoint, no cell JSON), by what they compute:
    ``--reuse`` copies such a run into this study, where the cell resumes from its checkpoint."""
    found = {}
    for folder in folders:
        for run_dir in sorted(p for p in (folder / "runs").glob("*") if p.is_dir()):
            if (folder / "cells" / f"{run_dir.name}.json").is_file():
                continue  # finished: reusable_cells has it
            try:
                config = resume_config(run_dir)
            except (FileNotFoundError, ConfigError):
                continue  # no checkpoint yet, or a damaged config: nothing to resume; the cell trains from scratch
            found.setdefault(config_identity(config.to_dict()), run_dir)
    return found


def adoptable_runs(study: Study, cells: list[Cell], out: Path, extra: list[str],
                   reuse: list[str | Path] | None) -> dict[Cell, Path]:
    """The ``cells`` (not started here) whose part-way run ``--reuse`` would copy in to resume: cell → that run."""
    not_started = [c for c in cells if not (out / "runs" / c.key).exists()]  # a started cell resumes its own run
    matches = _same_config(study, not_started, out, extra, partway_runs([Path(f) for f in reuse or []]))
    return {cell: source for cell, (_, source) in matches.items()}


def reuse_sources(study: Study, cells: list[Cell], out: Path, extra: list[str],
                  reuse: list[str | Path] | None) -> dict[Cell, tuple[dict, Path]]:
    """The ``cells`` that ``--reuse`` would copy: cell → (its config, the finished cell file with that config)."""
    return _same_config(study, cells, out, extra, reusable_cells([Path(f) for f in reuse or []]))


def _same_config(study: Study, cells: list[Cell], out: Path, extra: list[str],
                 elsewhere: dict[str, Path]) -> dict[Cell, tuple[dict, Path]]:
    """cell → (its config, the path in ``elsewhere``, keyed by config identity, that computes the same)."""
    found = {}
    for cell in cells if elsewhere else []:
        config = cell_config(study, cell, out, extra).to_dict()
        source = elsewhere.get(config_identity(config))
        if source is not None:
            found[cell] = (config, source)
    return found


def reuse_cell(study: Study, cell: Cell, out: Path, config: dict, source: Path) -> dict:
    """Write ``cell``'s JSON (``config``: its own) from an identical finished cell of another study (no training)."""
    result = json.loads(source.read_text())
    result.update({"study": study.name, "preset": study.preset, "cell": cell.key, "group": cell.group,
                   "x": cell.x, "seed": cell.seed, "overrides": list(cell.overrides),
                   "config": config, "reused_from": str(source)})
    write_atomic(cell_file(out, cell), json.dumps(result, indent=1))
    return result


def describe_cell(cell: Cell) -> str:
    budget = next((o.split("=", 1)[0] for o in cell.overrides if o.startswith(("step_budget=", "time_budget_min="))),
                  None)
    if cell.x is None:
        where = ""
    elif budget is not None:  # budget-check's columns
        unit = "steps" if budget == "step_budget" else "min"
        where = f", {budget_amount(cell.x, unit)} {unit}"
    else:
        where = f", {layers(cell.x)}" if isinstance(cell.x, int) else f", {cell.x}"
    return f"{cell.group}{where}, seed {cell.seed}"


def sitting_speed_note(finished: list[dict], rate_now: float) -> str | None:
    """Before a sitting trains wall-budget cells: a warning when the study's finished wall-budget cells ran more
    than SPEED_TOLERANCE away from this machine's speed now (``rate_now``: the speed probe, force steps/s), or
    carry no probe to tell. None when they match, or there is nothing to compare."""
    timed = wall_budget_cells(finished)
    if not timed:
        return None
    rates = [rate for r in timed for rate in probe_rates(r)]
    advice = "train the rest with step_budget=<their optimizer steps> (--row-set per row), or on their machine"
    if not rates:
        return (f"the {len(timed)} finished wall-budget cell(s) carry no speed probe, so this machine's speed "
                f"({rate_now:.1f} force steps/s) cannot be checked against theirs; if they ran on another machine, "
                f"equal minutes here may not be equal training: {advice}")
    low, high = min(rates), max(rates)
    if rate_now > high * (1 + SPEED_TOLERANCE) or rate_now * (1 + SPEED_TOLERANCE) < low:
        return (f"this machine runs the speed probe at {rate_now:.1f} force steps/s, the finished wall-budget cells "
                f"ran at {low:.1f}-{high:.1f}: equal minutes here are not equal training; {advice}")
    return None


def _check_sitting_speed(study: Study, todo: list[Cell], out: Path, extra: list[str], log) -> None:
    """Warn before training wall-budget cells on a machine slower or faster than the finished cells' (CPU only)."""
    from ..devices import lightning_accelerator

    configs = [cell_config(study, c, out, extra) for c in todo]
    timed = [cfg for cfg in configs if cfg.time_budget_min is not None and lightning_accelerator(cfg.accelerator) == "cpu"]
    finished = wall_budget_cells(load_results(out))
    if not timed or not finished:
        return
    from ..training.speed_probe import force_steps_per_s

    threads = torch.get_num_threads()
    torch.set_num_threads(timed[0].threads or threads)
    try:
        note = sitting_speed_note(finished, force_steps_per_s())
    finally:
        torch.set_num_threads(threads)
    if note:
        log(f"[bench {study.name}] warning: {note}")


def load_results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((out / "cells").glob("*.json"))]


def run_study(study: Study, out: str | Path, extra: list[str] | None = None, log=None,
              reuse: list[str | Path] | None = None, jobs: int = 1, launch=None) -> list[dict]:
    """Run every unfinished cell of ``study`` into ``out``; returns all finished cells' results.

    A cell whose configuration equals a finished cell in one of the ``reuse`` folders (say the
    ablation's 9-layer EGNN and PairReg, which the depth study already trained) is copied from
    there, marked ``reused_from``, instead of being trained again.

    ``jobs`` > 1 trains that many cells at once, each in a worker process on cores of its own and, on GPUs, one
    GPU each in turn (bench/parallel.py): ``launch(cell, slot, log_path)`` starts one (the CLI's ``--jobs``).
    """
    out, extra = Path(out), list(extra or [])
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    for group in study.rows():  # fail fast on a bad --set or --row-set before anything is written or trained
        cell_config(study, next(c for c in study.cells if c.group == group), out, extra)
    check_manifest(out, study, extra)
    (out / "cells").mkdir(parents=True, exist_ok=True)
    todo = [c for c in study.cells if not cell_file(out, c).is_file()]
    for cell, (config, source) in reuse_sources(study, todo, out, extra, reuse).items():
        reuse_cell(study, cell, out, config, source)
        todo.remove(cell)
        log(f"[bench {study.name}] {describe_cell(cell)}: reused {source} (same configuration)")
    for cell, source in adoptable_runs(study, todo, out, extra, reuse).items():
        # a copy through a temporary name, so that a copy cut half-way is never taken for a run to resume
        partial = out / "runs" / f".{cell.key}.copying"
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(source, partial)
        os.replace(partial, out / "runs" / cell.key)
        log(f"[bench {study.name}] {describe_cell(cell)}: copied the part-way run {source} (same configuration); "
            "it resumes from its checkpoint")
    done_before = len(study.cells) - len(todo)
    if done_before:
        log(f"[bench {study.name}] {done_before} of {len(study.cells)} cells already finished in {out}; skipping them")
        if todo:
            _check_sitting_speed(study, todo, out, extra, log)
    if jobs > 1 and todo:
        _train_in_workers(study, todo, out, extra, jobs, launch, log)
        return load_results(out)
    dataset = None
    if study.dataset == "qm9" and todo:
        from ..data import qm9

        dataset = qm9.load_qm9(list(study.targets))
    t0 = time.perf_counter()
    # the ETA's pace comes from cells trained from scratch in this sitting (a resumed cell is quicker)
    paced_s, paced_cost = 0.0, 0.0
    cost_left = sum(c.cost for c in todo)
    for k, cell in enumerate(todo):
        elapsed = time.perf_counter() - t0
        eta = f"{paced_s / paced_cost * cost_left / 60:.1f} min" if paced_cost else "after the first new cell"
        position = done_before + k + 1
        log(f"[bench {study.name}] cell {position}/{len(study.cells)}: {describe_cell(cell)} "
            f"| elapsed {elapsed / 60:.1f} min, ETA {eta}")
        from_scratch = not (out / "runs" / cell.key).exists()
        started = time.perf_counter()
        run_cell(study, cell, out, extra, dataset)
        if from_scratch:
            paced_s += time.perf_counter() - started
            paced_cost += cell.cost
        cost_left -= cell.cost
    if todo:
        _log_sitting_done(study, t0, log)
    return load_results(out)


def _log_sitting_done(study: Study, t0: float, log) -> None:
    log(f"[bench {study.name}] all {len(study.cells)} cells finished; this sitting took "
        f"{(time.perf_counter() - t0) / 60:.1f} min")


def _train_in_workers(study: Study, todo: list[Cell], out: Path, extra: list[str], jobs: int, launch, log) -> None:
    """``todo`` trained ``jobs`` at a time, each cell in a worker pinned to ``threads`` cores (its config's, 1 if
    unset) and, when the cells train on GPUs, seeing one GPU; each worker's output goes to ``out/logs/<cell>.log``."""
    from .parallel import Task, run_in_parallel, visible_gpus, worker_slots

    if launch is None:
        raise ValueError("run_study(jobs > 1) needs launch(cell, slot, log_path) to start a worker")
    configs = [cell_config(study, c, out, extra) for c in todo]
    threads = max(cfg.threads or 1 for cfg in configs)
    gpus = None
    # lightning_accelerator resolves "auto", and refuses accelerator=gpu on a machine without CUDA, as training would
    if any(lightning_accelerator(cfg.accelerator) == "gpu" for cfg in configs):
        if max(cfg.devices for cfg in configs) > 1:
            raise ValueError(f"--jobs {jobs} with devices > 1: each worker gets one GPU; set devices=1, or train "
                             "one cell at a time on several GPUs (no --jobs)")
        gpus = visible_gpus(torch.cuda.device_count())
    tasks = [Task(c, f"cell {c.key} ({describe_cell(c)})", out / "logs" / f"{c.key}.log") for c in todo]
    t0 = time.perf_counter()
    on_gpus = f", on GPU{'s' if len(gpus) > 1 else ''} {','.join(gpus)}" if gpus else ""
    log(f"[bench {study.name}] {len(todo)} cell(s) to train, {jobs} at a time, {threads} thread(s) each{on_gpus}")
    run_in_parallel(tasks, worker_slots(jobs, threads, gpus), launch, lambda msg: log(f"[bench {study.name}] {msg}"))
    _log_sitting_done(study, t0, log)
