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
    per_depth = 2 * (args.repeats * (args.warmup + args.steps) + 1)  # + the FLOP count on one batch
    return per_depth * len(args.layers)


def test_speed_defaults_are_the_short_protocol_and_full_is_a_flag():
    speed = _load("speed")
    short, full = speed.parse_args([]), speed.parse_args(["--full"])
    # the peer's training step at batch 96 takes ~10 s on 2 CPU cores: the default must plan at most
    # ~14 of them (with inference and our models, about 5 minutes); the long protocol is only behind --full
    assert _peer_training_steps(short) <= 14
    assert _peer_training_steps(full) > 5 * _peer_training_steps(short)
    assert speed.parse_args(["--steps", "7"]).steps == 7 and speed.parse_args(["--full", "--layers", "5"]).layers == [5]


def test_speed_times_every_other_backbone_and_can_build_each_at_its_settings():
    """speed.py's backbone rows: every backbone but EGNN by default, each buildable with BACKBONE_OPTIONS (a new
    backbone that needs options the table lacks would fail here, not half-way through a benchmark)."""
    from pairreg.models import MoleculeModel
    from pairreg.models.backbones import BACKBONES

    speed = _load("speed")
    assert speed.parse_args([]).backbones == [b for b in BACKBONES if b != "egnn"] and "painn" in BACKBONES
    assert speed.parse_args(["--backbones"]).backbones == []
    for backbone in speed.parse_args([]).backbones:
        for mitigation in ("none", "pairreg"):
            MoleculeModel(hidden=8, n_layers=2, mitigation=mitigation, backbone=backbone,
                          **speed.BACKBONE_OPTIONS.get(backbone, {}))


def test_speed_ratios_name_each_row_against_its_reference():
    """Rows of the peer (``egnn-pytorch``, one word) and of other backbones (``ours painn none``) get their ratios."""
    speed = _load("speed")
    names = ["ours none", "ours pairreg", "egnn-pytorch", "egnn-pytorch+x", "egnn-pytorch (EGNN widths)",
             "egnn-pytorch+x (EGNN widths)", "ours painn none", "ours painn pairreg"]
    rows = [{"model": n, "layers": 7, "train_mol_s": float(k + 1), "train_gflop_per_mol": 1.0} for k, n in enumerate(names)]
    by_key = speed.add_ratios(rows, ["painn"])
    assert by_key[("ours none", 7)]["train_ratio_vs_peer"] == 1 / 3
    assert by_key[("ours none", 7)]["train_ratio_vs_peer_egnn_widths"] == 1 / 5
    assert by_key[("ours painn pairreg", 7)]["train_ratio_vs_egnn"] == 8.0
    assert "train_ratio_vs_egnn" not in by_key[("egnn-pytorch", 7)]


