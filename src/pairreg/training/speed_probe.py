"""How fast this machine trains, right now: a short, fixed force-training workload timed before a run starts.

A run with a wall-clock budget (``time_budget_min``) is only as good as the steps the machine gave it: the same
60 minutes made 45,000 QM9 steps on one of this project's development machines and 60,000 on the next
(docs/results.md, "QM9 (Table 1) at 60 minutes per cell"). Such runs record this probe in ``environment.json``
(at the start and at every resume), so ``pairreg bench`` can tell when a study joins time-budgeted cells trained
at different speeds — where the comparison would be about the machines, not the methods.

The workload is the step the rMD17 presets take, in small: a 4-layer EGNN (residual, width 64) on four
9-atom molecules, energy and forces (−∂E/∂x with the graph kept, then the loss's backward through it), an
Adam step. It uses no data files and the threads the run will use; it measures contention too (another job on
the same cores slows it as it slows the run).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

PROBE_STEPS = 15  # timed steps per repeat (~0.2 s on a 2-core development machine with one thread)
PROBE_REPEATS = 3  # the median of these is reported
PROBE_ATOMS, PROBE_MOLECULES = 9, 4


def _probe_batch(generator: torch.Generator):
    from ..data.molecules import make_batch

    zs = [np.array([6, 6, 8, 1, 1, 1, 1, 1, 1]) for _ in range(PROBE_MOLECULES)]  # ethanol's elements
    positions = [(1.5 * torch.randn(PROBE_ATOMS, 3, generator=generator, dtype=torch.float64)).numpy()
                 for _ in range(PROBE_MOLECULES)]
    return make_batch(zs, positions)


def force_steps_per_s(repeats: int = PROBE_REPEATS, steps: int = PROBE_STEPS) -> float:
    """Median force-training steps per second of the fixed workload, with torch's current thread count."""
    from ..models.model import MoleculeModel

    generator = torch.Generator().manual_seed(0)
    rng_state = torch.random.get_rng_state()  # the probe must not move the run's random stream
    try:
        torch.manual_seed(0)
        model = MoleculeModel(n_targets=1, hidden=64, n_layers=4, mitigation="residual", n_rbf=16, rbf_max_A=5.0)
    finally:
        torch.random.set_rng_state(rng_state)
    b = _probe_batch(generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        pos = b.pos.detach().requires_grad_(True)
        y, _ = model(b.z, pos, b.batch, b.edge_index, b.num_molecules)
        (forces,) = torch.autograd.grad(-y.sum(), pos, create_graph=True)
        loss = y.square().mean() + forces.square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # first call: allocations and lazy initialisation, not timed
    rates = []
    for _ in range(repeats):
        started = time.perf_counter()
        for _ in range(steps):
            step()
        rates.append(steps / (time.perf_counter() - started))
    return float(statistics.median(rates))


def probe_record() -> dict:
    """What ``environment.json`` keeps of one probe: when, with how many threads, how fast."""
    from datetime import datetime

    return {"at": datetime.now().isoformat(timespec="seconds"), "torch_threads": torch.get_num_threads(),
            "force_steps_per_s": round(force_steps_per_s(), 2)}
