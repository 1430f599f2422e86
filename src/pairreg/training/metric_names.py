"""How logged metrics are named (``val/forces_mae_meV_per_Angstrom``), torch-free so that the scripts that only read
finished cells (``benchmarks/pool_cells.py``, ``plot_depth.py``) start without importing torch."""

from __future__ import annotations

FORCE_NAME = "forces"


def metric_name(split: str, target: str, unit: str) -> str:
    """e.g. ``val/homo_mae_meV``; units with '/' become '_per_' so names stay path-safe."""
    return f"{split}/{target}_mae_{unit.replace('^', '').replace('/', '_per_')}"


def parse_metric_name(key: str) -> tuple[str, str, str] | None:
    """``"val/forces_mae_meV_per_Angstrom"`` → ``("val", "forces", "meV/Angstrom")``; None for other keys
    (e.g. ``val/mae_std``, ``train/loss``)."""
    split, _, rest = key.partition("/")
    if "_mae_" not in rest:
        return None
    target, unit = rest.split("_mae_", 1)
    return split, target, unit.replace("_per_", "/")
