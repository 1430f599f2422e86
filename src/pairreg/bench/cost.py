"""What a finished cell cost in core-seconds: one rule for the study report and `benchmarks/compute_used.py`.

No torch here, so the benchmark scripts that tally records start in a blink."""

from __future__ import annotations


def cell_cost(cell: dict) -> tuple[float, int]:
    """(wall seconds, threads) of one finished cell, `pairreg bench` or time-to-accuracy format.

    The wall time is the cell's (training plus evaluation) where it records one, else its training's. Cells
    resumed before 2026-12-07 recorded their last sitting's wall time alone, while a wall-budget cell's training
    time already spanned every sitting, so the longer of the two counts (old step-budget cells resumed in a later
    sitting kept neither, and stay undercounted)."""
    seconds = cell.get("cell_wall_time_s") or cell.get("wall_time_s") or cell.get("train_wall_time_s") \
        or cell.get("training_time_s")
    if seconds is not None and cell.get("training_time_s"):
        seconds = max(seconds, cell["training_time_s"])
    threads = (cell.get("torch_threads") or cell.get("threads") or (cell.get("config") or {}).get("threads")
               or (cell.get("settings") or {}).get("threads"))  # the last: a MACE cell of time_to_accuracy
    if seconds is None or not threads:
        raise ValueError("no wall time or thread count")
    return float(seconds), int(threads)
