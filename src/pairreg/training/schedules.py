"""Learning-rate schedules as a function of run progress, and the wall-clock budget that can drive them.

Progress is a fraction in [0, 1]: optimiser steps done / planned steps for an epoch-limited run, or
training seconds spent / ``time_budget_min`` for a budget-limited one. Defining warm-up and decay on
progress gives a 10-minute and a 60-minute run each a complete schedule (warm-up, then cosine down
to ``lr_min``), which is what comparing methods at equal compute needs.
"""

from __future__ import annotations

import math
import time

# The clock the budget reads. Tests replace it with a counter so that no test depends on wall time.
clock = time.perf_counter


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, lr: float, lr_min: float) -> float:
    """Multiplier of the base lr at optimiser step ``step`` of an epoch-limited run (linear warm-up,
    then cosine to lr_min; ``plateau`` is constant here and lowered by :class:`PlateauScale`)."""
    if schedule in ("constant", "plateau") and not (warmup_steps > 0 and step < warmup_steps):
        return 1.0
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = lr_min / lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def lr_factor_at(progress: float, warmup: float, schedule: str, lr: float, lr_min: float) -> float:
    """Multiplier of the base lr at ``progress`` (fraction of a budget-limited run done; ``warmup`` is a
    fraction too).

    ``constant`` and ``plateau``: 1 after the warm-up (``plateau`` lowers the rate on its own, see
    :class:`PlateauScale`); ``cosine``/``warmup-cosine``: linear warm-up, then cosine to ``lr_min``.
    """
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return max(progress / warmup, 1e-3)  # never exactly 0: Adam's first step would be wasted
    if schedule in ("constant", "plateau"):
        return 1.0
    span = max(1e-12, 1.0 - warmup)
    floor = lr_min / lr
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / span)))


class WallBudget:
    """Training seconds spent against a budget; counts only time inside training and validation epochs.

    ``spent_s`` is saved in checkpoints, so a resumed run continues the same budget.
    """

    def __init__(self, budget_min: float):
        self.budget_s = 60.0 * budget_min
        self.spent_s = 0.0
        self._since = None

    def start(self) -> None:
        self._since = clock()

    def pause(self) -> None:
        if self._since is not None:
            self.spent_s += clock() - self._since
            self._since = None

    def elapsed_s(self) -> float:
        return self.spent_s + (clock() - self._since if self._since is not None else 0.0)

    def progress(self) -> float:
        return min(1.0, self.elapsed_s() / self.budget_s)

    def exhausted(self) -> bool:
        return self.elapsed_s() >= self.budget_s


class PlateauScale:
    """Reduce-on-plateau as a multiplier: × ``factor`` after ``patience`` validations without a new best
    (NequIP, Allegro, PaiNN: × 0.5; MACE, TorchMD-Net: × 0.8)."""

    def __init__(self, factor: float, patience: int):
        self.factor, self.patience = factor, patience
        self.best = math.inf
        self.bad = 0

    def update(self, value: float) -> bool:
        """Record a validation score; True when the rate was just lowered."""
        if value < self.best:
            self.best, self.bad = value, 0
            return False
        self.bad += 1
        if self.bad >= self.patience:
            self.bad = 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict) -> None:
        self.best, self.bad = float(state["best"]), int(state["bad"])
