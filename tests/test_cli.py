"""End to end on the committed 120-molecule QM9 sample: train → evaluate → predict, through the CLI."""

import csv
import json

import numpy as np
import pytest

from pairreg.cli.main import main
from pairreg.data import qm9
from pairreg.testing.equivariance import random_orthogonal

TRAIN = ["--set", "subset_train=96", "epochs=15", "n_layers=2", "hidden=32", "batch_size=16", "lr=3e-3",
         "progress=false", "targets=homo,mu", "name=e2e"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    mp = pytest.MonkeyPatch()
    mp.setenv("PAIRREG_QM9_SOURCE", str(__import__("conftest").QM9_SAMPLE))
    mp.setenv("PAIRREG_CACHE", str(tmp / "cache"))
    assert main(["train", "--preset", "qm9-demo", "--out", str(tmp / "runs"), *TRAIN]) == 0
    yield tmp / "runs" / "e2e"
    mp.undo()


def write_xyz(path, z, pos):
    symbols = {1: "H", 6: "C", 7: "N", 8: "O", 9: "F", 17: "Cl"}
    lines = [str(len(z)), "test molecule"] + [f"{symbols[int(a)]} {x:.10f} {y:.10f} {w:.10f}" for a, (x, y, w) in zip(z, pos)]
    path.write_text("\n".join(lines) + "\n")


def test_run_directory_contents(trained_run):
    for name in ("config.yaml", "environment.json", "split.npz", "metrics.json", "checkpoints/best.ckpt",
                 "checkpoints/last.ckpt", "logs/metrics.csv"):
        assert (trained_run / name).is_file(), name
    assert not list(trained_run.rglob("*.tmp"))
    split = np.load(trained_run / "split.npz")
    assert len(split["train"]) == 96 and not set(split["train"]) & set(split["test"])


def test_loss_falls(trained_run):
    rows = list(csv.DictReader(open(trained_run / "logs" / "metrics.csv")))
    losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    assert len(losses) == 15
    assert losses[-1] < 0.9 * losses[0] and min(losses[-3:]) < min(losses[:3]), losses


def test_metrics_have_units(trained_run):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert set(metrics["test"]) == {"test/homo_mae_meV", "test/mu_mae_D", "test/mae_std"}
    assert 1 <= metrics["best_epoch"] <= 15


def test_checkpoint_reloads_to_identical_predictions(trained_run, capsys):
    metrics = json.loads((trained_run / "metrics.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(trained_run), "--split", "test", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mae"]["homo"]["unit"] == "meV"
    assert out["mae"]["homo"]["value"] == pytest.approx(metrics["test"]["test/homo_mae_meV"], rel=1e-5)
    assert out["mae"]["mu"]["value"] == pytest.approx(metrics["test"]["test/mu_mae_D"], rel=1e-5)


def test_predict_invariant_to_rotation_reflection_permutation(trained_run, tmp_path, capsys):
    ds = qm9.load_qm9(verbose=False)
    z, pos = ds.atoms(30)
    rng = np.random.default_rng(0)
    q = random_orthogonal(-1, rng).numpy()
    perm = rng.permutation(len(z))
    write_xyz(tmp_path / "a.xyz", z, pos)
    write_xyz(tmp_path / "b.xyz", z[perm], (pos @ q.T + [1.0, -2.0, 3.0])[perm])
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "a.xyz"), str(tmp_path / "b.xyz"), "--checkpoint", str(trained_run), "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["predictions"]
    assert rows[0]["homo_meV"] == pytest.approx(rows[1]["homo_meV"], abs=1e-3)
    assert rows[0]["mu_D"] == pytest.approx(rows[1]["mu_D"], abs=1e-6)
    assert rows[0]["formula"] == rows[1]["formula"]


def test_predict_bad_inputs_give_named_errors(trained_run, tmp_path, capsys):
    write_xyz(tmp_path / "cl.xyz", [6, 17], [[0, 0, 0], [1.7, 0, 0]])
    (tmp_path / "empty.xyz").write_text("")
    (tmp_path / "broken.xyz").write_text("3\ncomment\nC 0 0 0\nH 1 1\n")
    write_xyz(tmp_path / "one.xyz", [6], [[0, 0, 0]])
    cases = {"cl.xyz": r"\[17\] not known", "empty.xyz": "empty", "broken.xyz": "cannot read", "one.xyz": "single atom",
             "missing.xyz": "no such file"}
    for name, message in cases.items():
        capsys.readouterr()
        assert main(["predict", str(tmp_path / name), "--checkpoint", str(trained_run)]) == 2
        err = capsys.readouterr().err
        assert name in err and __import__("re").search(message, err), err
        assert "Traceback" not in err


def test_data_command_json(qm9_sample_env, capsys):
    assert main(["data", "qm9", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["molecules"] == 120
    assert info["targets"]["homo"]["unit"] == "meV" and info["targets"]["U0"]["atomref_subtracted"]


def test_diagnose_writes_json_and_png(trained_run, tmp_path, capsys):
    assert main(["diagnose", str(trained_run), str(trained_run), "--split", "test", "--molecules", "8",
                 "--out", str(tmp_path / "diag")]) == 0
    runs = json.loads((tmp_path / "diag" / "diagnostics.json").read_text())
    assert len(runs) == 2 and runs[0]["n_layers"] == 2 and runs[0]["molecules"] == 8
    assert len(runs[0]["diagnostics"]["dirichlet_h"]) == 3  # embedding + 2 layers
    assert runs[0]["diagnostics"] == runs[1]["diagnostics"]
    png = (tmp_path / "diag" / "diagnostics.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
