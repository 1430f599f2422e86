"""LightningModule: loss, optimiser, schedule, and MAE logged in reporting units."""

from __future__ import annotations

import random

import lightning as L
import numpy as np
import torch

from ..config import Config
from ..models.model import build_model  # noqa: F401  (re-exported: checkpoint.py and tests use it here)
from .callbacks import LrControl
from .losses import NonFiniteLossError, force_loss, total_loss
from .metric_names import FORCE_NAME, metric_name, parse_metric_name  # noqa: F401  (re-exported)
from .schedules import PlateauScale, WallBudget, lr_factor, lr_factor_at  # noqa: F401  (lr_factor re-exported)


def compiled_forward(model: torch.nn.Module):
    """``model``'s forward pass through ``torch.compile`` (dynamic shapes: every batch has other atom and edge
    counts), as ``compile=true`` trains and ``benchmarks/gpu.py --compile`` measures it. A function, not a
    module, so a holder's state dict does not gain the compiled wrapper's keys."""
    return torch.compile(model.forward, dynamic=True)


def build_optimizer(cfg: Config, params) -> torch.optim.Optimizer:
    """Adam or AdamW, fused into one kernel per step where PyTorch has one (CPU and CUDA, float weights).

    The default for-loop implementation updates each of the model's ~120 tensors with its own small ops:
    10 ms of a 6-layer, width-64 model's force-training step on one CPU core, against 1.8 ms fused
    (benchmarks/force_step.py); the update rule is the same.
    """
    params = list(params)
    opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=fused or None)


