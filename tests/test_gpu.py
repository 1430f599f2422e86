"""Devices: ``accelerator=auto``, batches moved to the model's device, checkpoints across devices.

The CPU tests run everywhere. The ``cuda`` tests need a CUDA GPU and are skipped without one; on a GPU
machine, ``pytest -m cuda tests/test_gpu.py`` runs them (docs/scaling.md). They check that CUDA gives
the CPU's numbers, to float32 tolerance. Tiny models on the rMD17 fixture (tests/fixtures/rmd17).
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.serialization

from pairreg.cli.main import main
from pairreg.config import load_config
from pairreg.data import rmd17
from pairreg.devices import DeviceError, lightning_accelerator, model_device, torch_device
from pairreg.evaluation.diagnostics import diagnose_model
from pairreg.evaluation.evaluate import mae_per_target, predict_set
from pairreg.evaluation.forces import energy_force_mae, predict_energy_forces
from pairreg.models import MoleculeModel
from pairreg.training.checkpoint import load_model
from pairreg.training.run import resume_config, train

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17"
INPUTS = Path(__file__).parent / "fixtures" / "inputs"
TINY = ["dataset=rmd17", "molecule=ethanol", f"data_root={FIXTURE}", "targets=energy", "hidden=16", "n_layers=2",
        "n_rbf=8", "rbf_max_A=6.0", "force_weight=1.0", "batch_size=16", "epochs=1", "progress=false", "threads=1",
        "seed=3"]
ENERGY, FORCES = "test/energy_mae_meV", "test/forces_mae_meV_per_Angstrom"

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _config(out: Path, name: str, *extra: str):
    return load_config(None, [*TINY, f"out={out}", f"name={name}", *extra])


def _no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def _retag_as_cuda(file: Path) -> None:
    """Rewrite a checkpoint so that its tensors are recorded as CUDA tensors, as a GPU run writes them."""
    ckpt = torch.load(file, map_location="cpu", weights_only=True)
    real = torch.serialization.location_tag
    torch.serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(ckpt, file)
    finally:
        torch.serialization.location_tag = real


def _test_split(run_cfg):
    ds, split = rmd17.load_rmd17(run_cfg.molecule, run_cfg.split or "official-1", run_cfg.data_root)
    return ds.subset(split["test"])


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory):
    """A 1-epoch energy + forces run trained on the CPU: (run directory, summary)."""
    out = tmp_path_factory.mktemp("runs")
    summary = train(_config(out, "cpu", "accelerator=cpu"))
    return Path(summary["run_dir"]), summary


# --- which device -------------------------------------------------------------------------------------

def test_auto_is_the_gpu_when_pytorch_sees_one_else_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert lightning_accelerator("auto") == "gpu" and torch_device("auto") == torch.device("cuda")
    assert lightning_accelerator("cpu") == "cpu" and torch_device("cpu") == torch.device("cpu")
    _no_cuda(monkeypatch)
    assert lightning_accelerator("auto") == "cpu" and torch_device("auto") == torch.device("cpu")
    with pytest.raises(DeviceError, match="accelerator=gpu but PyTorch sees no CUDA GPU"):
        lightning_accelerator("gpu")
    with pytest.raises(DeviceError, match="'tpu' is not one of"):
        lightning_accelerator("tpu")


def test_accelerator_auto_trains_on_the_cpu_without_a_gpu(tmp_path, monkeypatch):
    _no_cuda(monkeypatch)
    seen = {}
    real = L.Trainer

    def spy(*args, **kwargs):
        trainer = real(*args, **kwargs)
        seen["accelerator"] = trainer.accelerator
        return trainer

    monkeypatch.setattr(L, "Trainer", spy)
    summary = train(_config(tmp_path, "auto", "accelerator=auto"))
    assert isinstance(seen["accelerator"], L.pytorch.accelerators.CPUAccelerator)
    assert np.isfinite(summary["test"][ENERGY]) and np.isfinite(summary["test"][FORCES])


def test_accelerator_auto_asks_lightning_for_the_gpu_when_there_is_one(tmp_path, monkeypatch):
    # Lightning's own "auto" would also choose Apple's MPS, which has no float64: pairreg resolves it
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seen = {}

    class Stop(Exception):
        pass

    def spy(*args, **kwargs):
        seen.update(kwargs)
        raise Stop

    monkeypatch.setattr(L, "Trainer", spy)
    with pytest.raises(Stop):
        train(_config(tmp_path, "gpu", "accelerator=auto"))
    assert seen["accelerator"] == "gpu"


def test_accelerator_gpu_without_one_is_refused_in_one_line_before_any_write(tmp_path, monkeypatch, capsys):
    _no_cuda(monkeypatch)
    code = main(["train", "--out", str(tmp_path), "--set", *TINY, "name=nogpu", "accelerator=gpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("pairreg train: error: accelerator=gpu but PyTorch sees no CUDA GPU") and "\n" not in err
    assert not (tmp_path / "nogpu").exists()


def test_evaluate_predict_diagnose_refuse_gpu_without_one_in_one_line(cpu_run, tmp_path, monkeypatch, capsys):
    _no_cuda(monkeypatch)
    run, _ = cpu_run
    commands = [["evaluate", str(run)], ["diagnose", str(run), "--out", str(tmp_path)]]
    if importlib.util.find_spec("ase"):  # predict reads molecule files with ASE (the GPU machine may lack it)
        commands.append(["predict", str(INPUTS / "water.xyz"), "--checkpoint", str(run)])
    for argv in commands:
        assert main([*argv, "--accelerator", "gpu"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert f"pairreg {argv[0]}: error: accelerator=gpu but PyTorch sees no CUDA GPU" in err and "\n" not in err


# --- moving data --------------------------------------------------------------------------------------

def test_a_batch_moves_every_tensor_and_keeps_float64_targets():
    ds, _ = rmd17.load_rmd17("ethanol", "official-1", FIXTURE)
    b = ds.collate([0, 3]).to("meta")
    for name, value in b.__dict__.items():
        assert value is None or value.device.type == "meta", name
    assert b.y.dtype == torch.float64 and b.pos.dtype == torch.float32 and b.num_molecules == 2


def test_model_device_is_where_the_parameters_are():
    model = MoleculeModel(n_targets=1, hidden=8, n_layers=1)
    assert model_device(model) == torch.device("cpu")
    assert model_device(model.to("meta")) == torch.device("meta")


# --- checkpoints across devices -----------------------------------------------------------------------

def test_a_checkpoint_written_on_a_gpu_loads_and_resumes_on_the_cpu(cpu_run, tmp_path, capsys):
    run, summary = cpu_run
    copy = tmp_path / "from-gpu"
    shutil.copytree(run, copy)
    for name in ("best.ckpt", "last.ckpt"):
        _retag_as_cuda(copy / "checkpoints" / name)
    if not torch.cuda.is_available():  # the file really names a CUDA device: a plain load refuses it here
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(copy / "checkpoints" / "best.ckpt", weights_only=True)

    model, info = load_model(copy)
    assert model_device(model) == torch.device("cpu")
    maes = energy_force_mae(model, _test_split(info["config"]), 16)
    assert maes["energy"] == pytest.approx(summary["test"][ENERGY], rel=1e-5)
    assert maes["forces"] == pytest.approx(summary["test"][FORCES], rel=1e-5)

    assert main(["evaluate", str(copy), "--json", "--accelerator", "cpu"]) == 0
    shown = json.loads(capsys.readouterr().out)["mae"]
    assert shown["energy"]["value"] == pytest.approx(maes["energy"], rel=1e-6)

    # resuming reads last.ckpt (weights, Adam's state) through Lightning onto the CPU
    cfg = resume_config(copy, {"accelerator": "cpu"})
    resumed = train(cfg, resume=True)
    assert resumed["test"][ENERGY] == pytest.approx(summary["test"][ENERGY], rel=1e-5)


# --- CUDA gives the CPU's numbers (run with `pytest -m cuda` on a GPU machine) ---------------------------

def _float32_close(a, b, scale):
    """a and b agree to float32 rounding of values of size ``scale`` (summation order differs by device)."""
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-4 * scale)


@pytest.mark.cuda
@cuda
def test_cuda_training_gives_the_test_mae_of_a_cpu_evaluation(tmp_path, capsys):
    torch.cuda.reset_peak_memory_stats()
    summary = train(_config(tmp_path, "cuda", "accelerator=auto", "epochs=2"))
    assert torch.cuda.max_memory_allocated() > 0, "the run did not use the GPU"
    model, info = load_model(summary["run_dir"])  # loads on the CPU
    assert model_device(model) == torch.device("cpu")
    maes = energy_force_mae(model, _test_split(info["config"]), 16)
    assert maes["energy"] == pytest.approx(summary["test"][ENERGY], rel=1e-4)
    assert maes["forces"] == pytest.approx(summary["test"][FORCES], rel=1e-4)

    shown = {}
    for accelerator in ("gpu", "cpu"):
        assert main(["evaluate", summary["run_dir"], "--json", "--accelerator", accelerator]) == 0
        shown[accelerator] = json.loads(capsys.readouterr().out)["mae"]
    for name in ("energy", "forces"):
        assert shown["gpu"][name]["value"] == pytest.approx(shown["cpu"][name]["value"], rel=1e-4)


@pytest.mark.cuda
@cuda
def test_cuda_resumes_a_run_written_on_the_cpu(cpu_run, tmp_path):
    run, summary = cpu_run
    copy = tmp_path / "to-gpu"
    shutil.copytree(run, copy)
    resumed = train(resume_config(copy, {"accelerator": "gpu"}), resume=True)  # Adam's state moves to the GPU
    assert resumed["test"][ENERGY] == pytest.approx(summary["test"][ENERGY], rel=1e-4)
    assert resumed["test"][FORCES] == pytest.approx(summary["test"][FORCES], rel=1e-4)


def _energy_model(seed=0):
    torch.manual_seed(seed)
    return MoleculeModel(n_targets=1, hidden=32, n_layers=3, mitigation="pairreg", n_rbf=16, rbf_max_A=6.0,
                         target_mean=[-1e5], target_scale=[250.0]).eval()


@pytest.mark.cuda
@cuda
def test_cuda_forces_energies_predictions_and_diagnostics_equal_the_cpu_ones():
    ds, _ = rmd17.load_rmd17("aspirin", "official-1", FIXTURE)
    cpu = _energy_model()
    gpu = _energy_model().to("cuda")
    e_cpu, f_cpu = predict_energy_forces(cpu, ds, 16)
    e_gpu, f_gpu = predict_energy_forces(gpu, ds, 16)  # batches are moved to the model's device
    assert np.abs(f_cpu).max() > 0
    _float32_close(e_gpu, e_cpu, 250.0)
    _float32_close(f_gpu, f_cpu, np.abs(f_cpu).max())
    _float32_close(predict_set(gpu, ds, 16), predict_set(cpu, ds, 16), 250.0)
    assert mae_per_target(gpu, ds, 16)["energy"] == pytest.approx(mae_per_target(cpu, ds, 16)["energy"], rel=1e-4)
    d_cpu, d_gpu = diagnose_model(cpu, ds, 16), diagnose_model(gpu, ds, 16)
    for key in d_cpu:
        np.testing.assert_allclose(d_gpu[key], d_cpu[key], rtol=1e-3, atol=1e-6 * max(map(abs, d_cpu[key])), err_msg=key)


@pytest.mark.cuda
@cuda
def test_cuda_predict_files_equals_the_cpu(cpu_run):
    pytest.importorskip("ase")  # reading molecule files needs ASE
    from pairreg.evaluation.evaluate import predict_files

    run, _ = cpu_run
    model, info = load_model(run)
    files = [INPUTS / "water.xyz"]
    args = (info["target_names"], info["target_units"])
    rows_cpu = predict_files(model, files, *args)
    rows_gpu = predict_files(model.to("cuda"), files, *args)
    key = f"energy_{info['target_units'][0]}"
    assert [r["formula"] for r in rows_gpu] == [r["formula"] for r in rows_cpu]
    _float32_close([r[key] for r in rows_gpu], [r[key] for r in rows_cpu], float(model.target_scale[0]))
