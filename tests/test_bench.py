"""The study runner (`pairreg bench`): grids, resumability, tables and plots, on the rMD17 fixture."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from pairreg.bench import runner
from pairreg.bench.report import (budget_check_table, compare_table, dirichlet_ratio, fmt, machine_speed_note,
                                  rank_p, study_tables, target_table, welch_p, write_report)
from pairreg.bench.studies import ABLATION_VARIANTS, DEPTHS, STUDIES, Cell, Study, build_study, row_label
from pairreg.cli.main import main
from pairreg.config import ConfigError, load_config

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17"
TINY = ["hidden=8", "epochs=1", "batch_size=8", "threads=1", f"data_root={FIXTURE}"]


def test_depth_grid_matches_the_issue():
    study = build_study("depth", "cpu")
    per = Counter((c.group, c.x) for c in study.cells)
    for mitigation in ("none", "pairreg"):
        assert [per[(mitigation, d)] for d in DEPTHS] == [3] * len(DEPTHS)
    # EGNN's own residual form at every depth, beside the plain stack
    assert [per[("residual", d)] for d in DEPTHS] == [2] * len(DEPTHS)
    for mitigation in ("pairnorm", "g2"):
        assert {d for (g, d) in per if g == mitigation} == {3, 9}
        assert per[(mitigation, 3)] == per[(mitigation, 9)] == 2
    assert len(study.cells) == 6 * 3 * 2 + 6 * 2 + 2 * 2 * 2
    seeds = [c.seed for c in study.cells]
    assert seeds == sorted(seeds), "seed 0 of every configuration runs first"
    assert len({c.key for c in study.cells}) == len(study.cells)


def test_seeds_option_and_other_studies():
    assert {c.seed for c in build_study("depth", "cpu", seeds=1).cells} == {0}
    ablation = build_study("ablation", "cpu")
    assert len(ablation.cells) == 2 * len(ABLATION_VARIANTS)
    assert {"plain EGCL stack (none)", "EGNN (residual)", "node only (ours: coords fixed)",
            "node only (authors: replace, λ=0)", "coord only", "full (default)"} <= {c.group for c in ablation.cells}
    cpu = build_study("qm9-table", "cpu")
    assert Counter(c.group for c in cpu.cells) == {"none": 2, "residual": 2, "pairnorm": 2, "g2": 2, "pairreg": 2}
    paper = build_study("qm9-table", "paper")
    assert len({c.x for c in paper.cells}) == 12
    with pytest.raises(ValueError, match="--seeds"):
        build_study("depth", "cpu", seeds=0)
    with pytest.raises(ValueError, match="preset"):
        build_study("depth", "gpu")


def test_budget_preset_is_issue_14s_design_at_equal_wall_time(tmp_path):
    """budget: the one-hour presets' recipe, every cell the same time budget; depths 2-16 with 3 seeds for the plain
    stack, EGNN and PairReg and 2 for PairNorm and G2; the ablation at 8 layers; --depths cuts the grid."""
    study = build_study("depth", "budget", molecule="ethanol")
    per = Counter((c.group, c.x) for c in study.cells)
    assert sorted({c.x for c in study.cells}) == [2, 4, 8, 12, 16]
    assert {g: max(n for (gg, _), n in per.items() if gg == g) for g, _ in per} == {
        "none": 3, "residual": 3, "pairreg": 3, "pairnorm": 2, "g2": 2}
    cfgs = [runner.cell_config(study, c, tmp_path, []) for c in study.cells[:3]]
    assert {c.time_budget_min for c in cfgs} == {60} and {c.molecule for c in cfgs} == {"ethanol"}
    assert {c.preset for c in cfgs} == {"rmd17-1h"}
    cut = build_study("depth", "budget", seeds=2, depths=[2, 4, 8, 16])
    assert sorted({c.x for c in cut.cells}) == [2, 4, 8, 16] and {c.seed for c in cut.cells} == {0, 1}
    with pytest.raises(ValueError, match="--depths 3: not in this preset's grid"):
        build_study("depth", "budget", depths=[3])
    with pytest.raises(ValueError, match="depth study only"):
        build_study("ablation", "budget", depths=[8])
    ablation = build_study("ablation", "budget")
    assert runner.cell_config(ablation, ablation.cells[0], tmp_path, []).n_layers == 8


def test_budget_check_trains_the_8_layer_cells_for_the_budget_and_three_times_it(tmp_path):
    study = build_study("budget-check", "budget", molecule="ethanol", budget_min=10)
    assert sorted((c.group, c.x) for c in study.cells) == sorted(
        (g, b) for g in ("none", "residual", "pairreg") for b in (10.0, 30.0))
    for cell in study.cells:
        cfg = runner.cell_config(study, cell, tmp_path, ["threads=1"])
        assert (cfg.time_budget_min, cfg.n_layers, cfg.mitigation, cfg.molecule) == (cell.x, 8, cell.group, "ethanol")
    assert {c.x for c in build_study("budget-check", "budget").cells} == {60.0, 180.0}  # the presets' hour
    with pytest.raises(ValueError, match="use --preset budget"):
        build_study("budget-check", "cpu")
    with pytest.raises(ValueError, match="budget-check study only"):
        build_study("depth", "budget", budget_min=10)


def test_budget_check_cli_takes_b_from_set_and_a_grid_key_in_set_is_refused(tmp_path, capsys):
    assert main(["bench", "budget-check", "--preset", "budget", "--list", "--out", str(tmp_path),
                 "--set", "time_budget_min=5", "threads=1"]) == 0
    text = capsys.readouterr().out
    assert "6 cells" in text and "--set threads=1" in text and "time_budget_min" not in text.split("\n", 1)[1]
    assert {line.split()[3] for line in text.splitlines()[1:-1]} == {
        f"{g}-{b}min-s0" for g in ("none", "residual", "pairreg") for b in (5, 15)}
    assert text.splitlines()[-1] == "0 done, 0 to copy (--reuse), 6 to train (60 minutes of training, one run at a time)"
    # a --set of a key the cells set would silently turn the grid into one configuration
    assert main(["bench", "depth", "--preset", "budget", "--list", "--out", str(tmp_path / "d"),
                 "--set", "n_layers=3"]) == 2
    assert "--set n_layers: the depth study sets it per cell" in capsys.readouterr().err
    assert main(["bench", "budget-check", "--preset", "budget", "--list", "--set", "time_budget_min=ten"]) == 2
    assert "--set time_budget_min: expected a number of minutes, got 'ten'" in capsys.readouterr().err


def test_budget_check_in_optimiser_steps(tmp_path, capsys):
    """B in steps (--set step_budget=B): the same compute on any machine, cells at B and 3 B steps."""
    study = build_study("budget-check", "budget", molecule="ethanol", budget_steps=2000)
    assert sorted((c.group, c.x) for c in study.cells) == sorted(
        (g, b) for g in ("none", "residual", "pairreg") for b in (2000, 6000))
    for cell in study.cells:
        cfg = runner.cell_config(study, cell, tmp_path, ["threads=1"])
        assert (cfg.step_budget, cfg.time_budget_min, cfg.n_layers, cfg.mitigation) == (cell.x, None, 8, cell.group)
    assert runner.describe_cell(study.cells[0]) == "none, 2000 steps, seed 0"
    assert main(["bench", "budget-check", "--preset", "budget", "--list", "--out", str(tmp_path / "s"),
                 "--set", "time_budget_min=null", "step_budget=500", "threads=1"]) == 0
    assert {line.split()[3] for line in capsys.readouterr().out.splitlines()[1:-1]} == {
        f"{g}-{b}steps-s0" for g in ("none", "residual", "pairreg") for b in (500, 1500)}
    for bad, message in ((["step_budget=5.5"], "expected a whole number of steps, got '5.5'"),
                         (["time_budget_min=10", "step_budget=500"], "not both"),
                         (["time_budget_min=null"], "needs a budget B")):
        assert main(["bench", "budget-check", "--preset", "budget", "--list", "--set", *bad]) == 2
        assert message in capsys.readouterr().err
    # the table counts its columns in steps
    results = [{"group": c.group, "x": c.x, "test": {"test/energy_mae_meV": 10.0 if c.x == 2000 else 9.0}}
               for c in study.cells]
    table = budget_check_table(results, ["none", "residual", "pairreg"], [2000, 6000], unit="steps")
    assert "test energy (meV), 2000 steps | 6000 steps | ratio 2000 / 6000 |" in table and "| 1.11 | yes |" in table


def test_budget_check_table_gives_each_ratio_and_the_verdict():
    def result(group, minutes, energy, forces):
        return {"cell": f"{group}-{minutes}", "group": group, "x": float(minutes), "seed": 0,
                "test": {"test/energy_mae_meV": energy, "test/forces_mae_meV_per_Angstrom": forces}}

    results = [result("none", 10, 11.0, 40.0), result("none", 30, 10.0, 36.0),  # 1.10, 1.11: long enough
               result("pairreg", 10, 12.0, 50.0), result("pairreg", 30, 10.0, 40.0),  # 1.20, 1.25: too short
               result("residual", 10, 9.0, 30.0)]  # its 3 B cell is not finished
    lines = budget_check_table(results, ["none", "pairreg", "residual"], [10.0, 30.0]).splitlines()
    assert "test energy (meV), 10 min | 30 min | ratio 10 / 30" in lines[0] and lines[0].endswith("within 15% |")
    none, pairreg, residual = lines[2:]
    assert "| 1.10 |" in none and "| 1.11 |" in none and none.endswith("| yes |")
    assert "| 1.20 |" in pairreg and "| 1.25 |" in pairreg and pairreg.endswith("| no |")
    assert residual.endswith("| – |")


def test_backbones_study_has_every_backbone_at_its_paper_settings_with_and_without_pairreg(tmp_path):
    from pairreg.bench.report import published_table
    from pairreg.models.backbones import BACKBONES, STUDY_SETTINGS

    study = build_study("backbones", "budget", molecule="ethanol")
    assert study.rows() == [f"{b} {m}" for b in BACKBONES for m in ("none", "pairreg")]
    assert Counter(c.group for c in study.cells) == {row: 2 for row in study.rows()}
    painn = next(c for c in study.cells if c.group == "painn pairreg")
    cfg = runner.cell_config(study, painn, tmp_path, [])
    assert cfg.backbone == "painn" and cfg.mitigation == "pairreg" and cfg.time_budget_min == 60
    assert {k: getattr(cfg, k) for k in STUDY_SETTINGS["painn"]} == STUDY_SETTINGS["painn"]
    assert "| painn | 2.7 | 10.0 |" in published_table(study)
    with pytest.raises(ValueError, match="use --preset budget"):
        build_study("backbones", "cpu")


def test_backbones_qm9_study_trains_every_backbone_on_homo_with_the_qm9_1h_recipe(tmp_path):
    from pairreg.bench.report import published_table
    from pairreg.models.backbones import BACKBONES
    from pairreg.models.model import build_model

    study = build_study("backbones-qm9", "budget")
    assert study.rows() == [f"{b} {m}" for b in BACKBONES for m in ("none", "pairreg")] and study.dataset == "qm9"
    assert Counter(c.group for c in study.cells) == {row: 2 for row in study.rows()}
    for cell in study.cells[: len(study.rows())]:  # seed 0 of every row: a model of that backbone builds
        cfg = runner.cell_config(study, cell, tmp_path, ["hidden=16"])
        assert (cfg.dataset, cfg.targets, cfg.time_budget_min, cfg.preset) == ("qm9", ["homo"], 60, "qm9-1h")
        assert f"{cfg.backbone} {cfg.mitigation}" == cell.group
        assert build_model(cfg) is not None
    table = published_table(study)
    assert "| painn | 27.6 |" in table and "| egnn | 29 |" in table and "| clofnet | – | no published" in table
    with pytest.raises(ValueError, match="use --preset budget"):
        build_study("backbones-qm9", "cpu")


@pytest.mark.parametrize("name", ["depth", "ablation", "qm9-table"])
@pytest.mark.parametrize("preset", ["cpu", "paper", "budget"])
def test_every_cell_has_a_valid_config(name, preset, tmp_path):
    study = build_study(name, preset)
    for cell in study.cells:
        cfg = runner.cell_config(study, cell, tmp_path, [])
        assert cfg.seed == cell.seed and cfg.name == cell.key
        if name != "qm9-table":
            assert cfg.dataset == "rmd17" and cfg.molecule == "aspirin"
        if name == "ablation":
            assert cfg.n_layers == (8 if preset == "budget" else 9)


def test_mean_std_formatting_and_ratio():
    mean, std, n = runner.seed_stats([1.0, 2.0, 3.0, float("nan"), None])
    assert (mean, n) == (2.0, 3) and std == pytest.approx(np.std([1, 2, 3], ddof=1))
    assert fmt(mean, std, n) == "2.000 ± 1.000"
    assert fmt(250.0, 0.0, 1) == "250.0 (1 seed)"
    assert fmt(*runner.seed_stats([])) == "–"
    assert dirichlet_ratio({"diagnostics": {"dirichlet_h": [9.0, 4.0, 2.0, 1.0]}}) == 0.25


def tiny_study() -> Study:
    study = Study("depth", "cpu", "rmd17-cpu", ["molecule=ethanol"])
    for depth in (1, 2):
        study.cells.append(Cell(f"none-L{depth}-s0", "none", depth, 0, ("mitigation=none", f"n_layers={depth}", "seed=0"),
                                float(depth)))
    return study


def test_cells_are_described_in_words():
    cells = {c.key: c for c in build_study("depth", "cpu").cells}
    assert runner.describe_cell(cells["none-L1-s0"]) == "none, 1 layer, seed 0"
    assert runner.describe_cell(cells["pairreg-L12-s2"]) == "pairreg, 12 layers, seed 2"
    assert runner.describe_cell(build_study("qm9-table", "cpu").cells[0]) == "none, seed 0"


def test_run_study_writes_cells_table_plots_and_resumes(tmp_path, monkeypatch):
    out = tmp_path / "study"
    first_logs = []
    results = runner.run_study(tiny_study(), out, TINY, log=first_logs.append)
    assert sorted(r["cell"] for r in results) == ["none-L1-s0", "none-L2-s0"]
    assert "all 2 cells finished; this sitting took" in first_logs[-1]
    saved = json.loads((out / "cells" / "none-L2-s0.json").read_text())
    assert saved["config"]["n_layers"] == 2 and saved["config"]["hidden"] == 8
    assert len(saved["diagnostics"]["dirichlet_h"]) == 3  # embedding + 2 layers
    assert saved["test"]["test/energy_mae_meV"] > 0 and "test/forces_mae_meV_per_Angstrom" in saved["test"]
    # how far the cell got, so wall-budget cells of two sittings can be compared: one epoch of batches of 8
    n_train = len(np.load(out / "runs" / "none-L2-s0" / "split.npz")["train"])
    assert saved["epochs_run"] == 1 and saved["stopped_by"] == "epochs"
    assert saved["optimizer_steps"] == -(-n_train // 8) > 0
    assert json.loads((out / "runs" / "none-L2-s0" / "environment.json").read_text())["cpu"]  # which machine
    paths = write_report(tiny_study(), results, out)
    table = (out / "table.md").read_text()
    assert "test energy MAE (meV)" in table and "| 1 layer | 2 layers |" in table
    assert f"--set {' '.join(TINY)}; 2 of 2 cells finished" in table.splitlines()[0]
    assert "test forces MAE (meV/Å)" in table
    expected = f"{saved['test']['test/energy_mae_meV']:.1f} (1 seed)"
    assert expected in table
    e = saved["diagnostics"]["dirichlet_h"]
    lines = table.splitlines()
    ratio_row = lines[next(i for i, line in enumerate(lines) if line.startswith("| E_L/E_1")) + 2]
    assert ratio_row == f"| plain EGCL stack (none) | – | {fmt(e[2] / e[1], 0.0, 1)} |"  # one layer has no ratio
    for png in ("mae_vs_depth.png", "dirichlet_per_layer.png"):
        assert (out / png) in paths and (out / png).read_bytes()[:4] == b"\x89PNG"

    # a second sitting trains nothing
    def no_training(*a, **k):
        raise AssertionError("a finished cell was trained again")

    monkeypatch.setattr(runner, "train", no_training)
    logs = []
    again = runner.run_study(tiny_study(), out, TINY, log=logs.append)
    assert len(again) == 2 and "2 of 2 cells already finished" in logs[0]
    assert not any("this sitting took" in m for m in logs)  # nothing was trained in it
    # a cell whose run finished but whose JSON was lost is rebuilt from metrics.json, not retrained
    (out / "cells" / "none-L1-s0.json").unlink()
    rebuilt = runner.run_study(tiny_study(), out, TINY, log=lambda m: None)
    assert {r["cell"] for r in rebuilt} == {"none-L1-s0", "none-L2-s0"}


def test_interrupted_cell_resumes_and_changed_settings_are_refused(tmp_path, monkeypatch):
    out = tmp_path / "study"
    study = tiny_study()
    study.cells = study.cells[:1]
    runner.run_study(study, out, TINY, log=lambda m: None)
    run_dir = out / "runs" / "none-L1-s0"
    # make it look interrupted after its last checkpoint: no metrics.json, no cell JSON
    (run_dir / "metrics.json").unlink()
    (out / "cells" / "none-L1-s0.json").unlink()
    calls = []
    real_train = runner.train
    monkeypatch.setattr(runner, "train", lambda cfg, dataset=None, resume=False: calls.append(resume) or real_train(
        cfg, dataset=dataset, resume=resume))
    # the sitting before the interruption trained for an hour, as its checkpoint says: the cell's times count it
    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["pairreg_schedule"]["budget_spent_s"] > 0  # a step- or epoch-limited run keeps its clock too
    ckpt["pairreg_schedule"]["budget_spent_s"] = 3600.0
    torch.save(ckpt, ckpt_path)
    resumed = runner.run_study(study, out, TINY, log=lambda m: None)[0]
    assert calls == [True]
    assert resumed["training_time_s"] >= 3600.0
    assert resumed["train_wall_time_s"] >= 3600.0 and resumed["cell_wall_time_s"] >= 3600.0
    # how cells run may change between sittings (threads); nothing is retrained
    logs = []
    runner.run_study(study, out, [o if o != "threads=1" else "threads=2" for o in TINY], log=logs.append)
    assert calls == [True] and "1 of 1 cells already finished" in logs[0]
    # what they compute may not: other settings in the same folder are refused before anything runs
    with pytest.raises(ConfigError, match="different study or settings"):
        runner.run_study(study, out, [*TINY[:-1], "hidden=16", TINY[-1]], log=lambda m: None)


def test_reuse_copies_a_cell_cut_part_way_in_another_folder_and_resumes_it(tmp_path, monkeypatch):
    """A sitting's end cut a cell in its own folder (a checkpoint, no result): --reuse of that folder copies the run
    in and the cell resumes from the checkpoint, with the result it would have had there; the source is untouched."""
    study = tiny_study()
    study.cells = study.cells[:1]
    part = tmp_path / "part"
    finished = runner.run_study(study, part, TINY, log=lambda m: None)[0]
    (part / "runs" / "none-L1-s0" / "metrics.json").unlink()  # as if cut after its last checkpoint
    (part / "cells" / "none-L1-s0.json").unlink()
    calls = []
    real_train = runner.train
    monkeypatch.setattr(runner, "train", lambda cfg, dataset=None, resume=False: calls.append(resume) or real_train(
        cfg, dataset=dataset, resume=resume))
    logs = []
    joined = runner.run_study(study, tmp_path / "joined", TINY, log=logs.append, reuse=[part])[0]
    assert calls == [True]  # resumed, not trained from scratch
    assert any("copied the part-way run" in m and str(part / "runs" / "none-L1-s0") in m for m in logs)
    for key, value in finished["test"].items():
        assert joined["test"][key] == pytest.approx(value, rel=1e-6), key
    assert not (part / "cells" / "none-L1-s0.json").exists()
    assert not (part / "runs" / "none-L1-s0" / "metrics.json").exists()
    assert not list((tmp_path / "joined" / "runs").glob(".*copying"))
    # a run cut before its first checkpoint is not copied: the cell would train from scratch
    (part / "runs" / "none-L1-s0" / "checkpoints" / "last.ckpt").unlink()
    assert runner.adoptable_runs(study, study.cells, tmp_path / "other", TINY, [part]) == {}


def test_list_names_a_part_way_run_reuse_would_resume(tmp_path, capsys):
    study_args = ["bench", "depth", "--preset", "cpu", "--molecule", "ethanol", "--depths", "1", "--seeds", "1",
                  "--only", "none", "--set", *TINY]
    part = tmp_path / "part"
    assert main([*study_args, "--out", str(part)]) == 0
    (part / "runs" / "none-L1-s0" / "metrics.json").unlink()
    (part / "cells" / "none-L1-s0.json").unlink()
    capsys.readouterr()
    assert main([*study_args, "--out", str(tmp_path / "joined"), "--reuse", str(part), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    line = next(l for l in lines if "none-L1-s0" in l)
    assert "to do" in line and line.endswith(f"<- resumes the part-way run {part / 'runs' / 'none-L1-s0'}")
    assert lines[-1] == "0 done, 0 to copy (--reuse), 1 to train, 1 of them from part-way runs (--reuse)"


def test_a_cell_records_a_rate_the_guard_lowered(tmp_path, monkeypatch):
    """The run's lr_scale (below 1 after a rollback or plateau) reaches the cell JSON, so a figure pooling cells can
    say that a cell trained at less than its configured rate; a cell at its full rate carries none."""
    study = tiny_study()
    real_train = runner.train

    def halved_once(cfg, dataset=None, resume=False):
        summary = real_train(cfg, dataset=dataset, resume=resume)
        return summary | {"lr_scale": 0.5} if cfg.n_layers == 2 else summary

    monkeypatch.setattr(runner, "train", halved_once)
    results = {r["cell"]: r for r in runner.run_study(study, tmp_path / "study", TINY, log=lambda m: None)}
    assert results["none-L2-s0"]["lr_scale"] == 0.5 and "lr_scale" not in results["none-L1-s0"]
    saved = json.loads((tmp_path / "study" / "cells" / "none-L2-s0.json").read_text())
    assert saved["lr_scale"] == 0.5


def test_identical_cells_of_another_study_are_reused_not_retrained(tmp_path, monkeypatch):
    first = tmp_path / "depth"
    runner.run_study(tiny_study(), first, TINY, log=lambda m: None)
    # another study whose first cell computes the same thing (same layers, seed, settings) and whose
    # second does not (other seed): only the first is copied
    other = Study("ablation", "cpu", "rmd17-cpu", ["molecule=ethanol", "n_layers=2"])
    other.cells = [Cell("plain-s0", "plain EGCL stack (none)", None, 0, ("mitigation=none", "seed=0"), 2.0),
                   Cell("plain-s1", "plain EGCL stack (none)", None, 1, ("mitigation=none", "seed=1"), 2.0)]
    trained = []
    real_train = runner.train
    monkeypatch.setattr(runner, "train", lambda cfg, dataset=None, resume=False: trained.append(cfg.seed) or real_train(
        cfg, dataset=dataset, resume=resume))
    logs = []
    results = runner.run_study(other, tmp_path / "ablation", TINY, log=logs.append, reuse=[first])
    assert trained == [1]
    copied = next(r for r in results if r["cell"] == "plain-s0")
    source = json.loads((first / "cells" / "none-L2-s0.json").read_text())
    assert copied["reused_from"].endswith("none-L2-s0.json") and copied["group"] == "plain EGCL stack (none)"
    assert copied["test"] == source["test"] and copied["config"]["name"] == "plain-s0"
    assert any("reused" in m for m in logs)
    write_report(other, results, tmp_path / "ablation")
    table = (tmp_path / "ablation" / "table.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| plain EGCL stack (none)"))
    # the plain stack keeps the input coordinates: their energy ratio is exactly 1
    assert "E_x,L/E_x,0 of coordinates" in table and row.split(" | ")[-2] == "1.000 ± 0.000"
    with pytest.raises(ConfigError, match="no finished cells"):
        runner.run_study(other, tmp_path / "ablation", TINY, log=lambda m: None, reuse=[tmp_path / "nowhere"])


def test_list_names_the_cells_reuse_would_copy_and_the_training_left(tmp_path, capsys):
    """The plan of a sitting: the ablation at 30 minutes on ethanol copies its plain-stack, residual and full rows
    from the committed depth study's 8-layer cells (a check that those records stay reusable), the rest is
    training whose length the wall budget gives."""
    records = Path(__file__).resolve().parents[1] / "benchmarks" / "records" / "depth-ethanol-30"
    args = ["bench", "ablation", "--preset", "budget", "--molecule", "ethanol", "--out", str(tmp_path), "--list",
            "--set", "time_budget_min=30", "threads=1", "data_root=bundled"]
    assert main([*args, "--reuse", str(records)]) == 0
    lines = capsys.readouterr().out.splitlines()
    copied = {line.split()[2]: line.split("<- copied from ")[1] for line in lines if line.split()[1:2] == ["reuse"]}
    rows = {"plain-EGCL-stack-none": "none", "EGNN-residual": "residual", "full-default": "pairreg"}
    assert copied == {f"{key}-s{s}": str(records / "cells" / f"{row}-L8-s{s}.json") for key, row in rows.items()
                      for s in (0, 1)}
    n = 2 * len(ABLATION_VARIANTS)
    assert lines[-1] == f"0 done, 6 to copy (--reuse), {n - 6} to train ({30 * (n - 6)} minutes of training, one run at a time)"
    assert main(args) == 0  # without --reuse: everything is training
    assert capsys.readouterr().out.splitlines()[-1].startswith(f"0 done, 0 to copy (--reuse), {n} to train")


def test_bad_override_fails_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="unknown key 'hiden'"):
        runner.run_study(tiny_study(), tmp_path / "s", ["hiden=8"], log=lambda m: None)
    assert not (tmp_path / "s").exists()
    # a bad value for the second row only is found before the first row trains
    study = two_row_study().set_rows(["residual:lr=fast"])
    with pytest.raises(ConfigError, match="lr"):
        runner.run_study(study, tmp_path / "r", TINY, log=lambda m: None)
    assert not (tmp_path / "r").exists()


def test_cli_list_and_report(tmp_path, capsys):
    assert main(["bench", "ablation", "--list", "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    n = 2 * len(ABLATION_VARIANTS)
    assert f"study ablation, preset cpu: {n} cells" in text and text.count("to do") == n
    assert main(["bench", "depth", "--report", "--out", str(tmp_path)]) == 0
    assert "test energy MAE (meV)" in (tmp_path / "table.md").read_text()
    with pytest.raises(SystemExit):
        main(["bench", "depth", "--preset", "tpu"])


def test_only_keeps_the_named_rows(tmp_path, capsys):
    args = ["bench", "ablation", "--seeds", "3", "--only", "plain-EGCL-stack-none", "coord only", "Full-Default", "--list",
            "--out", str(tmp_path), "--set", "n_layers=12"]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "9 cells" in text and "--set n_layers=12" in text
    listed = [line.split()[3] for line in text.splitlines()[1:-1]]
    assert sorted(listed) == sorted(f"{k}-s{s}" for k in ("plain-EGCL-stack-none", "coord-only", "full-default")
                                    for s in range(3))
    with pytest.raises(ValueError, match="no such row in study ablation; rows: plain-EGCL-stack-none, EGNN-residual, "
                                         "node-only-ours-coords-fixed, node-only-authors-replace-lambda-0, coord-only"):
        build_study("ablation", "cpu").only(["coord-onyl"])
    # a mitigation row is also found by its table label
    assert build_study("depth", "cpu").resolve(["plain-EGCL-stack-none", "EGNN (residual)"]) == ["none", "residual"]


def test_cells_keeps_the_named_cells(tmp_path, capsys):
    """--cells picks cells by key (budget-check's 3 B column, split across cores), after --only."""
    args = ["bench", "budget-check", "--preset", "budget", "--molecule", "ethanol", "--list", "--out", str(tmp_path),
            "--set", "time_budget_min=30", "--cells", "pairreg-90min-s0", "none-90min-s0"]
    assert main(args) == 0
    listed = [line.split()[3] for line in capsys.readouterr().out.splitlines()[1:-1]]
    assert listed == ["none-90min-s0", "pairreg-90min-s0"]  # grid order, not the order asked
    study = build_study("budget-check", "budget", budget_min=30).keep_cells(["residual-30min-s0"])
    assert [(c.group, c.x) for c in study.cells] == [("residual", 30.0)]
    with pytest.raises(ValueError, match=r"--cells none-90min-s0: no such cell in study budget-check; "
                                         r"cells: pairreg-30min-s0, pairreg-90min-s0"):
        build_study("budget-check", "budget", budget_min=30).only(["pairreg"]).keep_cells(["none-90min-s0"])


@pytest.mark.parametrize("name", ["depth", "ablation", "qm9-table"])
@pytest.mark.parametrize("preset", ["cpu", "paper", "budget"])
def test_only_egnn_residual_form_is_labelled_egnn(name, preset, tmp_path):
    """EGNN's published QM9 layers are residual: a row labelled EGNN runs mitigation=residual, the
    plain stack is labelled as such, and every study has both rows."""
    study = build_study(name, preset)
    mitigations = {}
    for cell in study.cells:
        mitigations.setdefault(row_label(cell.group), set()).add(runner.cell_config(study, cell, tmp_path, []).mitigation)
    for label, used in mitigations.items():
        assert ("EGNN" in label) == (used == {"residual"}), (label, used)
        assert ("plain EGCL stack" in label) == (used == {"none"}), (label, used)
    assert {"plain EGCL stack (none)", "EGNN (residual)"} <= set(mitigations)


def test_ablation_has_both_readings_of_node_only(tmp_path):
    """Ours fixes the coordinates; the authors' script passes updated ones on, unaveraged, unregularised."""
    from pairreg.training.module import build_model

    study = build_study("ablation", "cpu")
    configs = {c.group: runner.cell_config(study, c, tmp_path, []) for c in study.cells if c.seed == 0}
    ours = build_model(configs["node only (ours: coords fixed)"], [0.0], [1.0]).mitigation
    theirs = build_model(configs["node only (authors: replace, λ=0)"], [0.0], [1.0]).mitigation
    assert (ours.update_coords, ours.reg_weight, ours.residual) == (False, 0.0, "concat-project")
    assert (theirs.update_coords, theirs.coord_mix, theirs.reg_weight, theirs.residual, theirs.ablation) == (
        True, "replace", 0.0, "concat-project", "full")


def test_tables_label_the_plain_stack_and_egnn():
    results = [fake_result(g, s, 300.0 + s, 0.8) for g in ("pairreg", "residual", "none") for s in (0, 1)]
    head = target_table(results).splitlines()[0]
    assert head == "| test MAE | plain EGCL stack (none) | EGNN (residual) | pairreg |"


def test_a_depth_study_at_equal_wall_time_tables_its_optimizer_steps():
    """With a time budget the cells' step counts differ (a costlier layer buys fewer): the table shows them per
    row and depth; a study to a fixed number of epochs has no such table."""
    study = build_study("depth", "budget", seeds=2, molecule="ethanol", depths=[2, 8, 16])
    steps = {("none", 2, 0): 160_237, ("none", 2, 1): 162_688, ("pairreg", 16, 0): 21_252}
    results = [dict(fake_result(g, s, 3.0, 0.1, x=x), optimizer_steps=n, stopped_by="time_budget_min")
               for (g, x, s), n in steps.items()]
    lines = study_tables(study, results).splitlines()
    head = lines.index("| optimizer steps in the budget | 2 layers | 8 layers | 16 layers |")
    rows = {line.split(" | ")[0]: line.split(" | ")[1:] for line in lines[head + 2:head + 2 + 5]}
    assert rows["| plain EGCL stack (none)"] == ["161,462 ± 1,733", "–", "– |"]
    assert rows["| pairreg"] == ["–", "–", "21,252 (1 seed) |"]
    by_epochs = [dict(r, stopped_by="epochs") for r in results]
    assert "optimizer steps" not in study_tables(study, by_epochs)


def test_an_ablation_at_equal_wall_time_tables_each_variants_optimizer_steps():
    """Variants differ in cost (node-only moves no coordinates): at equal wall time the table says how many steps
    each row trained; to a fixed number of epochs it has no such column."""
    study = build_study("ablation", "budget", seeds=2, molecule="ethanol")
    steps = {("coord only", 0): 40_000, ("coord only", 1): 42_000, ("full (default)", 0): 38_134}
    results = [dict(fake_result(g, s, 3.0, 0.1), optimizer_steps=n, stopped_by="time_budget_min")
               for (g, s), n in steps.items()]
    lines = study_tables(study, results).splitlines()
    header = next(line for line in lines if line.startswith("| variant"))
    assert header.split(" | ")[-2:] == ["optimizer steps", "seeds |"]
    rows = {line.split(" | ")[0]: line.split(" | ")[-2] for line in lines if line.startswith("| ") and line != header}
    assert rows["| coord only"] == "41,000 ± 1,414" and rows["| full (default)"] == "38,134 (1 seed)"
    by_epochs = [dict(r, stopped_by="epochs") for r in results]
    assert "optimizer steps" not in study_tables(study, by_epochs)


def test_the_table_says_what_its_cells_cost_in_core_hours():
    """Wall time × threads per cell (a resumed cell's training time when its last sitting was shorter), copies too."""
    study = build_study("depth", "budget", seeds=2, molecule="ethanol", depths=[2])
    results = [dict(fake_result("none", 0, 3.0, 0.1, x=2), training_time_s=1800.0, cell_wall_time_s=1830.0,
                    torch_threads=1),
               dict(fake_result("none", 1, 3.0, 0.1, x=2), training_time_s=1800.0, cell_wall_time_s=60.0,
                    torch_threads=2, reused_from="elsewhere/none-L2-s1.json")]
    last = study_tables(study, results).splitlines()[-1]
    assert last == ("Compute of these 2 cells: 1.5 core-hours (wall time × threads; 1 of them trained in another "
                    "study folder and copied with --reuse).")
    assert study_tables(study, results[:1]).endswith("Compute of this cell: 0.5 core-hours (wall time × threads).")
    # a cell that kept no wall time is named as uncounted, not guessed at
    untimed = [results[0], fake_result("none", 1, 3.0, 0.1, x=2)]
    assert study_tables(study, untimed).splitlines()[-1] == (
        "Compute of these 2 cells: 0.5 core-hours (wall time × threads; 1 without a recorded wall time or thread "
        "count, not counted).")


def test_welch_p_matches_the_textbook_case_and_needs_two_seeds():
    # t = -3/sqrt(2/3) = -3.674 on 4 degrees of freedom (equal spreads): two-sided p = 0.0213
    assert welch_p([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.0213, abs=1e-4)
    assert welch_p([1.0, 2.0, 3.0], [1.5, 2.5]) > 0.5
    assert np.isnan(welch_p([1.0], [2.0, 3.0])) and np.isnan(welch_p([1.0, None, float("nan")], [2.0, 3.0]))
    assert np.isnan(welch_p([1.0, 1.0], [1.0, 1.0]))  # no spread anywhere: nothing to test against


def test_rank_p_is_the_exact_mann_whitney_p_and_needs_two_seeds():
    # one stuck seed: Welch's p sees a wide spread, the ranks see every seed of one row below every seed of the other
    stuck, steady = [65.5, 197.6, 74.3], [61.5, 62.5, 57.8]
    assert rank_p(stuck, steady) == pytest.approx(0.1) and welch_p(stuck, steady) > 0.3
    assert rank_p([1.0, 2.0], [3.0, 4.0]) == pytest.approx(1 / 3)  # 2 vs 2: C(4, 2) = 6 orderings, 2 as extreme
    assert rank_p([1.0, 4.0, 5.0], [2.0, 3.0, 6.0]) > 0.5  # interleaved: no evidence
    assert np.isnan(rank_p([1.0], [2.0, 3.0])) and np.isnan(rank_p([1.0, float("nan")], [2.0, 3.0]))


def fake_result(group: str, seed: int, homo_meV: float, mu_D: float, x=None) -> dict:
    return {"cell": f"{group}-s{seed}", "group": group, "x": x, "seed": seed,
            "test": {"test/homo_mae_meV": homo_meV, "test/mu_mae_D": mu_D}}


def write_depth_cells(out: Path, results: list[dict]) -> None:
    for r in results:
        r["cell"] = f"{r['group']}-L{r['x']}-s{r['seed']}"
        (out / "cells" / f"{r['cell']}.json").write_text(json.dumps(r))


def test_row_labels_name_the_backbone_the_cells_trained():
    egnn = [fake_result("none", 0, 300.0, 0.8, x=2), fake_result("residual", 0, 250.0, 0.7, x=2)]
    painn = [dict(r, config={"backbone": "painn"}) for r in egnn]
    assert "| plain EGCL stack (none) | EGNN (residual) |" in target_table(egnn).splitlines()[0]
    header = target_table(painn).splitlines()[0]
    assert "PaiNN (none) | residual" in header and "EGCL" not in header and "EGNN" not in header
    assert row_label("none", "clofnet") == "ClofNet (none)" and row_label("pairreg", "segnn") == "pairreg"


def test_compare_table_gives_means_difference_and_p_per_target(tmp_path, capsys):
    results = [fake_result("none", 0, 300.0, 0.8), fake_result("none", 1, 310.0, 0.7),
               fake_result("g2", 0, 200.0, 0.6), fake_result("g2", 1, 204.0, 0.75)]
    lines = compare_table(results, "none", "g2").splitlines()
    assert lines[0] == "| target | none | g2 | g2 − none | Welch p | rank p | seeds |"
    homo = lines[2].split(" | ")
    assert homo[0] == "| test homo MAE (meV)" and homo[1] == "305.0 ± 7.1" and homo[3] == "-103.0"
    assert float(homo[4]) == pytest.approx(welch_p([300, 310], [200, 204]), rel=0.05) and float(homo[4]) < 0.05
    assert float(homo[5]) == pytest.approx(1 / 3, abs=0.005)  # 2 vs 2 seeds, fully separated: the rank test's floor
    assert lines[3].startswith("| test mu MAE (D) | 0.750 ± 0.071 | 0.675 ± 0.106 | -0.075 |")
    with pytest.raises(ValueError, match="no finished cells to compare"):
        compare_table(results, "none", "pairreg")
    # through the CLI, rows named by key in any case; depth studies get a depth column
    (tmp_path / "cells").mkdir()
    write_depth_cells(tmp_path, [fake_result("none", s, 180.0 + s, 1.0, x=9) for s in (0, 1)] + [
        fake_result("pairreg", s, 170.0 + 3 * s, 1.0, x=9) for s in (0, 1)])
    assert main(["bench", "depth", "--out", str(tmp_path), "--compare", "NONE", "pairreg"]) == 0
    out = capsys.readouterr().out
    assert "| target | depth | none | pairreg |" in out and "| test homo MAE (meV) | 9 layers | 180.5 ± 0.7 |" in out
    assert main(["bench", "depth", "--out", str(tmp_path), "--compare", "none", "g3"]) == 2
    assert "--compare g3: no such row in study depth" in capsys.readouterr().err
    # two depths of one row: ROW@DEPTH
    write_depth_cells(tmp_path, [fake_result("none", s, 200.0 + 10 * s, 1.0, x=12) for s in (0, 1)])
    assert main(["bench", "depth", "--out", str(tmp_path), "--compare", "none@9", "none@12"]) == 0
    out = capsys.readouterr().out
    assert "| test homo MAE (meV) | 180.5 ± 0.7 | 205.0 ± 7.1 | +24.5 |" in out and "| none, 12 layers |" in out
    assert main(["bench", "depth", "--out", str(tmp_path), "--compare", "none@nine", "none"]) == 2
    assert "number after @ must be a depth" in capsys.readouterr().err


def test_budget_check_with_only_its_b_cells_reports_no_verdict_and_compares_by_budget(tmp_path, capsys):
    """Cells of B only (3 B not run, or run in another folder): the 3 B column stays empty and the verdict "–",
    never B against itself; --compare labels the column as a budget, not a depth."""
    (tmp_path / "cells").mkdir()
    for group, energy, forces in [("none", 8.0, 27.0), ("residual", 4.0, 16.0)]:
        for seed in (0, 1):
            cell = f"{group}-30min-s{seed}"
            (tmp_path / "cells" / f"{cell}.json").write_text(json.dumps(
                {"cell": cell, "group": group, "x": 30.0, "seed": seed,
                 "test": {"test/energy_mae_meV": energy + seed, "test/forces_mae_meV_per_Angstrom": forces + seed}}))
    args = ["bench", "budget-check", "--preset", "budget", "--molecule", "ethanol", "--out", str(tmp_path),
            "--seeds", "2", "--set", "time_budget_min=30"]
    assert main([*args, "--cells", "none-30min-s0", "none-30min-s1", "residual-30min-s0", "residual-30min-s1",
                 "--report"]) == 0
    table = capsys.readouterr().out
    assert "test energy (meV), 30 min | 90 min | ratio 30 / 90 |" in table
    none = next(line for line in table.splitlines() if line.startswith("| plain EGCL stack"))
    assert none.endswith("| 8.500 ± 0.707 | – | – | 27.5 ± 0.7 | – | – | – |"), none
    assert main([*args, "--compare", "none", "residual"]) == 0
    out = capsys.readouterr().out
    assert "| target | budget | none | residual |" in out
    assert "| test forces MAE (meV/Å) | 30 min | 27.5 ± 0.7 | 16.5 ± 0.7 | -11.0 |" in out
    # a fractional budget after @ (B = 7.5 minutes: columns 7.5 and 22.5)
    for seed in (0, 1):
        for minutes, forces in ((7.5, 40.0), (22.5, 30.0)):
            cell = f"none-{minutes:g}min-s{seed}"
            (tmp_path / "cells" / f"{cell}.json").write_text(json.dumps(
                {"cell": cell, "group": "none", "x": minutes, "seed": seed,
                 "test": {"test/energy_mae_meV": 9.0, "test/forces_mae_meV_per_Angstrom": forces + seed}}))
    frac = [*args[:-1], "time_budget_min=7.5", "--compare", "none@7.5", "none@22.5"]
    assert main(frac) == 0
    out = capsys.readouterr().out
    assert "| none, 7.5 min | none, 22.5 min |" in out and "| 40.5 ± 0.7 | 30.5 ± 0.7 | -10.0 |" in out
    assert main([*frac[:-2], "none@-3", "none"]) == 2
    assert "number after @ must be a depth" in capsys.readouterr().err
    # every budget label (tables, --compare, progress lines) writes step counts out in full
    from pairreg.bench.studies import budget_amount

    assert budget_amount(1234567, "steps") == "1234567" and budget_amount(7.5, "min") == "7.5"


@pytest.mark.slow
def test_cli_runs_a_whole_small_study(tmp_path, capsys):
    """`pairreg bench depth --seeds 1` end to end on the ethanol fixture (16 tiny cells; the residual row left out)."""
    out = tmp_path / "depth"
    args = ["bench", "depth", "--seeds", "1", "--molecule", "ethanol", "--out", str(out), "--set", *TINY, "hidden=4",
            "--only", "none", "pairreg", "pairnorm", "g2"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "cell 16/16" in captured.err and "ETA" in captured.err
    assert "| plain EGCL stack (none) |" in captured.out and "| pairreg |" in captured.out and "| g2 |" in captured.out
    assert len(list((out / "cells").glob("*.json"))) == 16


@pytest.mark.slow
def test_backbones_qm9_runs_end_to_end_on_the_qm9_sample(qm9_sample_env, capsys):
    out = qm9_sample_env / "bb"
    args = ["bench", "backbones-qm9", "--preset", "budget", "--seeds", "1", "--out", str(out), "--only", "painn none",
            "clofnet pairreg", "segnn pairreg", "--set", "time_budget_min=null", "epochs=1", "batch_size=8",
            "subset_train=32", "subset_val=16", "subset_test=16", "threads=1", "progress=false"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "test homo MAE (meV)" in table and "| painn | 27.6 |" in table
    for row in ("painn none", "clofnet pairreg", "segnn pairreg"):
        line = next(line for line in table.splitlines() if line.startswith(f"| {row} |"))
        assert "(1 seed)" in line, line  # a finite MAE from a trained cell, not a dash


def test_metric_names_parse_back_to_target_and_unit():
    from pairreg.training.module import metric_name, parse_metric_name

    for split, target, unit in [("val", "forces", "meV/Angstrom"), ("test", "homo", "meV"), ("test", "mu", "D")]:
        assert parse_metric_name(metric_name(split, target, unit)) == (split, target, unit)
    assert parse_metric_name("val/mae_std") is None and parse_metric_name("train/loss") is None


RECORDS = Path(__file__).parents[1] / "benchmarks" / "records"


@pytest.mark.parametrize("folder", sorted(p.parent for p in RECORDS.glob("*/study.json")), ids=lambda p: p.name)
def test_committed_study_records_are_reusable(folder, tmp_path):
    """benchmarks/records: every cell there is one of its study's grid, has finite test errors for every target,
    and computes what the current code's cell computes, so --reuse copies it (a later sitting continues the
    study from these files; a new config key must default to the old behaviour)."""
    manifest = json.loads((folder / "study.json").read_text())
    overrides = dict(o.split("=", 1) for o in manifest["base_overrides"])
    budget_min = budget_steps = None
    if manifest["study"] == "budget-check":  # B in minutes, or in optimiser steps (time_budget_min=null)
        if overrides.get("step_budget", "null") != "null":
            budget_steps = int(overrides["step_budget"])
        else:
            budget_min = float(overrides["time_budget_min"])
    study = build_study(manifest["study"], manifest["preset"], seeds=5, molecule=overrides.get("molecule", "aspirin"),
                        budget_min=budget_min, budget_steps=budget_steps)
    assert study.base_overrides == manifest["base_overrides"]
    study.row_overrides = manifest.get("row_overrides", {})  # --row-set: one row's own settings
    by_key = {c.key: c for c in study.cells}
    keys = set(by_key)
    cells = sorted((folder / "cells").glob("*.json"))
    assert cells, f"{folder}: no cells"
    for path in cells:
        record = json.loads(path.read_text())
        assert record["cell"] == path.stem and record["cell"] in keys, path
        for target in study.targets:
            values = [v for k, v in record["test"].items() if k.startswith(f"test/{target}_mae_")]
            assert len(values) == 1 and np.isfinite(values[0]), (path, target)
        now = runner.cell_config(study, by_key[record["cell"]], tmp_path, manifest["extra_overrides"]).to_dict()
        assert runner.config_identity(record["config"]) == runner.config_identity(now), path
    assert len(runner.reusable_cells([folder])) == len(cells)


def test_a_key_added_to_the_config_later_does_not_stop_reuse():
    config = load_config("rmd17-1h", ["molecule=ethanol"]).to_dict()
    older = {k: v for k, v in config.items() if k != "step_budget"}  # recorded before step_budget existed
    assert runner.config_identity(older) == runner.config_identity(config)
    assert runner.config_identity({**config, "step_budget": 5, "time_budget_min": None}) != runner.config_identity(config)


def two_row_study() -> Study:
    study = Study("depth", "cpu", "rmd17-cpu", ["molecule=ethanol"])
    for mitigation in ("none", "residual"):
        study.cells.append(Cell(f"{mitigation}-L1-s0", mitigation, 1, 0,
                                (f"mitigation={mitigation}", "n_layers=1", "seed=0"), 1.0))
    return study


def test_row_set_gives_one_row_its_own_settings_and_the_folder_remembers(tmp_path):
    """Each method at its own learning rate (--row-set residual:lr=...): only that row's cells change, the table
    says so, the folder refuses the same study without it, and a cell trained elsewhere with the same settings
    (a --set lr=... study of that row alone) is copied, not retrained."""
    alone = tmp_path / "residual-alone"
    only_residual = two_row_study()
    only_residual.cells = only_residual.cells[1:]
    runner.run_study(only_residual, alone, [*TINY, "lr=3e-3"], log=lambda m: None)

    study = two_row_study().set_rows(["EGNN-residual:lr=3e-3"], {"mitigation", "n_layers", "seed"},
                                     runner.RUN_PLACE_KEYS)
    out = tmp_path / "joined"
    logs = []
    results = {r["cell"]: r for r in runner.run_study(study, out, TINY, log=logs.append, reuse=[alone])}
    assert results["residual-L1-s0"]["config"]["lr"] == 3e-3 and results["none-L1-s0"]["config"]["lr"] != 3e-3
    assert "reused_from" in results["residual-L1-s0"] and "reused_from" not in results["none-L1-s0"]
    assert json.loads((out / "study.json").read_text())["row_overrides"] == {"residual": ["lr=3e-3"]}
    # --report without --row-set still says which rows ran with their own settings
    write_report(two_row_study(), list(results.values()), out)
    assert "Rows trained with their own settings (--row-set): residual: lr=3e-3." in (out / "table.md").read_text()
    with pytest.raises(ConfigError, match="different study or settings"):
        runner.run_study(two_row_study(), out, TINY, log=lambda m: None)


@pytest.mark.parametrize("item, message", [
    ("residual-lr=4e-3", "expected ROW:KEY=VALUE"),
    ("resid:lr=4e-3", "--row-set resid: no such row in study depth"),
    ("residual:n_layers=4", "sets n_layers per cell"),
    ("residual:threads=2", "says how cells run"),
    ("residual:leraning_rate=4e-3", "unknown config key 'leraning_rate'"),
    ("residual@5:lr=4e-3", "row residual has no cells at '5' in this study; it has 3"),
    ("residual@three:lr=4e-3", "has no cells at 'three'"),
])
def test_row_set_refuses_what_it_cannot_mean(tmp_path, capsys, item, message):
    assert main(["bench", "depth", "--depths", "3", "--out", str(tmp_path), "--list", "--row-set", item]) == 2
    assert message in capsys.readouterr().err


def test_row_set_at_a_depth_reaches_only_that_rows_cells_at_that_depth(tmp_path, capsys):
    """``ROW@DEPTH:KEY=VALUE`` (a step budget per depth): after the row's own setting, only at that depth; listed with
    its depth; the cells' configs are those a study of that depth alone gives (so --reuse joins them)."""
    extra = [*TINY, "time_budget_min=null"]
    study = build_study("depth", "budget", 1, "ethanol", [2, 8], None, None)
    study.set_rows(["residual:lr=4e-3", "residual@8:lr=2e-3", "residual@8:step_budget=100", "none@2:lr=8e-3"])
    configs = {c.key: runner.cell_config(study, c, tmp_path, extra) for c in study.cells}
    assert configs["residual-L8-s0"].lr == 2e-3 and configs["residual-L8-s0"].step_budget == 100
    assert configs["residual-L2-s0"].lr == 4e-3 and configs["residual-L2-s0"].step_budget is None
    assert configs["none-L2-s0"].lr == 8e-3 and configs["none-L8-s0"].lr == configs["pairreg-L8-s0"].lr
    alone = build_study("depth", "budget", 1, "ethanol", [8], None, None)
    alone.set_rows(["residual:lr=4e-3", "residual:lr=2e-3", "residual:step_budget=100"])
    cell = next(c for c in alone.cells if c.key == "residual-L8-s0")
    assert runner.cell_config(alone, cell, tmp_path, extra) == configs["residual-L8-s0"]
    assert study.row_settings() == "residual: lr=4e-3; residual@8: lr=2e-3 step_budget=100; none@2: lr=8e-3"
    study.only(["none"])  # the rows' settings at depths it no longer has cells of are not listed
    assert study.row_settings() == "none@2: lr=8e-3"


def test_row_set_is_listed_and_reaches_only_that_rows_config(tmp_path, capsys):
    args = ["bench", "depth", "--preset", "budget", "--molecule", "ethanol", "--depths", "8", "--seeds", "1",
            "--only", "none", "residual", "--out", str(tmp_path), "--set", "lr=1e-3",
            "--row-set", "residual:lr=4e-3", "residual:coord_init=authors"]
    assert main([*args, "--list"]) == 0
    assert "per row (--row-set) residual: lr=4e-3 coord_init=authors" in capsys.readouterr().out
    # one part of a study split by --only keeps the whole --row-set list (one study.json for every part)
    assert main([*args[:args.index("--only")], "--only", "none", *args[args.index("--out"):], "--list"]) == 0
    assert "per row" not in capsys.readouterr().out
    study = build_study("depth", "budget", 1, "ethanol", [8]).only(["none", "residual"])
    study.set_rows(["residual:lr=4e-3", "residual:coord_init=authors"])
    configs = {c.group: runner.cell_config(study, c, tmp_path, ["lr=1e-3"]) for c in study.cells}
    assert (configs["residual"].lr, configs["residual"].coord_init) == (4e-3, "authors")
    assert (configs["none"].lr, configs["none"].coord_init) == (1e-3, "egnn")


def _timed(group: str, seed: int, probes: list[float] | None, minutes: float | None = 30) -> dict:
    return dict(fake_result(group, seed, 3.0, 0.1), config={"time_budget_min": minutes},
                speed_probes=[{"force_steps_per_s": p} for p in probes or []])


def test_a_join_of_wall_budget_cells_from_machines_of_different_speed_is_flagged():
    """Equal minutes on a faster machine are more training: the tables and --compare say so."""
    same = [_timed("none", 0, [50.0]), _timed("pairreg", 0, [55.0, 52.0])]  # within 15 %
    assert machine_speed_note(same) is None
    mixed = [_timed("none", 0, [50.0]), _timed("pairreg", 0, [52.0, 61.0])]  # a resume on a faster machine
    note = machine_speed_note(mixed)
    assert note.startswith("Warning (machine speed)") and "1.22x" in note
    assert "none-s0: 50.0" in note and "pairreg-s0: 61.0" in note
    # cells recorded before the probe existed, beside ones with it: their speed is unknown
    old = machine_speed_note([_timed("none", 0, [50.0]), _timed("none", 1, None)])
    assert "1 wall-budget cell(s) carry no speed probe" in old and "none-s1" in old and "differ" not in old
    assert machine_speed_note([_timed("none", 0, None), _timed("none", 1, None)]) is None  # nothing to compare
    # to a step budget the machine does not matter
    assert machine_speed_note([_timed("none", 0, [50.0], None), _timed("pairreg", 0, [80.0], None)]) is None
    study = build_study("ablation", "budget", seeds=1, molecule="ethanol")
    assert note in study_tables(study, mixed)
    assert compare_table(mixed, "none", "pairreg").endswith(note)
    assert "Warning" not in compare_table(same, "none", "pairreg")


def test_a_wall_budget_cell_records_the_machines_speed(tmp_path):
    runner.run_study(tiny_study(), tmp_path / "s", [*TINY, "time_budget_min=5"], log=lambda m: None)
    cells = runner.load_results(tmp_path / "s")
    assert len(cells) == 2 and all(len(c["speed_probes"]) == 1 and c["speed_probes"][0]["force_steps_per_s"] > 0
                                   for c in cells)


def test_a_sitting_warns_before_training_wall_budget_cells_on_a_machine_of_another_speed(tmp_path, monkeypatch):
    """The finished wall-budget cells ran at 50 force steps/s; this machine probes at 100: equal minutes would be
    twice the training, which the sitting says before it spends them."""
    assert runner.sitting_speed_note([_timed("none", 0, [50.0, 52.0])], 49.0) is None
    faster = runner.sitting_speed_note([_timed("none", 0, [50.0, 52.0])], 70.0)
    assert "70.0 force steps/s" in faster and "50.0-52.0" in faster and "step_budget" in faster
    assert "carry no speed probe" in runner.sitting_speed_note([_timed("none", 0, None)], 70.0)
    assert runner.sitting_speed_note([_timed("none", 0, [50.0], minutes=None)], 70.0) is None  # a step budget

    import pairreg.training.speed_probe as speed_probe

    monkeypatch.setattr(speed_probe, "force_steps_per_s", lambda *a, **k: 100.0)
    out = tmp_path / "s"
    (out / "cells").mkdir(parents=True)
    done = dict(_timed("none", 0, [50.0]), cell="none-L1-s0", x=1)
    (out / "cells" / "none-L1-s0.json").write_text(json.dumps(done))
    said = []
    runner.run_study(tiny_study(), out, [*TINY, "time_budget_min=5"], log=said.append)
    warning = next(m for m in said if "warning" in m)
    assert "100.0 force steps/s" in warning and "50.0-50.0" in warning
    assert said.index(warning) < next(k for k, m in enumerate(said) if "cell 2/2" in m)  # before it trains
    trained = json.loads((out / "cells" / "none-L2-s0.json").read_text())
    assert trained["speed_probes"][0]["force_steps_per_s"] == 100.0
