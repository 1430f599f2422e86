"""One flat, typed run configuration whose keys are the CLI's ``--set`` keys.

Presets are YAML files shipped in ``pairreg/presets``; ``--set key=value`` overrides any key.
Unknown keys are rejected with the nearest valid key; values are checked for type and meaning
with errors that name the field and where it came from. The resolved config is saved in every
run directory and checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A bad key or value; the message names the field and its source."""


@dataclass
class Config:
    # --- data ---
    dataset: str = "qm9"  # qm9 | rmd17 | extxyz (your own extended XYZ file: data_path; docs/training.md)
    targets: list = field(default_factory=lambda: ["homo"])  # QM9 target names (`pairreg data qm9`); rmd17: [energy]
    split: typing.Optional[str] = None  # qm9: egnn (default); rmd17: official-1..official-5 (default official-1) | ratio
    split_seed: int = 0  # seed of the split's permutation (QM9: EGNN/Cormorant; rMD17: train/val and ratio)
    molecule: str = "aspirin"  # rMD17 molecule (`pairreg data rmd17`)
    data_root: typing.Optional[str] = None  # rMD17 folder (split files or extracted archive); None: $PAIRREG_RMD17_ROOT, cache, download
    subset_train: typing.Optional[int] = None  # use only the first k molecules of a split (None: all)
    subset_val: typing.Optional[int] = None
    subset_test: typing.Optional[int] = None
    # dataset=extxyz (data/extxyz.py): the file, where its values are and their units, the random split
    data_path: typing.Optional[str] = None  # the extended XYZ file (read with ASE)
    energy_key: typing.Optional[str] = "energy"  # info key or calculator result holding each frame's energy
    forces_key: typing.Optional[str] = "forces"  # arrays key or calculator result of the forces; None: no forces
    energy_unit: str = "eV"  # unit of the energy (and of energy-family targets) in the file: eV | meV | kcal/mol | Hartree
    forces_unit: str = "eV/Angstrom"  # unit of the forces in the file (ASE's: eV/Å)
    val_frac: typing.Optional[float] = None  # extxyz: fraction of frames for validation (None: 0.1)
    test_frac: typing.Optional[float] = None  # extxyz: fraction of frames for test (None: 0.1); train: the rest
    elements: typing.Optional[list] = None  # element symbols the model embeds (None: H,C,N,O,F)
    # --- model ---
    backbone: str = "egnn"  # egnn | painn (needs cutoff_A and n_rbf; the paper: 5 Å, 20 Bessel functions) | clofnet
    hidden: int = 128
    n_layers: int = 9
    node_attr: bool = True  # feed input atom features into every φ_h (EGNN's QM9 model; egnn only)
    coord_act: str = "tanh"  # hidden activation of φ_x: tanh (PairReg) or silu (EGNN); egnn and clofnet
    coord_init: str = "egnn"  # φ_x's last layer: egnn (no bias, gain 1e-3: coordinates start still) | authors (the
    #   PairReg authors' scripts: bias and PyTorch's default init, coordinates move from step 0); egnn only
    n_rbf: int = 0  # radial basis functions of the distance in φ_e (0: EGNN's raw d² only; not the paper's)
    rbf_max_A: float = 10.0  # Gaussians: last basis centre, Å (centres evenly spaced from 0 Å)
    rbf: str = "gaussian"  # gaussian | bessel: DimeNet's Bessel functions × polynomial envelope (p = 6), r_c = cutoff_A
    cutoff_A: typing.Optional[float] = None  # radius graph: only pairs closer than this (Å) interact, messages
    #   switched off smoothly by the envelope; also Bessel's r_c; None: complete graph of each molecule (EGNN)
    l_max: int = 1  # backbone=segnn: highest degree l of its steerable features and spherical harmonics (1 … 3;
    #   H scalars and H // (2l+1) channels of each degree l); other backbones have none and keep 1
    mitigation: str = "pairreg"  # none | residual | pairreg | pairnorm | g2 | noisynodes
    # PairReg switches (None = the mitigation's default; see docs/method.md)
    residual: typing.Optional[str] = None
    coord_mix: typing.Optional[str] = None
    update_coords: typing.Optional[bool] = None
    reg_layers: typing.Optional[str] = None
    reg_target: typing.Optional[str] = None
    reg_weight: typing.Optional[float] = None
    coord_noise: typing.Optional[float] = None  # Å
    ablation: typing.Optional[str] = None
    # PairNorm and G2 options (None = their defaults)
    pairnorm_mode: typing.Optional[str] = None  # pn | pn-si | pn-scs
    pairnorm_scale: typing.Optional[float] = None
    g2_p: typing.Optional[float] = None
    g2_aggregation: typing.Optional[str] = None  # sum | mean
    # --- optimisation ---
    optimizer: str = "adam"  # adam | adamw
    lr: float = 5e-4
    weight_decay: float = 1e-16
    batch_size: int = 96
    epochs: int = 10
    schedule: str = "cosine"  # constant | cosine | warmup-cosine (per step) | plateau (lowered on validation plateaus)
    warmup_epochs: float = 0.0
    lr_min: float = 0.0
    grad_clip: typing.Optional[float] = None  # max gradient norm; None: 10 when force_weight > 0, else off
    #   (EGNN and PairReg use none); 0: off
    force_weight: float = 0.0  # rMD17: weight of the force L1 term (forces = −∂E/∂x); 0 = energy only (the paper)
    # --- the field's force-field recipe (docs/training.md gives each key's source) ---
    time_budget_min: typing.Optional[float] = None  # stop after this much training wall time (minutes); the
    #   schedule's warm-up and decay then run on the fraction of the budget spent; `epochs` stays a cap
    step_budget: typing.Optional[int] = None  # stop after this many optimiser steps; warm-up, decay and the second
    #   stage run on the fraction of them done. Equal compute that, unlike a wall budget, does not depend on the machine
    warmup_frac: float = 0.0  # linear warm-up over this fraction of the run (steps, or the time budget)
    plateau_factor: float = 0.5  # schedule=plateau: lr × this after plateau_patience validations without a new best
    plateau_patience: int = 10
    ema_decay: typing.Optional[float] = None  # exponential moving average of the weights (NequIP/MACE 0.99);
    #   validation, checkpoints, evaluate and predict use the averaged weights; None: off
    energy_loss: str = "l1"  # l1 | mse | huber: loss on the standardised targets (energy on rMD17)
    forces_loss: str = "l1"  # l1 | mse | huber: loss on standardised forces
    huber_delta: float = 0.01  # huber: switch from quadratic to linear, in standardised units
    energy_weight: float = 1.0  # weight of the target (energy) term
    energy_per_atom: bool = False  # energy term on E/N_atoms (NequIP's per-atom energy loss)
    energy_scale: str = "mad"  # mad: training MAD of the energy (EGNN) | force-rms: RMS of the training force
    #   components × 1 Å (NequIP), so standardised forces have unit RMS
    stage2_frac: typing.Optional[float] = None  # from this fraction of the run on, the energy weight is
    #   stage2_energy_weight (MACE's second stage); None: off
    stage2_energy_weight: float = 1000.0
    divergence_guard: bool = True  # roll back to the best weights with lr × 0.5 when the loss explodes or the
    #   force error collapses to the zero-force floor (at most 3 times, then stop)
    # --- fine-tuning (training/finetune.py) ---
    init_from: typing.Optional[str] = None  # run directory or .ckpt whose (EMA) weights start this run
    freeze_layers: int = 0  # with init_from: the embedding and the first K message-passing layers stay fixed
    # --- run ---
    seed: int = 42
    out: str = "runs"  # parent folder of run directories
    name: typing.Optional[str] = None  # run directory name (default: preset + time stamp)
    accelerator: str = "cpu"  # cpu | gpu | auto
    devices: int = 1  # processes per node (GPUs, or CPU processes with strategy=ddp)
    strategy: str = "auto"  # auto | ddp | ddp_spawn (Lightning strategies; gloo on CPU, NCCL on GPU)
    num_nodes: int = 1  # machines; multi-node runs are launched by SLURM or torchrun (docs/scaling.md)
    threads: typing.Optional[int] = None  # torch intra-op threads on CPU (None: torch's default)
    num_workers: int = 0
    data_on_device: bool = False  # keep each split on the training device and build batches there (GPU; num_workers 0)
    compile: bool = False  # torch.compile the model's forward pass (dynamic shapes); property training only (no forces)
    progress: bool = True
    logger: str = "csv"  # csv: logs/metrics.csv | tensorboard: also TensorBoard event files in logs/tensorboard/
    eval_test: bool = True  # test the best-validation checkpoint at the end
    preset: typing.Optional[str] = None  # the preset this config came from (informational)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def mitigation_options(self) -> dict:
        return {k: getattr(self, k) for k in MITIGATION_KEYS if getattr(self, k) is not None}


