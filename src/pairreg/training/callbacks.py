"""Callbacks of the field's recipe: weight averaging (Lightning's own), reduce-on-plateau and a divergence guard.

Both of the latter act on :attr:`PropertyModule.lr_scale`, a multiplier of the scheduled learning rate that
is saved in checkpoints, so a resumed run keeps its lowered rate.
"""

from __future__ import annotations

import copy
import math
import sys

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging

from .losses import DivergenceError
from .schedules import PlateauScale

__all__ = ["DivergenceError", "LrControl", "detach_weight_averaging", "weight_averaging"]
MAX_ROLLBACKS = 3
NO_FORCES_TOLERANCE = 1e-3  # a force MAE this close to the zero-force floor (relative): the model predicts ~0
STUCK_TOLERANCE = 1e-4  # a validation score changed less than this (relative) since the last one: not learning
STUCK_VALIDATIONS = 3  # this many validations in a row at the floor with an unchanged score: a dead model


def weight_averaging(decay: float) -> EMAWeightAveraging:
    """Exponential moving average of all weights, updated after every optimiser step (NequIP, Allegro and
    MACE use 0.99). Lightning swaps the average in for validation and writes it as the checkpoint's
    ``state_dict`` (the raw weights go to ``current_model_state`` for resuming), so evaluate, predict and
    the best-checkpoint test all use the averaged weights.

    Parameters only (``use_buffers=False``): our buffers are constants (target mean/scale, the element
    lookup table), and averaging the integer lookup table truncates it (an EMA step of 3 gives 2), which
    made oxygen look like nitrogen in every validation.

    The update is written ema + (1 − d)·(w − ema), not Lightning's d·ema + (1 − d)·w: the same average, but a
    weight that does not change (a frozen layer, ``freeze_layers``) stays bit for bit the same, where the other
    form rounds it a little at every step.

    The decay warms up with the number n of updates so far, d = min(decay, (1 + n) / (10 + n)), as NequIP's
    ``ema_use_num_updates`` and TensorFlow's ``ExponentialMovingAverage(num_updates=…)`` do: with a fixed 0.999
    a 10-minute QM9 run of SEGNN (~340 steps) was evaluated on an average still 0.999³⁴⁰ = 71 % its first
    step's weights. From n ≈ 9,000 on (decay 0.999) the two are the same.
    """
    callback = EMAWeightAveraging(decay=decay, use_buffers=False)
    callback._kwargs["avg_fn"] = _ema_step(decay)  # passed on to torch's AveragedModel
    return callback


def _ema_step(decay: float):
    def step(average, current, num_averaged):
        # num_averaged: a tensor on the weights' device (no host sync); ≥ 1 here, torch copies the first step
        n = num_averaged.to(average.dtype)
        d = ((1.0 + n) / (10.0 + n)).clamp(max=decay)
        return average + (1.0 - d) * (current - average)

    return step


def detach_weight_averaging(trainer: L.Trainer) -> None:
    """After ``fit``: stop the averaging callback from swapping weights in later validate/test calls
    (the best checkpoint's averaged weights are loaded explicitly instead)."""
    for cb in trainer.callbacks:
        if isinstance(cb, WeightAveraging):
            cb._average_model = None


