"""Atomic checkpoints every epoch (last + best), and loading a model without unpickling objects."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import lightning as L
import torch

from ..config import config_from_dict

CHECKPOINT_DIR = "checkpoints"


class AtomicCheckpoint(L.Callback):
    """After each validation: write ``last.ckpt``, and ``best.ckpt`` when ``monitor`` improved.

    Each file is written to a temporary name in the same folder and moved into place with
    ``os.replace``, so a crash never leaves a half-written checkpoint.
    """

    def __init__(self, folder: Path, monitor: str = "val/mae_std"):
        super().__init__()
        self.folder = Path(folder)
        self.monitor = monitor
        self.best = math.inf
        self.best_epoch = -1

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])

    def _save(self, trainer, name: str) -> None:
        path = self.folder / name
        tmp = self.folder / f".{name}.tmp"
        trainer.save_checkpoint(tmp, weights_only=False)  # full state, for resuming
        if trainer.is_global_zero:
            os.replace(tmp, path)

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        value = trainer.callback_metrics.get(self.monitor)
        improved = value is not None and float(value) < self.best
        if improved:
            self.best = float(value)
            self.best_epoch = trainer.current_epoch
        # best first: a kill between the two writes then leaves an older last.ckpt (that epoch is redone
        # on resume), never a last.ckpt that claims a best.ckpt which was not written
        if improved:
            self._save(trainer, "best.ckpt")
        self._save(trainer, "last.ckpt")


def find_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run directory (→ its ``checkpoints/<which>.ckpt``) or a checkpoint file."""
    path = Path(path)
    if path.is_dir():
        for candidate in (path / CHECKPOINT_DIR / f"{which}.ckpt", path / f"{which}.ckpt"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{path}: no {CHECKPOINT_DIR}/{which}.ckpt in this run directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint or run directory")
    return path


def load_checkpoint(path: str | Path, which: str = "best") -> dict:
    """The checkpoint dict, loaded with ``weights_only=True`` (no arbitrary objects unpickled)."""
    file = find_checkpoint(path, which)
    try:
        ckpt = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:
        raise ValueError(f"{file}: not a readable pairreg checkpoint ({type(err).__name__}: {err})") from None
    if "pairreg" not in ckpt or "state_dict" not in ckpt:
        raise ValueError(f"{file}: not a pairreg checkpoint (no 'pairreg' section)")
    ckpt["path"] = str(file)
    return ckpt


def load_model(path: str | Path, which: str = "best"):
    """(model in eval mode, info dict with config, target names/units, epoch, path)."""
    from .module import build_model

    ckpt = load_checkpoint(path, which)
    meta = ckpt["pairreg"]
    cfg = config_from_dict(meta["config"], source=ckpt["path"])
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    model = build_model(cfg)
    model.load_state_dict(state)
    model.eval()
    info = {"config": cfg, "target_names": meta["target_names"], "target_units": meta["target_units"],
            "epoch": ckpt.get("epoch"), "path": ckpt["path"], "force_unit": meta.get("force_unit"),
            "max_atoms_train": meta.get("max_atoms_train"), "metrics": meta.get("metrics")}
    return model, info


def export_checkpoint(run_dir: str | Path, dest: str | Path) -> Path:
    """A slim, self-describing copy of a run's best checkpoint, for sharing or shipping.

    Keeps the weights, the ``pairreg`` section (config, targets and units) and adds the run's
    ``metrics.json`` (val/test MAE, best epoch, wall time) under ``pairreg.metrics``; drops the
    optimiser and scheduler state, the RNG states and callback state (about two thirds of the file).
    :func:`load_model` reads it like any checkpoint.
    """
    run_dir, dest = Path(run_dir), Path(dest)
    ckpt = load_checkpoint(run_dir, "best")
    meta = dict(ckpt["pairreg"])
    metrics_file = run_dir / "metrics.json" if run_dir.is_dir() else None
    if metrics_file is not None and metrics_file.is_file():
        metrics = json.loads(metrics_file.read_text())
        meta["metrics"] = {k: metrics[k] for k in ("val", "test", "best_epoch", "epochs", "wall_time_s") if k in metrics}
    slim = {"state_dict": {k: v.detach().clone() for k, v in ckpt["state_dict"].items()}, "pairreg": meta,
            "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")}
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp")
    torch.save(slim, tmp)
    os.replace(tmp, dest)
    return dest
