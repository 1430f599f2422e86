"""Total loss = task loss on standardised targets + the mitigation's regulariser (λ inside it)."""

from __future__ import annotations

import torch


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; raised before the optimiser step so weights stay finite."""


def task_loss(y_std_pred: torch.Tensor, y_std_true: torch.Tensor) -> torch.Tensor:
    """L1 on standardised targets (EGNN's QM9 loss), averaged over molecules and targets."""
    return (y_std_pred - y_std_true).abs().mean()


def total_loss(model, y_std_pred, y_std_true, record) -> tuple[torch.Tensor, dict]:
    """(loss, parts) where parts holds the detached task and regulariser terms for logging."""
    task = task_loss(y_std_pred, y_std_true)
    reg = model.extra_loss(record)
    loss = task if reg is None else task + reg
    parts = {"task": task.detach()}
    if reg is not None:
        parts["reg"] = reg.detach()
    return loss, parts


def force_loss(forces_std_pred: torch.Tensor, forces_true: torch.Tensor, energy_scale: torch.Tensor) -> torch.Tensor:
    """L1 between predicted and reference forces, both in units of the energy scale per Å
    (reference forces in reporting units divided by the energy's standardisation scale)."""
    target = (forces_true.to(torch.float64) / energy_scale[0]).to(forces_std_pred.dtype)
    return (forces_std_pred - target).abs().mean()
