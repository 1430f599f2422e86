"""Single-GPU benchmark: a training and inference throughput table, then a time-boxed QM9 HOMO training.

    python benchmarks/gpu.py [--qm9-npz .gpu/qm9_homo.npz] [--budget-min 3.5]   # one GPU, ~6 min
    python benchmarks/gpu.py --quick [--qm9-npz FILE]                           # any machine, toy sizes, < 1 min

1. Throughput, molecules/s, for every (layers × batch × precision) cell: the model of ``--preset``
   (default qm9-egnn: EGNN's QM9 model, hidden 128) with ``n_layers`` changed; one training step is
   forward + the library's loss + backward + Adam step, one inference step a forward pass without
   gradients. Batches are random QM9 training molecules collated once and kept on the device, so the
   table measures the model, not data loading; the CPU collation rate (one process) is printed beside
   it. Precisions: ``fp32`` (float32 matmuls), ``tf32`` (``torch.set_float32_matmul_precision("high")``),
   ``bf16`` (``torch.autocast`` bfloat16 around the forward pass). Peak GPU memory per cell. ``--compile``
   adds each cell at the first ``--layers`` again with the forward pass through ``torch.compile`` (dynamic
   shapes; compilation untimed), so compiled and eager rates are measured side by side.
2. A ``time_budget_min``-limited training of ``--preset`` on QM9 HOMO through
   :func:`pairreg.training.run.train` (EGNN split: 100,000 / 17,748 / 13,083; the full test set), with
   its test MAE at the best validation epoch and its end-to-end rate (data loading and validation
   included); ``--data-on-device`` and ``--train-compile`` switch on ``data_on_device`` and ``compile``.

The last line is ``gpu_train_mol_per_s=<best training rate at the first --layers (7), any batch and
precision>``. ``--quick`` runs the same code paths at toy sizes (2 and 3 layers, hidden 16, batch 8, a
3-second budget on at most 64 training molecules); ``tests/test_benchmarks.py`` runs it.
QM9 comes from ``--qm9-npz`` (written by ``benchmarks/make_qm9_compact.py``; the GPU machine has no
qm9pack) or else from pairreg's loader (qm9pack, or ``$PAIRREG_QM9_SOURCE``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_qm9_compact import CompactError, load_compact  # noqa: E402

PRECISIONS = ("fp32", "tf32", "bf16")
FULL = dict(layers=[7, 9], batches=[96, 1024], hidden=128, steps=20, warmup=5, budget_min=3.5, train_batch=96)
QUICK = dict(layers=[2, 3], batches=[8], hidden=16, steps=2, warmup=1, budget_min=0.05, train_batch=16)
QUICK_TRAIN = ["epochs=2", "subset_train=64", "subset_val=16", "subset_test=16"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Defaults (GPU): " + ", ".join(f"{k}={v}" for k, v in FULL.items())
                                + "; --quick: " + ", ".join(f"{k}={v}" for k, v in QUICK.items()))
    p.add_argument("--quick", action="store_true", help="toy sizes, the same code paths; runs on a CPU in under a minute")
    p.add_argument("--qm9-npz", help="compact QM9 file (benchmarks/make_qm9_compact.py); default: pairreg's QM9 loader")
    p.add_argument("--preset", default="qm9-egnn", help="model and training recipe (default %(default)s)")
    p.add_argument("--layers", type=int, nargs="+", help="depths of the table; the first is the headline's")
    p.add_argument("--batches", type=int, nargs="+", help="batch sizes of the table (molecules)")
    p.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    p.add_argument("--hidden", type=int, help="feature width")
    p.add_argument("--steps", type=int, help="timed steps per cell")
    p.add_argument("--warmup", type=int, help="untimed steps before them")
    p.add_argument("--budget-min", type=float, help="time_budget_min of the QM9 HOMO training (minutes)")
    p.add_argument("--train-batch", type=int, help="batch_size of that training")
    p.add_argument("--train-lr", type=float, help="lr of that training (default: the preset's)")
    p.add_argument("--train-precision", choices=("fp32", "tf32"), default="fp32",
                   help="float32 matmul precision of that training (default %(default)s; the library has no bf16 training)")
    p.add_argument("--num-workers", type=int, help="DataLoader worker processes of that training (default: 4 on a GPU, 0 on a CPU)")
    p.add_argument("--data-on-device", action="store_true",
                   help="that training keeps QM9 on the GPU and builds batches there (data_on_device=true; no workers)")
    p.add_argument("--compile", action="store_true",
                   help="also measure every cell at the first --layers with the model's forward pass through torch.compile")
    p.add_argument("--train-compile", action="store_true", help="the budget training with compile=true")
    p.add_argument("--no-train", action="store_true", help="the table only")
    p.add_argument("--out", default="runs/gpu-bench", help="parent folder of the training's run directory (default %(default)s)")
    p.add_argument("--json", help="also write every number to this JSON file")
    args = p.parse_args(argv)
    for key, value in (QUICK if args.quick else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def matmul_precision(name: str):
    """float32 matmuls in full precision (fp32, bf16's non-autocast parts) or TF32 (tf32), restored after."""
    old = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high" if name == "tf32" else "highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def autocast(name: str, device: torch.device):
    return torch.autocast(device.type, dtype=torch.bfloat16) if name == "bf16" else contextlib.nullcontext()


def load_dataset(args):
    if args.qm9_npz:
        ds = load_compact(args.qm9_npz)
    else:
        from pairreg.data import qm9

        ds = qm9.load_qm9(["homo"])
    if "homo" not in ds.target_names:
        raise CompactError(f"{args.qm9_npz}: holds {ds.target_names}, not homo")
    return ds.select_targets(["homo"])


def collate_rate(ds, train_idx, batch: int, repeats: int = 3) -> float:
    """Molecules/s of the library's CPU collation (one process), the data path of every training step."""
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    for _ in range(repeats):
        ds.collate(rng.choice(train_idx, size=batch, replace=batch > len(train_idx)))
    return repeats * batch / (time.perf_counter() - start)


def measure_cell(cfg, stats, batches, precision: str, args, device, compiled: bool = False) -> dict:
    """Training and inference molecules/s of one (layers, batch, precision) cell, and its peak GPU memory.

    ``compiled``: the forward pass through ``torch.compile`` (dynamic shapes, as in ``compile=true``); its
    compilation happens in the untimed first steps (train and eval mode each compile once).
    """
    from pairreg.training.losses import total_loss
    from pairreg.training.module import build_model, compiled_forward

    torch.manual_seed(0)
    model = build_model(cfg, *stats).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    forward = compiled_forward(model) if compiled else model

    def train_step(b):
        with autocast(precision, device):
            y_std, record = forward(b.z, b.pos, b.batch, b.edge_index, b.num_molecules)
            loss, _ = total_loss(model, y_std, model.to_standard(b.y), record, cfg.energy_loss, cfg.huber_delta,
                                 cfg.energy_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    @torch.no_grad()
    def infer_step(b):
        with autocast(precision, device):
            return forward(b.z, b.pos, b.batch, b.edge_index, b.num_molecules)[0]

    def rate(step) -> float:
        for k in range(args.warmup):
            step(batches[k % len(batches)])
        sync(device)
        start, n = time.perf_counter(), 0
        for k in range(args.steps):
            b = batches[k % len(batches)]
            step(b)
            n += b.num_molecules
        sync(device)
        return n / (time.perf_counter() - start)

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with matmul_precision(precision):
        model.train()
        loss = train_step(batches[0])
        if not torch.isfinite(loss):
            raise FloatingPointError(f"non-finite training loss {float(loss)}")
        train = rate(train_step)
        model.eval()
        infer_step(batches[0])  # eval mode compiles again (untimed)
        infer = rate(infer_step)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"train_mol_per_s": train, "infer_mol_per_s": infer, "peak_gpu_memory_GiB": peak}


def throughput_table(ds, args, device) -> list[dict]:
    from pairreg.config import load_config
    from pairreg.data import qm9
    from pairreg.training.datamodule import target_statistics

    train_idx = qm9.egnn_split(len(ds))["train"]
    stats = target_statistics(ds, train_idx)
    rng = np.random.default_rng(0)
    for batch in args.batches:
        print(f"CPU collation, batch {batch}: {collate_rate(ds, train_idx, batch):,.0f} molecules/s (one process)", flush=True)
    cells = []
    for batch in args.batches:
        picks = [rng.choice(train_idx, size=batch, replace=batch > len(train_idx)) for _ in range(4)]
        batches = [ds.collate(np.sort(p)).to(device) for p in picks]
        for layers in args.layers:
            cfg = load_config(args.preset, [f"n_layers={layers}", f"hidden={args.hidden}", "targets=homo"])
            variants = [(p, False) for p in args.precisions]
            if args.compile and layers == args.layers[0]:
                variants += [(p, True) for p in args.precisions]
            for precision, compiled in variants:
                cell = {"layers": layers, "hidden": args.hidden, "batch": batch, "precision": precision,
                        "compiled": compiled}
                try:
                    cell.update(measure_cell(cfg, stats, batches, precision, args, device, compiled))
                except (RuntimeError, FloatingPointError) as err:  # e.g. out of memory: report it, keep going
                    cell["error"] = f"{type(err).__name__}: {str(err).splitlines()[0][:160]}"
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                cells.append(cell)
                print(format_cell(cell), flush=True)
        del batches
    return cells


TABLE_HEAD = ("| layers × hidden | batch | precision | train mol/s | inference mol/s | peak GPU memory GiB |\n"
              "|---|---|---|---|---|---|")


def setting(c: dict) -> str:
    """A cell's precision, and whether it was compiled: ``tf32``, ``tf32 + compile``."""
    return f"{c['precision']}{' + compile' if c.get('compiled') else ''}"


def format_cell(c: dict) -> str:
    head = f"| {c['layers']} × {c['hidden']} | {c['batch']} | {setting(c)} |"
    if "error" in c:
        return f"{head} failed: {c['error']} | | |"
    peak = "n/a (CPU)" if c["peak_gpu_memory_GiB"] is None else f"{c['peak_gpu_memory_GiB']:.2f}"
    return f"{head} {c['train_mol_per_s']:,.0f} | {c['infer_mol_per_s']:,.0f} | {peak} |"


def budget_training(ds, args, device) -> dict:
    from pairreg.config import load_config
    from pairreg.training.checkpoint import load_checkpoint
    from pairreg.training.run import train

    workers = args.num_workers if args.num_workers is not None else (4 if device.type == "cuda" else 0)
    if args.data_on_device:
        workers = 0  # batches are built on the device, in the main process
    overrides = [f"time_budget_min={args.budget_min}", f"batch_size={args.train_batch}", "targets=homo",
                 "progress=false", "accelerator=auto", f"num_workers={workers}", f"out={args.out}",
                 f"data_on_device={str(args.data_on_device).lower()}", f"compile={str(args.train_compile).lower()}",
                 f"name=homo-{datetime.now().strftime('%Y%m%d-%H%M%S')}"]
    if args.train_lr is not None:
        overrides.append(f"lr={args.train_lr}")
    if args.quick:
        overrides += QUICK_TRAIN + [f"hidden={args.hidden}", f"n_layers={args.layers[0]}"]
    cfg = load_config(args.preset, overrides)
    print(f"\nQM9 HOMO training, {args.preset}: {cfg.n_layers} layers × {cfg.hidden}, batch {cfg.batch_size}, "
          f"lr {cfg.lr:g} ({cfg.schedule} over the budget), time_budget_min {cfg.time_budget_min:g}, "
          f"matmuls {args.train_precision}, num_workers {workers}, data_on_device {cfg.data_on_device}, "
          f"compile {cfg.compile}", flush=True)
    with matmul_precision(args.train_precision):
        summary = train(cfg, dataset=ds)
    result = {"settings": {k: getattr(cfg, k) for k in ("preset", "n_layers", "hidden", "mitigation", "batch_size", "lr",
                                                        "schedule", "time_budget_min", "epochs", "num_workers",
                                                        "data_on_device", "compile")},
              "matmul_precision": args.train_precision, "summary": summary}
    step = load_checkpoint(summary["run_dir"], "last").get("global_step")
    if step:
        result["optimizer_steps"] = int(step)
    if step and summary.get("training_time_s"):  # a toy run can round to 0.0 s: then no rate
        # optimiser steps × batch counts each epoch's last, smaller batch as a full one (at most B−1 extra)
        result["train_mol_per_s_end_to_end"] = step * cfg.batch_size / summary["training_time_s"]
    return result


def report_training(result: dict) -> None:
    s = result["summary"]
    test = {k: v for k, v in (s.get("test") or {}).items() if k.endswith("_meV")}
    val = {k: v for k, v in (s.get("val") or {}).items() if k.endswith("_meV")}
    print(f"stopped by {s['stopped_by']} after {s['epochs_run']} epochs "
          f"({s.get('training_time_s', float('nan'))} s of training and validation; wall {s['wall_time_s']} s); "
          f"best epoch {s['best_epoch']}")
    if "train_mol_per_s_end_to_end" in result:
        print(f"end-to-end training rate (data loading and validation included): "
              f"{result['train_mol_per_s_end_to_end']:,.0f} molecules/s over {result['optimizer_steps']} steps")
    for k, v in val.items():
        print(f"val {k.split('/')[1]}: {v:.2f}")
    for k, v in test.items():
        print(f"test {k.split('/')[1]}: {v:.2f}   (run directory {s['run_dir']})")


def main(argv=None) -> int:
    args = parse_args(argv)
    from pairreg.devices import torch_device

    device = torch_device("auto")
    if device.type != "cuda" and not args.quick:
        print("gpu.py: error: PyTorch sees no CUDA GPU; `--quick` runs the same code paths on a CPU", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {name}; torch {torch.__version__} (CUDA {torch.version.cuda}); "
          f"{'quick (toy sizes)' if args.quick else 'full'} run", flush=True)
    try:
        ds = load_dataset(args)
    except (CompactError, KeyError) as err:
        print(f"gpu.py: error: {err}", file=sys.stderr)
        return 2
    print(f"QM9: {len(ds)} molecules, {len(ds.z):,} atoms", flush=True)

    print(f"\n{TABLE_HEAD}", flush=True)
    cells = throughput_table(ds, args, device)
    print(f"\n{TABLE_HEAD}\n" + "\n".join(format_cell(c) for c in cells))
    ok = [c for c in cells if "error" not in c and c["layers"] == args.layers[0]]
    best = max(ok, key=lambda c: c["train_mol_per_s"]) if ok else None
    results = {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda, "quick": args.quick,
               "preset": args.preset, "cells": cells, "best": best}

    if not args.no_train:
        results["training"] = budget_training(ds, args, device)
        report_training(results["training"])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2, default=str))
    if best is not None:
        print(f"\nbest training rate at {best['layers']} layers × {best['hidden']}: batch {best['batch']}, "
              f"{setting(best)}, on {name}")
    print(f"gpu_train_mol_per_s={best['train_mol_per_s']:.0f}" if best else f"gpu_train_mol_per_s={math.nan}")
    return 0 if best is not None else 1


if __name__ == "__main__":
    sys.exit(main())
