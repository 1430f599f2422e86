"""Learning curves of a run, read from its CSV logs: validation MAE per epoch for each target (forces too) and
the learning rate per epoch. Drawing is in :mod:`pairreg.evaluation.plots`.

``logs/metrics.csv`` (Lightning's CSV logger) holds, in file order: a learning-rate row at the start of each
epoch (``lr-<Optimizer>``, no epoch number), the epoch's training and validation rows, and after training
one more validation (of the best weights, at epoch number = epochs run) and the test. Only epochs that have
training rows are epochs of the curve, which leaves that final validation out. A resumed run moved the earlier
log to ``metrics.part1.csv`` (``part2`` ...); the parts are read in order and a redone epoch keeps its last value.
Epochs are numbered from 1, as the run prints them.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

LOGS = "logs"


class CurvesError(ValueError):
    """A run directory whose logs cannot give learning curves."""


@dataclass
class Curves:
    """One run's curves: metric name → (epochs from 1, values), e.g. ``val/energy_mae_meV`` → ([1, 2], [70.1, 65.3])."""

    run_dir: Path
    val_mae: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    lr: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)  # "lr-Adam" → ...


def log_files(run_dir: str | Path) -> list[Path]:
    """The run's CSV logs, oldest first: ``metrics.part1.csv`` ... then ``metrics.csv``."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"{run_dir}: no such run directory")
    folder = run_dir / LOGS
    files = []
    part = 1
    while (folder / f"metrics.part{part}.csv").is_file():
        files.append(folder / f"metrics.part{part}.csv")
        part += 1
    if (folder / "metrics.csv").is_file():
        files.append(folder / "metrics.csv")
    if not files:
        raise CurvesError(f"{run_dir}: no {LOGS}/metrics.csv, so no learning curves (not a pairreg run directory, "
                          "or a run stopped before its first epoch)")
    return files


def is_val_mae(column: str) -> bool:
    """``val/<target>_mae_<unit>``; not ``val/mae_std`` (the standardised score that selects the best epoch)."""
    return column.startswith("val/") and "_mae_" in column


def _number(text: str, file: Path, line: int, column: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CurvesError(f"{file}:{line}: column {column!r} holds {text!r}, not a number") from None


def _read_log(file: Path, val: dict, lr: dict, trained: set) -> None:
    """Add one CSV log's values to ``val`` / ``lr`` (metric → {epoch index: value}) and its trained epochs."""
    with open(file, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "epoch" not in reader.fieldnames:
            raise CurvesError(f"{file}: not a Lightning metrics log (no header with an 'epoch' column)")
        pending_lr = {}  # logged at an epoch's start, without the epoch number: it is the next row's epoch
        for line, row in enumerate(reader, start=2):
            epoch_text = row.get("epoch") or ""
            values = {k: _number(v, file, line, k) for k, v in row.items() if k and k not in ("epoch", "step") and v}
            if not epoch_text:
                pending_lr.update({k: v for k, v in values.items() if k.startswith("lr-")})
                continue
            epoch = int(_number(epoch_text, file, line, "epoch"))
            for name, value in pending_lr.items():
                lr.setdefault(name, {})[epoch] = value
            pending_lr = {}
            if any(k.startswith("train/") for k in values):
                trained.add(epoch)
            for name, value in values.items():
                if is_val_mae(name):
                    val.setdefault(name, {})[epoch] = value


def read_curves(run_dir: str | Path) -> Curves:
    """The run's learning curves from its CSV logs (:func:`log_files`); CurvesError when they hold no epoch."""
    val, lr, trained = {}, {}, set()
    for file in log_files(run_dir):
        _read_log(file, val, lr, trained)

    def series(by_epoch: dict) -> tuple[list[int], list[float]]:
        epochs = sorted(e for e in by_epoch if e in trained)
        return [e + 1 for e in epochs], [by_epoch[e] for e in epochs]

    curves = Curves(Path(run_dir), {k: series(v) for k, v in val.items()}, {k: series(v) for k, v in lr.items()})
    curves.val_mae = {k: v for k, v in curves.val_mae.items() if v[0]}
    curves.lr = {k: v for k, v in curves.lr.items() if v[0]}
    if not curves.val_mae:
        raise CurvesError(f"{run_dir}: its logs hold no validated training epoch yet")
    return curves


def describe_metric(name: str) -> tuple[str, str]:
    """``val/forces_mae_meV_per_Angstrom`` → (``forces``, ``meV/Å``)."""
    target, _, unit = name[len("val/"):].partition("_mae_")
    return target, unit.replace("_per_", "/").replace("Angstrom", "Å")
