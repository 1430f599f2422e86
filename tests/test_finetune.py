"""Fine-tuning: init_from (weights of a parent run, checks with named errors, fresh output rows for new targets)
and freeze_layers (the embedding and the first K layers stay fixed and the optimiser never sees them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pairreg.cli.main import main
from pairreg.config import ConfigError, load_config
from pairreg.models import MoleculeModel
from pairreg.training import finetune
from pairreg.training.checkpoint import load_checkpoint, load_model, model_state

from conftest import RMD17_FIXTURE

# the parent (conftest.rmd17_run)'s settings; a child with these and init_from sees the same split
PARENT = ["dataset=rmd17", "molecule=ethanol", f"data_root={RMD17_FIXTURE}", "targets=energy", "hidden=16",
          "n_layers=2", "n_rbf=8", "rbf_max_A=5", "force_weight=10", "ema_decay=0.9", "batch_size=8",
          "progress=false", "threads=1", "seed=3"]


def _child(tmp_path, parent, name, *extra) -> dict:
    args = ["train", "--out", str(tmp_path), "--set", *PARENT, f"init_from={parent}", f"name={name}", *extra]
    assert main(args) == 0
    return json.loads((tmp_path / name / "metrics.json").read_text())


def test_an_unchanged_target_starts_from_the_parents_validation_mae(rmd17_run, tmp_path):
    parent = json.loads((rmd17_run / "metrics.json").read_text())
    # lr 1e-12: Adam's steps (~lr) are below float32's resolution of these weights, so the child's first
    # validation is the parent's model on the same split
    child = _child(tmp_path, rmd17_run, "child", "epochs=1", "lr=1e-12")
    for key in ("val/energy_mae_meV", "val/forces_mae_meV_per_Angstrom"):
        assert child["val"][key] == pytest.approx(parent["val"][key], rel=1e-6), key
    # ... and the child's model is the parent's (EMA) weights, standardisation included
    a, _ = load_model(rmd17_run)
    b, _ = load_model(tmp_path / "child")
    for (name, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, msg=name)


def test_freeze_layers_keeps_the_embedding_and_first_layers_fixed_and_out_of_the_optimiser(rmd17_run, tmp_path):
    _child(tmp_path, rmd17_run, "frozen", "epochs=1", "lr=1e-2", "freeze_layers=1")
    parent = model_state(load_checkpoint(rmd17_run))
    last = load_checkpoint(tmp_path / "frozen", "last")
    child = model_state(last)  # the EMA-averaged weights
    raw = {k[len("model."):]: v for k, v in last["current_model_state"].items()}  # the trained weights themselves
    frozen = finetune.frozen_names(load_model(rmd17_run)[0], 1)
    assert "embedding.weight" in frozen and "backbone.layers.0.edge_out.weight" in frozen
    assert "backbone.mitigation.project.0.weight" in frozen and not any(".1." in n for n in frozen)
    for name in frozen:
        assert torch.equal(child[name], parent[name]) and torch.equal(raw[name], parent[name]), name
    changed = [n for n in raw if n.startswith("backbone.layers.1.") and not torch.equal(raw[n], parent[n])]
    assert changed, "layer 2 should have trained"
    # the optimiser holds exactly the trainable parameters
    n_params = len(list(load_model(rmd17_run)[0].parameters()))
    groups = last["optimizer_states"][0]["param_groups"]
    assert sum(len(g["params"]) for g in groups) == n_params - len(frozen)


def test_new_targets_get_fresh_output_rows_and_kept_targets_the_parents_standardisation():
    torch.manual_seed(0)
    parent_model = MoleculeModel(n_targets=1, hidden=8, n_layers=2, target_mean=[-5000.0], target_scale=[30.0])
    ref = np.zeros((5, 1))
    ref[0, 0] = -13600.0
    parent_model.atom_ref.copy_(torch.as_tensor(ref))
    parent = {"state": parent_model.state_dict(), "names": ["energy"], "units": ["meV"], "path": "p.ckpt"}
    torch.manual_seed(1)
    child = MoleculeModel(n_targets=2, hidden=8, n_layers=2)
    fresh_row = child.graph_head[2].weight[0].detach().clone()
    done = finetune.init_weights(child, parent, ["gap", "energy"], ["meV", "meV"])
    assert done == {"kept": ["energy"], "new": ["gap"]}
    torch.testing.assert_close(child.graph_head[2].weight[1], parent_model.graph_head[2].weight[0])
    torch.testing.assert_close(child.graph_head[2].bias[1], parent_model.graph_head[2].bias[0])
    assert torch.equal(child.graph_head[2].weight[0], fresh_row)  # the new target's row is the fresh one
    assert not torch.equal(child.graph_head[2].weight[0], parent_model.graph_head[2].weight[0])
    torch.testing.assert_close(child.embedding.weight, parent_model.embedding.weight)
    mean, scale, atom_ref = finetune.merge_statistics(parent, ["gap", "energy"], ["meV", "meV"], [300.0, -4000.0],
                                                      [20.0, 25.0], None, 5)
    np.testing.assert_array_equal(mean, [300.0, -5000.0])
    np.testing.assert_array_equal(scale, [20.0, 30.0])
    np.testing.assert_array_equal(atom_ref[:, 1], ref[:, 0])
    assert not atom_ref[:, 0].any()
    # a target of the same name in another unit is a new target
    assert finetune.init_weights(child, parent, ["gap", "energy"], ["meV", "eV"])["new"] == ["gap", "energy"]


def test_a_model_that_does_not_fit_is_refused_by_key_and_unknown_elements_by_symbol(rmd17_run, tmp_path, capsys):
    args = ["train", "--out", str(tmp_path), "--set", *PARENT, f"init_from={rmd17_run}", "epochs=1"]
    for change, key in (("hidden=32", "hidden"), ("n_rbf=16", "n_rbf"), ("mitigation=residual", "mitigation"),
                        ("cutoff_A=4", "cutoff_A")):
        assert main(args + [change, "name=x"]) == 2
        err = capsys.readouterr().err
        assert f"init_from: {rmd17_run}/checkpoints/best.ckpt has {key}=" in err and "set " + key in err
    assert not (tmp_path / "x").exists()  # refused before the run directory is made
    assert main(args + ["elements=H,C,N,O,F,S", "name=x"]) == 2
    assert "has elements='H,C,N,O,F', this run elements='H,C,N,O,F,S'" in capsys.readouterr().err
    # an element of the new data the parent does not embed
    xyz = tmp_path / "hs.xyz"
    xyz.write_text('2\nenergy=-1.0 pbc="F F F"\nH 0 0 0\nS 0 0 1.3\n' * 10)
    assert main(["train", "--out", str(tmp_path), "--set", "dataset=extxyz", f"data_path={xyz}", "forces_key=null",
                 "elements=H,C,N,O,F,S", "hidden=16", "n_layers=2", "n_rbf=8", "rbf_max_A=5",
                 f"init_from={rmd17_run}", "progress=false", "name=y"]) == 2
    err = capsys.readouterr().err
    assert "init_from: the data have S (Z=16), which" in err and "it embeds H, C, N, O, F" in err
    assert main(["train", "--out", str(tmp_path), "--set", *PARENT, f"init_from={tmp_path / 'nothing'}",
                 "name=z"]) == 2
    assert "init_from: " in capsys.readouterr().err


def test_freeze_layers_needs_init_from_and_a_layer_count_in_range():
    with pytest.raises(ConfigError, match="freeze_layers .* set init_from"):
        load_config("rmd17-cpu", ["freeze_layers=2"])
    with pytest.raises(ConfigError, match="freeze_layers must be in 0..n_layers \\(9\\)"):
        load_config("rmd17-cpu", ["freeze_layers=10", "init_from=runs/x"])
    with pytest.raises(ConfigError, match="elements: 'Xx' is not an element symbol"):
        load_config("rmd17-cpu", ["elements=H,Xx"])
