"""Oversmoothing measures on constructed cases with hand-computed values."""

import itertools

import numpy as np
import pytest
import torch

from pairreg.evaluation.diagnostics import dirichlet_energy, layer_diagnostics, mean_average_distance


def brute_energy(h):
    n = len(h)
    return sum(float(((h[i] - h[j]) ** 2).sum()) for i, j in itertools.permutations(range(n), 2)) / n


def brute_mad(h):
    pairs = list(itertools.permutations(range(len(h)), 2))
    return sum(1 - float(torch.nn.functional.cosine_similarity(h[i], h[j], dim=0)) for i, j in pairs) / len(pairs)


def test_identical_features_give_zero():
    h = torch.ones(5, 4, dtype=torch.float64) * 3.0
    batch = torch.zeros(5, dtype=torch.long)
    assert float(dirichlet_energy(h, batch, 1)) == pytest.approx(0.0, abs=1e-12)
    assert float(mean_average_distance(h, batch, 1)) == pytest.approx(0.0, abs=1e-12)


def test_two_clusters_by_hand():
    # 2 atoms at (1, 0), 2 atoms at (-1, 0): 8 ordered cross pairs at squared distance 4 → E = 32/4 = 8;
    # cosine distance 2 for cross pairs, 0 within: MAD = 8·2 / 12 = 4/3.
    h = torch.tensor([[1.0, 0], [1.0, 0], [-1.0, 0], [-1.0, 0]], dtype=torch.float64)
    batch = torch.zeros(4, dtype=torch.long)
    assert float(dirichlet_energy(h, batch, 1)) == pytest.approx(8.0)
    assert float(mean_average_distance(h, batch, 1)) == pytest.approx(4 / 3)
    assert float(dirichlet_energy(h, batch, 1, scale_free=True)) == pytest.approx(8.0)  # mean ‖h‖² = 1


def test_matches_brute_force_per_molecule():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 3, generator=g, dtype=torch.float64), torch.randn(6, 3, generator=g, dtype=torch.float64)
    h = torch.cat([a, b])
    batch = torch.tensor([0] * 4 + [1] * 6)
    e = dirichlet_energy(h, batch, 2)
    m = mean_average_distance(h, batch, 2)
    assert e.tolist() == pytest.approx([brute_energy(a), brute_energy(b)])
    assert m.tolist() == pytest.approx([brute_mad(a), brute_mad(b)])


def test_scale_free_is_invariant_to_rescaling():
    h = torch.randn(6, 3, dtype=torch.float64)
    batch = torch.zeros(6, dtype=torch.long)
    assert float(dirichlet_energy(10 * h, batch, 1, True)) == pytest.approx(float(dirichlet_energy(h, batch, 1, True)))
    assert float(dirichlet_energy(10 * h, batch, 1)) == pytest.approx(100 * float(dirichlet_energy(h, batch, 1)))


def test_layer_diagnostics_on_a_model_record():
    from pairreg.data.molecules import make_batch
    from pairreg.models import MoleculeModel

    model = MoleculeModel(n_targets=1, hidden=8, n_layers=3)
    b = make_batch([np.array([6, 1, 1, 1]), np.array([8, 1, 1])], [np.random.rand(4, 3), np.random.rand(3, 3)])
    _, rec = model(b.z, b.pos, b.batch, b.edge_index, 2)
    d = layer_diagnostics(rec, b.batch, 2)
    assert all(len(v) == 4 for v in d.values())
    assert all(v >= 0 for vals in d.values() for v in vals)


def _molecules(n: int, seed: int = 0):
    """``n`` small random molecules (3–6 atoms of H, C, N, O) as a MoleculeSet."""
    from pairreg.data.molecules import MoleculeSet

    rng = np.random.default_rng(seed)
    sizes = rng.integers(3, 7, n)
    z = rng.choice([1, 6, 7, 8], sizes.sum())
    pos = rng.normal(scale=1.2, size=(sizes.sum(), 3))
    return MoleculeSet(z, pos, sizes, np.zeros((n, 1)), ["homo"], ["meV"])


def _exact_gradient_rms(model, ds) -> list[float]:
    """One backward pass per molecule: the quantity ``layer_gradient_rms`` estimates."""
    sums = [0.0] * len(model.backbone.layers)
    for m in range(len(ds)):
        b = ds.subset([m]).collate(np.arange(1))
        model.zero_grad(set_to_none=True)
        y, _ = model(b.z, b.pos, b.batch, b.edge_index, 1)
        y.sum().backward()
        for k, layer in enumerate(model.backbone.layers):
            sums[k] += float(sum((p.grad.double() ** 2).sum() for p in layer.parameters() if p.grad is not None))
    return [(s / len(ds)) ** 0.5 for s in sums]



@pytest.mark.parametrize("backbone, options", [("egnn", {"mitigation": "residual"}),
                                                ("painn", {"mitigation": "none", "n_rbf": 8, "cutoff_A": 5.0})])
def test_gradient_rms_estimates_the_per_molecule_gradient_norms(backbone, options):
    from pairreg.evaluation.diagnostics import layer_gradient_rms
    from pairreg.models import MoleculeModel

    torch.manual_seed(0)
    model = MoleculeModel(n_targets=1, hidden=8, n_layers=3, backbone=backbone, **options)
    ds = _molecules(6)
    exact = _exact_gradient_rms(model, ds)
    assert layer_gradient_rms(model, ds, batch_size=1) == pytest.approx(exact, rel=1e-9)  # one molecule: no signs
    # Batches of 6 with random signs: unbiased for the mean square, so the average over many sign draws converges.
    draws = [layer_gradient_rms(model, ds, batch_size=6, seed=s) for s in range(300)]
    mean_square = [sum(d[k] ** 2 for d in draws) / len(draws) for k in range(3)]
    assert mean_square == pytest.approx([e ** 2 for e in exact], rel=0.15)


def test_gradient_rms_shows_the_plain_stack_vanishing_where_the_residual_one_does_not():
    """At initialisation a 7-layer EGNN without residual connections passes almost no gradient to its first
    layer (each layer's MLP shrinks the signal); EGNN's residual form keeps every layer within a small factor."""
    from pairreg.evaluation.diagnostics import layer_gradient_rms
    from pairreg.models import MoleculeModel

    ds = _molecules(16, seed=1)
    ratios = {}
    for mitigation in ("none", "residual"):
        torch.manual_seed(0)
        model = MoleculeModel(n_targets=1, hidden=32, n_layers=7, mitigation=mitigation)
        grad = layer_gradient_rms(model, ds, batch_size=16)
        ratios[mitigation] = grad[0] / grad[-1]
    assert ratios["none"] < 1e-2 and ratios["residual"] > 0.1, ratios
