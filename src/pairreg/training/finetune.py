"""Fine-tuning: start a new run from a trained model's weights (``init_from``), optionally with the embedding
and the first K message-passing layers fixed (``freeze_layers``).

Only weights are taken from the parent (its best checkpoint; the EMA-averaged weights where the parent used
``ema_decay``, since those are what its checkpoint's ``state_dict`` holds): the optimiser, schedule, epoch
counters and split are the new run's own.

Targets: a target of the new run that the parent had (same name and reporting unit) keeps the parent's
output row and the parent's standardisation (mean, scale, per-element references), so the new run starts
from exactly the parent's predictions; a new target gets a freshly initialised output row and the new
run's training statistics.

Every model key that shapes the weights or what they compute (:data:`MODEL_KEYS`) must equal the parent's;
an element in the new data that the parent does not embed is refused by symbol.
"""

from __future__ import annotations

import re
import sys

import numpy as np
import torch

from ..config import MITIGATION_KEYS, ConfigError

# keys whose value fixes the weights' shapes or their meaning: they must match the parent's
MODEL_KEYS = ("backbone", "hidden", "n_layers", "node_attr", "coord_act", "coord_init", "n_rbf", "rbf_max_A", "rbf",
              "cutoff_A", "mitigation",
              "elements", "l_max") + MITIGATION_KEYS
STANDARDISATION = ("target_mean", "target_scale", "atom_ref")
# parameters of message-passing layer k: the EGCL itself and a mitigation's per-layer modules (PairReg's
# projections, G2's gates)
_LAYER = re.compile(r"backbone\.(?:layers|mitigation\.[A-Za-z_]+)\.(\d+)\.")


def check_config(cfg) -> None:
    """``elements``, ``init_from`` and ``freeze_layers`` (config.validate calls this; files are read at training)."""
    if cfg.elements is not None:
        from ase.data import atomic_numbers

        bad = [s for s in cfg.elements if atomic_numbers.get(s, 0) < 1 or s != s.capitalize()]
        if bad:
            raise ConfigError(f"elements: {bad[0]!r} is not an element symbol (e.g. elements=H,C,N,O,S)")
        if len(set(cfg.elements)) != len(cfg.elements):
            raise ConfigError(f"elements: {cfg.elements} lists an element twice")
    if cfg.freeze_layers < 0 or cfg.freeze_layers > cfg.n_layers:
        raise ConfigError(f"freeze_layers must be in 0..n_layers ({cfg.n_layers}), got {cfg.freeze_layers}")
    if cfg.freeze_layers and not cfg.init_from:
        raise ConfigError("freeze_layers keeps a trained model's first layers fixed: set init_from=RUN_DIR_OR_CKPT")


def layer_of(name: str) -> int | None:
    """Index of the message-passing layer a parameter belongs to (None: embedding, heads, ...)."""
    m = _LAYER.match(name)
    return int(m.group(1)) if m else None


def frozen_names(model, k: int) -> list[str]:
    """Parameters ``freeze_layers=k`` fixes: the embedding (with SEGNN's steerable one, ``backbone.embedding``)
    and every parameter of layers 0..k-1."""
    if k <= 0:
        return []
    return [name for name, _ in model.named_parameters()
            if name.startswith(("embedding.", "backbone.embedding."))
            or (layer_of(name) is not None and layer_of(name) < k)]


def freeze_layers(model, k: int) -> list[str]:
    """Turn off gradients of :func:`frozen_names` (the optimiser is given only trainable parameters)."""
    names = set(frozen_names(model, k))
    for name, param in model.named_parameters():
        if name in names:
            param.requires_grad_(False)
    return sorted(names)


