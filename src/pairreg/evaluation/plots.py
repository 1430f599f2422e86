"""Figures: oversmoothing measures per layer, several runs overlaid."""

from __future__ import annotations

from pathlib import Path


def plot_layer_diagnostics(runs: list[dict], path: str | Path) -> Path:
    """``runs``: dicts with ``label`` and ``diagnostics`` (as from ``diagnose_model``), and optionally
    ``gradient_rms_per_layer`` (from ``layer_gradient_rms``: a fifth panel when every run has it). Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("dirichlet_h", "Dirichlet energy E(h)"), ("dirichlet_h_scale_free", "E(h) / mean ‖h‖²"),
              ("mad_h", "MAD of h"), ("dirichlet_x_A2", "Dirichlet energy of x (Å²)")]
    with_gradients = bool(runs) and all("gradient_rms_per_layer" in run for run in runs)
    if with_gradients:
        panels.append(("gradient_rms_per_layer", "RMS ‖∂ŷ/∂θ_layer‖ (standardised ŷ)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels):
        first = 1 if key == "gradient_rms_per_layer" else 0  # gradients exist for layers 1..L, not the embedding
        for run in runs:
            values = run[key] if key == "gradient_rms_per_layer" else run["diagnostics"][key]
            ax.plot(range(first, first + len(values)), [max(v, 1e-12) for v in values], marker="o", ms=3,
                    label=run["label"])
        ax.set_yscale("log")
        ax.set_xlabel("layer (0 = embedding)")
        ax.set_title(title, fontsize=10)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_learning_curves(runs: list, path: str | Path) -> Path:
    """``runs``: :class:`pairreg.evaluation.curves.Curves`, overlaid: one panel per validation MAE (log y) and
    one of the learning rate, against the epoch. Writes a PNG atomically."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from ..atomic import make_dirs, write_atomic
    from .curves import describe_metric

    metrics = list(dict.fromkeys(name for run in runs for name in run.val_mae))  # first run's order first
    fig, axes = plt.subplots(1, len(metrics) + 1, figsize=(4.2 * (len(metrics) + 1), 3.6), squeeze=False)
    labels = [run.run_dir.name for run in runs]
    if len(set(labels)) < len(labels):  # two runs of the same name in different folders
        labels = [str(run.run_dir) for run in runs]
    for ax, name in zip(axes[0], metrics):
        for run, label in zip(runs, labels):
            if name in run.val_mae:
                ax.plot(*run.val_mae[name], marker="o", ms=3, label=label)
        target, unit = describe_metric(name)
        ax.set_yscale("log")
        ax.set_title(f"validation {target} MAE ({unit})", fontsize=10)
    lr_ax = axes[0][-1]
    for run, label in zip(runs, labels):
        for name, (epochs, values) in run.lr.items():
            lr_ax.plot(epochs, values, marker="o", ms=3, label=label if len(run.lr) == 1 else f"{label} {name}")
    lr_ax.set_yscale("log")
    lr_ax.set_title("learning rate (start of epoch)", fontsize=10)
    for ax in axes[0]:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    path = Path(path)
    make_dirs(path.parent)
    write_atomic(path, buffer.getvalue())
    return path
