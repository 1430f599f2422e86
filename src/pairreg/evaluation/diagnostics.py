"""Oversmoothing measures per layer, computed per molecule on its complete graph.

* Dirichlet energy (Rusch, Bronstein & Mishra, "A survey on oversmoothing in GNNs", 2023):
  E(H) = (1/N) Σ_i Σ_{j≠i} ‖h_i − h_j‖². On a complete graph this equals 2 Σ_i ‖h_i − h̄‖²,
  which is how it is computed (O(N) per molecule).
* Scale-free energy: E(H) / mean_i ‖h_i‖², blind to a global rescaling (PairNorm rescales).
* MAD (Chen et al., AAAI 2020): mean cosine distance 1 − cos(h_i, h_j) over ordered pairs i ≠ j,
  from Σ_{i≠j} û_i·û_j = ‖Σ_i û_i‖² − Σ_i ‖û_i‖² with û the unit vectors (zero rows stay zero).
* Gradient per layer: how strongly each layer's parameters move the prediction, the root-mean-square over
  molecules of ‖∂ŷ_m/∂θ_ℓ‖ (ŷ standardised). It tells vanishing gradients (a deep stack whose first layers
  cannot learn) apart from oversmoothing (features that become alike), two failures that look the same in a
  learning curve.

Each function returns one value per molecule; average over molecules to report.
"""

from __future__ import annotations

import torch
from torch_geometric.utils import scatter

from ..devices import model_device


def _per_molecule_sum(values: torch.Tensor, batch: torch.Tensor, n_molecules: int) -> torch.Tensor:
    return scatter(values, batch, 0, dim_size=n_molecules, reduce="sum")


def dirichlet_energy(h: torch.Tensor, batch: torch.Tensor, n_molecules: int, scale_free: bool = False) -> torch.Tensor:
    """(n_molecules,) Dirichlet energy of node features ``h`` (n_atoms, d) on each complete graph."""
    counts = torch.bincount(batch, minlength=n_molecules).to(h.dtype).clamp(min=1)  # (n_mols,)
    mean = _per_molecule_sum(h, batch, n_molecules) / counts.unsqueeze(-1)  # (n_mols, d)
    dev2 = ((h - mean.index_select(0, batch)) ** 2).sum(-1)  # (n_atoms,)
    energy = 2.0 * _per_molecule_sum(dev2, batch, n_molecules)  # (n_mols,)
    if scale_free:
        norm2 = _per_molecule_sum((h ** 2).sum(-1), batch, n_molecules) / counts
        energy = energy / norm2.clamp(min=torch.finfo(h.dtype).tiny)
    return energy


def mean_average_distance(h: torch.Tensor, batch: torch.Tensor, n_molecules: int) -> torch.Tensor:
    """(n_molecules,) MAD: mean over ordered pairs i ≠ j of 1 − cos(h_i, h_j); 0 for single atoms."""
    counts = torch.bincount(batch, minlength=n_molecules).to(h.dtype)
    unit = h / h.norm(dim=-1, keepdim=True).clamp(min=1e-12)  # (n_atoms, d)
    total = _per_molecule_sum(unit, batch, n_molecules)  # (n_mols, d)
    self_dot = _per_molecule_sum((unit ** 2).sum(-1), batch, n_molecules)  # (n_mols,)
    pair_cos = (total ** 2).sum(-1) - self_dot  # Σ_{i≠j} cos
    pairs = counts * (counts - 1)
    return torch.where(pairs > 0, 1.0 - pair_cos / pairs.clamp(min=1), torch.zeros_like(pairs))


def layer_diagnostics(record, batch: torch.Tensor, n_molecules: int) -> dict[str, list[float]]:
    """Molecule-averaged measures for every entry of a :class:`LayerRecord` (index 0 = input to layer 1)."""
    out = {"dirichlet_h": [], "dirichlet_h_scale_free": [], "mad_h": [], "dirichlet_x_A2": []}
    with torch.no_grad():
        for h, x in zip(record.h, record.x):
            out["dirichlet_h"].append(float(dirichlet_energy(h, batch, n_molecules).mean()))
            out["dirichlet_h_scale_free"].append(float(dirichlet_energy(h, batch, n_molecules, True).mean()))
            out["mad_h"].append(float(mean_average_distance(h, batch, n_molecules).mean()))
            out["dirichlet_x_A2"].append(float(dirichlet_energy(x, batch, n_molecules).mean()))
    return out


def diagnose_model(model, ds, batch_size: int = 96) -> dict[str, list[float]]:
    """Per-layer measures averaged over all molecules of ``ds`` (a MoleculeSet), model in eval mode."""
    model.eval()
    device = model_device(model)
    sums, total = None, 0
    for b in ds.batches(batch_size):
        b = b.to(device)
        with torch.no_grad():
            _, rec = model(b.z, b.pos, b.batch, b.edge_index, b.num_molecules)
        d = layer_diagnostics(rec, b.batch, b.num_molecules)
        n = b.num_molecules
        sums = {k: [n * v for v in vals] for k, vals in d.items()} if sums is None else {
            k: [s + n * v for s, v in zip(sums[k], vals)] for k, vals in d.items()}
        total += n
    return {k: [v / total for v in vals] for k, vals in sums.items()}


def energy_ratio(diag: dict, key: str = "dirichlet_h") -> float:
    """Last-layer over first-layer energy (index 1 = after layer 1; index 0 is the embedding)."""
    values = diag[key]
    return values[-1] / values[1] if len(values) > 1 and values[1] > 0 else float("nan")


def layer_gradient_rms(model, ds, batch_size: int = 96, seed: int = 0) -> list[float]:
    """Per backbone layer ℓ (1..L): sqrt(mean over molecules m of ‖∂ŷ_m/∂θ_ℓ‖²), ŷ_m the standardised
    prediction summed over targets (an energy model: the energy), θ_ℓ all parameters of layer ℓ.

    One backward pass per batch, not per molecule: with random signs s_m = ±1, E‖Σ_m s_m g_m‖² = Σ_m ‖g_m‖²
    (the cross terms average to zero), so the squared norm of the gradient of Σ_m s_m ŷ_m is an unbiased
    estimate of the batch's sum of per-molecule squared norms (Hutchinson's trick). Model in eval mode.
    """
    model.eval()
    device = model_device(model)
    layers = list(model.backbone.layers)
    generator = torch.Generator().manual_seed(seed)
    sums, total = [0.0] * len(layers), 0
    for b in ds.batches(batch_size):
        b = b.to(device)
        model.zero_grad(set_to_none=True)
        y_std, _ = model(b.z, b.pos, b.batch, b.edge_index, b.num_molecules)
        signs = torch.randint(0, 2, (b.num_molecules,), generator=generator).to(y_std) * 2 - 1
        (signs * y_std.sum(-1)).sum().backward()
        for k, layer in enumerate(layers):
            sums[k] += float(sum((p.grad.double() ** 2).sum() for p in layer.parameters() if p.grad is not None))
        total += b.num_molecules
    model.zero_grad(set_to_none=True)
    return [(s / max(total, 1)) ** 0.5 for s in sums]
