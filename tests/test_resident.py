"""Batches built on the device (``data_on_device``) equal the host collate's, field by field, and a run with
them trains the same model."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from pairreg.data.molecules import MoleculeBatch, MoleculeSet
from pairreg.data.resident import ResidentSet

FIELDS = [f.name for f in dataclasses.fields(MoleculeBatch)]  # every field, including any added later


def _set(sizes, seed=0, forces=True):
    rng = np.random.default_rng(seed)
    n_atoms = np.asarray(sizes)
    n = int(n_atoms.sum())
    return MoleculeSet(rng.integers(1, 10, n), rng.normal(size=(n, 3)) * 2 + rng.normal(size=3) * 1e3, n_atoms,
                       rng.normal(size=(len(sizes), 2)) * 1e7, ["a", "b"], ["meV", "meV"],
                       forces=rng.normal(size=(n, 3)) if forces else None, force_unit="meV/Angstrom" if forces else None)


@pytest.mark.parametrize("forces", [True, False])
def test_device_batch_equals_host_collate_field_by_field(forces):
    ds = _set([1, 2, 5, 9, 3, 1, 7, 29, 4, 2], forces=forces)  # one-atom molecules have no edges
    resident = ResidentSet(ds, "cpu")
    rng = np.random.default_rng(1)
    for indices in (np.arange(len(ds)), rng.permutation(len(ds))[:6], np.array([7, 7, 0, 5]), np.array([3])):
        host, dev = ds.collate(indices), resident.collate(indices)
        for field in FIELDS:
            a, b = getattr(host, field), getattr(dev, field)
            if a is None:
                assert b is None, field
                continue
            assert a.dtype == b.dtype and a.shape == b.shape, (field, a.dtype, b.dtype, a.shape, b.shape)
            assert torch.equal(a, b), field


def test_device_batch_of_only_one_atom_molecules_has_no_edges():
    resident = ResidentSet(_set([1, 1, 1]), "cpu")
    b = resident.collate([2, 0])
    assert b.edge_index.shape == (2, 0) and b.batch.tolist() == [0, 1]


# --- in training -------------------------------------------------------------------------------------------

from pathlib import Path  # noqa: E402

from pairreg.config import ConfigError, load_config  # noqa: E402
from pairreg.training.run import train  # noqa: E402

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17"
TINY = ["dataset=rmd17", "molecule=ethanol", f"data_root={FIXTURE}", "targets=energy", "hidden=16", "n_layers=2",
        "n_rbf=8", "rbf_max_A=6.0", "force_weight=1.0", "batch_size=16", "epochs=2", "progress=false", "threads=1",
        "seed=3", "eval_test=true"]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _train(out, name, *extra):
    return train(load_config(None, [*TINY, f"out={out}", f"name={name}", *extra]))


def test_a_run_with_batches_built_on_the_device_trains_the_same_model(tmp_path, monkeypatch):
    """Same batches in the same order (the epoch-seeded shuffle draws indices either way): the same weights, so
    the same validation and test errors, on the CPU where both paths are deterministic."""
    host = _train(tmp_path, "host", "accelerator=cpu")
    built = []
    real = ResidentSet.collate
    monkeypatch.setattr(ResidentSet, "collate", lambda self, indices: built.append(len(indices)) or real(self, indices))
    resident = _train(tmp_path, "resident", "accelerator=cpu", "data_on_device=true")
    assert built and max(built) == 16  # the batches of the run went through the device path
    assert "test/forces_mae_meV_per_Angstrom" in host["test"]
    for part in ("val", "test"):
        for key, value in host[part].items():
            assert resident[part][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (part, key)


def test_data_on_device_with_loader_workers_is_refused_by_name(tmp_path):
    with pytest.raises(ConfigError, match="data_on_device.*num_workers=0"):
        load_config(None, [*TINY, "data_on_device=true", "num_workers=2"])


@pytest.mark.cuda
@cuda
def test_cuda_batches_built_on_the_gpu_equal_the_host_batches_moved_there():
    ds = _set([1, 2, 5, 9, 3, 1, 7, 29, 4, 2])
    resident = ResidentSet(ds, "cuda")
    indices = np.array([8, 0, 7, 3, 3])
    host, dev = ds.collate(indices).to("cuda"), resident.collate(indices)
    assert dev.pos.device.type == "cuda" and dev.edge_index.device.type == "cuda"
    for field in FIELDS:
        assert torch.equal(getattr(host, field), getattr(dev, field)), field


@pytest.mark.cuda
@cuda
def test_cuda_run_with_data_on_device_matches_the_cpu_run(tmp_path):
    cpu = _train(tmp_path, "cpu", "accelerator=cpu")
    gpu = _train(tmp_path, "gpu", "accelerator=gpu", "data_on_device=true")
    for key, value in cpu["test"].items():
        assert gpu["test"][key] == pytest.approx(value, rel=1e-3, abs=1e-3), key