MITIGATION_KEYS = ("residual", "coord_mix", "update_coords", "reg_layers", "reg_target", "reg_weight",
                   "coord_noise", "ablation", "pairnorm_mode", "pairnorm_scale", "g2_p", "g2_aggregation")
FIELDS = {f.name: f for f in dataclasses.fields(Config)}
# the backbone key's choices; models/backbones/ has one module for each
BACKBONES = ("egnn", "painn", "clofnet", "segnn")

_CHOICES = {
    "backbone": BACKBONES,
    "coord_act": ("tanh", "silu"),
    "coord_init": ("egnn", "authors"),
    "rbf": ("gaussian", "bessel"),
    "optimizer": ("adam", "adamw"),
    "schedule": ("constant", "cosine", "warmup-cosine", "plateau"),
    "energy_loss": ("l1", "mse", "huber"),
    "forces_loss": ("l1", "mse", "huber"),
    "energy_scale": ("mad", "force-rms"),
    "accelerator": ("cpu", "gpu", "auto"),
    "dataset": ("qm9", "rmd17", "extxyz"),
    "strategy": ("auto", "ddp", "ddp_spawn"),
    "logger": ("csv", "tensorboard"),
}


def preset_names() -> list[str]:
    return sorted(p.name[:-5] for p in resources.files("pairreg.presets").iterdir() if p.name.endswith(".yaml"))


