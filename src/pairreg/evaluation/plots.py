"""Figures: oversmoothing measures per layer, several runs overlaid."""

from __future__ import annotations

from pathlib import Path


def plot_layer_diagnostics(runs: list[dict], path: str | Path) -> Path:
    """``runs``: dicts with ``label`` and ``diagnostics`` (as from ``diagnose_model``). Writes a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("dirichlet_h", "Dirichlet energy E(h)"), ("dirichlet_h_scale_free", "E(h) / mean ‖h‖²"),
              ("mad_h", "MAD of h"), ("dirichlet_x_A2", "Dirichlet energy of x (Å²)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
    for ax, (key, title) in zip(axes, panels):
        for run in runs:
            values = run["diagnostics"][key]
            ax.plot(range(len(values)), [max(v, 1e-12) for v in values], marker="o", ms=3, label=run["label"])
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
