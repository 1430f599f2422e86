"""Why rmd17-cpu adds a distance basis: can an EGNN fit rMD17 at all with d² as its only geometry?

Three measurements on one molecule's official-1 split (default aspirin), all seeded:

1. Reference points for the energy MAE on the 1,000 test frames: the training mean, and a ridge
   regression on every atom pair's distance and squared distance (no network).
2. Output spread: the standard deviation across 50 validation frames of the untrained model's
   energy, in meV, against the spread of the reference energies.
3. Over-fitting 4 frames with the force loss alone (L1 on F/σ_E, F = −∂E/∂x), 300 Adam steps
   (lr 1e-3), 3 layers, width 64, no mitigation: the loss after 0 and 300 steps for EGNN's edge input
   (d² only) and for Gaussian distance bases. A model that cannot fit 4 frames quickly will not
   learn 950 frames in a CPU budget.

Run:  .venv/bin/python benchmarks/rmd17_learnability.py --root ../shared/data/rmd17
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from pairreg.config import load_config
from pairreg.data.rmd17 import load_rmd17
from pairreg.training.datamodule import target_statistics
from pairreg.training.losses import force_loss
from pairreg.training.module import build_model

BASES = [("d² only (EGNN)", ["n_rbf=0"]), ("d² + 32 Gaussians, 0–10 Å", ["n_rbf=32", "rbf_max_A=10"]),
         ("d² + 64 Gaussians, 0–6 Å (rmd17-cpu)", ["n_rbf=64", "rbf_max_A=6"])]


def pair_features(ds, frames) -> np.ndarray:
    pos = np.stack([ds.pos[ds.offsets[i]:ds.offsets[i + 1]] for i in frames]).astype(np.float64)  # (F, N, 3) Å
    d = np.linalg.norm(pos[:, :, None] - pos[:, None], axis=-1)  # (F, N, N)
    iu = np.triu_indices(pos.shape[1], 1)
    pairs = d[:, iu[0], iu[1]]
    return np.concatenate([pairs, pairs ** 2], axis=1)


def ridge_mae(ds, split) -> float:
    x_train, x_test = pair_features(ds, split["train"]), pair_features(ds, split["test"])
    y_train, y_test = ds.y[split["train"], 0], ds.y[split["test"], 0]
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-12
    a = np.c_[(x_train - mu) / sd, np.ones(len(x_train))]
    w = np.linalg.solve(a.T @ a + 1e-3 * np.eye(a.shape[1]), a.T @ y_train)
    return float(np.abs(np.c_[(x_test - mu) / sd, np.ones(len(x_test))] @ w - y_test).mean())


def overfit(ds, split, mean, scale, overrides, steps: int) -> tuple[float, float]:
    torch.manual_seed(0)
    model = build_model(load_config("rmd17-cpu", ["n_layers=3", "mitigation=none", *overrides]), mean, scale)
    batch = ds.subset(split["train"][:4]).collate(np.arange(4))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(steps + 1):
        _, f_std, _ = model.energy_and_forces(batch.z, batch.pos, batch.batch, create_graph=True)
        loss = force_loss(f_std, batch.forces, model.target_scale)
        losses.append(float(loss.detach()))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return losses[0], losses[-1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=None, help="rMD17 folder (default: $PAIRREG_RMD17_ROOT / cache)")
    p.add_argument("--molecule", default="aspirin")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    ds, split = load_rmd17(args.molecule, "official-1", root=args.root)
    mean, scale = target_statistics(ds, split["train"])
    y_test = ds.y[split["test"], 0]
    print(f"{args.molecule}, official-1: {len(split['train'])} train / {len(split['test'])} test frames; "
          f"energy scale (train MAD) {scale[0]:.1f} meV")
    print(f"test energy MAE, training mean:            {np.abs(y_test - mean[0]).mean():7.1f} meV")
    print(f"test energy MAE, ridge on pair d and d²:   {ridge_mae(ds, split):7.1f} meV")
    val = ds.subset(split["val"]).collate(np.arange(len(split["val"])))
    print(f"spread of reference energies (val frames): {float(val.y[:, 0].std()):7.1f} meV")
    for label, overrides in BASES:
        torch.manual_seed(0)
        model = build_model(load_config("rmd17-cpu", ["n_layers=3", "mitigation=none", *overrides]), mean, scale)
        spread = float(model.predict(val.z, val.pos, val.batch)[:, 0].std())
        start = time.perf_counter()
        first, last = overfit(ds, split, mean, scale, overrides, args.steps)
        print(f"{label:40s} untrained output spread {spread:8.3f} meV | 4-frame force loss "
              f"{first:.3f} → {last:.3f} after {args.steps} steps ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
