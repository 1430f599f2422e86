"""One flat, typed run configuration whose keys are the CLI's ``--set`` keys.

Presets are YAML files shipped in ``pairreg/presets``; ``--set key=value`` overrides any key.
Unknown keys are rejected with the nearest valid key; values are checked for type and meaning
with errors that name the field and where it came from. The resolved config is saved in every
run directory and checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
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
    dataset: str = "qm9"  # qm9 | rmd17
    targets: list = field(default_factory=lambda: ["homo"])  # QM9 target names (`pairreg data qm9`); rmd17: [energy]
    split: typing.Optional[str] = None  # qm9: egnn (default); rmd17: official-1..official-5 (default official-1) | ratio
    split_seed: int = 0  # seed of the split's permutation (QM9: EGNN/Cormorant; rMD17: train/val and ratio)
    molecule: str = "aspirin"  # rMD17 molecule (`pairreg data rmd17`)
    data_root: typing.Optional[str] = None  # rMD17 folder (split files or extracted archive); None: $PAIRREG_RMD17_ROOT, cache, download
    subset_train: typing.Optional[int] = None  # use only the first k molecules of a split (None: all)
    subset_val: typing.Optional[int] = None
    subset_test: typing.Optional[int] = None
    # --- model ---
    hidden: int = 128
    n_layers: int = 9
    node_attr: bool = True  # feed input atom features into every φ_h (EGNN's QM9 model)
    coord_act: str = "tanh"  # hidden activation of φ_x: tanh (PairReg) or silu (EGNN)
    n_rbf: int = 0  # Gaussian radial basis functions of the distance in φ_e (0: EGNN's raw d² only; not the paper's)
    rbf_max_A: float = 10.0  # last basis centre, Å (centres evenly spaced from 0 Å)
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
    schedule: str = "cosine"  # constant | cosine | warmup-cosine (per step)
    warmup_epochs: float = 0.0
    lr_min: float = 0.0
    grad_clip: typing.Optional[float] = None  # max gradient norm; None: off (EGNN and PairReg use none)
    force_weight: float = 0.0  # rMD17: weight of the force L1 term (forces = −∂E/∂x); 0 = energy only (the paper)
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
    progress: bool = True
    eval_test: bool = True  # test the best-validation checkpoint at the end
    preset: typing.Optional[str] = None  # the preset this config came from (informational)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def mitigation_options(self) -> dict:
        return {k: getattr(self, k) for k in MITIGATION_KEYS if getattr(self, k) is not None}


MITIGATION_KEYS = ("residual", "coord_mix", "update_coords", "reg_layers", "reg_target", "reg_weight",
                   "coord_noise", "ablation", "pairnorm_mode", "pairnorm_scale", "g2_p", "g2_aggregation")
FIELDS = {f.name: f for f in dataclasses.fields(Config)}
_CHOICES = {
    "coord_act": ("tanh", "silu"),
    "optimizer": ("adam", "adamw"),
    "schedule": ("constant", "cosine", "warmup-cosine"),
    "accelerator": ("cpu", "gpu", "auto"),
    "dataset": ("qm9", "rmd17"),
    "strategy": ("auto", "ddp", "ddp_spawn"),
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


def load_config(preset: str | None = None, overrides=None, file: str | Path | None = None) -> Config:
    """Defaults ← preset (or YAML ``file``) ← ``--set`` overrides, then validated."""
    cfg = Config()
    if preset:
        path = preset_path(preset)
        apply(cfg, yaml.safe_load(path.read_text()) or {}, f"preset {preset!r} ({path})")
        cfg.preset = preset
    if file:
        path = Path(file)
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as err:
            raise ConfigError(f"{path}: cannot read config ({err})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of key: value")
        apply(cfg, data, str(path))
    apply(cfg, parse_overrides(overrides), "--set")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> Config:
    """Semantic checks. Raises ConfigError naming the field."""
    from .data import qm9, rmd17
    from .models.mitigations import build_mitigation

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
    if cfg.force_weight < 0:
        raise ConfigError(f"force_weight must be >= 0, got {cfg.force_weight}")
    if cfg.num_nodes > 1 and not cfg.name:
        raise ConfigError("num_nodes > 1: set name=RUN_NAME so that every node writes to the same run directory")
    positive = ("hidden", "n_layers", "batch_size", "epochs", "lr", "devices", "num_nodes")
    for key in positive:
        if getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0, got {getattr(cfg, key)}")
    for key in ("subset_train", "subset_val", "subset_test", "threads", "grad_clip"):
        if getattr(cfg, key) is not None and getattr(cfg, key) <= 0:
            raise ConfigError(f"{key} must be > 0 or null, got {getattr(cfg, key)}")
    if cfg.rbf_max_A <= 0:
        raise ConfigError(f"rbf_max_A must be > 0 Å, got {cfg.rbf_max_A}")
    for key in ("weight_decay", "warmup_epochs", "lr_min", "num_workers", "n_rbf"):
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must be >= 0, got {getattr(cfg, key)}")
    if cfg.warmup_epochs > cfg.epochs:
        raise ConfigError(f"warmup_epochs={cfg.warmup_epochs} exceeds epochs={cfg.epochs}")
    if cfg.lr_min > cfg.lr:
        raise ConfigError(f"lr_min={cfg.lr_min} exceeds lr={cfg.lr}")
    try:  # the mitigation checks its own switches (e.g. reg_target set while update_coords is off)
        build_mitigation(cfg.mitigation, 1, 2, **cfg.mitigation_options())
    except ValueError as err:
        raise ConfigError(f"mitigation={cfg.mitigation!r}: {err}") from None
    return cfg


def config_from_dict(data: dict, source: str = "checkpoint") -> Config:
    cfg = apply(Config(), {k: v for k, v in data.items()}, source)
    return validate(cfg)


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
