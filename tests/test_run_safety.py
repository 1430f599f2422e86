"""Checkpoints and run directories under hostile or unlucky conditions (issue 13, "Checkpoints and runs").

Crafted pickles never run, malformed checkpoints give one line, last.ckpt stays the last epoch,
run directories are never reused or escaped, a damaged run is refused before anything changes,
a full disk leaves no temporary files, and a NaN validation score stops the run by name.
All in-process on the rMD17 fixture with 2-layer, width-16 models (a second or two per run).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pairreg.bench import runner
from pairreg.bench.studies import Cell, Study
from pairreg.cli.main import main
from pairreg.config import load_config
from pairreg.training import run as run_mod
from pairreg.training.module import PropertyModule

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17"
MOLECULE = Path(__file__).parent / "fixtures" / "inputs" / "ethanol.extxyz"
TINY = ["dataset=rmd17", "molecule=ethanol", f"data_root={FIXTURE}", "targets=energy", "hidden=16", "n_layers=2",
        "progress=false", "threads=1", "seed=7"]


def _train_args(out: Path, name: str, *extra: str) -> list[str]:
    return ["train", "--out", str(out), "--set", *TINY, f"name={name}", *extra]


def _error_line(capsys) -> str:
    """The command's stderr, which must be exactly one line (plus Lightning's chatter, filtered out)."""
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("pairreg ")]
    assert len(lines) == 1, lines
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished 2-epoch run (never modified: tests copy it)."""
    out = tmp_path_factory.mktemp("runs")
    assert main(_train_args(out, "base", "epochs=2")) == 0
    return out / "base"


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    dest = tmp_path / "runs" / "copy"
    shutil.copytree(trained, dest)
    return dest


# --- 1. weights-only on every load path --------------------------------------------------------------------------

