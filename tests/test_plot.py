"""`pairreg plot`: learning curves read from the runs' CSV logs, drawn into a PNG."""

import csv
from pathlib import Path

import pytest

from pairreg.cli.main import main
from pairreg.evaluation.curves import CurvesError, describe_metric, read_curves

HEADER = ["epoch", "lr-Adam", "step", "test/energy_mae_meV", "train/loss", "val/energy_mae_meV",
          "val/forces_mae_meV_per_Angstrom", "val/mae_std"]


def write_log(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=HEADER)
        writer.writeheader()
        writer.writerows(rows)


def epoch_rows(epoch: int, step: int, lr: float, energy: float, forces: float) -> list[dict]:
    """What Lightning writes for one epoch: the learning rate (no epoch number), validation, training."""
    return [{"lr-Adam": lr, "step": step},
            {"epoch": epoch, "step": step + 7, "val/energy_mae_meV": energy, "val/forces_mae_meV_per_Angstrom": forces,
             "val/mae_std": 1.0},
            {"epoch": epoch, "step": step + 7, "train/loss": 2.0}]


def test_curves_equal_what_the_fixture_runs_csv_holds(rmd17_run):
    with open(rmd17_run / "logs" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    trained = sorted({int(r["epoch"]) for r in rows if r["epoch"] and r["train/loss"]})
    assert trained == [0, 1]
    val = {int(r["epoch"]): r for r in rows if r["epoch"] and r["val/energy_mae_meV"] and int(r["epoch"]) in trained}
    lrs = [float(r["lr-Adam"]) for r in rows if r["lr-Adam"]]
    curves = read_curves(rmd17_run)
    assert set(curves.val_mae) == {"val/energy_mae_meV", "val/forces_mae_meV_per_Angstrom"}  # not val/mae_std
    for name in curves.val_mae:
        assert curves.val_mae[name] == ([1, 2], [float(val[e][name]) for e in trained])
    assert curves.lr == {"lr-Adam": ([1, 2], lrs)}
    # the final validation of the best weights (epoch number 2 = epochs run) is not a curve point
    assert any(r["epoch"] == "2" and r["val/energy_mae_meV"] for r in rows)


def test_resumed_runs_read_the_earlier_part_and_a_redone_epoch_keeps_its_last_value(tmp_path):
    run = tmp_path / "resumed"
    write_log(run / "logs" / "metrics.part1.csv", epoch_rows(0, 0, 1e-3, 50.0, 900.0)
              + epoch_rows(1, 8, 9e-4, 40.0, 800.0) + [{"lr-Adam": 8e-4, "step": 16}])  # killed in epoch 3
    write_log(run / "logs" / "metrics.csv", epoch_rows(1, 8, 9e-4, 41.0, 801.0)  # resumed from epoch 2's start
              + epoch_rows(2, 16, 8e-4, 30.0, 700.0)
              + [{"epoch": 3, "step": 24, "val/energy_mae_meV": 30.0, "val/forces_mae_meV_per_Angstrom": 700.0}])
    curves = read_curves(run)
    assert curves.val_mae["val/energy_mae_meV"] == ([1, 2, 3], [50.0, 41.0, 30.0])
    assert curves.val_mae["val/forces_mae_meV_per_Angstrom"] == ([1, 2, 3], [900.0, 801.0, 700.0])
    assert curves.lr["lr-Adam"] == ([1, 2, 3], [1e-3, 9e-4, 8e-4])


def test_the_png_is_written_for_several_runs(rmd17_run, tmp_path, capsys):
    other = tmp_path / "other"
    write_log(other / "logs" / "metrics.csv", epoch_rows(0, 0, 1e-3, 60.0, 950.0) + epoch_rows(1, 8, 5e-4, 55.0, 900.0))
    out = tmp_path / "figs" / "curves.png"
    assert main(["plot", str(rmd17_run), str(other), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert f"{other}: 2 epochs; last validation MAE: energy 55 meV, forces 900 meV/Å" in printed
    assert f"wrote {out}" in printed
    assert not [p for p in out.parent.iterdir() if p != out]  # written atomically: no temporary file left


def test_errors_name_the_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 2
    assert capsys.readouterr().err.strip() == (f"pairreg plot: error: {tmp_path / 'empty'}: no logs/metrics.csv, so no "
                                               "learning curves (not a pairreg run directory, or a run stopped before "
                                               "its first epoch)")
    assert main(["plot", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err.strip() == f"pairreg plot: error: {tmp_path / 'missing'}: no such run directory"
    started = tmp_path / "started"
    write_log(started / "logs" / "metrics.csv", [{"lr-Adam": 1e-3, "step": 0}])
    with pytest.raises(CurvesError, match="its logs hold no validated training epoch yet"):
        read_curves(started)
    bad = tmp_path / "bad"
    write_log(bad / "logs" / "metrics.csv", epoch_rows(0, 0, 1e-3, 60.0, 950.0))
    text = (bad / "logs" / "metrics.csv").read_text().replace("60.0", "sixty")
    (bad / "logs" / "metrics.csv").write_text(text)
    with pytest.raises(CurvesError, match=r"metrics.csv:3: column 'val/energy_mae_meV' holds 'sixty', not a number"):
        read_curves(bad)
    (bad / "logs" / "metrics.csv").write_text("")
    with pytest.raises(CurvesError, match="not a Lightning metrics log"):
        read_curves(bad)


def test_metric_names_give_target_and_unit():
    assert describe_metric("val/forces_mae_meV_per_Angstrom") == ("forces", "meV/Å")
    assert describe_metric("val/alpha_mae_bohr^3") == ("alpha", "bohr^3")
