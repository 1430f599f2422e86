"""Checkpoints: written atomically every epoch (last + best), loaded weights-only and checked before use.

Every load goes through :func:`load_checkpoint_file`, which calls ``torch.load(weights_only=True)``
explicitly: an explicit argument wins over ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` in the environment,
so a crafted checkpoint cannot run code. Resuming goes through Lightning, which is handed
:class:`SafeCheckpointIO` so that its loads take the same path.
"""

from __future__ import annotations

import io
import json
import math
import pickle
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.trainer.states import TrainerFn

from ..atomic import make_dirs, write_atomic
from ..config import ConfigError, config_from_dict
from .losses import NonFiniteLossError

CHECKPOINT_DIR = "checkpoints"
# what Lightning needs to continue a run (an exported checkpoint has only the weights)
RESUME_KEYS = ("state_dict", "optimizer_states", "lr_schedulers", "loops", "callbacks", "epoch", "global_step")
# format 2 added the model's per-element references (model.atom_ref); format 1 checkpoints had none (zero)
FORMAT_VERSION = 2


class CheckpointError(ValueError):
    """A checkpoint that cannot be used (unreadable, refused, malformed, or not matching its config)."""


class NonFiniteScoreError(NonFiniteLossError):
    """The validation score became NaN or infinite; the run stops like it does on a non-finite loss."""


def load_checkpoint_file(file: str | Path) -> dict:
    """``torch.load(file, weights_only=True)`` with one-line errors naming the file.

    torch's own messages are not passed on: they advise ``weights_only=False``, which is exactly
    what must not be done with a checkpoint that was refused.
    """
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"{file}: refused: it holds Python objects other than tensors and plain values "
                              "(pairreg checkpoints never do; only weights are loaded)") from None
    except OSError as err:
        raise CheckpointError(f"{file}: cannot be read ({err.strerror or type(err).__name__})") from None
    except Exception:  # truncated, empty, or not a torch file: torch raises RuntimeError, EOFError, ...
        raise CheckpointError(f"{file}: not a readable checkpoint (truncated, or not a PyTorch checkpoint file)") from None


class SafeCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint I/O with weights-only loading (always) and atomic writes (temp file + rename)."""

    def load_checkpoint(self, path, *args, **kwargs) -> dict:  # map_location / weights_only are not honoured
        return load_checkpoint_file(path)

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        make_dirs(Path(path).parent)
        write_atomic(path, buffer.getbuffer())


class AtomicCheckpoint(L.Callback):
    """After each validation of ``fit``: write ``last.ckpt``, and ``best.ckpt`` when ``monitor`` improved.

    Files are written through :class:`SafeCheckpointIO` (the trainer must use it): a temporary name
    in the same folder moved into place, so a crash never leaves a half-written checkpoint. A
    validation outside ``fit`` (the final ``trainer.validate`` of the best weights) writes nothing,
    so ``last.ckpt`` stays the last epoch's state. A NaN or infinite score stops the run.
    """

    def __init__(self, folder: Path, monitor: str = "val/mae_std"):
        super().__init__()
        self.folder = Path(folder)
        self.monitor = monitor
        self.best = math.inf
        self.best_epoch = -1

    def setup(self, trainer, pl_module, stage):
        if not isinstance(trainer.strategy.checkpoint_io, SafeCheckpointIO):
            raise TypeError("AtomicCheckpoint needs Trainer(plugins=[SafeCheckpointIO()]) (atomic, weights-only checkpoints)")

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch}

    def load_state_dict(self, state):
        self.best = float(state["best"])
        self.best_epoch = int(state["best_epoch"])

    def _save(self, trainer, name: str) -> None:
        trainer.save_checkpoint(self.folder / name, weights_only=False)  # full state, for resuming

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is not None and not math.isfinite(float(value)) and not _rolled_back(trainer):
            epoch = trainer.current_epoch + 1
            kept = (f"{self.folder / 'last.ckpt'} (end of epoch {epoch - 1})" if epoch > 1
                    else "none (this was the first epoch)")
            raise NonFiniteScoreError(
                f"non-finite validation score ({self.monitor} = {float(value)}) at epoch {epoch}: the model's "
                f"predictions are NaN or infinite; nothing was saved for this epoch. Last good checkpoint: {kept}; "
                "lower lr or set grad_clip and resume or restart.")
        improved = value is not None and float(value) < self.best
        if improved:
            self.best = float(value)
            self.best_epoch = trainer.current_epoch
        # best first: a kill between the two writes then leaves an older last.ckpt (that epoch is redone
        # on resume), never a last.ckpt that claims a best.ckpt which was not written
        if improved:
            self._save(trainer, "best.ckpt")
        self._save(trainer, "last.ckpt")


def _rolled_back(trainer) -> bool:
    """The divergence guard (training/callbacks.LrControl, which runs before this callback) has already
    restored good weights after this epoch's non-finite score: then the epoch's checkpoint is written, not a stop."""
    return any(getattr(cb, "rolled_back_epoch", None) == trainer.current_epoch for cb in trainer.callbacks)


def find_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A run directory (→ its ``checkpoints/<which>.ckpt``), a checkpoint file, or ``pretrained:NAME`` (a model
    shipped in pairreg/pretrained)."""
    from .. import pretrained

    if pretrained.is_pretrained(path):
        return pretrained.resolve(path)
    path = Path(path)
    if path.is_dir():
        for candidate in (path / CHECKPOINT_DIR / f"{which}.ckpt", path / f"{which}.ckpt"):
            if candidate.is_file():
                return candidate
        raise FileNotFoundError(f"{path}: no {CHECKPOINT_DIR}/{which}.ckpt in this run directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint or run directory")
    return path


