"""Long runs lose nothing: kill -9 and resume gives the uninterrupted result; a NaN loss stops cleanly;
two DDP processes (gloo, CPU) reduce their metrics across processes.

Uses the rMD17 fixture (tests/fixtures/rmd17): tiny models, CPU, a few seconds per run.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from pairreg.config import load_config
from pairreg.training.checkpoint import load_checkpoint

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17"
PAIRREG = [sys.executable, "-m", "pairreg.cli.main"]
TINY = ["dataset=rmd17", "molecule=ethanol", f"data_root={FIXTURE}", "targets=energy", "hidden=16", "n_layers=2",
        "progress=false", "threads=1", "seed=7"]


def _env():
    env = dict(os.environ)
    env.pop("PAIRREG_RUN_DIR", None)
    return env


def _train(out: Path, name: str, *extra: str, timeout=300, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([*PAIRREG, "train", "--out", str(out), "--set", *TINY, f"name={name}", *extra],
                          capture_output=True, text=True, timeout=timeout, env=env or _env())


def _results(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    return {**m["val"], **m["test"], "best_epoch": m["best_epoch"]}


# The child kills itself with SIGKILL at a fixed optimiser step: the kill lands at the same point of
# the run on any machine, however fast (a sleep-based kill raced the epoch on fast machines).
_KILL_AT = """
import os, signal, sys
from pairreg.training.module import PropertyModule

EPOCH, BATCH = int(os.environ["KILL_EPOCH"]), int(os.environ["KILL_BATCH"])

def on_train_batch_end(self, outputs, batch, batch_idx):
    if self.current_epoch == EPOCH and batch_idx == BATCH:
        os.kill(os.getpid(), signal.SIGKILL)

PropertyModule.on_train_batch_end = on_train_batch_end
from pairreg.cli.main import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    # batch 4 and forces: 15 optimiser steps of double backward per epoch; the kill lands after step 6
    # of epoch 2, i.e. after epoch 1's checkpoint and before epoch 2's
    settings = ["epochs=3", "batch_size=4", "force_weight=1.0", "lr=3e-3"]
    ref = _train(tmp_path, "straight", *settings)
    assert ref.returncode == 0, ref.stderr[-2000:]

    run = tmp_path / "killed"
    killed = subprocess.run([sys.executable, "-c", _KILL_AT, "train", "--out", str(tmp_path), "--set", *TINY,
                             "name=killed", *settings], capture_output=True, text=True, timeout=300,
                            env={**_env(), "KILL_EPOCH": "1", "KILL_BATCH": "5"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    ckpt = load_checkpoint(run, "last")
    assert ckpt["epoch"] == 0, "the kill was meant to land in epoch 2, after epoch 1's checkpoint"
    assert not (run / "metrics.json").exists()
    assert not list(run.rglob("*.tmp")) or all(p.name.startswith(".") for p in run.rglob("*.tmp"))

    resumed = subprocess.run([*PAIRREG, "train", "--resume", str(run)], capture_output=True, text=True,
                             timeout=300, env=_env())
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming from checkpoints/last.ckpt" in resumed.stderr
    # the earlier metrics.csv was kept as metrics.part1.csv, so Lightning's warning that it deletes it is not shown
    assert (run / "logs" / "metrics.part1.csv").is_file()
    assert "will be deleted" not in resumed.stderr and "LeafSpec" not in resumed.stderr, resumed.stderr[-2000:]
    a, b = _results(tmp_path / "straight"), _results(run)
    assert a.keys() == b.keys()
    for key in a:
        assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-9), key


def test_resume_refuses_changes_that_alter_the_result(tmp_path):
    run = tmp_path / "r"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("dataset: qm9\n")
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    from pairreg.cli.main import main

    assert main(["train", "--resume", str(run), "--set", "lr=0.1"]) == 2
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2


def _poison_loss(monkeypatch, bad_steps):
    """Make the training loss NaN at the optimiser steps (1-based calls) for which ``bad_steps(n)`` is true."""
    from pairreg.training import module as module_mod

    calls = {"n": 0}
    real = module_mod.total_loss

    def poisoned(*args, **kwargs):
        loss, parts = real(*args, **kwargs)
        calls["n"] += 1
        return (loss * float("nan") if bad_steps(calls["n"]) else loss), parts

    monkeypatch.setattr(module_mod, "total_loss", poisoned)


def test_nan_loss_without_the_guard_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    from pairreg.training.losses import NonFiniteLossError
    from pairreg.training.run import train

    _poison_loss(monkeypatch, lambda n: n > 20)  # finite for the first 20 steps (epoch 1 has 15), then NaN
    cfg = load_config(None, [*TINY, "epochs=3", "batch_size=4", f"out={tmp_path}", "name=nan",
                             "divergence_guard=false"])
    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 6, global step 21"):
        train(cfg)
    run = tmp_path / "nan"
    ckpt = load_checkpoint(run, "last")
    assert ckpt["epoch"] == 0
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values() if v.is_floating_point())
    assert not [p for p in run.rglob("*") if p.name.endswith(".tmp")]
    assert not (run / "metrics.json").exists()


