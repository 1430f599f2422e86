"""Total loss = weighted task (energy) loss + force loss on standardised values + the mitigation's regulariser.

Each term's kind is ``l1`` (EGNN's QM9 loss), ``mse`` (NequIP, Allegro, MACE, PaiNN on forces) or
``huber`` (MACE's option; quadratic below ``delta``, linear above, in standardised units).
"""

from __future__ import annotations

import torch

LOSS_KINDS = ("l1", "mse", "huber")


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; raised before the optimiser step so weights stay finite."""


class DivergenceError(RuntimeError):
    """Training diverged again after the divergence guard's last rollback (training/callbacks.py)."""


def elementwise_loss(pred: torch.Tensor, true: torch.Tensor, kind: str = "l1", delta: float = 1.0) -> torch.Tensor:
    """Mean over all elements of the ``kind`` loss between ``pred`` and ``true``."""
    if kind == "l1":
        return (pred - true).abs().mean()
    if kind == "mse":
        return ((pred - true) ** 2).mean()
    if kind == "huber":
        return torch.nn.functional.huber_loss(pred, true, delta=delta)
    raise ValueError(f"unknown loss kind {kind!r}; choose one of {list(LOSS_KINDS)}")


def task_loss(y_std_pred: torch.Tensor, y_std_true: torch.Tensor, kind: str = "l1", delta: float = 1.0,
              per_atom: torch.Tensor | None = None) -> torch.Tensor:
    """Loss on standardised targets, averaged over molecules and targets; ``per_atom`` (n_molecules,)
    atom counts divide each molecule's error first (NequIP's per-atom energy loss)."""
    if per_atom is not None:
        count = per_atom.to(y_std_pred.dtype).unsqueeze(-1)  # (n_molecules, 1)
        y_std_pred, y_std_true = y_std_pred / count, y_std_true / count
    return elementwise_loss(y_std_pred, y_std_true, kind, delta)


def total_loss(model, y_std_pred, y_std_true, record, kind: str = "l1", delta: float = 1.0, weight: float = 1.0,
               per_atom: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """(loss, parts) where parts holds the detached task and regulariser terms for logging."""
    task = task_loss(y_std_pred, y_std_true, kind, delta, per_atom)
    reg = model.extra_loss(record)
    loss = weight * task if reg is None else weight * task + reg
    parts = {"task": task.detach()}
    if reg is not None:
        parts["reg"] = reg.detach()
    return loss, parts


def force_loss(forces_std_pred: torch.Tensor, forces_true: torch.Tensor, energy_scale: torch.Tensor,
               kind: str = "l1", delta: float = 1.0) -> torch.Tensor:
    """Loss between predicted and reference forces, both in units of the energy scale per Å
    (reference forces in reporting units divided by the energy's standardisation scale)."""
    target = (forces_true.to(torch.float64) / energy_scale[0]).to(forces_std_pred.dtype)
    return elementwise_loss(forces_std_pred, target, kind, delta)
