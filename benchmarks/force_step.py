"""Where a force-training step spends its time: forward, force gradient (−∂E/∂x, graph kept), the loss's
backward through it (the double backward), the optimiser step — and the steps/s this gives.

The step is the one `pairreg train` takes with ``force_weight > 0`` (model, losses and optimiser of the
preset; EMA and Lightning's bookkeeping left out), timed phase by phase on real rMD17 batches. Beside it
the same model's energy-only step (forward + backward), so the cost of training on forces is a ratio
measured in the same run. ``--profile`` adds the operators that take the most CPU time (torch.profiler).

Run:  .venv/bin/python benchmarks/force_step.py [--molecules ethanol aspirin] [--preset rmd17-1h]
      [--set n_layers=4 ...] [--steps 60] [--data-root DIR] [--profile] [--quick]

Prints a markdown table per molecule and last lines ``force_steps_per_s_<molecule>=<median>``.
Timings need an otherwise idle machine; ratios within one run are the robust figures.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch

from pairreg.config import load_config
from pairreg.data.rmd17 import load_rmd17
from pairreg.models.model import build_model
from pairreg.training.datamodule import target_statistics
from pairreg.training.losses import force_loss, total_loss
from pairreg.training.module import build_optimizer

PHASES = ("batch", "forward", "force_grad", "backward", "optimizer")


def batches(ds, train_idx, batch_size: int, n: int, seed: int = 0):
    """``n`` random training batches, as the trainer draws them (collate included in the timing)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        yield rng.choice(train_idx, size=batch_size, replace=False)


def force_training_loss(model, cfg, b, y_std, forces_std, record) -> torch.Tensor:
    """The loss `pairreg train` minimises on forces before the second stage (its training_step, without logging)."""
    loss, _ = total_loss(model, y_std, model.to_standard(b.y), record, cfg.energy_loss, cfg.huber_delta,
                         cfg.energy_weight)
    return loss + cfg.force_weight * force_loss(forces_std, b.forces, model.target_scale, cfg.forces_loss,
                                                cfg.huber_delta)


def time_force_steps(model, cfg, ds, train_idx, n_steps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per phase for each timed step of force training."""
    opt = build_optimizer(cfg, model.parameters())
    times = {p: [] for p in PHASES}
    for k, idx in enumerate(batches(ds, train_idx, cfg.batch_size, warmup + n_steps)):
        t0 = time.perf_counter()
        b = ds.collate(idx)
        t1 = time.perf_counter()
        pos = b.pos.detach().requires_grad_(True)
        y_std, record = model(b.z, pos, b.batch, b.edge_index, b.num_molecules)
        t2 = time.perf_counter()
        (grad,) = torch.autograd.grad(y_std.sum(), pos, create_graph=True)
        t3 = time.perf_counter()
        loss = force_training_loss(model, cfg, b, y_std, -grad, record)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t4 = time.perf_counter()
        opt.step()
        t5 = time.perf_counter()
        if k >= warmup:
            for phase, dt in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                times[phase].append(dt)
    return times


def time_energy_steps(model, cfg, ds, train_idx, n_steps: int, warmup: int) -> list[float]:
    """Seconds per energy-only step (collate, forward, backward, optimiser) of the same model."""
    opt = build_optimizer(cfg, model.parameters())
    out = []
    for k, idx in enumerate(batches(ds, train_idx, cfg.batch_size, warmup + n_steps, seed=1)):
        t0 = time.perf_counter()
        b = ds.collate(idx)
        y_std, record = model(b.z, b.pos, b.batch, b.edge_index, b.num_molecules)
        loss, _ = total_loss(model, y_std, model.to_standard(b.y), record, cfg.energy_loss, cfg.huber_delta,
                             cfg.energy_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if k >= warmup:
            out.append(time.perf_counter() - t0)
    return out


def profile_table(model, cfg, ds, train_idx, n_steps: int) -> str:
    """torch.profiler's operators by self CPU time over ``n_steps`` force-training steps."""
    from torch.profiler import ProfilerActivity, profile

    time_force_steps(model, cfg, ds, train_idx, 2, 0)  # warm the allocator before recording
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        time_force_steps(model, cfg, ds, train_idx, n_steps, 0)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--molecules", nargs="+", default=["ethanol", "aspirin"])
    p.add_argument("--preset", default="rmd17-1h")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--steps", type=int, default=60, help="timed steps per measurement (default 60)")
    p.add_argument("--warmup", type=int, default=10, help="untimed steps first (default 10)")
    p.add_argument("--data-root", default="/work/shared/data/rmd17",
                   help="rMD17 folder (default ../shared/data/rmd17; 'bundled' has ethanol only)")
    p.add_argument("--profile", action="store_true", help="also print torch.profiler's top operators")
    p.add_argument("--quick", action="store_true", help="toy sizes (2 layers, width 16, 3 steps): checks the code paths")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    overrides = list(args.set)
    if args.quick:
        overrides += ["n_layers=2", "hidden=16", "n_rbf=8"]
        args.steps, args.warmup = 3, 1
    results = {}
    for molecule in args.molecules:
        cfg = load_config(args.preset, overrides + [f"molecule={molecule}", f"data_root={args.data_root}"])
        torch.manual_seed(cfg.seed)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        ds, idx = load_rmd17(molecule, cfg.split, root=cfg.data_root, download=False)
        mean, scale = target_statistics(ds, idx["train"], cfg.energy_scale)
        model = build_model(cfg, mean, scale)
        model.train()
        force = time_force_steps(model, cfg, ds, idx["train"], args.steps, args.warmup)
        energy = time_energy_steps(model, cfg, ds, idx["train"], args.steps, args.warmup)
        step = [sum(parts) for parts in zip(*(force[p] for p in PHASES))]
        med = statistics.median(step)
        n_atoms = int(ds.n_atoms[0])
        print(f"\n### {molecule} ({n_atoms} atoms), preset {args.preset} {' '.join(args.set)}: {cfg.n_layers} layers, "
              f"width {cfg.hidden}, batch {cfg.batch_size}, {torch.get_num_threads()} threads, "
              f"median of {args.steps} steps\n")
        print("| phase | ms per step (median) | share of the step |")
        print("|---|---|---|")
        for phase in PHASES:
            m = statistics.median(force[phase])
            print(f"| {phase} | {1e3 * m:.2f} | {m / med:.0%} |")
        print(f"| force step | {1e3 * med:.2f} | {1 / med:.1f} steps/s, "
              f"{cfg.batch_size * n_atoms / med:.0f} atoms/s |")
        e_med = statistics.median(energy)
        print(f"| energy-only step | {1e3 * e_med:.2f} | force step / energy-only step = {med / e_med:.2f} |")
        if args.profile:
            print("\n" + profile_table(model, cfg, ds, idx["train"], max(3, args.steps // 3)))
        results[molecule] = 1 / med
    print(f"\nmachine: {platform.machine()} {platform.processor() or ''}, torch {torch.__version__}")
    for molecule, rate in results.items():
        print(f"force_steps_per_s_{molecule}={rate:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
