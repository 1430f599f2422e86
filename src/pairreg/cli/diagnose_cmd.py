"""``pairreg diagnose RUN_DIR_OR_CKPT [...] [--split test] [--molecules N] [--out DIR]``.

Per-layer Dirichlet energy (raw and scale-free), MAD, coordinate energy and the gradient of the prediction
with respect to each layer's parameters for one or more trained runs; writes ``diagnostics.json`` and
``diagnostics.png`` (one line per run).
"""

from __future__ import annotations

import json
from pathlib import Path


def add_parser(sub):
    p = sub.add_parser("diagnose", help="oversmoothing measures per layer for trained runs")
    p.add_argument("checkpoints", nargs="+", help="run directories or .ckpt files")
    p.add_argument("--split", default="test", choices=["train", "val", "test"])
    p.add_argument("--molecules", type=int, default=1000, help="first N molecules of the split (default 1000)")
    p.add_argument("--out", default="diagnostics", help="output folder (default ./diagnostics)")
    p.add_argument("--accelerator", default="auto", choices=["auto", "cpu", "gpu"],
                   help="where the model runs: auto = the CUDA GPU when PyTorch sees one, else the CPU (default auto)")


def run(args) -> int:
    from ..atomic import make_dirs, write_atomic
    from ..devices import torch_device
    from ..evaluation.diagnostics import diagnose_model, energy_ratio, layer_gradient_rms
    from ..evaluation.plots import plot_layer_diagnostics
    from ..training.checkpoint import load_model
    from ..data import qm9
    from ..training.datamodule import build_splits

    runs, datasets = [], {}  # QM9 is loaded once per target list, not once per run
    for path in args.checkpoints:
        model, info = load_model(path)
        model.to(torch_device(args.accelerator))
        cfg = info["config"]
        key = tuple(cfg.targets)
        if cfg.dataset == "qm9" and key not in datasets:
            datasets[key] = qm9.load_qm9(cfg.targets)
        ds, split = build_splits(cfg, datasets.get(key) if cfg.dataset == "qm9" else None)
        subset = ds.subset(split[args.split][: args.molecules])
        diag = diagnose_model(model, subset, cfg.batch_size)
        grad = layer_gradient_rms(model, subset, cfg.batch_size)
        runs.append({"checkpoint": info["path"], "label": f"{cfg.backbone} {cfg.mitigation}, {cfg.n_layers} layers",
                     "backbone": cfg.backbone,
                     "mitigation": cfg.mitigation, "n_layers": cfg.n_layers, "split": args.split,
                     "molecules": len(subset), "energy_ratio_last_first": energy_ratio(diag), "diagnostics": diag,
                     "gradient_rms_per_layer": grad})
        print(f"{runs[-1]['label']}: E_last/E_first = {runs[-1]['energy_ratio_last_first']:.3g}, "
              f"MAD last layer = {diag['mad_h'][-1]:.3g}, "
              f"gradient first/last layer = {grad[0] / grad[-1] if grad[-1] > 0 else float('nan'):.3g}  ({info['path']})")
    out = Path(args.out)
    make_dirs(out)
    write_atomic(out / "diagnostics.json", json.dumps(runs, indent=2))
    png = plot_layer_diagnostics(runs, out / "diagnostics.png")
    print(f"wrote {out / 'diagnostics.json'} and {png}")
    return 0