class PropertyModule(L.LightningModule):
    """Trains a :class:`MoleculeModel` on graph-level targets.

    Logged: ``train/loss``, ``train/task``, ``train/reg`` (standardised units / Å²), and per target
    ``val/<target>_mae_<unit>`` and ``test/...`` in reporting units, plus ``val/mae_std`` (mean over
    targets of MAE / target scale, plus ``force_weight`` × the force MAE / energy scale when forces are
    trained), which selects the best checkpoint. On rMD17 (``force_unit`` given) the force MAE
    ``val/forces_mae_meV_per_Angstrom`` is always reported, also for energy-only training.
    """

    def __init__(self, cfg: Config, target_names, target_units, target_mean=None, target_scale=None,
                 force_unit: str | None = None, max_atoms_train: int | None = None, atom_ref=None):
        super().__init__()
        self.cfg = cfg
        self.target_names = list(target_names)
        self.target_units = list(target_units)
        self.force_unit = force_unit
        self.max_atoms_train = max_atoms_train
        self.model = build_model(cfg, target_mean, target_scale, atom_ref)
        if cfg.freeze_layers:  # fine-tuning: the embedding and the first K layers stay fixed
            from .finetune import freeze_layers

            freeze_layers(self.model, cfg.freeze_layers)
        # the state dict keeps only ``model.*`` (checkpoints load either way); Lightning's weight averaging
        # swaps values into the same parameters, which the compiled function reads
        self.compiled_forward = compiled_forward(self.model) if cfg.compile else None
        self.lr_scale = 1.0  # lowered by plateaus and the divergence guard (callbacks.LrControl); checkpointed
        self.budget = WallBudget(cfg.time_budget_min) if cfg.time_budget_min else None
        # training seconds over every sitting (a resumed run adds to its checkpoint's), budget or not
        self.train_clock = self.budget if self.budget is not None else WallBudget(float("inf"))
        self.resumed_after_s = 0.0  # training seconds of the sittings before this one
        self.shared_budget_progress = None  # several processes: rank 0's budget fraction (share_budget)
        self.total_steps = 1

    def progress(self) -> float:
        """Fraction of the run done: of the time budget, or of the planned optimiser steps."""
        if self.budget is not None:
            if self.shared_budget_progress is not None:
                return self.shared_budget_progress
            return self.budget.progress()
        return min(1.0, self.global_step / self.total_steps)

    def share_budget(self) -> None:
        """With several processes (DDP), every rank reads rank 0's wall budget. Each rank's own clock would give
        the ranks slightly different learning rates (their weights drift apart) and could let one rank stop a
        batch before the others, which then wait for it in an all-reduce forever. One process: the live clock."""
        if self.budget is not None and self.trainer.world_size > 1:
            self.shared_budget_progress = float(self.trainer.strategy.broadcast(self.budget.progress(), src=0))

    def energy_weight(self) -> float:
        """The energy term's weight now: ``energy_weight``, or ``stage2_energy_weight`` from ``stage2_frac`` on."""
        cfg = self.cfg
        if cfg.stage2_frac is not None and self.progress() >= cfg.stage2_frac:
            return cfg.stage2_energy_weight
        return cfg.energy_weight

    def forward(self, batch):
        if self.compiled_forward is not None:
            return self.compiled_forward(batch.z, batch.pos, batch.batch, batch.edge_index, batch.num_molecules)
        return self.model(batch.z, batch.pos, batch.batch, batch.edge_index, batch.num_molecules)

    def _energy_forces(self, batch, create_graph: bool):
        return self.model.energy_and_forces(batch.z, batch.pos, batch.batch, batch.edge_index, batch.num_molecules,
                                            create_graph=create_graph)

    def training_step(self, batch, batch_idx):
        weight = self.cfg.force_weight
        if weight > 0:
            y_std, f_std, record = self._energy_forces(batch, create_graph=True)
        else:
            y_std, record = self(batch)
        cfg = self.cfg
        loss, parts = total_loss(self.model, y_std, self.model.to_standard(batch.y, batch.z, batch.batch), record, cfg.energy_loss,
                                 cfg.huber_delta, self.energy_weight(), batch.n_atoms if cfg.energy_per_atom else None)
        if weight > 0:
            f_loss = force_loss(f_std, batch.forces, self.model.target_scale, cfg.forces_loss, cfg.huber_delta)
            loss = loss + weight * f_loss
            parts["force"] = f_loss.detach()
        if not torch.isfinite(loss):
            value, step = float(loss.detach()), f"batch {batch_idx + 1}, global step {self.global_step + 1}"
            guard = next((cb for cb in self.trainer.callbacks if isinstance(cb, LrControl)), None)
            if guard is not None and guard.roll_back_step(self.trainer, self, f"non-finite training loss ({value}) "
                                                                               f"at {step}"):
                return None  # Lightning skips this optimiser step; training goes on from the restored weights
            raise NonFiniteLossError(
                f"non-finite training loss ({value}) at epoch {self.current_epoch + 1}, {step}; the run stopped "
                "before this optimiser step. The last good state is checkpoints/last.ckpt (end of the previous "
                "epoch); lower lr or set grad_clip and resume or restart."
            )
        n = batch.num_molecules
        self.log("train/loss", loss.detach(), batch_size=n, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        for key, value in parts.items():
            self.log(f"train/{key}", value, batch_size=n, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def _eval_step(self, batch, split: str):
        if self.force_unit is not None:
            y_std, f_std, _ = self._energy_forces(batch, create_graph=False)
        else:
            y_std, _ = self(batch)
        err = (self.model.to_physical(y_std.detach(), batch.z, batch.batch) - batch.y.to(torch.float64)).abs()  # (n_mols, n_targets)
        n = batch.num_molecules
        for k, (name, unit) in enumerate(zip(self.target_names, self.target_units)):
            self.log(metric_name(split, name, unit), err[:, k].mean().float(), batch_size=n, on_epoch=True, sync_dist=True,
                     prog_bar=(split == "val" and k == 0))
        mae_std = (err / self.model.target_scale).mean()
        if self.force_unit is not None:
            f_err = (self.model.target_scale * f_std.detach().to(torch.float64) - batch.forces.to(torch.float64)).abs()
            # weighted by atoms: the MAE over all force components of the split
            self.log(metric_name(split, FORCE_NAME, self.force_unit), f_err.mean().float(), batch_size=f_err.numel(),
                     on_epoch=True, sync_dist=True)
            if self.cfg.force_weight > 0:
                mae_std = mae_std + self.cfg.force_weight * f_err.mean() / self.model.target_scale[0]
        self.log(f"{split}/mae_std", mae_std.float(), batch_size=n, on_epoch=True, sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        cfg = self.cfg
        opt = build_optimizer(cfg, (p for p in self.parameters() if p.requires_grad))  # frozen layers left out
        total = self.total_steps = cfg.step_budget or max(1, int(self.trainer.estimated_stepping_batches))
        if self.budget is not None:  # warm-up and decay on the fraction of the time budget spent
            def factor(step):
                return lr_factor_at(self.progress(), cfg.warmup_frac, cfg.schedule, cfg.lr, cfg.lr_min)
        else:
            warmup = int(round(cfg.warmup_epochs / cfg.epochs * total)) if cfg.schedule == "warmup-cosine" else 0
            warmup = warmup or int(round(cfg.warmup_frac * total))

            def factor(step):
                return lr_factor(step, total, warmup, cfg.schedule, cfg.lr, cfg.lr_min)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: factor(step) * self.lr_scale)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        # what `pairreg evaluate/predict` need, as plain types (loads with weights_only=True)
        checkpoint["pairreg"] = {
            "format_version": 2,  # 2: the model's state holds atom_ref (training/checkpoint.py FORMAT_VERSION)
            "config": self.cfg.to_dict(),
            "target_names": self.target_names,
            "target_units": self.target_units,
            "force_unit": self.force_unit,
            "max_atoms_train": self.max_atoms_train,
        }
        checkpoint["pairreg_schedule"] = {"lr_scale": self.lr_scale,
                                          "budget_spent_s": self.train_clock.elapsed_s()}
        # RNG states, so a resumed run draws the same shuffles and noise as an uninterrupted one
        # (numpy's key array as a list: the checkpoint must load with weights_only=True)
        np_state = np.random.get_state()
        checkpoint["pairreg_rng"] = {
            "torch": torch.get_rng_state(),
            "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
            "python": random.getstate(),
        }

    def on_train_epoch_start(self):
        self.share_budget()
        if self.out_of_budget():  # spent during the last validation, or before a resume
            self.trainer.should_stop = True
        # noise drawn in training (coord_noise) becomes a function of (seed, epoch): exact after resume
        seed = (self.cfg.seed * 1_000_003 + self.current_epoch + 1) % 2**31
        torch.manual_seed(seed)
        np.random.seed(seed)
        random.seed(seed)

    def on_train_start(self):
        self.train_clock.start()

    def steps_exhausted(self) -> bool:
        return self.cfg.step_budget is not None and self.global_step >= self.cfg.step_budget

    def out_of_budget(self) -> bool:
        """The wall budget or the step budget is spent."""
        return (self.budget is not None and self.progress() >= 1.0) or self.steps_exhausted()

    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.share_budget()
        if self.out_of_budget():
            self.trainer.should_stop = True  # Lightning still validates this last (partial) epoch

    def on_train_end(self):
        self.train_clock.pause()

    def on_load_checkpoint(self, checkpoint):
        schedule = checkpoint.get("pairreg_schedule")
        if schedule is not None:
            self.lr_scale = float(schedule["lr_scale"])
            if schedule.get("budget_spent_s") is not None:  # None: a checkpoint from before the clock ran always
                self.train_clock.spent_s = self.resumed_after_s = float(schedule["budget_spent_s"])
        state = checkpoint.get("pairreg_rng")
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
        version, internal, gauss_next = state["python"]
        random.setstate((version, tuple(internal), gauss_next))