def test_nan_loss_before_the_first_validation_goes_back_to_the_initial_weights(tmp_path, monkeypatch, capsys):
    from pairreg.training.run import train

    _poison_loss(monkeypatch, lambda n: n == 5)  # no validated weights yet: the guard returns to where it started
    cfg = load_config(None, [*TINY, "epochs=2", "batch_size=4", f"out={tmp_path}", "name=early"])
    summary = train(cfg)
    assert ("divergence guard: epoch 1: non-finite training loss (nan) at batch 5, global step 5; rolled back to "
            "the initial weights with lr × 0.5") in capsys.readouterr().err
    assert summary["lr_scale"] == 0.5 and summary["epochs_run"] == 2
    assert math.isfinite(summary["test"]["test/energy_mae_meV"])


def test_a_nan_training_loss_mid_epoch_is_rolled_back_and_training_goes_on(tmp_path, monkeypatch, capsys):
    from pairreg.training.run import train

    _poison_loss(monkeypatch, lambda n: n == 21)  # one bad batch in epoch 2 (PaiNN at lr 4e-3 had one at step 4,710)
    cfg = load_config(None, [*TINY, "epochs=3", "batch_size=4", f"out={tmp_path}", "name=once"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train(cfg)
    # our stderr line says why the step was skipped; Lightning's generic "returned None" warning is not repeated
    assert not [w for w in caught if "returned `None`" in str(w.message)]
    err = capsys.readouterr().err
    assert ("divergence guard: epoch 2: non-finite training loss (nan) at batch 6, global step 21; rolled back to "
            "the weights of epoch 1 with lr × 0.5") in err
    assert summary["lr_scale"] == 0.5 and summary["epochs_run"] == 3
    last = load_checkpoint(tmp_path / "once", "last")
    assert last["epoch"] == 2 and last["pairreg_schedule"]["lr_scale"] == pytest.approx(0.5)
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values() if v.is_floating_point())
    assert math.isfinite(summary["test"]["test/energy_mae_meV"])


def test_a_nan_training_loss_that_comes_back_stops_after_the_last_rollback(tmp_path, monkeypatch):
    from pairreg.training.callbacks import MAX_ROLLBACKS, DivergenceError
    from pairreg.training.run import train

    _poison_loss(monkeypatch, lambda n: n > 20)
    cfg = load_config(None, [*TINY, "epochs=3", "batch_size=4", f"out={tmp_path}", "name=again"])
    with pytest.raises(DivergenceError, match=f"non-finite training loss .* after {MAX_ROLLBACKS} rollbacks"):
        train(cfg)


# Loaded by every process of the run below (PYTHONPATH): the second DDP process's budget clock runs 1,000 times
# fast, so by its own clock it is out of budget after its first batch.
FAST_CLOCK_ON_RANK_1 = """
import os
if os.environ.get("LOCAL_RANK") == "1":
    from pairreg.training import schedules
    real = schedules.clock
    schedules.clock = lambda: 1000.0 * real()
"""


@pytest.mark.slow
def test_two_process_ddp_stops_both_ranks_on_rank_0s_wall_budget(tmp_path):
    """time_budget_min with two processes: each rank on its own clock would stop at a different batch and leave
    the other in an all-reduce forever (here: rank 1 after one batch). Both must follow rank 0's budget."""
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(FAST_CLOCK_ON_RANK_1)
    env = _env()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(hooks), env.get("PYTHONPATH")) if p)
    res = _train(tmp_path, "ddp-budget", "epochs=1000", "time_budget_min=0.05", "batch_size=4", "subset_val=2",
                 "devices=2", "strategy=ddp", "accelerator=cpu", timeout=600, env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp-budget" / "metrics.json").read_text())
    assert summary["stopped_by"] == "time_budget_min"
    # rank 0 trained well past the batch where rank 1's own clock ran out (one epoch here is a few batches)
    assert summary["epochs_run"] >= 2, summary


@pytest.mark.slow
def test_two_process_ddp_shards_batches_built_on_the_device(tmp_path):
    """data_on_device with two processes: each rank batches only its half of the training set (Lightning's
    DistributedSampler over the resident set's indices), so an epoch is half the steps of one process's."""
    res = _train(tmp_path, "ddp-resident", "epochs=2", "batch_size=4", "subset_val=2", "devices=2", "strategy=ddp",
                 "accelerator=cpu", "data_on_device=true", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "ddp-resident" / "metrics.json").read_text())
    with np.load(tmp_path / "ddp-resident" / "split.npz") as split:
        n_train = len(split["train"])
    per_rank_steps = math.ceil(math.ceil(n_train / 2) / 4)  # each rank's half, in batches of 4
    assert per_rank_steps < math.ceil(n_train / 4)  # sharding makes a difference on this fixture
    assert summary["optimizer_steps"] == 2 * per_rank_steps, (summary["optimizer_steps"], n_train)


