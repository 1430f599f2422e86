"""Reading finished cells: their manifest, speed probes and seed statistics. Torch-free, so the scripts that
pool or plot recorded cells (``benchmarks/pool_cells.py``, ``plot_depth.py``, ``step_budgets.py``) start fast."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

# Wall-budget cells whose machines' speed probes differ by more than this did not get the same training
SPEED_TOLERANCE = 0.15


def saved_manifest(out: Path) -> dict:
    """The study ``out`` holds, as its ``study.json`` says (``extra_overrides``: its ``--set``; ``row_overrides``: its
    ``--row-set``, by row), or {} before its first sitting."""
    path = Path(out) / "study.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def wall_budget_cells(results: list[dict]) -> list[dict]:
    """The cells trained to ``time_budget_min``: how far they got depends on the machine."""
    return [r for r in results if (r.get("config") or {}).get("time_budget_min") is not None]


def probe_rates(result: dict) -> list[float]:
    """A cell's speed probes (force steps/s): one per sitting it trained in, none before pairreg kept them."""
    return [p["force_steps_per_s"] for p in result.get("speed_probes") or []]


def finite(values) -> np.ndarray:
    """The finite values (float64), dropping None and NaN: cells without that metric."""
    return np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=np.float64)


def seed_stats(values) -> tuple[float, float, int]:
    """(mean, sample std (0 for one seed), n) of finite values."""
    v = finite(values)
    if not len(v):
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)
