"""A study's cells side by side (``pairreg bench ... --jobs N``): one worker process per cell, each pinned to CPU
cores of its own, the next cell starting on a worker's cores as soon as it ends.

Why processes: a cell is a whole training run with its own torch thread pool and Lightning trainer. Why pinned: each
cell's threads then never share a core with another cell's, which is how every aspirin cell of ``docs/results.md``
was trained (by hand, with ``taskset``). A cell's result does not depend on which core it ran on; a wall-budget
cell's does depend on how fast that core was, as always.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
from pathlib import Path
from typing import Any, NamedTuple

from ..cpu_cores import usable_cores


class Task(NamedTuple):
    """One cell to run in a worker: ``label`` for the progress lines, ``log_path`` for its output."""

    cell: Any
    label: str
    log_path: Path


class CellsFailedError(RuntimeError):
    """Worker processes that ended with a non-zero status; the message names each cell and its log."""


def core_slices(cores: list[int], jobs: int, threads: int) -> list[list[int]]:
    """``jobs`` disjoint groups of ``threads`` cores each, taken in order from ``cores``."""
    if jobs < 1 or threads < 1:
        raise ValueError(f"--jobs {jobs} with threads={threads}: both must be at least 1")
    need = jobs * threads
    if need > len(cores):
        raise ValueError(f"--jobs {jobs} with threads={threads} per cell needs {need} CPU cores, but this process may "
                         f"use {len(cores)} ({', '.join(map(str, cores))}): lower --jobs, or --set threads=1")
    return [cores[k * threads:(k + 1) * threads] for k in range(jobs)]


class Slot(NamedTuple):
    """Where one worker runs: the CPU cores it pins itself to (None: unpinned) and the GPU it sees (None: no GPU
    given; else the value of CUDA_VISIBLE_DEVICES for it)."""

    cores: list[int] | None
    gpu: str | None = None


def visible_gpus(count: int, environ=os.environ) -> list[str]:
    """The ``count`` GPUs this process sees, as CUDA_VISIBLE_DEVICES entries a worker can be given one of."""
    listed = [g.strip() for g in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if g.strip()]
    return listed[:count] if "CUDA_VISIBLE_DEVICES" in environ else [str(k) for k in range(count)]


def worker_slots(jobs: int, threads: int, gpus: list[str] | None = None) -> list[Slot]:
    """One slot per worker: ``threads`` cores of its own each (where the OS can pin), and with ``gpus`` one GPU
    each, in turn (more workers than GPUs share them: small cells may, large ones run out of memory)."""
    cores = usable_cores()
    groups = core_slices(cores, jobs, threads) if cores is not None else [None] * jobs
    return [Slot(group, gpus[k % len(gpus)] if gpus else None) for k, group in enumerate(groups)]


def run_in_parallel(tasks: list[Task], slots: list[Slot], launch, log) -> None:
    """Run every task's cell (in order), one worker per slot at a time.

    ``launch(cell, slot, log_path)`` starts one cell's worker process on ``slot`` (its cores to pin itself to,
    the GPU to see) and returns its ``subprocess.Popen``; ``log_path`` is the file its output goes to. Raises
    ``CellsFailedError`` after the last worker ends if any failed; on an exception or Ctrl-C the running workers
    are stopped (SIGTERM: a cell resumes from its last checkpoint).
    """
    free = list(slots)
    waiting, running, failed = list(tasks), {}, []
    ended: queue.Queue = queue.Queue()  # (worker, status), put by a thread per worker: no polling

    def watch(worker: subprocess.Popen) -> None:
        ended.put((worker, worker.wait()))

    try:
        while waiting or running:
            while waiting and free:
                task, slot = waiting.pop(0), free.pop(0)
                task.log_path.parent.mkdir(parents=True, exist_ok=True)
                worker = launch(task.cell, slot, task.log_path)
                running[worker] = (task, slot)
                threading.Thread(target=watch, args=(worker,), daemon=True).start()
                cores = slot.cores
                where = f"core{'s' if len(cores) > 1 else ''} {','.join(map(str, cores))}" if cores else "any core"
                gpu = f", GPU {slot.gpu}" if slot.gpu is not None else ""
                log(f"started {task.label} on {where}{gpu} (output: {task.log_path})")
            worker, status = ended.get()
            task, slot = running.pop(worker)
            free.append(slot)
            if status == 0:
                log(f"finished {task.label}")
            else:
                failed.append(f"{task.label} (exit status {status}; see {task.log_path})")
                log(f"FAILED {task.label}: exit status {status}; see {task.log_path}")
    finally:
        for worker in running:
            worker.terminate()
        for worker in running:
            worker.wait()
    if failed:
        raise CellsFailedError(f"{len(failed)} of {len(tasks)} cell(s) failed: {'; '.join(failed)}; the others "
                               "finished; run the same command again to retry the failed ones")