def _check_structure(ckpt, file: Path) -> None:
    """The checkpoint's sections have the types pairreg writes, and every weight is finite."""
    def bad(what: str):
        raise CheckpointError(f"{file}: not a usable pairreg checkpoint: {what}")

    if not isinstance(ckpt, dict):
        bad(f"the file holds a {type(ckpt).__name__}, not a checkpoint dict")
    meta, state = ckpt.get("pairreg"), ckpt.get("state_dict")
    if not isinstance(meta, dict):
        bad("no 'pairreg' section" if meta is None else f"'pairreg' is a {type(meta).__name__}, not a dict")
    if not isinstance(state, dict):
        bad("no 'state_dict'" if state is None else f"'state_dict' is a {type(state).__name__}, not a dict")
    if not isinstance(meta.get("config"), dict):
        bad("'pairreg.config' is missing or not a dict")
    for key in ("target_names", "target_units"):
        value = meta.get(key)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            bad(f"'pairreg.{key}' is missing or not a list of names")
    if len(meta["target_names"]) != len(meta["target_units"]):
        bad(f"{len(meta['target_names'])} target names but {len(meta['target_units'])} units")
    for key, types in (("force_unit", str), ("max_atoms_train", int), ("metrics", dict)):
        if meta.get(key) is not None and not isinstance(meta[key], types):
            bad(f"'pairreg.{key}' is a {type(meta[key]).__name__}")
    for key in ("epoch", "global_step"):
        if ckpt.get(key) is not None and not isinstance(ckpt[key], int):
            bad(f"'{key}' is a {type(ckpt[key]).__name__}, not an integer")
    for name, value in state.items():
        if not isinstance(value, torch.Tensor):
            bad(f"state_dict[{name!r}] is a {type(value).__name__}, not a tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise CheckpointError(f"{file}: weight {name!r} holds NaN or infinite values; this model cannot "
                                  "predict (use an earlier checkpoint, e.g. --which best)")


def load_checkpoint(path: str | Path, which: str = "best") -> dict:
    """The checkpoint dict, loaded with ``weights_only=True`` and its structure checked (finite weights)."""
    file = find_checkpoint(path, which)
    ckpt = load_checkpoint_file(file)
    _check_structure(ckpt, file)
    ckpt["path"] = str(file)
    return ckpt