@pytest.mark.slow
def test_two_process_ddp_reduces_metrics_and_checkpoint_reloads(tmp_path):
    # 2 val and 20 test frames: equal shards, so the reduced MAE equals the single-process MAE exactly
    res = _train(tmp_path, "ddp", "epochs=2", "batch_size=4", "subset_val=2", "devices=2", "strategy=ddp",
                 "accelerator=cpu", timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "ddp"
    metrics = json.loads((run / "metrics.json").read_text())
    assert "world_size=2" in res.stderr or "distributed_backend=gloo" in res.stderr
    env = json.loads((run / "environment.json").read_text())
    assert env["devices"] == 2 and env["strategy"] == "ddp"
    ev = subprocess.run([*PAIRREG, "evaluate", str(run), "--split", "test", "--json"], capture_output=True, text=True,
                        timeout=120, env=_env())
    assert ev.returncode == 0, ev.stderr[-2000:]
    single = json.loads(ev.stdout)["mae"]
    assert metrics["test"]["test/energy_mae_meV"] == pytest.approx(single["energy"]["value"], rel=1e-5)
    assert metrics["test"]["test/forces_mae_meV_per_Angstrom"] == pytest.approx(single["forces"]["value"], rel=1e-5)
    # rank 0's half alone would differ: check the two halves really disagree
    from pairreg.evaluation.forces import energy_force_mae
    from pairreg.training.checkpoint import load_model
    from pairreg.training.datamodule import build_splits

    model, info = load_model(run)
    ds, split = build_splits(info["config"])
    halves = [energy_force_mae(model, ds.subset(split["test"][k::2]))["energy"] for k in (0, 1)]
    assert abs(halves[0] - halves[1]) > 1e-3 * single["energy"]["value"]