def load_parent(cfg, dataset) -> dict:
    """The parent checkpoint of ``cfg.init_from``, checked against ``cfg`` and the new data's elements."""
    from ase.data import chemical_symbols

    from ..models.model import elements_of
    from .checkpoint import check_model_state, checkpoint_config, load_checkpoint, model_state

    try:
        ckpt = load_checkpoint(cfg.init_from, "best")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"init_from: {err}") from None
    file = ckpt["path"]
    parent = checkpoint_config(ckpt)
    state = model_state(ckpt)
    check_model_state(parent, state, file)
    known = elements_of(parent)
    unknown = sorted(set(np.unique(dataset.z).astype(int).tolist()) - set(known))
    if unknown:
        raise ConfigError(f"init_from: the data have {', '.join(f'{chemical_symbols[z]} (Z={z})' for z in unknown)}, "
                          f"which {file} does not know (it embeds {', '.join(chemical_symbols[z] for z in known)}); "
                          "fine-tuning cannot add elements: train this data from scratch")
    for key in MODEL_KEYS:
        mine, theirs = getattr(cfg, key), getattr(parent, key)
        if key == "elements":  # compared as sets of elements, shown as symbols (None means H, C, N, O, F)
            mine, theirs = (",".join(chemical_symbols[z] for z in elements_of(c)) for c in (cfg, parent))
        if mine != theirs:
            raise ConfigError(f"init_from: {file} has {key}={theirs!r}, this run {key}={mine!r}; its weights fit "
                              f"only the same model (set {key} to match)")
    meta = ckpt["pairreg"]
    return {"path": file, "config": parent, "state": state, "names": list(meta["target_names"]),
            "units": list(meta["target_units"])}


def _kept(parent: dict, names, units) -> dict[int, int]:
    """{row in the new model: row in the parent} for targets of the same name and unit."""
    theirs = {(n, u): i for i, (n, u) in enumerate(zip(parent["names"], parent["units"]))}
    return {j: theirs[(n, u)] for j, (n, u) in enumerate(zip(names, units)) if (n, u) in theirs}


def merge_statistics(parent: dict, names, units, mean, scale, atom_ref, n_elements: int):
    """The new run's (mean, scale, atom_ref) with the parent's for the targets it keeps."""
    state = parent["state"]
    mean, scale = np.array(mean, dtype=np.float64), np.array(scale, dtype=np.float64)
    ref = np.zeros((n_elements, len(names))) if atom_ref is None else np.array(atom_ref, dtype=np.float64)
    parent_ref = state.get("atom_ref")
    for j, i in _kept(parent, names, units).items():
        mean[j] = float(state["target_mean"][i])
        scale[j] = float(state["target_scale"][i])
        ref[:, j] = 0.0 if parent_ref is None else parent_ref[:, i].double().numpy()
    return mean, scale, (ref if ref.any() else None)


def init_weights(model, parent: dict, names, units) -> dict:
    """Copy the parent's weights into ``model`` (standardisation buffers excepted: see :func:`merge_statistics`);
    output rows only for kept targets. Returns what was done, for the run's log line."""
    output = f"graph_head.{len(model.graph_head) - 1}."
    kept = _kept(parent, names, units)
    new_state = model.state_dict()
    with torch.no_grad():
        for key, value in parent["state"].items():
            if key in STANDARDISATION or key not in new_state:
                continue
            if key.startswith(output):
                for j, i in kept.items():
                    new_state[key][j] = value[i]
            else:
                new_state[key] = value.clone()
    model.load_state_dict(new_state)
    return {"kept": [names[j] for j in kept], "new": [n for j, n in enumerate(names) if j not in kept]}


def say(parent: dict, done: dict, frozen: int) -> None:
    fresh = f"; fresh output rows: {', '.join(done['new'])}" if done["new"] else ""
    fixed = f"; frozen: the embedding and layers 1-{frozen}" if frozen else ""
    print(f"[pairreg] init_from {parent['path']}: weights loaded; kept targets: {', '.join(done['kept']) or 'none'} "
          f"(the parent's output rows and standardisation){fresh}{fixed}", file=sys.stderr, flush=True)
