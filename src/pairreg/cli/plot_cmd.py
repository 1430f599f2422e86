"""``pairreg plot RUN_DIR ... [--out FILE.png]``: learning curves of one or several runs, overlaid.

Validation MAE per epoch of each target (forces too when the run has them; log y) and the learning rate per
epoch, read from the runs' ``logs/metrics.csv`` (:mod:`pairreg.evaluation.curves`).
"""

from __future__ import annotations


def add_parser(sub):
    p = sub.add_parser("plot", help="learning curves (validation MAE, learning rate per epoch) of runs, as a PNG")
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories (their logs/metrics.csv is read)")
    p.add_argument("--out", default="learning_curves.png", metavar="FILE.png",
                   help="where the figure is written (default ./learning_curves.png)")


def run(args) -> int:
    from ..evaluation.curves import describe_metric, read_curves
    from ..evaluation.plots import plot_learning_curves

    runs = [read_curves(path) for path in args.runs]  # every run is checked before anything is drawn
    for curves in runs:
        last = ", ".join(f"{describe_metric(name)[0]} {values[-1]:.4g} {describe_metric(name)[1]}"
                         for name, (_, values) in curves.val_mae.items())
        epochs = max(epochs[-1] for epochs, _ in curves.val_mae.values())
        print(f"{curves.run_dir}: {epochs} epochs; last validation MAE: {last}")
    print(f"wrote {plot_learning_curves(runs, args.out)}")
    return 0
