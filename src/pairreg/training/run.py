"""One training run: run directory, data, model, Lightning trainer, best-checkpoint test."""

from __future__ import annotations

import itertools
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

import numpy as np
import yaml

from .. import __version__
from ..atomic import make_dirs, write_atomic, write_error
from ..config import Config, ConfigError, config_from_dict, dump_yaml
from ..cpu_cores import usable_cores
from ..devices import lightning_accelerator, shared_cpu_warning
from .checkpoint import (CHECKPOINT_DIR, RESUME_KEYS, AtomicCheckpoint, CheckpointError, SafeCheckpointIO,
                         check_model_state, load_checkpoint, model_state)
from .callbacks import LrControl, detach_weight_averaging, weight_averaging
from .datamodule import MoleculeDataModule, element_references, target_statistics, zero_force_mae
from .loggers import run_loggers
from .schedules import PlateauScale
from .module import FORCE_NAME, PropertyModule, metric_name

RUN_DIR_ENV = "PAIRREG_RUN_DIR"  # set for the worker processes Lightning's DDP launcher starts
# keys that may differ when resuming (they change where or how fast, not what is computed)
RESUME_OVERRIDABLE = ("progress", "threads", "num_workers", "data_on_device", "compile", "accelerator", "devices",
                      "strategy", "num_nodes")


def launcher_rank_zero() -> bool:
    """True in the process that owns the run directory (before and after DDP starts its workers)."""
    node = int(os.environ.get("NODE_RANK", os.environ.get("SLURM_NODEID", 0)))
    return node == 0 and int(os.environ.get("LOCAL_RANK", 0)) == 0


class RunDirectoryError(ValueError):
    """A run directory that cannot be used as asked (exists already, or a resume finds it damaged)."""


def _cpu_model() -> str:
    """The CPU's model name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def environment(cfg: Config | None = None) -> dict:
    env = {
        "pairreg": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
        "lightning": L.__version__, "numpy": np.__version__, "platform": platform.platform(), "cpu": _cpu_model(),
        "cuda_available": torch.cuda.is_available(), "torch_threads": torch.get_num_threads(),
        "started": datetime.now().isoformat(timespec="seconds"),
    }
    cores = usable_cores()
    if cores is not None:  # the cores it may run on: `bench --jobs` pins each cell to its own
        env["cpu_affinity"] = cores
    if torch.cuda.is_available():
        env["cuda_devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        env["cuda_version"] = torch.version.cuda
    if cfg is not None:
        env.update(accelerator=cfg.accelerator, devices=cfg.devices, strategy=cfg.strategy, num_nodes=cfg.num_nodes)
    return env


def record_speed_probe(path: Path) -> None:
    """Add a speed probe (training/speed_probe.py) to ``path``'s ``speed_probes``: a run to a wall budget says how
    fast the machine was at its start and at each resume, since its result depends on it."""
    from .speed_probe import probe_record

    env = json.loads(path.read_text()) if path.is_file() else {}
    env.setdefault("speed_probes", []).append(probe_record())
    write_atomic(path, json.dumps(env, indent=2))


def _check_same_split(path: Path, dm: MoleculeDataModule) -> None:
    """A resumed run must see the split it started with (e.g. the data folder did not change)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing; cannot check that the resumed run uses the same split")
    try:
        with np.load(path, allow_pickle=False) as saved:
            found = {name: saved[name] for name in dm.split if name in saved.files}
            digest = str(saved["data_sha256"]) if "data_sha256" in saved.files else None
    except Exception:  # empty, truncated, not an .npz, object arrays: numpy's messages would advise allow_pickle
        raise RunDirectoryError(f"{path}: not a readable split file (empty, truncated or not written by pairreg); "
                                "the run cannot be resumed without it: start it again under another name") from None
    for name, idx in dm.split.items():
        if name not in found or not np.array_equal(found[name], dm.dataset.mol_ids[idx]):
            raise RunDirectoryError(f"{path}: the {name} split of the data found now differs from the one this run "
                                    "started with; resume with the same data")
    if digest is not None and dm.fingerprint not in (None, digest):
        raise RunDirectoryError(f"{path}: {dm.cfg.data_path} has changed since this run started (SHA-256 "
                                f"{dm.fingerprint[:12]}..., was {digest[:12]}...); resume with the same file")


