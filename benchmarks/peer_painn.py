"""Our PaiNN against SchNetPack's, side by side: force-training steps per second on rMD17 ethanol.

Both models are PaiNN at its paper's MD17 size (3 interactions, 128 features, 20 sin(nπd/r_c)/d radial
functions, cosine cutoff 5 Å, independent weights per interaction) and take the same training step on the
same batches: energy E, forces F = −∂E/∂x with the graph kept, loss = MSE(E) + 10 · MSE(F) on standardised
values, backward (the double backward), Adam. Batches (``--batch`` frames of the official-1 training file,
drawn with a fixed seed) are built before timing for both: our flat batch with its complete graph, and
SchNetPack's input dictionary with every intramolecular pair (ethanol's atoms are all within 5 Å of each
other, so both models see the same pairs). Readouts differ: SchNetPack's ``Atomwise`` (128 → 64 → 1 per atom,
summed) against ours (node MLP 128 → 128 → 128, sum, graph MLP 128 → 128 → 1); the parameter counts are
printed so the difference is visible.

SchNetPack runs in its own virtual environment (``--peer-python``) with the torch it installs (2.4.1 for
schnetpack 2.1.1, which fails to import on our torch 2.13: ``torch.utils.data.dataloader.T_co`` is gone), as a
subprocess of this script in ``--_peer`` mode, so the two never share an interpreter. Each repeat times ours,
then the peer, with ``--threads`` threads each; the medians over ``--repeats`` and their ratio are printed.
The peer's torch version is printed beside ours: part of any difference can be torch's, not the model's.

Set-up of the peer (outside the repository; the torch it pulls is a multi-GB CUDA build from PyPI, which
runs on the CPU): ``python3 -m venv /work/spk-venv && /work/spk-venv/bin/pip install schnetpack``.

Run:  .venv/bin/python benchmarks/peer_painn.py --peer-python /work/spk-venv/bin/python [--threads 1]
Last line: ``train_speedup_vs_schnetpack_painn=<ours/peer steps per second>``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FORCE_WEIGHT = 10.0
CUTOFF_A, N_RBF, HIDDEN, LAYERS = 5.0, 20, 128, 3
DEFAULT_DATA = Path(__file__).parents[1] / "src" / "pairreg" / "data" / "rmd17_bundled" / "rmd17_ethanol_train_01.npz"
KCAL_TO_MEV = 43.364  # only to standardise targets; both models get identical standardised values


def draw_batches(path: Path, batch: int, n: int, seed: int = 0) -> dict:
    """``n`` batches of ``batch`` frames: z (atoms,), pos (n, batch, atoms, 3) Å, standardised E and F."""
    data = np.load(path)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(data["energies"]), size=(n, batch), replace=True)
    e = data["energies"] * KCAL_TO_MEV
    f = data["forces"] * KCAL_TO_MEV
    scale = float(np.sqrt((f ** 2).mean()))  # force RMS × 1 Å (the rmd17-1h recipe's energy scale)
    return {"z": data["nuclear_charges"].astype(np.int64), "pos": data["coords"][idx],
            "energy": (e[idx] - e.mean()) / scale, "forces": f[idx] / scale}


def time_steps(step, batches, warmup: int) -> list[float]:
    for b in batches[:warmup]:
        step(b)
    times = []
    for b in batches[warmup:]:
        t0 = time.perf_counter()
        step(b)
        times.append(time.perf_counter() - t0)
    return times


# --- ours (this interpreter) -------------------------------------------------------------------------------

def ours_runner(data: dict, threads: int):
    import torch

    from pairreg.data.molecules import make_batch
    from pairreg.models import MoleculeModel

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = MoleculeModel(n_targets=1, hidden=HIDDEN, n_layers=LAYERS, mitigation="none", backbone="painn",
                          n_rbf=N_RBF, cutoff_A=CUTOFF_A, rbf="bessel", elements=(1, 6, 8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    z = data["z"]
    batches = []
    for pos, e, f in zip(data["pos"], data["energy"], data["forces"]):
        b = make_batch([z] * len(pos), list(pos))
        batches.append((b, torch.as_tensor(e, dtype=torch.float32), torch.as_tensor(f.reshape(-1, 3), dtype=torch.float32)))

    def step(item):
        b, e, f = item
        opt.zero_grad(set_to_none=True)
        y, f_pred, _ = model.energy_and_forces(b.z, b.pos, b.batch, b.edge_index, b.num_molecules, create_graph=True)
        loss = ((y[:, 0] - e) ** 2).mean() + FORCE_WEIGHT * ((f_pred - f) ** 2).mean()
        loss.backward()
        opt.step()

    n_params = sum(p.numel() for p in model.parameters())
    return step, batches, n_params, torch.__version__


# --- the peer (SchNetPack's interpreter, --_peer mode) -----------------------------------------------------

def peer_main(batch_file: str, threads: int, warmup: int) -> None:
    import schnetpack as spk
    import schnetpack.properties as P
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    data = dict(np.load(batch_file))
    model = spk.model.NeuralNetworkPotential(
        representation=spk.representation.PaiNN(
            n_atom_basis=HIDDEN, n_interactions=LAYERS, radial_basis=spk.nn.BesselRBF(n_rbf=N_RBF, cutoff=CUTOFF_A),
            cutoff_fn=spk.nn.CosineCutoff(CUTOFF_A)),
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=HIDDEN, output_key="energy"),
                        spk.atomistic.Forces(energy_key="energy", force_key="forces")])
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    z = torch.as_tensor(data["z"])
    n_atoms = len(z)
    batches = []
    for pos, e, f in zip(data["pos"], data["energy"], data["forces"]):
        m = len(pos)
        pairs = [(a, b) for a in range(n_atoms) for b in range(n_atoms) if a != b]
        ii = torch.tensor([a + k * n_atoms for k in range(m) for a, _ in pairs])
        jj = torch.tensor([b + k * n_atoms for k in range(m) for _, b in pairs])
        inputs = {P.Z: z.repeat(m), P.R: torch.as_tensor(pos.reshape(-1, 3), dtype=torch.float32),
                  P.idx_m: torch.arange(m).repeat_interleave(n_atoms), P.idx_i: ii, P.idx_j: jj,
                  P.offsets: torch.zeros(len(ii), 3), P.n_atoms: torch.full((m,), n_atoms)}
        batches.append((inputs, torch.as_tensor(e, dtype=torch.float32),
                        torch.as_tensor(f.reshape(-1, 3), dtype=torch.float32)))

    def step(item):
        inputs, e, f = item
        inputs = {k: v.clone() for k, v in inputs.items()}  # the model writes into its input dictionary
        opt.zero_grad(set_to_none=True)
        out = model(inputs)
        loss = ((out["energy"] - e) ** 2).mean() + FORCE_WEIGHT * ((out["forces"] - f) ** 2).mean()
        loss.backward()
        opt.step()

    times = time_steps(step, batches, warmup)
    print(json.dumps({"times": times, "n_params": sum(p.numel() for p in model.parameters()),
                      "torch": torch.__version__, "schnetpack": getattr(spk, "__version__", "?")}))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--peer-python", help="python of a venv with schnetpack (without it, only ours is timed)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="rMD17 ethanol training npz (default: the bundled one)")
    p.add_argument("--batch", type=int, default=4, help="frames per batch (default 4, the rmd17-1h recipe's)")
    p.add_argument("--steps", type=int, default=40, help="timed steps per measurement (default 40)")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--_peer", nargs=2, metavar=("BATCH_FILE", "THREADS"), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args._peer:
        peer_main(args._peer[0], int(args._peer[1]), args.warmup)
        return 0
    data = draw_batches(Path(args.data), args.batch, args.warmup + args.steps)
    step, batches, ours_params, ours_torch = ours_runner(data, args.threads)
    ours, peer, peer_info = [], [], None
    with tempfile.TemporaryDirectory() as tmp:
        batch_file = str(Path(tmp) / "batches.npz")
        np.savez(batch_file, **data)
        for _ in range(args.repeats):
            ours.append(args.steps / sum(time_steps(step, batches, args.warmup)))
            if args.peer_python:
                run = subprocess.run([args.peer_python, __file__, "--_peer", batch_file, str(args.threads),
                                      "--warmup", str(args.warmup)], capture_output=True, text=True)
                if run.returncode != 0:
                    last = (run.stderr.strip().splitlines() or ["no output"])[-1]
                    print(f"peer_painn: the peer failed ({last}); timing ours only", file=sys.stderr)
                    args.peer_python = None
                    continue
                peer_info = json.loads(run.stdout.strip().splitlines()[-1])
                peer.append(len(peer_info["times"]) / sum(peer_info["times"]))
    print(f"rMD17 ethanol, batches of {args.batch} frames, {args.steps} timed steps after {args.warmup}, "
          f"median of {args.repeats}, threads={args.threads}\n")
    print("| model | torch | parameters | force-training steps/s |")
    print("|---|---|---|---|")
    print(f"| ours, backbone=painn (3 x 128) | {ours_torch} | {ours_params:,} | {statistics.median(ours):.2f} |")
    if not peer:
        print("\nSchNetPack not measured (no --peer-python, or it failed): ours only.")
        return 0
    print(f"| SchNetPack {peer_info['schnetpack']} PaiNN (3 x 128) | {peer_info['torch']} | {peer_info['n_params']:,} "
          f"| {statistics.median(peer):.2f} |")
    print(f"\ntrain_speedup_vs_schnetpack_painn={statistics.median(ours) / statistics.median(peer):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