class _Payload:
    """Unpickling this creates a file: the marker that code from a checkpoint ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _plant_payload(ckpt_file: Path, marker: Path) -> None:
    ckpt = torch.load(ckpt_file, weights_only=True)
    ckpt["extra"] = _Payload(marker)
    torch.save(ckpt, ckpt_file)


@pytest.fixture
def crafted(run_copy, tmp_path, monkeypatch):
    marker = tmp_path / "PAYLOAD_RAN"
    for name in ("last.ckpt", "best.ckpt"):
        _plant_payload(run_copy / "checkpoints" / name, marker)
    (run_copy / "metrics.json").unlink()  # looks interrupted: resumable
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")  # asks torch to unpickle anything it is not told otherwise
    return run_copy, marker


@pytest.mark.parametrize("command", ["resume", "evaluate", "predict", "export", "diagnose"])
def test_crafted_checkpoint_never_runs_its_payload(crafted, command, tmp_path, capsys):
    run, marker = crafted
    argv = {"resume": ["train", "--resume", str(run)],
            "evaluate": ["evaluate", str(run), "--which", "last"],
            "predict": ["predict", str(MOLECULE), "--checkpoint", str(run)],
            "export": ["export", str(run), str(tmp_path / "slim.ckpt")],
            "diagnose": ["diagnose", str(run), "--out", str(tmp_path / "diag")]}[command]
    assert main(argv) == 2
    line = _error_line(capsys)
    assert not marker.exists()
    assert "refused" in line and ".ckpt" in line and "weights_only" not in line


def test_lightnings_own_resume_load_is_weights_only(crafted):
    # train() checks last.ckpt before handing it to Lightning; Lightning's load itself is safe too
    from pairreg.training.checkpoint import SafeCheckpointIO

    run, marker = crafted
    with pytest.raises(ValueError, match="refused"):
        SafeCheckpointIO().load_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert not marker.exists()


def test_bench_resume_of_a_crafted_cell_never_runs_its_payload(tmp_path, monkeypatch):
    study = Study("depth", "cpu", "rmd17-cpu", ["molecule=ethanol"])
    study.cells = [Cell("none-L1-s0", "none", 1, 0, ("mitigation=none", "n_layers=1", "seed=0"), 1.0)]
    extra = ["hidden=8", "epochs=1", "batch_size=8", "threads=1", f"data_root={FIXTURE}"]
    out = tmp_path / "study"
    runner.run_study(study, out, extra, log=lambda m: None)
    run_dir = out / "runs" / "none-L1-s0"
    (run_dir / "metrics.json").unlink()  # interrupted after its checkpoint: the next sitting resumes it
    (out / "cells" / "none-L1-s0.json").unlink()
    marker = tmp_path / "PAYLOAD_RAN"
    _plant_payload(run_dir / "checkpoints" / "last.ckpt", marker)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(ValueError, match="refused"):  # CheckpointError, one line naming last.ckpt
        runner.run_study(study, out, extra, log=lambda m: None)
    assert not marker.exists()


# --- 2. malformed checkpoints: one line each, before the model is built -----------------------------------------

def _mutate(ckpt_file: Path, change) -> None:
    ckpt = torch.load(ckpt_file, weights_only=True)
    change(ckpt)
    torch.save(ckpt, ckpt_file)


def _first_weight(ckpt) -> str:
    return next(k for k, v in ckpt["state_dict"].items() if k.startswith("model.") and v.dim() == 2)


MALFORMED = {
    "missing section": (lambda c: c["pairreg"].pop("target_units"), "target_units"),
    "tensor for a dict": (lambda c: c.__setitem__("pairreg", torch.zeros(3)), "'pairreg' is a Tensor"),
    "tensor for the state dict": (lambda c: c.__setitem__("state_dict", torch.zeros(3)), "'state_dict' is a Tensor"),
    "dict for a weight": (lambda c: c["state_dict"].__setitem__(_first_weight(c), {"a": 1}), "not a tensor"),
    "missing weight": (lambda c: c["state_dict"].pop(_first_weight(c)), "missing 1"),
    "other width": (lambda c: c["pairreg"]["config"].__setitem__("hidden", 32), "has shape"),
    "NaN weights": (lambda c: c["state_dict"][_first_weight(c)].view(-1).__setitem__(0, float("nan")), "NaN"),
    "inf weights": (lambda c: c["state_dict"][_first_weight(c)].view(-1).__setitem__(0, float("inf")), "infinite"),
    "fewer target names": (lambda c: c["pairreg"].update(target_names=[], target_units=[]), "0 target names"),
    "two names, one output": (lambda c: c["pairreg"].update(target_names=["energy", "x"], target_units=["meV", "meV"]),
                              "2 target names"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_checkpoint_gives_one_line_naming_the_file(run_copy, case, capsys):
    change, expected = MALFORMED[case]
    best = run_copy / "checkpoints" / "best.ckpt"
    _mutate(best, change)
    assert main(["evaluate", str(run_copy)]) == 2
    line = _error_line(capsys)
    assert str(best) in line and expected in line, line


def test_absurd_width_in_a_checkpoint_is_refused_before_allocating(run_copy, capsys):
    # hidden=300000 would be ~720 GB of weights if built; the shape check (meta device) or the config's
    # size limit refuses it first, naming the checkpoint
    best = run_copy / "checkpoints" / "best.ckpt"
    _mutate(best, lambda c: c["pairreg"]["config"].__setitem__("hidden", 300000))
    assert main(["predict", str(MOLECULE), "--checkpoint", str(run_copy)]) == 2
    line = _error_line(capsys)
    assert str(best) in line and ("shape" in line or "hidden" in line), line


def test_evaluate_never_reports_a_non_finite_mae(trained, monkeypatch, capsys):
    from pairreg.evaluation import forces

    monkeypatch.setattr(forces, "energy_force_mae", lambda *a, **k: {"energy": float("nan"), "forces": 1.0})
    assert main(["evaluate", str(trained), "--json"]) == 2
    line = _error_line(capsys)
    assert "energy" in line and "not finite" in line and capsys.readouterr().out == ""


# --- 3. last.ckpt stays the last epoch's state --------------------------------------------------------------------

def test_last_ckpt_is_not_rewritten_by_the_final_validation(tmp_path, monkeypatch):
    snapshot = {}
    original = PropertyModule.on_fit_end

    def on_fit_end(self):  # the end of fit: last.ckpt as the last epoch wrote it
        snapshot["last"] = (tmp_path / "r" / "checkpoints" / "last.ckpt").read_bytes()
        original(self)

    monkeypatch.setattr(PropertyModule, "on_fit_end", on_fit_end)
    assert main(_train_args(tmp_path, "r", "epochs=2")) == 0
    # after fit, train() validates and tests the best weights: that must not touch last.ckpt
    assert (tmp_path / "r" / "checkpoints" / "last.ckpt").read_bytes() == snapshot["last"]
    assert torch.load(tmp_path / "r" / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1


def test_which_last_reports_the_last_epoch_not_the_best(tmp_path, monkeypatch, capsys):
    # epoch 2's model is made worse than epoch 1's: its mean is shifted by 3 × epoch 1's score (in units of the
    # target scale), so its score lies between 2× and 4× epoch 1's (worse, but under the divergence guard's 10×):
    # best = epoch 1, last = epoch 2
    def on_validation_epoch_start(self):
        if self.trainer.state.fn == "fit" and self.current_epoch == 1:
            first = float(self.trainer.callback_metrics["val/mae_std"])
            with torch.no_grad():
                self.model.target_mean += 3 * first * self.model.target_scale

    monkeypatch.setattr(PropertyModule, "on_validation_epoch_start", on_validation_epoch_start)
    assert main(_train_args(tmp_path, "r", "epochs=2")) == 0
    capsys.readouterr()
    maes = {}
    for which in ("best", "last"):
        assert main(["evaluate", str(tmp_path / "r"), "--which", which, "--json"]) == 0
        maes[which] = json.loads(capsys.readouterr().out)["mae"]["energy"]["value"]
    assert maes["last"] > 1.5 * maes["best"], maes
    epochs = {w: torch.load(tmp_path / "r" / "checkpoints" / f"{w}.ckpt", weights_only=True)["epoch"]
              for w in ("best", "last")}
    assert epochs == {"best": 0, "last": 1}


# --- 4. run directories are never reused; generated names are unique ---------------------------------------------

def test_existing_run_directory_is_refused_unless_resuming(run_copy, capsys):
    before = {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()}
    assert main(_train_args(run_copy.parent, run_copy.name, "hidden=8", "epochs=1")) == 2
    line = _error_line(capsys)
    assert str(run_copy) in line and "--resume" in line and "another name" in line
    assert {p.name: p.read_bytes() for p in run_copy.iterdir() if p.is_file()} == before


def test_unnamed_runs_started_in_the_same_second_get_their_own_directories(tmp_path, monkeypatch):
    from datetime import datetime

    class Frozen(datetime):
        @classmethod
        def now(cls, tz=None):
            return datetime(2026, 1, 2, 3, 4, 5)

    monkeypatch.setattr(run_mod, "datetime", Frozen)
    cfg = load_config(None, [*TINY, f"out={tmp_path}"])
    dirs = [run_mod.run_directory(cfg) for _ in range(3)]
    assert len(set(dirs)) == 3 and all(d.is_dir() and d.parent == tmp_path for d in dirs)
    assert dirs[0].name.endswith("20260102-030405")


def test_bench_restarts_a_cell_that_stopped_before_its_first_checkpoint(tmp_path):
    # its run directory exists (config, split) but holds no checkpoint: the bench starts the cell afresh
    # instead of being refused by the "existing run directory" check
    study = Study("depth", "cpu", "rmd17-cpu", ["molecule=ethanol"])
    study.cells = [Cell("none-L1-s0", "none", 1, 0, ("mitigation=none", "n_layers=1", "seed=0"), 1.0)]
    extra = ["hidden=8", "epochs=1", "batch_size=8", "threads=1", f"data_root={FIXTURE}"]
    out = tmp_path / "study"
    (out / "runs" / "none-L1-s0").mkdir(parents=True)
    (out / "runs" / "none-L1-s0" / "config.yaml").write_text("stale: from the interrupted start\n")
    results = runner.run_study(study, out, extra, log=lambda m: None)
    assert [r["cell"] for r in results] == ["none-L1-s0"]
    assert "stale" not in (out / "runs" / "none-L1-s0" / "config.yaml").read_text()


# --- 5. name stays inside --out ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../escaped", "sub/dir", "..", "ABSOLUTE"])
def test_name_with_a_path_is_refused(tmp_path, name, capsys):
    out = tmp_path / "runs"
    if name == "ABSOLUTE":
        name = str(tmp_path / "escaped")
    assert main(_train_args(out, name, "epochs=1")) == 2
    assert _error_line(capsys).startswith("pairreg train: error: name:")
    assert not (tmp_path / "escaped").exists() and not (out / "sub").exists()


# --- 6. a damaged run is refused before anything changes ---------------------------------------------------------

def test_truncated_last_ckpt_is_refused_before_logs_are_rotated(run_copy, capsys):
    last = run_copy / "checkpoints" / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    logs_before = sorted(p.name for p in (run_copy / "logs").iterdir())
    assert main(["train", "--resume", str(run_copy)]) == 2
    line = _error_line(capsys)
    assert str(last) in line and "cannot resume" in line and "best.ckpt" in line, line
    assert sorted(p.name for p in (run_copy / "logs").iterdir()) == logs_before  # metrics.csv not rotated


@pytest.mark.parametrize("file, content, expected", [
    ("config.yaml", b"", "empty"),
    ("config.yaml", b"hidden: [16\nlr: 1", "not valid YAML"),
    ("config.yaml", b"- just\n- a list\n", "not a mapping"),
    ("split.npz", b"", "not a readable split file"),
    ("split.npz", b"PK\x03\x04 not really a zip", "not a readable split file"),
])
def test_broken_config_or_split_on_resume_is_one_line(run_copy, file, content, expected, capsys):
    (run_copy / file).write_bytes(content)
    logs_before = sorted(p.name for p in (run_copy / "logs").iterdir())
    assert main(["train", "--resume", str(run_copy)]) == 2
    line = _error_line(capsys)
    assert str(run_copy / file) in line and expected in line, line
    assert sorted(p.name for p in (run_copy / "logs").iterdir()) == logs_before


def test_split_with_pickled_objects_is_refused_without_numpys_advice(run_copy, capsys):
    np.savez(run_copy / "split.npz", train=np.array([{"a": 1}], dtype=object))
    assert main(["train", "--resume", str(run_copy)]) == 2
    line = _error_line(capsys)
    assert "split.npz" in line and "allow_pickle" not in line


# --- 7. full disk and unwritable folders: one line, no temporary files --------------------------------------------

def _full_disk_for(monkeypatch, suffix: str) -> None:
    """Writes into files whose name ends with ``suffix`` write half, then fail with ENOSPC (a full disk)."""
    real_open, real_write, doomed = os.open, os.write, set()

    def fake_open(path, flags, *args, **kwargs):
        fd = real_open(path, flags, *args, **kwargs)
        (doomed.add if str(path).endswith(suffix) else doomed.discard)(fd)
        return fd

    def fake_write(fd, data):
        if fd in doomed:
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    def fake_write_path(write):  # writers that do not go through os.write
        def wrapped(self, data, *args, **kwargs):
            if str(self).endswith(suffix):
                write(self, data[: len(data) // 2], *args, **kwargs)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return write(self, data, *args, **kwargs)
        return wrapped

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "write", fake_write)
    monkeypatch.setattr(Path, "write_text", fake_write_path(Path.write_text))
    monkeypatch.setattr(Path, "write_bytes", fake_write_path(Path.write_bytes))


def _tmp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


@pytest.mark.parametrize("victim", ["config.yaml", "split.npz", "last.ckpt", "metrics.json"])
def test_full_disk_during_training_is_one_line_and_leaves_no_tmp(tmp_path, victim, monkeypatch, capsys):
    _full_disk_for(monkeypatch, f"{victim}.tmp")
    assert main(_train_args(tmp_path, "r", "epochs=1")) != 0
    line = _error_line(capsys)
    assert victim in line and os.strerror(errno.ENOSPC) in line, line
    assert _tmp_files(tmp_path) == [] and not (tmp_path / "r" / victim).exists()


def test_full_disk_keeps_the_previous_diagnostics_and_table(trained, tmp_path, monkeypatch, capsys):
    from pairreg.bench.report import write_report

    out = tmp_path / "diag"
    out.mkdir()
    (out / "diagnostics.json").write_text("previous")
    _full_disk_for(monkeypatch, "diagnostics.json.tmp")
    assert main(["diagnose", str(trained), "--molecules", "4", "--out", str(out)]) != 0
    assert "diagnostics.json" in _error_line(capsys)
    assert (out / "diagnostics.json").read_text() == "previous" and _tmp_files(out) == []

    (out / "table.md").write_text("previous")
    _full_disk_for(monkeypatch, "table.md.tmp")
    with pytest.raises(OSError, match="table.md: cannot write"):
        write_report(Study("depth", "cpu", "rmd17-cpu", []), [], out)
    assert (out / "table.md").read_text() == "previous" and _tmp_files(out) == []


def test_full_disk_on_export_is_one_line(trained, tmp_path, monkeypatch, capsys):
    _full_disk_for(monkeypatch, "slim.ckpt.tmp")
    assert main(["export", str(trained), str(tmp_path / "slim.ckpt")]) != 0
    assert "slim.ckpt" in _error_line(capsys)
    assert list(tmp_path.iterdir()) == []


def test_out_that_cannot_be_created_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert main(_train_args(blocker / "runs", "r", "epochs=1")) != 0
    assert "cannot write" in _error_line(capsys)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_is_one_line(tmp_path, capsys):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        assert main(_train_args(out, "r", "epochs=1")) != 0
        assert "cannot write" in _error_line(capsys)
    finally:
        out.chmod(0o755)


# --- 8. a NaN validation score stops the run by name --------------------------------------------------------------

def test_nan_validation_score_stops_with_the_epoch(tmp_path, monkeypatch, capsys):
    def on_validation_epoch_start(self):  # predictions become NaN in the first validation
        if self.trainer.state.fn == "fit":
            with torch.no_grad():
                self.model.target_mean.fill_(float("nan"))

    monkeypatch.setattr(PropertyModule, "on_validation_epoch_start", on_validation_epoch_start)
    assert main(_train_args(tmp_path, "r", "epochs=1")) == 3
    line = _error_line(capsys)
    assert line.startswith("pairreg train: stopped: non-finite validation score") and "epoch 1" in line, line
    assert not (tmp_path / "r" / "checkpoints" / "last.ckpt").exists()  # nothing saved from the NaN epoch