# Gradient-norm clip used for force training when grad_clip is not set (TorchMD-Net and MACE clip at 10;
# the probe diverged to zero forces without clipping at lr 2e-3)
FORCE_GRAD_CLIP = 10.0


def effective_grad_clip(cfg: Config) -> float | None:
    """``grad_clip``; unset means 10 for force training and off otherwise; 0 means off."""
    if cfg.grad_clip is None:
        return FORCE_GRAD_CLIP if cfg.force_weight > 0 else None
    return cfg.grad_clip or None


class EpochSummary(L.Callback):
    """One line per epoch: validation MAE in reporting units, elapsed time and ETA of the whole run."""

    def __init__(self, names_units):
        self.names_units = names_units
        self.start = None

    def on_train_start(self, trainer, pl_module):
        self.start = time.perf_counter()
        self.first_epoch = trainer.current_epoch
        self.first_step = trainer.global_step

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or not trainer.is_global_zero or trainer.state.fn != "fit":
            return
        done = trainer.current_epoch + 1
        elapsed = time.perf_counter() - self.start
        eta = elapsed / max(1, done - self.first_epoch) * (trainer.max_epochs - done)
        if pl_module.cfg.step_budget:  # a step budget usually ends long before the epoch cap
            steps_done = max(1, trainer.global_step - self.first_step)
            eta = min(eta, elapsed / steps_done * max(0, pl_module.cfg.step_budget - trainer.global_step))
        if pl_module.budget is not None:  # a budget-limited run ends when its budget is spent
            eta = min(eta, max(0.0, pl_module.budget.budget_s - pl_module.budget.elapsed_s()))
        maes = ", ".join(
            f"{n} {float(trainer.callback_metrics[metric_name('val', n, u)]):.4g} {u}"
            for n, u in self.names_units if metric_name("val", n, u) in trainer.callback_metrics
        )
        print(f"epoch {done}/{trainer.max_epochs}: val MAE {maes} | elapsed {elapsed / 60:.1f} min, ETA {eta / 60:.1f} min",
              file=sys.stderr, flush=True)


def check_run_name(name: str | None) -> None:
    """``name`` is one folder name: the run directory must stay inside ``out``."""
    if not name:
        return
    seps = {"/", "\\", os.sep, os.altsep or "/"}
    if name in (".", "..") or any(sep in name for sep in seps) or "\0" in name:
        raise ConfigError(f"name: {name!r} is not a plain folder name; the run directory is out/name, so name "
                          "may not contain '/' or '\\' or be '.' or '..' (use --out to choose the parent folder)")


def _existing_run_error(path: Path) -> RunDirectoryError:
    if (path / CHECKPOINT_DIR / "last.ckpt").is_file():
        advice = f"continue it with `pairreg train --resume {path}`, or choose another name (--set name=...)"
    else:  # a run stopped before its first checkpoint: nothing to resume
        advice = "it holds no checkpoint to resume from; delete it to start again, or choose another name (--set name=...)"
    return RunDirectoryError(f"{path}: a run directory of that name exists already; {advice}")