def test_peer_painn_times_ours_without_the_peer_and_standardises_forces_to_unit_rms(capsys):
    """benchmarks/peer_painn.py without SchNetPack: ours only, said so; its batches have unit-RMS forces."""
    peer = _load("peer_painn")
    data = peer.draw_batches(peer.DEFAULT_DATA, batch=4, n=3)
    assert data["pos"].shape == (3, 4, 9, 3) and data["energy"].shape == (3, 4)
    assert 0.5 < float(np.sqrt((data["forces"] ** 2).mean())) < 2.0
    assert peer.main(["--steps", "1", "--warmup", "1", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    assert "| ours, backbone=painn (3 x 128) |" in out and "SchNetPack not measured" in out


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


def _gpu_quick(tmp_path, *extra) -> dict:
    """benchmarks/gpu.py --quick on a compact file of the QM9 sample; its JSON."""
    compact, gpu = _load("make_qm9_compact"), _load("gpu")
    npz, result = tmp_path / "qm9.npz", tmp_path / "gpu.json"
    assert compact.main(["--out", str(npz)]) == 0
    assert gpu.main(["--quick", "--qm9-npz", str(npz), "--out", str(tmp_path / "runs"), "--json", str(result),
                     *extra]) == 0
    return json.loads(result.read_text())


@pytest.mark.slow
def test_gpu_quick_runs_every_cell_and_the_budget_training(qm9_sample_env, tmp_path, capsys):
    # the device-resident data path (the default DataLoader path is what every other training test runs)
    data = _gpu_quick(tmp_path, "--data-on-device")
    lines = capsys.readouterr().out.strip().splitlines()
    assert re.fullmatch(r"gpu_train_mol_per_s=\d+", lines[-1]), lines[-1]
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
    assert data["training"]["settings"]["data_on_device"] is True and data["training"]["settings"]["num_workers"] == 0


@pytest.mark.slow  # two torch.compile runs of a toy model: about a minute on a CPU
def test_gpu_quick_measures_compiled_cells_beside_eager_ones_and_trains_compiled(qm9_sample_env, tmp_path, capsys):
    import torch
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    data = _gpu_quick(tmp_path, "--layers", "2", "3", "--precisions", "fp32", "--compile", "--train-compile")
    out = capsys.readouterr().out
    assert counters["stats"]["unique_graphs"] >= 2  # the compiled cell and the training went through torch.compile
    # compiled cells only at the headline depth, each beside its eager twin
    assert [(c["layers"], c["precision"], c["compiled"]) for c in data["cells"]] == [
        (2, "fp32", False), (2, "fp32", True), (3, "fp32", False)]
    assert not [c for c in data["cells"] if "error" in c], data["cells"]
    assert "| 2 × 16 | 8 | fp32 + compile |" in out
    assert data["training"]["settings"]["compile"] is True and "compile True" in out
    assert np.isfinite(data["training"]["summary"]["test"]["test/homo_mae_meV"])


def test_gpu_without_a_gpu_needs_quick(monkeypatch, capsys):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _load("gpu").main(["--no-train"]) == 2
    assert "no CUDA GPU; `--quick`" in capsys.readouterr().err


# --- benchmarks/time_to_accuracy.py (ours vs MACE at equal wall-clock budgets) ---

def _tta_quick_args(tmp_path, *extra):
    return ["--quick", "--preset", "rmd17-cpu", "--threads", "1", "--out", str(tmp_path / "tta"),
            "--set", "hidden=16", "n_layers=2", "n_rbf=8", *extra]


@pytest.mark.slow
def test_time_to_accuracy_quick_tables_ours_says_mace_is_missing_and_resumes(tmp_path, monkeypatch, capsys):
    from pairreg.training import run as run_mod
    from pairreg.training import schedules

    tta = _load("time_to_accuracy")
    ticks = {"now": 0.0}

    def fake_clock():  # every reading advances 0.5 s: the 12 s budget ends after a few steps on any machine
        ticks["now"] += 0.5
        return ticks["now"]

    monkeypatch.setattr(schedules, "clock", fake_clock)
    missing = tmp_path / "no-mace" / "python"
    assert tta.main(_tta_quick_args(tmp_path, "--mace-python", str(missing))) == 0
    out = tmp_path / "tta"
    table = (out / "table.md").read_text()
    assert f"MACE: not run: --mace-python {missing} does not exist" in table
    rows = [line.split("|")[1:-1] for line in table.splitlines() if re.match(r"\| (ethanol|aspirin) \|", line)]
    assert [(r[0].strip(), r[1].strip()) for r in rows] == [("ethanol", "0.2"), ("aspirin", "0.2")]
    for r in rows:
        ours = [float(v) for v in r[2:5]]  # E (meV), F (meV/Å), training minutes
        assert all(np.isfinite(v) and v > 0 for v in ours) and [v.strip() for v in r[5:]] == ["–"] * 5
    assert (out / "mae_vs_time.png").stat().st_size > 0
    cell = json.loads((out / "cells" / "ethanol-0.2min-ours.json").read_text())
    assert cell["frames"] == {"train": 57, "val": 3, "test": 20}  # the fixture's official-1 split, all test frames
    assert cell["stopped_by"] == "time_budget_min" and cell["settings"]["time_budget_min"] == 0.2

    # a run interrupted after its checkpoints resumes (its budget is spent: nothing more to train) and gives
    # the same test numbers from the same best checkpoint
    (out / "cells" / "ethanol-0.2min-ours.json").unlink()
    (out / "runs" / "ethanol-0.2min-ours" / "metrics.json").unlink()
    assert tta.main(_tta_quick_args(tmp_path)) == 0
    again = json.loads((out / "cells" / "ethanol-0.2min-ours.json").read_text())
    assert again["energy_mae_meV"] == cell["energy_mae_meV"] and again["training_time_s"] >= 12.0

    # a second sitting runs nothing again; other settings in the same --out are refused in one line
    def no_training(*a, **k):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(run_mod, "train", no_training)
    before = {p.name: p.read_text() for p in (out / "cells").iterdir()}
    capsys.readouterr()
    assert tta.main(_tta_quick_args(tmp_path)) == 0
    assert {p.name: p.read_text() for p in (out / "cells").iterdir()} == before
    assert tta.main(_tta_quick_args(tmp_path, "lr=3e-3")) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("time_to_accuracy: error: ") and "other settings" in err and "'lr'" in err


def test_time_to_accuracy_mace_xyz_is_the_official_split_in_eV(tmp_path):
    import ase.io

    from pairreg import units
    from pairreg.data import rmd17

    tta = _load("time_to_accuracy")
    args = tta.parse_args(["--quick", "--out", str(tmp_path)])
    files = tta.mace_data(args, "ethanol", split_seed=0)
    ds, idx = rmd17.load_rmd17("ethanol", "official-1", tta.FIXTURE)
    for part, key in (("train", "train"), ("val", "val"), ("test", "test")):
        frames = ase.io.read(files[part], index=":")
        assert len(frames) == len(idx[key])
        for atoms, row in zip(frames, idx[key]):
            z, pos = ds.atoms(row)
            np.testing.assert_array_equal(atoms.numbers, z)
            np.testing.assert_allclose(atoms.positions, pos, atol=1e-8)
            assert atoms.info["REF_energy"] == pytest.approx(ds.y[row, 0] / 1000, rel=1e-14)  # meV -> eV
    # straight from the npz file: the test file's frames in order, kcal/mol and kcal/mol/Å to eV and eV/Å
    with np.load(tta.FIXTURE / "rmd17_ethanol_test_01.npz") as raw:
        test = ase.io.read(files["test"], index=":")
        kcal = units.factor("kcal/mol", "eV")
        assert kcal == pytest.approx(0.0433641, rel=1e-6)
        np.testing.assert_allclose([a.info["REF_energy"] for a in test], raw["energies"] * kcal, rtol=1e-14)
        np.testing.assert_allclose(np.stack([a.arrays["REF_forces"] for a in test]), raw["forces"] * kcal, atol=1e-8)


def test_time_to_accuracy_mace_maes_are_in_meV_and_check_frame_order():
    from pairreg.data import rmd17

    tta = _load("time_to_accuracy")
    ds, idx = rmd17.load_rmd17("ethanol", "official-1", tta.FIXTURE)
    rows = idx["test"]
    pos = np.stack([ds.atoms(i)[1] for i in rows])
    forces = np.stack([ds.forces[ds.offsets[i]:ds.offsets[i + 1]] for i in rows])
    pred = {"energies_eV": ds.y[rows, 0] / 1000 + 0.002, "forces_eV_per_A": forces / 1000 - 0.001, "positions_A": pos}
    e, f = tta.mace_test_mae(pred, ds, rows)
    assert e == pytest.approx(2.0, rel=1e-6) and f == pytest.approx(1.0, rel=1e-6)  # meV, meV/Å
    with pytest.raises(tta.BenchError, match="order"):
        tta.mace_test_mae({**pred, "positions_A": pos[::-1]}, ds, rows)


MACE_LOG = """\
2026-11-27 19:21:11.389 INFO: Stage Two (after 1 epochs) with loss function: ...
2026-11-27 19:21:11.884 INFO: Started training, reporting errors on validation set
2026-11-27 19:21:13.019 INFO: Initial: head: Default, loss=49.0, MAE_E=  176.76 meV, MAE_F=  939.56 meV / A
2026-11-27 19:21:31.884 INFO: Epoch 0: head: Default, loss=20.9, MAE_E= 3119.14 meV, MAE_F=  606.58 meV / A
2026-11-27 19:21:43.884 INFO: Epoch 1: head: Default, loss=25.5, MAE_E= 7028.16 meV, MAE_F=  612.18 meV / A
2026-11-27 19:21:48.059 INFO: Changing loss based on Stage Two Weights
2026-11-27 19:21:55.884 INFO: Epoch 2: head: Default, loss=9.96, MAE_E= 6778.32 meV, MAE_F=  420.67 meV / A
2026-11-27 19:21:58.149 INFO: ===========RESULTS===========
"""


def test_time_to_accuracy_plans_mace_epochs_from_its_log():
    tta = _load("time_to_accuracy")
    probe = tta.parse_mace_log("some warning line\n" + MACE_LOG)
    assert probe["epochs"] == 3 and probe["epoch_end_s"] == [20.0, 32.0, 44.0] and probe["training_s"] == 44.0
    # 12 s per epoch after the first, 8 s fixed (initial validation, first-epoch extra): 60 s fit 4 epochs
    assert tta.plan_epochs(probe, 60.0) == 4 and tta.plan_epochs(probe, 600.0) == 49 and tta.plan_epochs(probe, 5.0) == 1
    files = {"train": "t.xyz", "val": "v.xyz"}
    many = tta.mace_command("py", files, Path("w"), "m", 29, 123, ["--lr", "0.005"])
    assert "--stage_two" in many and many[many.index("--max_num_epochs") + 1] == "29" and many[-2:] == ["--lr", "0.005"]
    assert "--stage_two" not in tta.mace_command("py", files, Path("w"), "m", 1, 123, [])  # MACE refuses start >= epochs
    with pytest.raises(tta.BenchError, match="Started training"):
        tta.parse_mace_log("2026-11-27 19:21:11.884 INFO: Loading data\n")


TTA_RECORDS = sorted((BENCHMARKS / "records").glob("tta-*"))


@pytest.mark.parametrize("folder", TTA_RECORDS, ids=lambda p: p.name)
def test_time_to_accuracy_records_are_current_and_their_tables_redraw(folder, tmp_path):
    """benchmarks/records/tta-*: each committed cell of ours ran the settings the current code gives for its preset,
    molecule, budget and threads (so a later sitting with the same command reuses it instead of refusing it), and
    the committed table.md is what --report draws from the cells (no figure typed in by hand)."""
    tta = _load("time_to_accuracy")
    cells = tta.finished_cells(folder)
    assert {c["model"] for c in cells} <= {"ours", "mace"} and any(c["model"] == "ours" for c in cells), folder
    # the run's --set overrides of ours, as its table's header gives them ("- ours: preset `P`, --set K=V ...; torch")
    ours_line = next(line for line in (folder / "table.md").read_text().splitlines() if line.startswith("- ours:"))
    overrides = ours_line.split(", --set ", 1)[1].rsplit("; torch", 1)[0].split() if ", --set " in ours_line else []
    for cell in cells:
        assert np.isfinite(cell["energy_mae_meV"]) and np.isfinite(cell["forces_mae_meV_per_Angstrom"]), cell
        assert cell["frames"]["test"] == 1000, cell  # the full official test file
        if cell["model"] != "ours":
            continue
        args = tta.parse_args(["--quick", "--out", str(tmp_path), "--molecule", cell["molecule"], "--budgets",
                               f"{cell['budget_min']:g}", "--threads", str(cell["threads"]), "--preset", cell["preset"],
                               "--set", *overrides])
        now = tta.our_settings(tta.our_config(args, cell["molecule"], cell["budget_min"]))
        assert tta.read_cell(tta.cell_path(folder, cell["molecule"], cell["budget_min"], "ours"), now) == cell

    def table_rows(text: str) -> list[str]:  # the molecule × budget rows; the header names this machine
        return [line for line in text.splitlines() if line.startswith("| ") and
                not line.startswith(("| molecule", "|---"))]

    header = {"command": "", "machine": {"cpu_count": 0, "cpus_usable": 0, "cpu_model": ""}, "threads": 1,
              "preset": "", "overrides": [], "torch": "", "mace": "", "data_root": "", "frames": ""}
    rows = table_rows((folder / "table.md").read_text())
    assert rows and rows == table_rows(tta.render_table(cells, header))


# --- benchmarks/md_stability.py (MD of trained rMD17 models: drift, breakage, distances) ---

@pytest.mark.slow
def test_md_stability_quick_tables_both_thermostats_plots_and_resumes(rmd17_run, tmp_path, capsys):
    from conftest import RMD17_FIXTURE

    md = _load("md_stability")
    out = tmp_path / "md"
    args = ["--quick", str(rmd17_run), "--data-root", str(RMD17_FIXTURE), "--out", str(out), "--no-progress"]
    assert md.main(args) == 0
    table = (out / "table.md").read_text()
    rows = [line.split("|")[1:-1] for line in table.splitlines() if line.startswith(f"| {rmd17_run.name} |")]
    assert [(r[1].strip(), r[3].strip()) for r in rows] == [("ethanol", "nve"), ("ethanol", "langevin")]
    for r in rows:
        assert r[5].strip() == "no"  # 10 steps of 0.5 fs: nothing breaks
        assert all(np.isfinite(float(v)) and float(v) > 0 for v in (r[6], r[7], r[8]))  # force, distance, ps/h
    assert "not conserved" in rows[1][4] and "not conserved" not in rows[0][4]
    assert table in capsys.readouterr().out
    assert (out / "distances.png").stat().st_size > 0
    runs = sorted((out / "runs").glob("*.json"))
    assert len(runs) == 2
    record = json.loads(runs[0].read_text())
    assert record["steps_run"] == record["settings"]["steps"] == 10 and record["fell_apart"] is None
    assert len(list((out / "traj").glob("*.extxyz"))) == 2
    # a second call reuses the finished runs; other settings run again
    assert md.main(args) == 0
    assert capsys.readouterr().err.count("finished earlier, not run again") == 2
    assert md.main(args + ["--seed", "5", "--thermostats", "nve"]) == 0
    assert "finished earlier" not in capsys.readouterr().err
    assert md.main(args + ["--seed", "6", "--report"]) == 0  # --report runs nothing
    assert capsys.readouterr().err.count("not run yet (--report: left out)") == 2
    assert not list((out / "runs").glob("*frame*.json"))[3:]  # still the 3 runs made above


def test_md_stability_settings_and_start_frames():
    md = _load("md_stability")
    full = md.parse_args(["ckpt"])
    assert (full.ps, full.frames, full.steps, full.log_every, full.thermostats) == (10.0, 3, 20000, 20, ["nve", "langevin"])
    quick = md.parse_args(["--quick", "ckpt"])
    assert quick.frames == 1 and quick.steps <= 20 and quick.test_frames_hist == 20
    assert md.start_rows(1000, 3) == [0, 500, 999] and md.start_rows(2, 5) == [0, 1]
    with pytest.raises(md.BenchError, match="--timestep-fs"):
        md.parse_args(["ckpt", "--timestep-fs", "0"])
    d = md.pair_distances_A([np.array([[0.0, 0, 0], [1.0, 0, 0], [1.0, 2.0, 0]])])
    np.testing.assert_allclose(sorted(d), [1.0, 2.0, np.sqrt(5.0)])


def test_equivariance_matrix_sorts_a_real_pytest_report_by_backbone_and_mitigation(tmp_path):
    """A JUnit report of stand-in test files written as the backbones' are (stacked parametrize, a refusal test
    with the backbone innermost): passes, a failure and refusals land in their cells, other tests nowhere."""
    matrix = _load("equivariance_matrix")
    (tmp_path / "test_painn.py").write_text(
        "import pytest\n"
        "@pytest.mark.parametrize('depth', [2, 9])\n"
        "@pytest.mark.parametrize('variant', ['none', 'pairreg-dense', 'g2-mean'])\n"
        "def test_equivariance_float64(variant, depth):\n"
        "    assert not (variant == 'g2-mean' and depth == 9)\n"
        "@pytest.mark.parametrize('variant', ['pairnorm'])\n"
        "def test_forces_are_equivariant(variant):\n"
        "    pass\n"
        "@pytest.mark.parametrize('variant', ['residual'])\n"
        "def test_vector_features_are_not_vacuous(variant):\n"
        "    pass\n"
        "@pytest.mark.parametrize('mitigation, options, message', [('residual', {}, 'already add'),\n"
        "                                                          ('pairreg', {'reg_weight': 1.0}, 'would be 0')])\n"
        "@pytest.mark.parametrize('backbone', ['painn', 'segnn'])\n"
        "def test_combinations_that_make_no_sense_are_refused_by_name(backbone, mitigation, options, message):\n"
        "    pass\n")
    report = tmp_path / "report.xml"
    matrix.run_pytest([tmp_path / "test_painn.py"], report, cwd=tmp_path)
    cells = matrix.matrix_from_junit(report)
    assert cells[("PaiNN", "none")] == {"passed": 2, "failed": 0, "refused": 0}
    assert cells[("PaiNN", "g2")] == {"passed": 1, "failed": 1, "refused": 0}
    assert cells[("PaiNN", "pairnorm")]["passed"] == 1
    assert cells[("PaiNN", "residual")] == {"passed": 0, "failed": 0, "refused": 1}  # the non-battery test is not counted
    assert cells[("SEGNN", "pairreg")]["refused"] == 1 and cells[("PaiNN", "pairreg")]["passed"] == 2
    table = matrix.markdown(cells)
    row = next(line for line in table.splitlines() if line.startswith("| PaiNN "))
    assert row.split(" | ")[1:] == ["pass (2)", "refused", "pass (2) ¹", "pass (1)", "FAIL (1/2)", "– |"]


def test_pool_cells_pools_seeds_across_budgets_in_the_open(tmp_path, capsys):
    """Two committed wall-budget seeds per row and a third trained to a step budget elsewhere: each cell is listed
    with its budget, the mix is said, and the comparison pools three seeds per row."""
    pool = _load("pool_cells")
    records = Path(__file__).parents[1] / "benchmarks" / "records" / "fair-depth-ethanol-30-L4"
    (tmp_path / "cells").mkdir()
    for row, forces in (("residual", 13.0), ("pairreg", 15.0)):
        cell = json.loads((records / "cells" / f"{row}-L4-s0.json").read_text())
        cell["seed"], cell["cell"] = 2, f"{row}-L4-s2"
        cell["config"] = {**cell["config"], "time_budget_min": None, "step_budget": 70_000, "seed": 2}
        cell["test"] = {**cell["test"], "test/forces_mae_meV_per_Angstrom": forces}
        (tmp_path / "cells" / f"{row}-L4-s2.json").write_text(json.dumps(cell))
    assert pool.main([str(records), str(tmp_path), "--compare", "residual", "pairreg"]) == 0
    out = capsys.readouterr().out
    assert out.count("| 30 min |") == 4 and out.count("| 70,000 steps |") == 2
    assert "Pooled budgets: 30 min, 70,000 steps" in out
    forces_row = next(line for line in out.splitlines() if line.startswith("| test forces"))
    assert forces_row.endswith("| 3 vs 3 |")
    # the same seed from two places is refused rather than counted twice
    with pytest.raises(SystemExit, match="more than one source"):
        pool.main([str(records), str(records / "cells" / "residual-L4-s0.json"), "--compare", "residual", "pairreg"])
    with pytest.raises(SystemExit, match="no such folder"):
        pool.main([str(tmp_path / "nowhere"), "--compare", "residual", "pairreg"])


def test_step_budgets_interpolates_time_per_step_between_measured_depths(tmp_path, capsys):
    """Cells whose time per step follows t = 10 ms · (L/2)^0.75: measured depths give their mean steps, a depth in
    between gets the power law's value exactly, and what cannot be derived is said, not guessed."""
    budgets = _load("step_budgets")
    (tmp_path / "cells").mkdir()

    def cell(name, depth, steps, **config):
        data = {"group": "none", "x": depth, "seed": 0, "optimizer_steps": steps,
                "config": {"time_budget_min": 30, "step_budget": None} | config}
        (tmp_path / "cells" / f"{name}.json").write_text(json.dumps(data))

    def steps_at(depth):
        return 1800 / (0.010 * (depth / 2) ** 0.75)

    cell("L2-s0", 2, round(steps_at(2)) - 100)
    cell("L2-s1", 2, round(steps_at(2)) + 100)
    cell("L8-s0", 8, round(steps_at(8)))
    cell("L4-steps", 4, 5, time_budget_min=None, step_budget=5)  # a step-budget cell: ignored
    assert budgets.main([str(tmp_path), "--depths", "4", "16"]) == 0
    out = capsys.readouterr().out
    assert f"| none | 2 | 2 | {round(steps_at(2)):,} |" in out
    row4 = next(line for line in out.splitlines() if line.startswith("| none | 4 |"))
    assert abs(int(row4.split(" | ")[3].replace(",", "")) - steps_at(4)) <= 1 and "interpolated" in row4
    assert "depth 16 is outside the measured depths" in out
    cell("L8-s1", 8, 1000, time_budget_min=60)
    with pytest.raises(SystemExit, match="mix wall budgets"):
        budgets.main([str(tmp_path)])


def test_step_budgets_scales_the_reference_budget_by_a_speed_check(tmp_path, capsys):
    """A row the old machine never ran: the reference's budget at that depth (measured or interpolated) times the
    row's steps over the reference's in short side-by-side cells; what cannot be derived is said."""
    budgets = _load("step_budgets")

    def cell(folder, name, row, depth, steps, minutes):
        (tmp_path / folder / "cells").mkdir(parents=True, exist_ok=True)
        data = {"group": row, "x": depth, "seed": 0, "optimizer_steps": steps,
                "config": {"time_budget_min": minutes, "step_budget": None}}
        (tmp_path / folder / "cells" / f"{name}.json").write_text(json.dumps(data))

    cell("old", "r2", "residual", 2, 80_000, 30)
    cell("old", "r8", "residual", 8, 20_000, 30)  # t ∝ L: 4 layers interpolates to 40,000 steps
    cell("check", "r4", "residual", 4, 1_000, 3)
    cell("check", "g4", "g2", 4, 450, 3)
    cell("check", "p8", "pairnorm", 8, 900, 3)  # no residual at 8 in the check: no ratio
    cell("check", "g16", "g2", 16, 100, 3)
    cell("check", "r16", "residual", 16, 250, 3)  # the old cells stop at 8: no reference budget
    assert budgets.main([str(tmp_path / "old"), "--speed-check", str(tmp_path / "check")]) == 0
    out = capsys.readouterr().out
    assert "| g2 | 4 | 0.450 | 40,000 (interpolated) | 18,000 |" in out
    assert "| pairnorm | 8 | – | – | no residual cell at 8 layers in the speed check |" in out
    assert "| g2 | 16 | 0.400 | – | depth 16 is outside the measured depths" in out
    assert "| residual | 4 |" not in out.split("Speed check")[1]  # the reference is not its own row


def test_pool_cells_follows_one_row_across_depths(capsys):
    """--compare ROW@XA ROW@XB: the same row's cells at two depths, compared (2 seeds at 2 layers, 3 at 8 in the
    record), as `pairreg bench --compare` does within one folder."""
    pool = _load("pool_cells")
    records = Path(__file__).parents[1] / "benchmarks" / "records" / "depth-ethanol-30"
    assert pool.main([str(records), "--compare", "pairreg@2", "pairreg@8"]) == 0
    out = capsys.readouterr().out
    assert "| pairreg | 16 |" not in out  # only the two depths asked for are listed
    forces = next(line for line in out.splitlines() if line.startswith("| test forces"))
    assert forces.endswith("| 2 vs 3 |") and "| target | pairreg, 2 layers | pairreg, 8 layers |" in out
    with pytest.raises(SystemExit):
        pool.main([str(records), "--compare", "pairreg@2", "pairreg@8", "--x", "2"])
    with pytest.raises(SystemExit):  # a depth that is not a number: argparse's error naming the argument
        pool.main([str(records), "--compare", "pairreg@two", "pairreg@8"])
    assert "--compare pairreg@two" in capsys.readouterr().err


def test_pool_cells_takes_several_comparisons_in_one_call(capsys):
    """--compare repeated: each pair gets its own heading, cell list and table, the same as one call per pair; a bad
    pair anywhere fails before any table is printed."""
    pool = _load("pool_cells")
    records = str(Path(__file__).parents[1] / "benchmarks" / "records" / "depth-ethanol-30")
    single = []
    for pair in (["pairreg@2", "pairreg@8"], ["none@8", "pairreg@8"]):
        assert pool.main([records, "--compare", *pair]) == 0
        single.append(capsys.readouterr().out)
    assert pool.main([records, "--compare", "pairreg@2", "pairreg@8", "--compare", "none@8", "pairreg@8"]) == 0
    both = capsys.readouterr().out
    assert both.startswith("## pairreg@2 vs pairreg@8\n") and "\n## none@8 vs pairreg@8\n" in both
    first, second = both.split("\n## none@8 vs pairreg@8\n")
    assert first.split("\n", 2)[2] == single[0] and second.split("\n", 1)[1] == single[1]
    with pytest.raises(SystemExit):
        pool.main([records, "--compare", "none@8", "pairreg@8", "--compare", "pairreg@two", "pairreg@8"])
    assert "| test forces" not in capsys.readouterr().out


def test_plot_depth_pools_columns_from_several_folders_and_refuses_mixed_rates(tmp_path, capsys):
    """The aspirin columns of three record folders in one figure: each row and depth's mean is that of its cells'
    test forces, each column's rate and seeds are listed; a seed from two places, or a row and depth at two rates,
    is refused by name rather than averaged."""
    plot = _load("plot_depth")
    records = Path(__file__).parents[1] / "benchmarks" / "records"
    folders = [str(records / f"depth-aspirin-L{d}") for d in (2, 8, 16)]
    png = tmp_path / "fig2.png"
    assert plot.main([*folders, "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert png.read_bytes()[:4] == b"\x89PNG"
    forces = [json.loads(p.read_text())["test"]["test/forces_mae_meV_per_Angstrom"]
              for p in sorted((records / "depth-aspirin-L8" / "cells").glob("residual-L8-s*.json"))]
    header, _, *rows = out.split("| test forces MAE")[1].split("\n\n")[0].splitlines()
    residual = next(line for line in rows if line.startswith("| EGNN (residual)"))
    assert residual.split(" | ")[2].startswith(f"{np.mean(forces):.1f} ± {np.std(forces, ddof=1):.1f}")
    assert "| 2 layers | 8 layers | 16 layers |" in header
    rates = next(line for line in out.splitlines() if line.startswith("| pairreg |") and "seeds" in line)
    assert f"0.002; 14,228 steps; {len(list((records / 'depth-aspirin-L8' / 'cells').glob('pairreg-*')))} seeds" in rates
    with pytest.raises(SystemExit, match="more than one source"):
        plot.main([*folders, str(records / "depth-aspirin-L8" / "cells" / "none-L8-s0.json"), "--out", str(png)])
    other = json.loads((records / "depth-aspirin-L2" / "cells" / "none-L2-s0.json").read_text())
    other["seed"], other["config"] = 7, {**other["config"], "lr": 0.008, "seed": 7}
    (tmp_path / "cells").mkdir()
    (tmp_path / "cells" / "none-L2-s7.json").write_text(json.dumps(other))
    with pytest.raises(SystemExit, match=r"none at 2 layers was trained at more than one learning rate \(0.002, 0.008\)"):
        plot.main([*folders, str(tmp_path), "--out", str(png)])
    other["lr_scale"], other["config"]["lr"] = 0.5, 0.002  # the guard's halving is shown beside the rate
    (tmp_path / "cells" / "none-L2-s7.json").write_text(json.dumps(other))
    assert plot.main([*folders, str(tmp_path), "--out", str(png)]) == 0
    assert "3 seeds (lr lowered: s7 ×0.5)" in capsys.readouterr().out


def test_compute_used_counts_each_trained_cell_once_at_wall_time_times_threads(tmp_path, capsys):
    """A study cell copied into a second folder is counted once; a time-to-accuracy pair (ours with `threads`, MACE
    with its settings' threads) costs wall time × threads; QM9 cells group under their dataset, not the default
    molecule their config also carries; a file that is not a finished cell is named."""
    used = _load("compute_used")

    def write(folder, name, cell):
        (tmp_path / folder / "cells").mkdir(parents=True, exist_ok=True)
        (tmp_path / folder / "cells" / f"{name}.json").write_text(json.dumps(cell))

    study_cell = {"cell": "none-L2-s0", "seed": 0, "train_wall_time_s": 1700.0, "cell_wall_time_s": 1800.0,
                  "torch_threads": 2, "config": {"dataset": "rmd17", "molecule": "ethanol"},
                  "test": {"test/forces_mae_meV_per_Angstrom": 13.7}}
    write("depth", "none-L2-s0", study_cell)
    write("depth-joined", "none-L2-s0", study_cell | {"reused_from": "depth/cells/none-L2-s0.json"})
    write("depth-joined", "none-L2-s1", study_cell | {"cell": "none-L2-s1", "seed": 1})
    write("tta", "aspirin-10min-ours", {"model": "ours", "molecule": "aspirin", "budget_min": 10.0, "threads": 1,
                                        "training_time_s": 600.0, "wall_time_s": 720.0, "energy_mae_meV": 20.0})
    write("tta", "aspirin-10min-mace", {"model": "mace", "molecule": "aspirin", "budget_min": 10.0,
                                        "settings": {"threads": 1}, "training_time_s": 610.0, "wall_time_s": 900.0,
                                        "energy_mae_meV": 30.0})
    write("qm9", "none-s0", {"cell": "none-s0", "seed": 0, "cell_wall_time_s": 3600.0, "torch_threads": 1,
                             "config": {"dataset": "qm9", "molecule": "aspirin"}, "test": {"test/homo_mae_meV": 60.0}})
    hours, counted, copies = used.tally([tmp_path], by="folder")
    assert (counted, copies) == (5, 1)
    assert hours == pytest.approx({"depth": 1.0, "depth-joined": 1.0, "tta": 0.45, "qm9": 1.0})
    assert used.main([str(tmp_path), "--by", "molecule"]) == 0
    out = capsys.readouterr().out
    assert "| ethanol  |       2.00 |" in out and "| aspirin  |       0.45 |" in out and "| qm9      |       1.00 |" in out
    assert "| total    |       3.45 |" in out and "5 cells counted once each, 1 copies skipped" in out
    # an old cell resumed to a wall budget: its wall time is the last sitting's, its training time every sitting's
    assert used.cell_cost({"cell_wall_time_s": 600.0, "training_time_s": 1800.0, "torch_threads": 1}) == (1800.0, 1)
    write("broken", "x", {"cell": "x", "config": {}})
    with pytest.raises(SystemExit, match="broken/cells/x.json: not a finished cell"):
        used.tally([tmp_path / "broken"])


def test_scripts_that_read_recorded_cells_start_without_torch():
    """pool_cells, plot_depth, step_budgets and compute_used only read cells' JSON: importing them (and the report
    code they share with `pairreg bench`) must not pull in torch or Lightning, ~10 s of start-up on a busy core."""
    import subprocess
    import sys

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import pool_cells, plot_depth, step_budgets, compute_used; "
            "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'lightning', 'torch_geometric'}); "
            "print(heavy); sys.exit(1 if heavy else 0)")
    done = subprocess.run([sys.executable, "-c", code, str(BENCHMARKS)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
