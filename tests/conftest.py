"""Shared fixtures: a 120-molecule real QM9 sample and an isolated cache folder."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
QM9_SAMPLE = FIXTURES / "qm9_sample"


@pytest.fixture
def qm9_sample_env(tmp_path, monkeypatch):
    """Point pairreg's QM9 loader at the committed sample, with a fresh cache folder."""
    monkeypatch.setenv("PAIRREG_QM9_SOURCE", str(QM9_SAMPLE))
    monkeypatch.setenv("PAIRREG_CACHE", str(tmp_path / "cache"))
    return tmp_path


RMD17_FIXTURE = FIXTURES / "rmd17"


@pytest.fixture(scope="session")
def rmd17_run(tmp_path_factory) -> Path:
    """A finished tiny ethanol energy + forces run (2 epochs, EMA on) on the rMD17 fixture; read-only for tests.

    Shared by the calculator, MD, ensemble and fine-tuning tests, which need a real checkpoint of a model
    trained with forces but not a good one.
    """
    from pairreg.cli.main import main

    out = tmp_path_factory.mktemp("rmd17-runs")
    args = ["train", "--out", str(out), "--set", "dataset=rmd17", "molecule=ethanol", f"data_root={RMD17_FIXTURE}",
            "targets=energy", "hidden=16", "n_layers=2", "n_rbf=8", "rbf_max_A=5", "force_weight=10",
            "ema_decay=0.9", "batch_size=8", "epochs=2", "progress=false", "threads=1", "seed=3", "name=ethanol"]
    assert main(args) == 0
    return out / "ethanol"


def train_and_predict(tmp_path, capsys, backbone: str, settings: list[str]):
    """Train ``backbone`` with forces for one epoch on the ethanol fixture (PairReg, 2 layers, ``settings`` on top),
    check that `pairreg predict` reads the run back as a CSV with an energy column, and return the loaded
    (model, info) — the CLI round trip every backbone's tests share."""
    from pairreg.cli.main import main
    from pairreg.training.checkpoint import load_model

    args = ["train", "--out", str(tmp_path), "--set", "dataset=rmd17", "molecule=ethanol", f"data_root={RMD17_FIXTURE}",
            "targets=energy", f"backbone={backbone}", "n_layers=2", "mitigation=pairreg", "force_weight=10",
            "batch_size=8", "epochs=1", "progress=false", "threads=1", f"name={backbone}", *settings]
    assert main(args) == 0
    capsys.readouterr()  # the training report
    model, info = load_model(tmp_path / backbone)
    frame = FIXTURES / "inputs" / "ethanol.extxyz"
    assert main(["predict", str(frame), "--checkpoint", str(tmp_path / backbone), "--csv"]) == 0
    header, row = capsys.readouterr().out.strip().splitlines()[:2]
    assert "energy" in header and len(row.split(",")) == len(header.split(","))
    return model, info
