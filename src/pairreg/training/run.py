"""One training run: run directory, data, model, Lightning trainer, best-checkpoint test."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
import warnings
from datetime import datetime
from pathlib import Path

import lightning as L
import torch

from .. import __version__
from ..config import Config, dump_yaml
from .checkpoint import CHECKPOINT_DIR, AtomicCheckpoint, load_checkpoint
from .datamodule import MoleculeDataModule, target_statistics
from .module import PropertyModule, metric_name


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def environment() -> dict:
    return {
        "pairreg": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "lightning": L.__version__, "platform": platform.platform(), "cuda_available": torch.cuda.is_available(),
        "torch_threads": torch.get_num_threads(),
    }


class EpochSummary(L.Callback):
    """One line per epoch: validation MAE in reporting units, elapsed time and ETA of the whole run."""

    def __init__(self, names_units):
        self.names_units = names_units
        self.start = None

    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()
        self.first_epoch = trainer.current_epoch

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        done = trainer.current_epoch + 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(1, done - self.first_epoch) * (trainer.max_epochs - done)
        maes = ", ".join(
            f"{n} {float(trainer.callback_metrics[metric_name('val', n, u)]):.4g} {u}"
            for n, u in self.names_units if metric_name("val", n, u) in trainer.callback_metrics
        )
        print(f"epoch {done}/{trainer.max_epochs}: val MAE {maes} | elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min",
              file=sys.stderr, flush=True)


def run_directory(cfg: Config) -> Path:
    name = cfg.name or f"{cfg.preset or 'run'}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    path = Path(cfg.out) / name
    path.mkdir(parents=True, exist_ok=True)
    return path


def train(cfg: Config, dataset=None, split=None) -> dict:
    """Train according to ``cfg``; returns the summary also written to ``metrics.json``."""
    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    run_dir = run_directory(cfg)
    _write_atomic(run_dir / "config.yaml", dump_yaml(cfg))
    _write_atomic(run_dir / "environment.json", json.dumps(environment(), indent=2))

    dm = MoleculeDataModule(cfg, dataset, split)
    dm.save_split(run_dir / "split.npz")
    mean, scale = target_statistics(dm.dataset, dm.split["train"])
    names, units = dm.dataset.target_names, dm.dataset.target_units
    module = PropertyModule(cfg, names, units, mean, scale)
    ckpt_cb = AtomicCheckpoint(run_dir / CHECKPOINT_DIR)
    callbacks = [ckpt_cb, EpochSummary(list(zip(names, units)))]
    if cfg.progress:
        callbacks.append(L.pytorch.callbacks.TQDMProgressBar(refresh_rate=10))
    trainer = L.Trainer(
        max_epochs=cfg.epochs, accelerator=cfg.accelerator, devices=cfg.devices,
        gradient_clip_val=cfg.grad_clip, enable_checkpointing=False, num_sanity_val_steps=0,
        logger=L.pytorch.loggers.CSVLogger(str(run_dir), name="", version="logs"),
        callbacks=callbacks, enable_progress_bar=cfg.progress, enable_model_summary=False,
        log_every_n_steps=10,
    )
    print(f"[pairreg] run directory: {run_dir}\n[pairreg] train/val/test molecules: "
          f"{len(dm.split['train'])}/{len(dm.split['val'])}/{len(dm.split['test'])}; "
          f"model: {cfg.n_layers} layers, hidden {cfg.hidden}, mitigation {module.model.mitigation.registry_name} "
          f"({module.model.mitigation.extra_repr() or 'no options'})", file=sys.stderr, flush=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", ".*does not have many workers.*")
        trainer.fit(module, datamodule=dm)

        summary = {"run_dir": str(run_dir), "epochs": cfg.epochs, "best_epoch": ckpt_cb.best_epoch + 1,
                   "targets": dict(zip(names, units))}
        best = load_checkpoint(run_dir, "best")
        module.load_state_dict(best["state_dict"])
        val = trainer.validate(module, dataloaders=dm.val_dataloader(), verbose=False)[0]
        summary["val"] = {k: v for k, v in val.items() if k.startswith("val/")}
        if cfg.eval_test:
            test = trainer.test(module, dataloaders=dm.test_dataloader(), verbose=False)[0]
            summary["test"] = {k: v for k, v in test.items() if k.startswith("test/")}
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    if trainer.is_global_zero:
        _write_atomic(run_dir / "metrics.json", json.dumps(summary, indent=2))
    return summary