def preset_path(name: str):
    path = resources.files("pairreg.presets") / f"{name}.yaml"
    if not path.is_file():
        close = difflib.get_close_matches(name, preset_names(), n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise ConfigError(f"unknown preset {name!r}; shipped presets: {preset_names()}.{hint}")
    return path


def _unknown_key(key: str, source: str) -> ConfigError:
    close = difflib.get_close_matches(key, list(FIELDS), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return ConfigError(f"{source}: unknown key {key!r}.{hint}")


def _coerce(key: str, value, source: str):
    """Check ``value`` against the annotated type of ``key``; ints are accepted for floats."""
    ann = FIELDS[key].type
    optional = "Optional" in str(ann)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {key} may not be null")
    base = str(ann).replace("typing.Optional[", "").rstrip("]")
    if base == "list" or key == "targets":
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list) or not value:
            raise ConfigError(f"{source}: {key} must be a non-empty list (e.g. homo,gap), got {value!r}")
        return [str(v) for v in value]
    if base == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{source}: {key} must be true or false, got {value!r}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{source}: {key} must be an integer, got {value!r}")
        return value
    if base == "float":
        if isinstance(value, str):  # YAML 1.1 reads "2e-4" (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{source}: {key} must be a number, got {value!r}")
        return float(value)
    if not isinstance(value, str):
        raise ConfigError(f"{source}: {key} must be a string, got {value!r}")
    return value


def apply(cfg: Config, values: dict, source: str) -> Config:
    for key, value in values.items():
        if key not in FIELDS:
            raise _unknown_key(key, source)
        setattr(cfg, key, _coerce(key, value, source))
    return cfg


def parse_overrides(items) -> dict:
    """``["lr=1e-3", "targets=homo,gap"]`` → dict, values parsed as YAML scalars."""
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        value = yaml.safe_load(raw) if raw.strip() else None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and key in FIELDS and "str" in str(FIELDS[key].type):
            value = raw  # e.g. name=2024 stays a string
        out[key] = value
    return out


def _read_preset(name: str) -> tuple[str, dict]:
    """(how errors name it, its keys) of the shipped preset ``name``."""
    path = preset_path(name)
    return f"preset {name!r} ({path})", yaml.safe_load(path.read_text()) or {}


def _layers(data: dict, source: str, chain: tuple = ()) -> list[tuple[str, dict]]:
    """``data``'s keys over those of the preset it names as ``base`` (which may name its own base),
    as (source, keys) pairs to apply in order, so an error names the file the key is in."""
    data = dict(data)
    base = data.pop("base", None)
    if base is None:
        return [(source, data)]
    if not isinstance(base, str):
        raise ConfigError(f"{source}: base must be the name of a preset, got {base!r}")
    if base in chain:
        raise ConfigError(f"{source}: base {base!r} makes a cycle ({' -> '.join((*chain, base))})")
    parent_source, parent = _read_preset(base)
    return [*_layers(parent, parent_source, (*chain, base)), (source, data)]


def load_config(preset: str | None = None, overrides=None, file: str | Path | None = None) -> Config:
    """Defaults ← preset (or YAML ``file``) ← ``--set`` overrides, then validated.

    A preset or file may start from another preset with ``base: NAME``; its own keys win."""
    cfg = Config()
    preset_keys, user_keys = set(), set()
    if preset:
        preset_source, data = _read_preset(preset)
        for source, keys in _layers(data, preset_source, (preset,)):
            apply(cfg, keys, source)
            preset_keys |= set(keys)
        cfg.preset = preset
    if file:
        path = Path(file)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read config ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of key: value")
        *bases, own = _layers(data, str(path))
        for source, keys in bases:  # a file's base is a preset: its dataset keys give way like --preset's
            apply(cfg, keys, source)
            preset_keys |= set(keys)
        apply(cfg, own[1], own[0])
        user_keys |= set(own[1])
    values = parse_overrides(overrides)
    apply(cfg, values, "--set")
    user_keys |= set(values)
    if cfg.dataset == "extxyz":  # a preset's dataset keys give way to the user's file (data/extxyz.py)
        from .data import extxyz

        extxyz.settle_preset_keys(cfg, preset_keys - user_keys, user_keys)
    validate(cfg)
    return cfg


def _float_fields() -> list[str]:
    """Names of the fields typed ``float`` or ``Optional[float]`` (new float fields are covered too)."""
    hints = typing.get_type_hints(Config)
    return [name for name in FIELDS if hints[name] in (float, typing.Optional[float])]


# Sizes no sane run reaches on any CPU or GPU: the paper's models have ~1e6 parameters and need ~1 GB
# per batch. Anything past these is a typo (hidden=10000000) that would otherwise try to allocate TBs.
MAX_PARAMETERS = 1_000_000_000
MAX_ACTIVATION_BYTES = 100e9
MAX_LAYERS = 1000  # the deepest study here has 12 layers; building 1e6 layers would exhaust memory by itself
QM9_MAX_ATOMS = 29  # the largest QM9 molecule
# (n_edges, hidden) float32 tensors one EGCL keeps for backward: h_j, W_j h_j + w d², + W_i h_i, SiLU,
# edge_out, SiLU, gated message, φ_x hidden and its activation (models/backbones/egnn.py)
EDGE_TENSORS_PER_LAYER = 9


def count_parameters(cfg: Config) -> int:
    """Exact number of trainable parameters of ``cfg``'s model, built on the meta device (no memory)."""
    import torch

    from .models.model import build_model

    with torch.device("meta"):
        model = build_model(cfg)
    return sum(p.numel() for p in model.parameters())


def activation_bytes(cfg: Config) -> float:
    """Rough float32 memory of one training batch's activations: every edge of the complete graph of the
    dataset's largest molecule keeps ~9 hidden-wide tensors (plus the distance basis) per layer."""
    from .data import rmd17

    n = rmd17.MOLECULES.get(cfg.molecule, ("", QM9_MAX_ATOMS))[1] if cfg.dataset == "rmd17" else QM9_MAX_ATOMS
    per_edge_layer = EDGE_TENSORS_PER_LAYER * cfg.hidden + cfg.n_rbf
    return 4.0 * cfg.batch_size * n * (n - 1) * cfg.n_layers * per_edge_layer


def _check_size(cfg: Config) -> None:
    """Refuse models whose parameters or activations could not fit any machine, with the estimate."""
    where = f"hidden={cfg.hidden}, n_layers={cfg.n_layers}"
    if cfg.n_layers > MAX_LAYERS:
        raise ConfigError(f"n_layers={cfg.n_layers} is more than {MAX_LAYERS} layers; refusing to build it "
                          "(the deepest model studied here has 12)")
    act = activation_bytes(cfg)
    if act > MAX_ACTIVATION_BYTES:
        raise ConfigError(f"{where}, batch_size={cfg.batch_size}, n_rbf={cfg.n_rbf}: a training batch needs about "
                          f"{act / 1e9:,.0f} GB of activations (estimate; the limit is "
                          f"{MAX_ACTIVATION_BYTES / 1e9:,.0f} GB, more than any CPU or GPU run here needs); "
                          "lower hidden, n_layers or batch_size")
    # a lower bound (each EGCL has at least 6 H² weights) first, so a huge width is never even built on meta
    params = 6 * cfg.n_layers * cfg.hidden ** 2 + cfg.n_rbf * cfg.hidden * cfg.n_layers
    if params <= MAX_PARAMETERS:
        params = count_parameters(cfg)
    if params > MAX_PARAMETERS:
        raise ConfigError(f"{where}: the model would have about {float(params):.3g} parameters ({4 * params / 1e9:,.0f} GB "
                          f"in float32); the limit is {MAX_PARAMETERS:.0e} (the paper's models have ~1e6); "
                          "lower hidden or n_layers")


def _check_recipe(cfg: Config) -> None:
    """The training-recipe keys: ranges, and combinations that would silently do nothing."""
    if cfg.time_budget_min is not None and cfg.time_budget_min <= 0:
        raise ConfigError(f"time_budget_min must be > 0 minutes or null, got {cfg.time_budget_min}")
    if cfg.step_budget is not None and cfg.step_budget <= 0:
        raise ConfigError(f"step_budget must be > 0 optimiser steps or null, got {cfg.step_budget}")
    if cfg.step_budget is not None and cfg.time_budget_min is not None:
        raise ConfigError("step_budget and time_budget_min are both set; a run has one budget (set the other to null)")
    budget_key = "time_budget_min" if cfg.time_budget_min is not None else "step_budget" if cfg.step_budget else None
    if budget_key and cfg.warmup_epochs:
        raise ConfigError(f"warmup_epochs: with {budget_key} the warm-up is a fraction of the budget; "
                          "set warmup_frac instead")
    if cfg.warmup_frac and cfg.warmup_epochs:
        raise ConfigError("warmup_frac and warmup_epochs are both set; use one")
    for key in ("warmup_frac", "stage2_frac"):
        value = getattr(cfg, key)
        if value is not None and not 0 <= value < 1:
            raise ConfigError(f"{key} must be in [0, 1), got {value}")
    if cfg.ema_decay is not None and not 0 < cfg.ema_decay < 1:
        raise ConfigError(f"ema_decay must be in (0, 1) or null, got {cfg.ema_decay}")
    if not 0 < cfg.plateau_factor < 1:
        raise ConfigError(f"plateau_factor must be in (0, 1), got {cfg.plateau_factor}")
    if cfg.plateau_patience < 1:
        raise ConfigError(f"plateau_patience must be >= 1, got {cfg.plateau_patience}")
    for key in ("huber_delta", "energy_weight", "stage2_energy_weight"):
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {getattr(cfg, key)}")
    if cfg.energy_scale == "force-rms" and not has_forces(cfg):
        raise ConfigError(f"energy_scale=force-rms needs forces; {_no_forces(cfg)} (use mad)")
    if cfg.stage2_frac is not None and not has_forces(cfg):
        raise ConfigError(f"stage2_frac: the second stage raises the energy weight against forces; {_no_forces(cfg)}")


def has_forces(cfg: Config) -> bool:
    """Whether the run's data have reference forces (rMD17, or an extxyz file read with a forces_key)."""
    return cfg.dataset == "rmd17" or (cfg.dataset == "extxyz" and cfg.forces_key is not None)


def _no_forces(cfg: Config) -> str:
    return "forces_key is null (no forces are read)" if cfg.dataset == "extxyz" else f"dataset={cfg.dataset} has none"


def validate(cfg: Config) -> Config:
    """Semantic checks. Raises ConfigError naming the field."""
    from .data import qm9, rmd17
    from .models.mitigations import build_mitigation

    for key in _float_fields():  # NaN and ±inf pass every comparison below (nan <= 0 is False): refuse first
        value = getattr(cfg, key)
        if value is not None and not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"{key}={getattr(cfg, key)!r} is not valid; choose one of {list(choices)}")
    if cfg.dataset == "qm9":
        if cfg.split not in (None, "egnn"):
            raise ConfigError(f"split={cfg.split!r} is not valid for qm9; choose 'egnn' (the EGNN/Cormorant split)")
        for t in cfg.targets:
            if t not in qm9.TARGETS:
                close = difflib.get_close_matches(t, qm9.TARGET_NAMES, n=1)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                raise ConfigError(f"targets: unknown QM9 target {t!r}; choose from {qm9.TARGET_NAMES}.{hint}")
        if cfg.force_weight:
            raise ConfigError("force_weight: QM9 has no forces; use it with dataset=rmd17")
    elif cfg.dataset == "extxyz":
        from .data import extxyz

        extxyz.check_config(cfg)
    else:
        try:
            rmd17.check_molecule(cfg.molecule)
            rmd17.check_split(cfg.split or "official-1")
        except rmd17.RMD17Error as err:
            raise ConfigError(f"{'molecule' if 'molecule' in str(err) else 'split'}: {err}") from None
        if cfg.targets != ["energy"]:
            raise ConfigError(f"targets={cfg.targets}: rMD17 has one target, energy (set targets=energy); "
                              "forces come from its gradient")
    if len(set(cfg.targets)) != len(cfg.targets):
        raise ConfigError(f"targets: {cfg.targets} lists a target twice")
    if cfg.dataset != "extxyz":
        for key in ("data_path", "val_frac", "test_frac"):
            if getattr(cfg, key) is not None:
                raise ConfigError(f"{key}: only for dataset=extxyz (dataset={cfg.dataset} has its own files and split)")
    from .training.finetune import check_config as check_finetune

    check_finetune(cfg)  # elements, init_from, freeze_layers
    if cfg.force_weight < 0:
        raise ConfigError(f"force_weight must be >= 0, got {cfg.force_weight}")
    if cfg.num_nodes > 1 and not cfg.name:
        raise ConfigError("num_nodes > 1: set name=RUN_NAME so that every node writes to the same run directory")
    positive = ("hidden", "n_layers", "batch_size", "epochs", "lr", "devices", "num_nodes")
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {getattr(cfg, key)}")
    if cfg.grad_clip is not None and cfg.grad_clip < 0:
        raise ConfigError(f"grad_clip must be >= 0 (0: off) or null, got {cfg.grad_clip}")
    for key in ("subset_train", "subset_val", "subset_test", "threads"):
        if getattr(cfg, key) is not None and getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0 or null, got {getattr(cfg, key)}")
    if cfg.rbf_max_A <= 0:
        raise ConfigError(f"rbf_max_A must be > 0 Å, got {cfg.rbf_max_A}")
    if cfg.cutoff_A is not None and cfg.cutoff_A <= 0:
        raise ConfigError(f"cutoff_A must be > 0 Å or null, got {cfg.cutoff_A}")
    if cfg.rbf == "bessel" and cfg.cutoff_A is None:
        raise ConfigError("rbf=bessel needs cutoff_A (Å), the r_c where its functions vanish (it is also the graph's "
                          "radius cutoff; a value above the largest molecule keeps the complete graph)")
    if cfg.coord_init != "egnn" and cfg.backbone != "egnn":
        raise ConfigError(f"coord_init={cfg.coord_init}: only backbone=egnn has EGNN's φ_x (backbone={cfg.backbone})")
    if cfg.backbone == "painn" and (cfg.cutoff_A is None or cfg.n_rbf < 1):
        raise ConfigError(f"backbone=painn needs cutoff_A (Å) and n_rbf >= 1 (got {cfg.cutoff_A}, {cfg.n_rbf}): its "
                          "filters read a radial basis inside a cosine cutoff (the paper: cutoff_A=5 n_rbf=20 rbf=bessel)")
    if cfg.backbone == "segnn":
        from .models.backbones.segnn import MAX_L

        if not 1 <= cfg.l_max <= MAX_L:
            raise ConfigError(f"l_max must be 1 … {MAX_L} for backbone=segnn, got {cfg.l_max}")
    elif cfg.l_max != 1:
        raise ConfigError(f"l_max={cfg.l_max}: only backbone=segnn has steerable features of degree l > 1 "
                          f"(backbone={cfg.backbone}); leave l_max at 1")
    if cfg.rbf == "bessel" and cfg.n_rbf < 1:
        raise ConfigError("rbf=bessel: set n_rbf >= 1 (n_rbf=0 means no distance basis)")
    if cfg.data_on_device and cfg.num_workers:
        raise ConfigError(f"data_on_device=true builds batches on the training device in the main process; "
                          f"set num_workers=0 (got {cfg.num_workers})")
    if cfg.compile and cfg.force_weight > 0:
        raise ConfigError(f"compile=true: force training differentiates the forces again (double backward), which "
                          f"torch.compile does not support; set force_weight=0 or compile=false "
                          f"(force_weight={cfg.force_weight})")
    for key in ("weight_decay", "warmup_epochs", "lr_min", "num_workers", "n_rbf"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f"warmup_epochs={cfg.warmup_epochs} exceeds epochs={cfg.epochs}")
    if cfg.lr_min > cfg.lr:
        raise ConfigError(f"lr_min={cfg.lr_min} exceeds lr={cfg.lr}")
    try:  # the mitigation checks its own switches (e.g. reg_target set while update_coords is off)
        build_mitigation(cfg.mitigation, 1, 2, backbone=cfg.backbone, **cfg.mitigation_options())
    except ValueError as err:
        raise ConfigError(f"mitigation={cfg.mitigation!r}: {err}") from None
    _check_recipe(cfg)
    _check_size(cfg)
    return cfg


def config_from_dict(data: dict, source: str = "checkpoint") -> Config:
    cfg = apply(Config(), {k: v for k, v in data.items()}, source)
    return validate(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