def run_directory(cfg: Config) -> Path:
    """Create a new run directory ``out/name`` (never an existing one: a run's files are never mixed).

    Without a name: ``<preset>-<YYYYmmdd-HHMMSS>``, with ``-2``, ``-3``, ... when that exists, so two
    runs started in the same second get different folders (``mkdir`` is exclusive).
    """
    if os.environ.get(RUN_DIR_ENV):  # a DDP worker: use the directory its launcher created
        return Path(os.environ[RUN_DIR_ENV])
    check_run_name(cfg.name)
    out = Path(cfg.out)
    make_dirs(out)
    stem = cfg.name or f"{cfg.preset or 'run'}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    for n in itertools.count(1):
        path = out / (stem if n == 1 else f"{stem}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            if cfg.name:
                raise _existing_run_error(path) from None
        except OSError as err:
            raise write_error(path, err) from None
    raise AssertionError("unreachable")


def check_resumable(run_dir: Path, cfg: Config) -> None:
    """``last.ckpt`` loads (weights-only), holds the training state and fits the config: checked
    before a resume changes anything in the run directory."""
    file = run_dir / CHECKPOINT_DIR / "last.ckpt"
    if (run_dir / CHECKPOINT_DIR / "best.ckpt").is_file():
        advice = f"copy {CHECKPOINT_DIR}/best.ckpt over it to resume from the best epoch, or start the run again"
    else:
        advice = "start the run again under another name"
    try:
        ckpt = load_checkpoint(run_dir, "last")
        missing = [k for k in RESUME_KEYS if k not in ckpt]
        if missing:
            raise CheckpointError(f"{file}: no training state to continue from (missing {missing})")
        check_model_state(cfg, model_state(ckpt), file)
    except CheckpointError as err:
        raise CheckpointError(f"{err}; cannot resume: {advice}") from None


def resume_config(run_dir: str | Path, overrides: dict | None = None) -> Config:
    """The saved config of ``run_dir``, with only :data:`RESUME_OVERRIDABLE` keys changed."""
    run_dir = Path(run_dir)
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no config.yaml; not a pairreg run directory")
    if not (run_dir / CHECKPOINT_DIR / "last.ckpt").is_file():
        raise FileNotFoundError(f"{run_dir}: no {CHECKPOINT_DIR}/last.ckpt yet (the run stopped before its first "
                                "epoch ended); nothing to resume: delete it and start again, or use another name")
    damaged = "the run's saved config is damaged; restore it, or start the run again under another name"
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{where}: not valid YAML; {damaged}") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: cannot be read ({type(err).__name__}); {damaged}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {'empty' if data is None else 'not a mapping of config keys'}; {damaged}")
    for key, value in (overrides or {}).items():
        if key not in RESUME_OVERRIDABLE:
            raise ConfigError(f"--resume: {key} cannot change when resuming (it changes what is computed); "
                              f"only {list(RESUME_OVERRIDABLE)} can")
        data[key] = value
    cfg = config_from_dict(data, source=str(path))
    cfg.out, cfg.name = str(run_dir.parent), run_dir.name
    return cfg


