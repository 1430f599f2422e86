"""Oversmoothing measures on constructed cases with hand-computed values."""

import itertools

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
    import numpy as np

    model = MoleculeModel(n_targets=1, hidden=8, n_layers=3)
    b = make_batch([np.array([6, 1, 1, 1]), np.array([8, 1, 1])], [np.random.rand(4, 3), np.random.rand(3, 3)])
    _, rec = model(b.z, b.pos, b.batch, b.edge_index, 2)
    d = layer_diagnostics(rec, b.batch, 2)
    assert all(len(v) == 4 for v in d.values())
    assert all(v >= 0 for vals in d.values() for v in vals)