class LrControl(L.Callback):
    """After each validation of ``fit``: reduce-on-plateau, and the divergence guard.

    The guard keeps a copy of the raw weights of the best validation so far. A validation whose score
    ``monitor`` is over ``explode_ratio`` × the best, non-finite, or whose force MAE is back at the zero-force
    floor (≥ 0.9 × ``force_floor``) after having been under half of it, rolls the weights back to that copy,
    clears the optimiser's moments, halves ``lr_scale`` and says so on stderr. So does a model that predicts
    no forces (force MAE within :data:`NO_FORCES_TOLERANCE` of the floor) after having been under 0.9 × the
    floor: a 12-layer PairReg run at lr 4e-3 went 532 → 448 → 862.6 meV/Å in its first three epochs and then
    sat at the floor for the rest of its budget, under the half-floor rule's notice (2026-12-06). A model
    that has never left the floor is not a collapse (ours start near zero forces and a small dataset's first
    epochs stay there) unless it has stopped moving: :data:`STUCK_VALIDATIONS` validations in a row that
    predict no forces with a score unchanged to :data:`STUCK_TOLERANCE` are a dead network (a 16-layer
    residual EGNN on aspirin at lr 4e-3 collapsed in its second epoch to a constant energy and zero forces
    and sat there, scores identical, for the 43 epochs of its budget, unseen by the rules above, 2026-12-06).
    Its best weights may be the dead ones (a constant mean energy scores better than a live model's first
    epoch), so it restarts from the weights training started from (after a resume: the resumed ones), with
    the rate halved. A non-finite training loss between validations rolls back at once
    (:meth:`roll_back_step`); before the first validation it returns to the weights training started from.
    After :data:`MAX_ROLLBACKS` rollbacks it stops the run with :class:`DivergenceError`. Runs before the
    checkpoint callback, so the epoch's checkpoint holds the rolled-back state.
    """

    def __init__(self, monitor: str = "val/mae_std", plateau: PlateauScale | None = None, guard: bool = True,
                 forces_metric: str | None = None, force_floor: float | None = None, explode_ratio: float = 10.0):
        self.monitor, self.plateau, self.guard = monitor, plateau, guard
        self.forces_metric, self.force_floor, self.explode_ratio = forces_metric, force_floor, explode_ratio
        self.best = math.inf
        self.best_epoch = -1
        self.best_forces = math.inf
        self.good_state = None
        self.good_label = "the initial weights"
        self.good_validated = False  # the copy passed a validation (else: the initial weights)
        self.initial_state = None  # the weights training started from (a dead network restarts there)
        self.initial_label = "the weights training started from"
        self.scores_at_floor: list[float] = []  # the last validation scores, while the model predicts no forces
        self.rollbacks = 0
        self.rolled_back_epoch = None  # the epoch whose validation was just undone (read by AtomicCheckpoint)

    def state_dict(self):
        return {"best": self.best, "best_epoch": self.best_epoch, "best_forces": self.best_forces,
                "rollbacks": self.rollbacks, "plateau": self.plateau.state_dict() if self.plateau else None}

    def load_state_dict(self, state):
        self.best, self.best_epoch = float(state["best"]), int(state["best_epoch"])
        self.best_forces, self.rollbacks = float(state["best_forces"]), int(state["rollbacks"])
        if self.plateau is not None and state.get("plateau"):
            self.plateau.load_state_dict(state["plateau"])

    def _predicts_no_forces(self, forces: float | None) -> bool:
        return (forces is not None and bool(self.force_floor)
                and abs(forces - self.force_floor) <= NO_FORCES_TOLERANCE * self.force_floor)

    def _diverged(self, value: float, forces: float | None) -> str | None:
        if not math.isfinite(value):
            return f"{self.monitor} is {value}"
        if math.isfinite(self.best) and value > self.explode_ratio * self.best:
            return f"{self.monitor} {value:.4g} is over {self.explode_ratio:g}× the best {self.best:.4g}"
        if (forces is not None and self.force_floor and forces >= 0.9 * self.force_floor
                and self.best_forces < 0.5 * self.force_floor):
            return (f"the force MAE {forces:.4g} is back at the zero-force floor {self.force_floor:.4g} "
                    f"(best {self.best_forces:.4g})")
        if self._predicts_no_forces(forces) and self.best_forces < 0.9 * self.force_floor:
            return (f"the force MAE {forces:.4g} is the zero-force floor {self.force_floor:.4g}: the model predicts "
                    f"no forces (best {self.best_forces:.4g})")
        return None

    def _stopped_learning(self, value: float, forces: float | None) -> str | None:
        """Not None once :data:`STUCK_VALIDATIONS` validations in a row predict no forces with the same score."""
        if not self._predicts_no_forces(forces):
            self.scores_at_floor = []
            return None
        scores = self.scores_at_floor = (self.scores_at_floor + [value])[-STUCK_VALIDATIONS:]
        if len(scores) < STUCK_VALIDATIONS or max(scores) - min(scores) > STUCK_TOLERANCE * abs(scores[-1]):
            return None
        return (f"the model predicts no forces (force MAE {forces:.4g}, the zero-force floor) and {self.monitor} "
                f"has stayed at {value:.4g} for {STUCK_VALIDATIONS} validations: it stopped learning")

    def on_train_start(self, trainer, pl_module):
        # the copy to return to before any validation has given one (after a resume: the resumed weights)
        if self.guard and self.good_state is None:
            self.good_state = copy.deepcopy(pl_module.state_dict())
            self.initial_state = self.good_state
            if trainer.current_epoch > 0:  # a checkpoint is written only after its epoch's validation
                self.good_label = self.initial_label = f"the resumed weights of epoch {trainer.current_epoch}"
                self.good_validated = True

    def on_validation_end(self, trainer, pl_module):
        if trainer.sanity_checking or trainer.state.fn != "fit" or self.monitor not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.monitor])
        forces = (float(trainer.callback_metrics[self.forces_metric])
                  if self.forces_metric and self.forces_metric in trainer.callback_metrics else None)
        reason = self._diverged(value, forces) if self.guard else None
        dead = self._stopped_learning(value, forces) if self.guard and reason is None else None
        if dead is not None and self.initial_state is not None:
            # start again: the best so far may be the dead network itself
            self.good_state, self.good_label = self.initial_state, self.initial_label
            self.best = self.best_forces = math.inf
            self.scores_at_floor = []
            self._roll_back(trainer, pl_module, dead)
            return
        # a validation's verdict needs a validated state to return to; else the run stops as before (the first
        # validation is NaN: nothing was ever good, and no best checkpoint could follow)
        if reason is not None and self.good_validated:
            self._roll_back(trainer, pl_module, reason)
            return
        if value < self.best:
            self.best, self.best_epoch = value, trainer.current_epoch
            if forces is not None:
                self.best_forces = min(self.best_forces, forces)
            if self.guard:
                self.good_state = copy.deepcopy(pl_module.state_dict())
                self.good_label = f"the weights of epoch {trainer.current_epoch + 1}"
                self.good_validated = True
        if self.plateau is not None and self.plateau.update(value):
            pl_module.lr_scale *= self.plateau.factor
            if trainer.is_global_zero:
                print(f"[pairreg] plateau: no new best {self.monitor} for {self.plateau.patience} validations; "
                      f"lr × {self.plateau.factor:g} (now {pl_module.lr_scale:.3g} × the schedule)",
                      file=sys.stderr, flush=True)

    def roll_back_step(self, trainer, pl_module, reason: str) -> bool:
        """A non-finite training loss in the middle of an epoch: roll back now, as after a diverged validation,
        and return True (the caller then skips this optimiser step); before the first validation the weights go
        back to those training started from. False where the guard cannot (off, or several processes, which
        would have to skip the step together)."""
        if not self.guard or self.good_state is None or trainer.world_size > 1:
            return False
        self._roll_back(trainer, pl_module, reason, during_validation=False)
        return True

    def _roll_back(self, trainer, pl_module, reason: str, during_validation: bool = True) -> None:
        self.rollbacks += 1
        epoch = trainer.current_epoch + 1
        if self.rollbacks > MAX_ROLLBACKS:
            raise DivergenceError(f"epoch {epoch}: training diverged again ({reason}) after {MAX_ROLLBACKS} "
                                  "rollbacks; lower lr or set grad_clip and start again")
        pl_module.load_state_dict(self.good_state)
        if during_validation:
            self.rolled_back_epoch = trainer.current_epoch
        for cb in trainer.callbacks:  # the weight average restarts from the restored weights
            if isinstance(cb, WeightAveraging) and cb._average_model is not None:
                cb._average_model.module.load_state_dict(self.good_state)
        for opt in trainer.optimizers:
            opt.state.clear()
        pl_module.lr_scale *= 0.5
        if trainer.is_global_zero:
            print(f"[pairreg] divergence guard: epoch {epoch}: {reason}; rolled back to {self.good_label} "
                  f"with lr × 0.5 (now {pl_module.lr_scale:.3g} × the schedule; rollback "
                  f"{self.rollbacks} of {MAX_ROLLBACKS})", file=sys.stderr, flush=True)