def _ignore_known_warnings() -> None:
    """Lightning warnings that say nothing to a pairreg user (call inside ``warnings.catch_warnings()``)."""
    warnings.filterwarnings("ignore", ".*does not have many workers.*")  # workers are a config key of ours
    # The divergence guard's mid-epoch rollback skips a step by returning None, and says so on stderr itself.
    warnings.filterwarnings("ignore", ".*`training_step` returned `None`.*")
    # On resume the earlier metrics.csv is kept as metrics.partN.csv before Lightning's CSV logger starts a new one
    # (train), so its "previous log files ... will be deleted" does not happen to anything of ours.
    warnings.filterwarnings("ignore", ".*Previous log files in this directory will be deleted.*")
    # torch (2.13) deprecates a check inside Lightning (2.6) itself; nothing a user of ours can change.
    warnings.filterwarnings("ignore", r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")


def train(cfg: Config, dataset=None, split=None, resume: bool = False) -> dict:
    """Train according to ``cfg``; returns the summary also written to ``metrics.json``.

    ``resume=True`` continues the run directory ``cfg.out/cfg.name`` from its ``last.ckpt``: weights,
    optimiser, schedule, epoch/step counters, best-so-far, and the RNG states.
    """
    started = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    accelerator = lightning_accelerator(cfg.accelerator)  # auto: CUDA if there is one, else CPU; refused before any write
    owner = launcher_rank_zero()
    busy = shared_cpu_warning(torch.get_num_threads()) if accelerator == "cpu" and owner else None
    if busy:
        print(f"pairreg train: warning: {busy}", file=sys.stderr)
    # everything that can be refused is checked before the first write into the run directory
    if resume:
        run_dir = Path(os.environ.get(RUN_DIR_ENV) or Path(cfg.out) / cfg.name)
        check_resumable(run_dir, cfg)
    else:
        check_run_name(cfg.name)
    dm = MoleculeDataModule(cfg, dataset, split)
    parent = None
    if resume:
        _check_same_split(run_dir / "split.npz", dm)
    else:
        if cfg.init_from:  # fine-tuning: the parent is checked against this config and data before any write
            from .finetune import load_parent

            parent = load_parent(cfg, dm.dataset)
        run_dir = run_directory(cfg)
    if owner and not resume:
        write_atomic(run_dir / "config.yaml", dump_yaml(cfg))
        write_atomic(run_dir / "environment.json", json.dumps(environment(cfg), indent=2))
        dm.save_split(run_dir / "split.npz")
    if owner and cfg.time_budget_min is not None and accelerator == "cpu":
        record_speed_probe(run_dir / "environment.json")

    if resume and owner:  # Lightning's CSV logger starts metrics.csv afresh: keep the earlier part
        log = run_dir / "logs" / "metrics.csv"
        if log.is_file():
            part = 1
            while (run_dir / "logs" / f"metrics.part{part}.csv").exists():
                part += 1
            os.replace(log, run_dir / "logs" / f"metrics.part{part}.csv")

    from ..models.model import elements_of

    elements = elements_of(cfg)
    atom_ref = element_references(cfg, dm.dataset, dm.split["train"])  # None unless compositions vary
    mean, scale = target_statistics(dm.dataset, dm.split["train"], cfg.energy_scale, atom_ref, elements)
    names, units = dm.dataset.target_names, dm.dataset.target_units
    if parent is not None:  # targets the parent had keep its standardisation, so the run starts from its predictions
        from .finetune import merge_statistics

        mean, scale, atom_ref = merge_statistics(parent, names, units, mean, scale, atom_ref, len(elements))
    force_unit = dm.dataset.force_unit if dm.dataset.forces is not None else None
    max_atoms = int(dm.dataset.n_atoms[dm.split["train"]].max())
    module = PropertyModule(cfg, names, units, mean, scale, force_unit=force_unit, max_atoms_train=max_atoms,
                            atom_ref=atom_ref)
    if parent is not None:
        from .finetune import init_weights, say

        done = init_weights(module.model, parent, names, units)
        if owner:
            say(parent, done, cfg.freeze_layers)
    ckpt_cb = AtomicCheckpoint(run_dir / CHECKPOINT_DIR)
    shown = list(zip(names, units)) + ([(FORCE_NAME, force_unit)] if force_unit else [])
    lr_control = LrControl(
        plateau=PlateauScale(cfg.plateau_factor, cfg.plateau_patience) if cfg.schedule == "plateau" else None,
        guard=cfg.divergence_guard, forces_metric=metric_name("val", FORCE_NAME, force_unit) if force_unit else None,
        force_floor=zero_force_mae(dm.dataset, dm.split["val"]))
    callbacks = [lr_control, ckpt_cb, EpochSummary(shown),  # the guard acts before the epoch's checkpoint
                 L.pytorch.callbacks.LearningRateMonitor(logging_interval="epoch")]
    if cfg.ema_decay is not None:
        callbacks.insert(0, weight_averaging(cfg.ema_decay))
    if cfg.progress:
        callbacks.append(L.pytorch.callbacks.TQDMProgressBar(refresh_rate=10))
    trainer = L.Trainer(
        max_epochs=cfg.epochs, accelerator=accelerator, devices=cfg.devices, strategy=cfg.strategy,
        num_nodes=cfg.num_nodes, gradient_clip_val=effective_grad_clip(cfg), enable_checkpointing=False, num_sanity_val_steps=0,
        plugins=[SafeCheckpointIO()],  # resume loads weights-only whatever the environment says; atomic writes
        logger=run_loggers(cfg, run_dir),  # CSV, and TensorBoard with logger=tensorboard
        callbacks=callbacks, enable_progress_bar=cfg.progress, enable_model_summary=False,
        log_every_n_steps=10,
        inference_mode=False,  # validation needs autograd for forces (F = −∂E/∂x)
    )
    if owner:
        print(f"[pairreg] run directory: {run_dir}{' (resuming from checkpoints/last.ckpt)' if resume else ''}\n"
              f"[pairreg] train/val/test molecules: "
              f"{len(dm.split['train'])}/{len(dm.split['val'])}/{len(dm.split['test'])}; "
              f"model: {cfg.n_layers} layers, hidden {cfg.hidden}, mitigation {module.model.mitigation.registry_name} "
              f"({module.model.mitigation.extra_repr() or 'no options'})", file=sys.stderr, flush=True)
    os.environ[RUN_DIR_ENV] = str(run_dir)  # inherited by the workers Lightning's DDP launcher starts
    try:
        with warnings.catch_warnings():
            _ignore_known_warnings()
            trainer.fit(module, datamodule=dm,
                        ckpt_path=str(run_dir / CHECKPOINT_DIR / "last.ckpt") if resume else None)
    finally:
        if owner:
            os.environ.pop(RUN_DIR_ENV, None)
    with warnings.catch_warnings():
        _ignore_known_warnings()

        summary = {"run_dir": str(run_dir), "epochs": cfg.epochs, "best_epoch": ckpt_cb.best_epoch + 1,
                   "targets": dict(zip(names, units))}
        if force_unit:
            summary["forces_unit"] = force_unit
        summary["epochs_run"] = trainer.current_epoch
        # a wall budget trains as many steps as the machine allows: the step count makes two runs comparable
        summary["optimizer_steps"] = trainer.global_step
        if module.budget is not None:
            summary["time_budget_min"] = cfg.time_budget_min
        summary["training_time_s"] = round(module.train_clock.elapsed_s(), 1)  # every sitting's
        if module.resumed_after_s:  # wall_time_s (below) is this sitting's alone
            summary["earlier_sittings_training_s"] = round(module.resumed_after_s, 1)
        if cfg.step_budget is not None:
            summary["step_budget"] = cfg.step_budget
        summary["stopped_by"] = ("time_budget_min" if module.budget is not None and module.budget.exhausted()
                                 else "step_budget" if module.steps_exhausted() else "epochs")
        if module.lr_scale != 1.0:
            summary["lr_scale"] = module.lr_scale  # lowered by plateaus or the divergence guard
        if trainer.world_size > 1:
            trainer.strategy.barrier()  # rank 0 has moved best.ckpt into place
        detach_weight_averaging(trainer)  # the best checkpoint already holds the averaged weights
        best = load_checkpoint(run_dir, "best")
        module.load_state_dict(best["state_dict"])
        val = trainer.validate(module, dataloaders=dm.val_dataloader(), verbose=False)[0]
        summary["val"] = {k: v for k, v in val.items() if k.startswith("val/")}
        if cfg.eval_test:
            test = trainer.test(module, dataloaders=dm.test_dataloader(), verbose=False)[0]
            summary["test"] = {k: v for k, v in test.items() if k.startswith("test/")}
    summary["wall_time_s"] = round(time.perf_counter() - started, 1)
    if trainer.is_global_zero:
        write_atomic(run_dir / "metrics.json", json.dumps(summary, indent=2))
    return summary