def checkpoint_config(ckpt: dict):
    """The run's :class:`Config` stored in a checkpoint loaded by :func:`load_checkpoint`, checked against its targets."""
    meta, file = ckpt["pairreg"], ckpt["path"]
    try:
        cfg = config_from_dict(meta["config"], source=f"{file} (its config)")
    except ConfigError as err:  # one line naming the key; make sure it names the file too
        message = str(err)
        raise ConfigError(message if str(file) in message else f"{file}: its config: {message}") from None
    except Exception as err:  # a value of a type the config never holds
        raise CheckpointError(f"{file}: its config cannot be read ({type(err).__name__})") from None
    names = meta["target_names"]
    if len(names) != len(cfg.targets):
        raise CheckpointError(f"{file}: {len(names)} target names {names} for a model of {len(cfg.targets)} "
                              f"outputs ({cfg.targets})")
    return cfg


def check_model_state(cfg, state: dict, file) -> None:
    """``state`` (the model's weights, without the ``model.`` prefix) fits the model ``cfg`` describes.

    The model is built on the meta device (no memory): a config that claims ``hidden=300000``
    beside small weights is refused here, before anything is allocated.
    """
    from .module import build_model

    with torch.device("meta"):
        skeleton = build_model(cfg).state_dict()
    about = f"its config ({cfg.n_layers} layers, hidden {cfg.hidden}, mitigation {cfg.mitigation})"
    missing = [k for k in skeleton if k not in state]
    extra = [k for k in state if k not in skeleton]
    if missing or extra:
        listed = "; ".join(part for part in (
            f"missing {len(missing)} (e.g. {missing[0]!r})" if missing else "",
            f"unexpected {len(extra)} (e.g. {extra[0]!r})" if extra else "") if part)
        raise CheckpointError(f"{file}: the weights do not fit {about}: {listed}")
    for key, want in skeleton.items():
        have = state[key]
        if tuple(have.shape) != tuple(want.shape):
            raise CheckpointError(f"{file}: weight {key!r} has shape {tuple(have.shape)} but {about} needs "
                                  f"{tuple(want.shape)}")
        if want.is_floating_point() != have.is_floating_point():
            raise CheckpointError(f"{file}: weight {key!r} is {have.dtype}, expected {want.dtype}")


def model_state(ckpt: dict) -> dict:
    """The model's weights (without the ``model.`` prefix). A format 1 checkpoint, written before per-element
    references existed, gets zero references (those models had none; they embed the default 5 elements)."""
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    meta = ckpt.get("pairreg") or {}
    if meta.get("format_version", 1) < 2 and "atom_ref" not in state and "target_mean" in state:
        from ..models.model import DEFAULT_ELEMENTS

        state["atom_ref"] = torch.zeros(len(DEFAULT_ELEMENTS), len(state["target_mean"]), dtype=torch.float64)
    return state


def load_model(path: str | Path, which: str = "best"):
    """(model in eval mode, info dict with config, target names/units, epoch, path).

    Structure, shapes and finiteness are checked before the model is built for real.
    """
    from .module import build_model

    ckpt = load_checkpoint(path, which)
    meta = ckpt["pairreg"]
    cfg = checkpoint_config(ckpt)
    state = model_state(ckpt)
    check_model_state(cfg, state, ckpt["path"])
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
    check_model_state(checkpoint_config(ckpt), model_state(ckpt), ckpt["path"])  # never ship a broken one
    meta = dict(ckpt["pairreg"])
    metrics_file = run_dir / "metrics.json" if run_dir.is_dir() else None
    if metrics_file is not None and metrics_file.is_file():
        try:
            metrics = json.loads(metrics_file.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{metrics_file}: cannot be read as JSON ({type(err).__name__})") from None
        if not isinstance(metrics, dict):
            raise CheckpointError(f"{metrics_file}: not a JSON object of metrics")
        meta["metrics"] = {k: metrics[k] for k in ("val", "test", "best_epoch", "epochs", "wall_time_s") if k in metrics}
    slim = {"state_dict": {k: v.detach().clone() for k, v in ckpt["state_dict"].items()}, "pairreg": meta,
            "epoch": ckpt.get("epoch"), "global_step": ckpt.get("global_step")}
    buffer = io.BytesIO()
    torch.save(slim, buffer)
    make_dirs(dest.parent)
    write_atomic(dest, buffer.getbuffer())
    return dest
