"""LightningModule: loss, optimiser, schedule, and MAE logged in reporting units."""

from __future__ import annotations

import math

import lightning as L
import torch

from ..config import Config
from ..models import MoleculeModel
from .losses import total_loss


def build_model(cfg: Config, target_mean=None, target_scale=None) -> MoleculeModel:
    return MoleculeModel(
        n_targets=len(cfg.targets), hidden=cfg.hidden, n_layers=cfg.n_layers, mitigation=cfg.mitigation,
        mitigation_options=cfg.mitigation_options(), node_attr=cfg.node_attr, coord_act=cfg.coord_act,
        target_mean=target_mean, target_scale=target_scale,
    )


def metric_name(split: str, target: str, unit: str) -> str:
    """e.g. ``val/homo_mae_meV``; units with '/' become '_per_' so names stay path-safe."""
    return f"{split}/{target}_mae_{unit.replace('^', '').replace('/', '_per_')}"


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, lr: float, lr_min: float) -> float:
    """Multiplier of the base lr at optimiser step ``step`` (linear warm-up, then cosine to lr_min)."""
    if schedule == "constant":
        return 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = lr_min / lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class PropertyModule(L.LightningModule):
    """Trains a :class:`MoleculeModel` on graph-level targets.

    Logged: ``train/loss``, ``train/task``, ``train/reg`` (standardised units / Å²), and per target
    ``val/<target>_mae_<unit>`` and ``test/...`` in reporting units, plus ``val/mae_std`` (mean over
    targets of MAE / target scale), which selects the best checkpoint.
    """

    def __init__(self, cfg: Config, target_names, target_units, target_mean=None, target_scale=None):
        super().__init__()
        self.cfg = cfg
        self.target_names = list(target_names)
        self.target_units = list(target_units)
        self.model = build_model(cfg, target_mean, target_scale)

    def forward(self, batch):
        return self.model(batch.z, batch.pos, batch.batch, batch.edge_index, batch.num_molecules)

    def training_step(self, batch, batch_idx):
        y_std, record = self(batch)
        loss, parts = total_loss(self.model, y_std, self.model.to_standard(batch.y), record)
        n = batch.num_molecules
        self.log("train/loss", loss.detach(), batch_size=n, prog_bar=True, on_step=False, on_epoch=True, sync_dist=True)
        for key, value in parts.items():
            self.log(f"train/{key}", value, batch_size=n, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def _eval_step(self, batch, split: str):
        y_std, _ = self(batch)
        err = (self.model.to_physical(y_std) - batch.y.to(torch.float64)).abs()  # (n_mols, n_targets) reporting units
        n = batch.num_molecules
        for k, (name, unit) in enumerate(zip(self.target_names, self.target_units)):
            self.log(metric_name(split, name, unit), err[:, k].mean().float(), batch_size=n, on_epoch=True, sync_dist=True,
                     prog_bar=(split == "val" and k == 0))
        self.log(f"{split}/mae_std", (err / self.model.target_scale).mean().float(), batch_size=n, on_epoch=True, sync_dist=True)

    def validation_step(self, batch, batch_idx):
        self._eval_step(batch, "val")

    def test_step(self, batch, batch_idx):
        self._eval_step(batch, "test")

    def configure_optimizers(self):
        cfg = self.cfg
        opt_cls = torch.optim.AdamW if cfg.optimizer == "adamw" else torch.optim.Adam
        opt = opt_cls(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(round(cfg.warmup_epochs / cfg.epochs * total)) if cfg.schedule == "warmup-cosine" else 0
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: lr_factor(step, total, warmup, cfg.schedule, cfg.lr, cfg.lr_min)
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint):
        # what `pairreg evaluate/predict` need, as plain types (loads with weights_only=True)
        checkpoint["pairreg"] = {
            "format_version": 1,
            "config": self.cfg.to_dict(),
            "target_names": self.target_names,
            "target_units": self.target_units,
        }
