"""Benchmark scripts: their defaults stay short (CI never times them; this checks the work they plan)."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peer_training_steps(args) -> int:
    """Training steps of egnn-pytorch (±coordinates) the run makes: the timed passes plus the FLOP count."""
    per_depth = 2 * (args.repeats * (args.warmup + args.steps) + args.steps)
    return per_depth * len(args.layers)


def test_speed_defaults_are_the_short_protocol_and_full_is_a_flag():
    speed = _load("speed")
    short, full = speed.parse_args([]), speed.parse_args(["--full"])
    # the peer's training step at batch 96 takes ~10 s on 2 CPU cores: the default must plan at most
    # ~36 of them (about 5 minutes); the long protocol is only behind --full
    assert _peer_training_steps(short) <= 36
    assert _peer_training_steps(full) > 5 * _peer_training_steps(short)
    assert speed.parse_args(["--steps", "7"]).steps == 7 and speed.parse_args(["--full", "--layers", "5"]).layers == [5]


# --- benchmarks/gpu.py and its compact QM9 file (the GPU machine has neither qm9pack nor a network) ---

def test_gpu_defaults_fit_one_device_call_and_quick_is_toy_sized():
    gpu = _load("gpu")
    full, quick = gpu.parse_args([]), gpu.parse_args(["--quick"])
    assert full.layers[0] == 7 and full.layers == [7, 9] and full.batches == [96, 1024] and full.hidden == 128
    assert full.precisions == ["fp32", "tf32", "bf16"]
    assert full.budget_min <= 4  # the budget run is most of the script's ~6 minutes; the device call has 8
    assert quick.budget_min * 60 <= 5 and max(quick.batches) <= 8 and quick.hidden <= 16
    assert gpu.parse_args(["--quick", "--layers", "4", "--budget-min", "0.1"]).layers == [4]


def test_compact_qm9_round_trips_and_bad_files_are_named(qm9_sample_env, tmp_path, capsys):
    from pairreg.data import qm9

    compact = _load("make_qm9_compact")
    out = tmp_path / "qm9.npz"
    assert compact.main(["--out", str(out), "--targets", "homo,gap"]) == 0
    ds, back = qm9.load_qm9(["homo", "gap"]), compact.load_compact(out)
    assert back.target_names == ["homo", "gap"] and back.target_units == ["meV", "meV"]
    for name in ("z", "n_atoms", "y", "mol_ids"):
        np.testing.assert_array_equal(getattr(back, name), getattr(ds, name), err_msg=name)
    np.testing.assert_array_equal(back.pos, ds.pos.astype(np.float32))  # float32 in the file
    for bad, message in ((tmp_path / "none.npz", "no such file"), (_write(tmp_path / "junk.npz", b"junk"), "cannot be read"),
                         (_savez(tmp_path / "other.npz", z=np.zeros(3)), "missing")):
        with pytest.raises(compact.CompactError, match=message) as err:
            compact.load_compact(bad)
        assert str(bad) in str(err.value) and "\n" not in str(err.value)


def _write(path, data: bytes):
    path.write_bytes(data)
    return path


def _savez(path, **arrays):
    np.savez(path, **arrays)
    return path


@pytest.mark.slow
def test_gpu_quick_runs_every_cell_and_the_budget_training(qm9_sample_env, tmp_path, capsys):
    compact, gpu = _load("make_qm9_compact"), _load("gpu")
    npz = tmp_path / "qm9.npz"
    assert compact.main(["--out", str(npz)]) == 0
    result = tmp_path / "gpu.json"
    assert gpu.main(["--quick", "--qm9-npz", str(npz), "--out", str(tmp_path / "runs"), "--json", str(result)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"gpu_train_mol_per_s=\d+", lines[-1]), lines[-1]
    data = json.loads(result.read_text())
    cells = data["cells"]
    assert [(c["layers"], c["batch"], c["precision"]) for c in cells] == [
        (layers, 8, p) for layers in (2, 3) for p in ("fp32", "tf32", "bf16")]
    assert not [c for c in cells if "error" in c], cells  # bf16 autocast included
    assert all(c["train_mol_per_s"] > 0 and c["infer_mol_per_s"] > 0 for c in cells)
    assert int(lines[-1].split("=")[1]) == round(data["best"]["train_mol_per_s"]) and data["best"]["layers"] == 2
    summary = data["training"]["summary"]
    assert data["training"]["settings"]["time_budget_min"] == 0.05 and summary["stopped_by"] in ("time_budget_min", "epochs")
    assert np.isfinite(summary["test"]["test/homo_mae_meV"])
    assert data["training"]["optimizer_steps"] >= 1


def test_gpu_without_a_gpu_needs_quick(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _load("gpu").main(["--no-train"]) == 2
    assert "no CUDA GPU; `--quick`" in capsys.readouterr().err
