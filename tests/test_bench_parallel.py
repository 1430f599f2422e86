"""`pairreg bench ... --jobs N`: cells side by side in worker processes, each pinned to cores of its own."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pairreg.bench import parallel
from pairreg.bench.parallel import (CellsFailedError, Slot, Task, core_slices, run_in_parallel, visible_gpus,
                                    worker_slots)
from pairreg.cli.main import main

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17"
TINY = ["hidden=8", "epochs=1", "batch_size=8", f"data_root={FIXTURE}"]


def test_core_slices_are_disjoint_and_too_many_jobs_are_refused_by_name():
    assert core_slices([0, 1, 2, 3], 2, 1) == [[0], [1]]
    assert core_slices([4, 5, 6, 7], 2, 2) == [[4, 5], [6, 7]]
    with pytest.raises(ValueError, match=r"--jobs 2 with threads=2 per cell needs 4 CPU cores, but this process may "
                                         r"use 2 \(0, 1\): lower --jobs, or --set threads=1"):
        core_slices([0, 1], 2, 2)
    with pytest.raises(ValueError, match="at least 1"):
        core_slices([0, 1], 0, 1)


def test_workers_get_one_gpu_each_in_turn_from_those_this_process_sees(monkeypatch):
    assert visible_gpus(2, {}) == ["0", "1"]
    assert visible_gpus(2, {"CUDA_VISIBLE_DEVICES": "3, 5,7"}) == ["3", "5"]  # torch counts 2 of them usable
    assert visible_gpus(0, {"CUDA_VISIBLE_DEVICES": ""}) == []
    monkeypatch.setattr(parallel, "usable_cores", lambda: [0, 1, 2])
    assert worker_slots(3, 1, ["3", "5"]) == [Slot([0], "3"), Slot([1], "5"), Slot([2], "3")]
    assert worker_slots(2, 1) == [Slot([0]), Slot([1])]
    monkeypatch.setattr(parallel, "usable_cores", lambda: None)  # no pinning here (macOS): GPUs still assigned
    assert worker_slots(2, 4, ["0"]) == [Slot(None, "0"), Slot(None, "0")]


def test_a_worker_sees_only_its_gpu_and_gpu_cells_with_several_devices_are_refused(tmp_path, monkeypatch):
    """The runner on a (pretended) 2-GPU machine: accelerator=gpu cells go one per GPU, and the launched worker's
    environment has CUDA_VISIBLE_DEVICES set to its GPU; devices=2 per cell with --jobs is refused by name."""
    import torch

    from pairreg.bench import runner
    from pairreg.bench.studies import build_study
    from pairreg.cli import bench_cmd

    monkeypatch.setattr(parallel, "usable_cores", lambda: [0, 1])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    study = build_study("depth", "cpu", 1, "ethanol", [3], None, None)
    study.only(["none", "pairreg"])
    slots, envs = [], []

    def launch(cell, slot, log_path):
        slots.append(slot)
        return _exit_with(0)

    logs = []
    runner.run_study(study, tmp_path / "a", [*TINY, "threads=1", "accelerator=gpu"], log=logs.append, jobs=2,
                     launch=launch)
    assert sorted(s.gpu for s in slots) == ["0", "1"]
    assert "all 2 cells finished; this sitting took" in logs[-1]
    with pytest.raises(ValueError, match="devices > 1: each worker gets one GPU"):
        runner.run_study(study, tmp_path / "b", [*TINY, "threads=1", "accelerator=gpu", "devices=2"],
                         log=lambda m: None, jobs=2, launch=launch)

    class Args:  # what `pairreg bench depth ... --jobs 2` parses to
        study, preset, molecule, depths, seeds, set, row_set, only = "depth", "cpu", "ethanol", [3], 1, TINY, [], []

    monkeypatch.setattr(bench_cmd.subprocess, "Popen", lambda command, **kw: envs.append((command, kw["env"])))
    bench_cmd._launch_worker(Args, tmp_path, "none-L3-s0", Slot([1], "5"), tmp_path / "w.log")
    bench_cmd._launch_worker(Args, tmp_path, "none-L3-s0", Slot(None), tmp_path / "w.log")
    (command, env), (command_cpu, env_cpu) = envs
    assert env["CUDA_VISIBLE_DEVICES"] == "5" and env_cpu is None  # None: the parent's environment, unchanged
    assert command[command.index("--worker") + 1] == "1" and command_cpu[command_cpu.index("--worker") + 1] == "any"
    assert command[command.index("--cells") + 1] == "none-L3-s0" and "--jobs" not in command


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without a CUDA GPU")
def test_jobs_on_gpus_without_one_is_refused_before_any_worker_starts(tmp_path):
    from pairreg.bench import runner
    from pairreg.bench.studies import build_study

    study = build_study("depth", "cpu", 1, "ethanol", [3], None, None)
    started = []
    with pytest.raises(ValueError, match="accelerator=gpu but PyTorch sees no CUDA GPU"):
        runner.run_study(study, tmp_path, [*TINY, "threads=1", "accelerator=gpu"], log=lambda m: None, jobs=2,
                         launch=lambda *a: started.append(a))
    assert not started


def _exit_with(status: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", f"import sys; sys.exit({status})"])


def test_a_freed_workers_cores_go_to_the_next_cell_and_failures_are_named(tmp_path, monkeypatch):
    """Three cells, two at a time on cores 0 and 1: the third starts on the cores of whichever ended first, never
    on a third group; the failed one is named with its log after the others have finished."""
    monkeypatch.setattr(parallel, "usable_cores", lambda: [0, 1])
    given, lines = [], []

    def launch(cell, slot, log_path):
        given.append((cell, slot.cores))
        return _exit_with(1 if cell == "b" else 0)

    tasks = [Task(key, f"cell {key}", tmp_path / "logs" / f"{key}.log") for key in "abc"]
    with pytest.raises(CellsFailedError, match=r"1 of 3 cell\(s\) failed: cell b \(exit status 1; see .*b\.log\)"):
        run_in_parallel(tasks, worker_slots(2, 1), launch, lines.append)
    assert [c for c, _ in given] == ["a", "b", "c"]
    assert given[0][1] == [0] and given[1][1] == [1] and given[2][1] in ([0], [1])
    assert sum(line.startswith("finished") for line in lines) == 2 and any("FAILED cell b" in x for x in lines)
    assert (tmp_path / "logs").is_dir()  # made for the workers' output


def test_running_workers_are_stopped_when_starting_the_next_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(parallel, "usable_cores", lambda: [0, 1])
    started = []

    def launch(cell, slot, log_path):
        if cell == "b":
            raise OSError("cannot start b")
        worker = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
        started.append(worker)  # would wait for input forever: only the runner's clean-up ends it
        return worker

    tasks = [Task(key, key, tmp_path / f"{key}.log") for key in "ab"]
    with pytest.raises(OSError, match="cannot start b"):
        run_in_parallel(tasks, worker_slots(2, 1), launch, lambda line: None)
    assert started and all(w.poll() is not None for w in started)


def test_list_plans_the_wall_time_of_jobs_at_once(tmp_path, capsys):
    """budget-check at B = 10 minutes: three 10-minute cells, then three 30-minute ones, in that order; two at a time
    the last 30-minute cell starts at 40 minutes and ends at 70."""
    base = ["bench", "budget-check", "--preset", "budget", "--list", "--out", str(tmp_path), "--set",
            "time_budget_min=10"]
    assert main(base) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith("(120 minutes of training, one run at a time)")
    assert main([*base, "--jobs", "2"]) == 0
    assert capsys.readouterr().out.splitlines()[-1].endswith(
        "(120 minutes of training, 2 at a time: about 70 minutes of wall time)")
    from pairreg.cli.bench_cmd import _makespan

    assert _makespan([5, 5], 4) == 5 and _makespan([3, 1, 1, 1], 2) == 3 and _makespan([1, 1, 1, 3], 2) == 4


def test_jobs_below_one_is_refused(tmp_path, capsys):
    assert main(["bench", "depth", "--depths", "3", "--out", str(tmp_path), "--jobs", "0", "--set", *TINY]) == 2
    assert "--jobs 0: give at least 1" in capsys.readouterr().err
    assert main(["bench", "depth", "--depths", "3", "--out", str(tmp_path), "--jobs", "-2", "--list"]) == 2
    assert "--jobs -2: give at least 1" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.skipif(len(parallel.usable_cores() or []) < 2, reason="needs 2 CPU cores this process may use")
def test_jobs_trains_cells_side_by_side_on_their_own_cores_with_the_results_of_one_at_a_time(tmp_path, capsys):
    """`--jobs 2 --set threads=1`: two tiny ethanol cells, each in a worker pinned to one core of its own (their
    environment.json says which), with the same test errors as the same cells trained one at a time in-process;
    the parent writes the table of both."""
    args = ["bench", "depth", "--depths", "3", "--seeds", "1", "--molecule", "ethanol", "--only", "none", "pairreg",
            "--set", *TINY, "threads=1"]
    assert main([*args, "--out", str(tmp_path / "serial")]) == 0
    capsys.readouterr()
    assert main([*args, "--out", str(tmp_path / "jobs"), "--jobs", "2"]) == 0
    captured = capsys.readouterr()
    assert "| plain EGCL stack (none) |" in captured.out and "| pairreg |" in captured.out
    assert "2 cell(s) to train, 2 at a time, 1 thread(s) each" in captured.err
    keys = ["none-L3-s0", "pairreg-L3-s0"]
    cores = [json.loads((tmp_path / "jobs" / "runs" / k / "environment.json").read_text())["cpu_affinity"]
             for k in keys]
    assert all(len(c) == 1 for c in cores) and cores[0] != cores[1]
    for key in keys:
        assert "val MAE" in (tmp_path / "jobs" / "logs" / f"{key}.log").read_text()  # the worker's own output
        serial, jobs = (json.loads((tmp_path / d / "cells" / f"{key}.json").read_text())["test"]
                        for d in ("serial", "jobs"))
        assert jobs == pytest.approx(serial, rel=1e-6), key
