"""The field's training recipe: wall-clock budget, schedules, loss kinds, force-RMS scale, EMA, divergence guard.

Runs use the rMD17 fixture (tests/fixtures/rmd17) and tiny models. The budget is tested with a fake clock
(``pairreg.training.schedules.clock``) that advances a fixed amount per reading, so no test depends on how
fast this machine is.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pairreg.config import ConfigError, load_config
from pairreg.training import schedules
from pairreg.training.checkpoint import load_checkpoint
from pairreg.models.model import build_model
from pairreg.training.losses import elementwise_loss
from pairreg.training.run import FORCE_GRAD_CLIP, effective_grad_clip, resume_config, train

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17"
TINY = ["dataset=rmd17", "molecule=ethanol", f"data_root={FIXTURE}", "targets=energy", "hidden=16", "n_layers=2",
        "progress=false", "threads=1", "seed=7", "eval_test=false"]


def _cfg(tmp_path, name, *extra):
    return load_config(None, [*TINY, f"out={tmp_path}", f"name={name}", *extra])


class FakeClock:
    """Advances ``step`` seconds at every reading."""

    def __init__(self, step: float):
        self.now, self.step = 0.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


def test_progress_schedule_warms_up_then_decays_to_lr_min():
    f = [schedules.lr_factor_at(p, 0.1, "cosine", 1e-3, 1e-5) for p in np.linspace(0, 1, 101)]
    assert f[0] > 0 and f[5] == pytest.approx(0.5) and f[10] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # monotone decay after the warm-up
    assert f[-1] == pytest.approx(1e-5 / 1e-3)
    assert schedules.lr_factor_at(0.7, 0.0, "plateau", 1e-3, 0.0) == 1.0


def test_plateau_lowers_after_patience_validations_without_a_new_best():
    p = schedules.PlateauScale(0.5, patience=2)
    assert [p.update(v) for v in (1.0, 0.9, 0.95, 0.93, 0.8, 0.85, 0.81)] == [False, False, False, True, False,
                                                                                False, True]


def test_wall_budget_counts_only_between_start_and_pause(monkeypatch):
    now = {"t": 100.0}
    monkeypatch.setattr(schedules, "clock", lambda: now["t"])
    b = schedules.WallBudget(budget_min=0.1)  # 6 s
    b.start()
    now["t"] = 102.0
    assert b.elapsed_s() == 2.0 and not b.exhausted()
    b.pause()
    now["t"] = 500.0  # time while paused (e.g. between sittings) does not count
    assert b.spent_s == 2.0 and b.progress() == pytest.approx(2 / 6)
    b.start()
    now["t"] = 503.9
    assert not b.exhausted()
    now["t"] = 504.0
    assert b.exhausted() and b.progress() == 1.0


def test_loss_kinds_on_known_values():
    pred, true = torch.tensor([1.0, -2.0]), torch.zeros(2)
    assert float(elementwise_loss(pred, true, "l1")) == pytest.approx(1.5)
    assert float(elementwise_loss(pred, true, "mse")) == pytest.approx(2.5)
    # huber, delta 1: 0.5·1² for |e| = 1, 1·(2 − 0.5) for |e| = 2
    assert float(elementwise_loss(pred, true, "huber", delta=1.0)) == pytest.approx((0.5 + 1.5) / 2)
    with pytest.raises(ValueError, match="unknown loss kind"):
        elementwise_loss(pred, true, "l3")


@pytest.mark.parametrize("bad, match", [
    (["time_budget_min=0"], "time_budget_min must be > 0"),
    (["time_budget_min=5", "warmup_epochs=1"], "set warmup_frac instead"),
    (["ema_decay=1.0"], "ema_decay must be in"),
    (["forces_loss=l3"], "forces_loss='l3' is not valid"),
    (["warmup_frac=1.5"], "warmup_frac must be in"),
    (["grad_clip=-1"], "grad_clip must be >= 0"),
    (["step_budget=0"], "step_budget must be > 0 optimiser steps"),
    (["step_budget=2.5"], "step_budget must be an integer"),
    (["step_budget=100", "time_budget_min=5"], "a run has one budget"),
    (["step_budget=100", "warmup_epochs=1"], "set warmup_frac instead"),
])
def test_recipe_keys_are_validated(bad, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [*TINY, *bad])


def test_qm9_refuses_force_only_keys():
    with pytest.raises(ConfigError, match="energy_scale=force-rms needs forces"):
        load_config(None, ["energy_scale=force-rms"])


def test_gradient_clipping_is_on_by_default_for_force_training_only():
    assert effective_grad_clip(load_config(None, [*TINY, "force_weight=10"])) == FORCE_GRAD_CLIP
    assert effective_grad_clip(load_config(None, [*TINY])) is None
    assert effective_grad_clip(load_config(None, [*TINY, "force_weight=10", "grad_clip=0"])) is None
    assert effective_grad_clip(load_config(None, [*TINY, "grad_clip=3"])) == 3.0


def test_budget_limited_run_stops_when_spent_and_decays_the_rate_to_lr_min(tmp_path, monkeypatch):
    # every clock reading advances 0.5 s: the 0.25-minute (15 s) budget ends within the first epochs, far
    # before the 50-epoch cap, whatever the speed of this machine
    monkeypatch.setattr(schedules, "clock", FakeClock(0.5))
    cfg = _cfg(tmp_path, "budget", "epochs=50", "batch_size=8", "time_budget_min=0.25", "lr=1e-3", "lr_min=1e-5",
               "warmup_frac=0.1")
    summary = train(cfg)
    ckpt = load_checkpoint(tmp_path / "budget", "last")
    assert ckpt["epoch"] + 1 < 50
    assert ckpt["pairreg_schedule"]["budget_spent_s"] >= 15.0
    # the rate after the last step is the cosine floor (progress 1)
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-5, rel=1e-6)
    assert summary["epochs_run"] == ckpt["epoch"] + 1
    assert summary["stopped_by"] == "time_budget_min"


def test_a_wall_budget_run_records_the_machines_speed_at_its_start_and_at_each_resume(tmp_path, monkeypatch):
    """Its result depends on how fast the machine was: environment.json keeps a speed probe per sitting."""
    monkeypatch.setattr(schedules, "clock", FakeClock(0.5))
    cfg = _cfg(tmp_path, "timed", "epochs=50", "batch_size=8", "time_budget_min=0.1")
    train(cfg)
    probes = json.loads((tmp_path / "timed" / "environment.json").read_text())["speed_probes"]
    assert len(probes) == 1 and probes[0]["force_steps_per_s"] > 0 and probes[0]["torch_threads"] == 1
    train(resume_config(tmp_path / "timed"), resume=True)
    env = json.loads((tmp_path / "timed" / "environment.json").read_text())
    assert len(env["speed_probes"]) == 2 and env["speed_probes"][0] == probes[0] and env["cpu"]
    # a run to a step budget is the same training on any machine: no probe
    train(_cfg(tmp_path, "steps", "batch_size=8", "step_budget=3"))
    assert "speed_probes" not in json.loads((tmp_path / "steps" / "environment.json").read_text())


def test_the_speed_probe_leaves_the_runs_random_stream_alone():
    from pairreg.training.speed_probe import force_steps_per_s

    torch.manual_seed(3)
    expected = torch.rand(4)
    torch.manual_seed(3)
    assert force_steps_per_s(repeats=1, steps=2) > 0
    assert torch.equal(torch.rand(4), expected)


def test_step_budget_stops_mid_epoch_validates_and_decays_the_rate_to_lr_min(tmp_path):
    """A step budget: equal compute whatever the machine. 7 steps of batches of 8 end inside the first epoch."""
    cfg = _cfg(tmp_path, "steps", "epochs=50", "batch_size=8", "step_budget=7", "lr=1e-3", "lr_min=1e-5",
               "warmup_frac=0.2")
    summary = train(cfg)
    ckpt = load_checkpoint(tmp_path / "steps", "last")
    assert ckpt["global_step"] == 7 and summary["optimizer_steps"] == 7
    assert summary["stopped_by"] == "step_budget" and summary["step_budget"] == 7
    assert ckpt["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(1e-5, rel=1e-6)  # progress 1
    batches = -(-len(np.load(tmp_path / "steps" / "split.npz")["train"]) // 8)
    assert batches > 7, "the fixture must give more than 7 batches for the budget to end mid-epoch"
    assert summary["val"] and summary["epochs_run"] == 1  # the partial epoch was validated


def test_force_rms_energy_scale_gives_unit_rms_forces(tmp_path):
    cfg = _cfg(tmp_path, "rms", "epochs=1", "batch_size=8", "force_weight=1", "energy_scale=force-rms")
    train(cfg)
    from pairreg.training.checkpoint import load_model
    from pairreg.training.datamodule import build_splits

    model, _ = load_model(tmp_path / "rms")
    ds, split = build_splits(cfg)
    forces = ds.subset(split["train"]).forces
    assert float(model.target_scale[0]) == pytest.approx(float(np.sqrt((forces ** 2).mean())), rel=1e-9)


def test_ema_checkpoints_hold_the_averaged_weights_and_the_summary_uses_them(tmp_path):
    cfg = _cfg(tmp_path, "ema", "epochs=2", "batch_size=8", "force_weight=1", "ema_decay=0.9")
    summary = train(cfg)
    best = load_checkpoint(tmp_path / "ema", "best")
    averaged, raw = best["state_dict"], best["current_model_state"]
    assert averaged.keys() == raw.keys()
    assert any(not torch.equal(averaged[k], raw[k]) for k in averaged if averaged[k].is_floating_point())
    from pairreg.cli.main import main

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):  # `pairreg evaluate` of the saved checkpoint = the in-training value
        assert main(["evaluate", str(tmp_path / "ema"), "--split", "val", "--json"]) == 0
    mae = json.loads(buf.getvalue())["mae"]["energy"]["value"]
    assert mae == pytest.approx(summary["val"]["val/energy_mae_meV"], rel=1e-5)


def test_stage_two_raises_the_energy_weight_from_its_fraction_on(tmp_path):
    from pairreg.training.module import PropertyModule

    cfg = _cfg(tmp_path, "s2", "force_weight=100", "stage2_frac=0.5", "stage2_energy_weight=1000", "energy_weight=1")
    module = PropertyModule(cfg, ["energy"], ["meV"], force_unit="meV/Angstrom")
    module.total_steps = 10
    weights = []
    for step in (0, 4, 5, 9):
        module.progress = lambda s=step: s / 10  # the schedule's fraction of the run
        weights.append(module.energy_weight())
    assert weights == [1.0, 1.0, 1000.0, 1000.0]


def test_divergence_guard_rolls_back_an_explosion_and_halves_the_rate(tmp_path, monkeypatch, capsys):
    # blow up the output layer at the end of epoch 2 (Lightning runs this hook after the epoch's validation):
    # epoch 3's validation score jumps far above its best
    from pairreg.training.module import PropertyModule

    def explode(self):
        if self.current_epoch == 1:
            with torch.no_grad():
                self.model.graph_head[-1].weight.mul_(1e4)

    monkeypatch.setattr(PropertyModule, "on_train_epoch_end", explode, raising=False)
    cfg = _cfg(tmp_path, "guard", "epochs=4", "batch_size=8", "force_weight=1")
    summary = train(cfg)
    err = capsys.readouterr().err
    assert "divergence guard: epoch 3: val/mae_std" in err and "rolled back to the weights of epoch 2" in err
    last = load_checkpoint(tmp_path / "guard", "last")
    assert last["pairreg_schedule"]["lr_scale"] == pytest.approx(0.5) and summary["lr_scale"] == 0.5
    assert float(last["state_dict"]["model.graph_head.2.weight"].abs().max()) < 100  # not the exploded weights
    assert summary["best_epoch"] != 3


def test_divergence_guard_stops_after_its_last_rollback(tmp_path, monkeypatch):
    from pairreg.training.callbacks import MAX_ROLLBACKS, DivergenceError
    from pairreg.training.module import PropertyModule

    def explode(self):
        if self.current_epoch >= 1:
            with torch.no_grad():
                self.model.graph_head[-1].weight.mul_(1e4)

    monkeypatch.setattr(PropertyModule, "on_train_epoch_end", explode, raising=False)
    cfg = _cfg(tmp_path, "again", f"epochs={MAX_ROLLBACKS + 3}", "batch_size=8", "force_weight=1")
    with pytest.raises(DivergenceError, match=f"after {MAX_ROLLBACKS} rollbacks"):
        train(cfg)


def test_guard_sees_a_collapse_to_the_zero_force_floor_only_after_learning():
    from pairreg.training.callbacks import LrControl

    guard = LrControl(forces_metric="val/forces", force_floor=900.0)
    assert guard._diverged(1.0, 880.0) is None  # never below half the floor yet: still learning, not a collapse
    guard.best, guard.best_forces = 0.5, 120.0
    assert "zero-force floor" in guard._diverged(0.9, 870.0)
    assert guard._diverged(0.9, 400.0) is None
    assert "over 10× the best" in guard._diverged(6.0, 400.0)
    assert "nan" in guard._diverged(float("nan"), None)


def test_guard_sees_a_model_that_predicts_no_forces_after_learning():
    from pairreg.training.callbacks import LrControl

    guard = LrControl(forces_metric="val/forces", force_floor=900.0)
    assert guard._diverged(1.0, 900.0) is None  # never left the floor: an untrained model predicts ~0 forces
    guard.best_forces = 500.0  # learned a little, not to half the floor (a 12-layer run: 448 of 862.6), then fell
    assert "the model predicts no forces (best 500)" in guard._diverged(1.0, 900.4)
    assert guard._diverged(1.0, 880.0) is None  # near the floor but not at it: the half-floor rule's business


def _fake_fit(module, callbacks):
    from types import SimpleNamespace
    return SimpleNamespace(sanity_checking=False, state=SimpleNamespace(fn="fit"), callback_metrics={},
                           current_epoch=0, callbacks=callbacks, optimizers=[], is_global_zero=True, world_size=1)


def _validate(guard, trainer, module, epoch, score, forces):
    trainer.current_epoch = epoch
    trainer.callback_metrics = {"val/mae_std": torch.tensor(score), "val/forces": torch.tensor(forces)}
    with torch.no_grad():
        module.weight.add_(0.01)  # an epoch of training
    guard.on_validation_end(trainer, module)


def test_guard_restarts_a_network_that_stopped_learning_at_the_floor(capsys):
    """A 16-layer aspirin run fell to a constant energy and zero forces in its second epoch and stayed there with
    identical scores: the guard restarts it from its first weights at half the rate, even though its best score
    (the constant mean energy's) belongs to the dead network and it never left the zero-force floor."""
    from pairreg.training.callbacks import STUCK_VALIDATIONS, LrControl

    module = torch.nn.Linear(2, 1)
    module.lr_scale = 1.0
    start = module.weight.detach().clone()
    guard = LrControl(forces_metric="val/forces", force_floor=900.0)
    trainer = _fake_fit(module, [guard])
    guard.on_train_start(trainer, module)
    _validate(guard, trainer, module, 0, 3.4, 896.0)  # alive, near the floor
    for epoch in range(1, STUCK_VALIDATIONS):
        _validate(guard, trainer, module, epoch, 1.0, 900.0)  # dead: the best score so far
        assert module.lr_scale == 1.0
    _validate(guard, trainer, module, STUCK_VALIDATIONS, 1.0, 900.0)
    err = capsys.readouterr().err
    assert "stopped learning" in err and "rolled back to the weights training started from" in err
    assert torch.equal(module.weight, start) and module.lr_scale == 0.5
    assert guard.best == math.inf and guard.rolled_back_epoch == STUCK_VALIDATIONS


def test_guard_restart_after_a_resume_names_the_resumed_weights(capsys):
    # a resumed process never held the first weights of the run: it restarts from those it resumed, and says so
    from pairreg.training.callbacks import STUCK_VALIDATIONS, LrControl

    module = torch.nn.Linear(2, 1)
    module.lr_scale = 1.0
    resumed = module.weight.detach().clone()
    guard = LrControl(forces_metric="val/forces", force_floor=900.0)
    trainer = _fake_fit(module, [guard])
    trainer.current_epoch = 5
    guard.on_train_start(trainer, module)
    for epoch in range(5, 5 + STUCK_VALIDATIONS):
        _validate(guard, trainer, module, epoch, 1.0, 900.0)
    err = capsys.readouterr().err
    assert "stopped learning" in err and "rolled back to the resumed weights of epoch 5" in err
    assert torch.equal(module.weight, resumed) and module.lr_scale == 0.5


def test_guard_leaves_a_network_at_the_floor_alone_while_its_score_moves(capsys):
    from pairreg.training.callbacks import STUCK_VALIDATIONS, LrControl

    module = torch.nn.Linear(2, 1)
    module.lr_scale = 1.0
    guard = LrControl(forces_metric="val/forces", force_floor=900.0)
    trainer = _fake_fit(module, [guard])
    guard.on_train_start(trainer, module)
    for epoch in range(3 * STUCK_VALIDATIONS):  # at the floor, learning the energy first
        _validate(guard, trainer, module, epoch, 1.0 - 0.01 * epoch, 900.0)
    # unchanged scores, but off the floor: a trained model late in its schedule, not a dead one
    for epoch in range(3 * STUCK_VALIDATIONS, 5 * STUCK_VALIDATIONS):
        _validate(guard, trainer, module, epoch, 0.5, 300.0)
    assert module.lr_scale == 1.0 and "divergence guard" not in capsys.readouterr().err


# presets written as rmd17-1h plus a few keys: nothing else differs
RMD17_1H_VARIANTS = {
    "rmd17-painn-1h": ["backbone=painn", "n_layers=3", "hidden=128", "cutoff_A=5", "n_rbf=20", "rbf=bessel",
                       "mitigation=none", "stage2_frac=null", "ema_decay=0.999"],
    "rmd17-egnn-1h": ["n_layers=8", "mitigation=residual", "lr=4e-3"],
}


@pytest.mark.parametrize("preset", ["rmd17-demo", "rmd17-1h", *RMD17_1H_VARIANTS])
def test_budget_presets_train_on_the_bundled_data_and_stop_on_budget(preset, tmp_path, monkeypatch):
    # 10 fake seconds per clock reading: the budget (7 or 60 min) ends after a few dozen optimiser steps
    monkeypatch.setattr(schedules, "clock", FakeClock(10.0 if preset == "rmd17-demo" else 90.0))
    if preset in RMD17_1H_VARIANTS:
        other = load_config("rmd17-1h", RMD17_1H_VARIANTS[preset]).to_dict()
        assert {k for k, v in load_config(preset, []).to_dict().items() if other[k] != v} == {"preset"}
    cfg = load_config(preset, ["data_root=bundled", "subset_test=40", "threads=1", "progress=false",
                               f"out={tmp_path}", "name=p"])
    assert cfg.time_budget_min and cfg.ema_decay and cfg.force_weight > 0
    summary = train(cfg)
    assert summary["stopped_by"] == "time_budget_min" and summary["epochs_run"] == 1
    assert math.isfinite(summary["test"]["test/forces_mae_meV_per_Angstrom"])


def test_a_nan_validation_after_a_good_epoch_is_rolled_back_not_a_stop(tmp_path, monkeypatch, capsys):
    from pairreg.training.module import PropertyModule

    def poison(self):  # just before epoch 3's validation: its predictions are NaN
        if self.current_epoch == 2 and self.trainer.state.fn == "fit":
            with torch.no_grad():
                self.model.graph_head[-1].weight.fill_(float("nan"))

    monkeypatch.setattr(PropertyModule, "on_validation_epoch_start", poison, raising=False)
    summary = train(_cfg(tmp_path, "nanval", "epochs=3", "batch_size=8", "force_weight=1"))
    assert "divergence guard: epoch 3: val/mae_std is nan" in capsys.readouterr().err
    last = load_checkpoint(tmp_path / "nanval", "last")
    assert last["epoch"] == 2 and all(torch.isfinite(v).all() for v in last["state_dict"].values()
                                      if v.is_floating_point())
    assert math.isfinite(summary["val"]["val/energy_mae_meV"])


def test_the_optimiser_is_fused_and_updates_like_the_plain_loop():
    from pairreg.training.module import build_optimizer

    cfg = load_config("rmd17-1h", ["n_layers=2", "hidden=16", "n_rbf=8", "data_root=bundled"])
    torch.manual_seed(0)
    a = build_model(cfg)
    b = copy.deepcopy(a)
    opt_a = build_optimizer(cfg, a.parameters())
    opt_b = torch.optim.Adam(b.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=False)
    assert opt_a.defaults["fused"] is True and not opt_b.defaults["fused"]
    for step in range(5):
        grads = [torch.randn_like(p) for p in a.parameters()]
        for model, opt in ((a, opt_a), (b, opt_b)):
            for p, g in zip(model.parameters(), grads):
                p.grad = g.clone()
            opt.step()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("preset", ["qm9-1h", "qm9-painn-1h"])
def test_qm9_budget_preset_trains_on_the_sample_and_stops_on_budget(preset, qm9_sample_env, tmp_path, monkeypatch):
    if preset == "qm9-painn-1h":  # qm9-1h's recipe on PaiNN at its paper's size: nothing else differs
        other = load_config("qm9-1h", ["backbone=painn", "n_layers=3", "hidden=128", "cutoff_A=5", "n_rbf=20",
                                       "rbf=bessel", "mitigation=none"]).to_dict()
        assert {k for k, v in load_config(preset, []).to_dict().items() if other[k] != v} == {"preset"}
    monkeypatch.setattr(schedules, "clock", FakeClock(60.0))  # one fake minute per reading: a 60-minute budget
    cfg = load_config(preset, ["threads=1", "progress=false", f"out={tmp_path}", "name=q", "batch_size=16"])
    assert cfg.time_budget_min == 60 and cfg.ema_decay and cfg.dataset == "qm9"
    summary = train(cfg)
    assert summary["stopped_by"] == "time_budget_min"
    assert math.isfinite(summary["test"]["test/homo_mae_meV"])


def test_ema_decay_warms_up_with_the_number_of_updates():
    """d = min(decay, (1 + n) / (10 + n)): early averages follow the weights (a short run is not evaluated on
    its initial weights), later ones use the configured decay; an unchanged weight stays bit for bit."""
    from pairreg.training.callbacks import _ema_step

    step = _ema_step(0.999)
    average, current = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    assert torch.allclose(step(average, current, torch.tensor(1)), torch.full((3,), 9 / 11, dtype=torch.float64))
    late = step(average, current, torch.tensor(20_000))
    assert torch.allclose(late, torch.full((3,), 1e-3, dtype=torch.float64), rtol=1e-9)
    frozen = torch.tensor([0.1234567, -3.3], dtype=torch.float32)
    assert torch.equal(step(frozen, frozen.clone(), torch.tensor(5)), frozen)
