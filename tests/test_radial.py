"""Issue 14: the Bessel basis with DimeNet's p = 6 envelope, and the optional radius cutoff of the graph."""

import math

import numpy as np
import pytest
import torch

from pairreg.config import ConfigError, count_parameters, load_config
from pairreg.data.graphs import complete_graph_edges, radius_graph
from pairreg.data.molecules import make_batch
from pairreg.models import MoleculeModel
from pairreg.models import model as model_module
from pairreg.models.radial import BesselBasis, GaussianBasis, polynomial_envelope
from pairreg.testing.equivariance import assert_batch_independent, assert_equivariant, random_molecules
from pairreg.training.module import build_model

R_C = 3.0  # Å; the random test molecules (atoms ~ N(0, 1.5²) Å) have pairs on both sides of it


def envelope_by_hand(x):
    """u(x) for p = 6 written out: 1 − 28 x⁶ + 48 x⁷ − 21 x⁸."""
    return 1 - 28 * x**6 + 48 * x**7 - 21 * x**8


def cutoff_model(mitigation="pairreg", n_layers=2, seed=0, **options):
    """A float64 model whose coordinate heads and gates are not near zero (as after training)."""
    torch.manual_seed(seed)
    model = MoleculeModel(n_targets=1, hidden=16, n_layers=n_layers, mitigation=mitigation, **options).double()
    with torch.no_grad():
        for layer in model.backbone.layers:
            if layer.update_coords:
                layer.coord_mlp[-1].weight.mul_(300.0)
    return model.eval()


# --- the bases -----------------------------------------------------------------------------------

def test_bessel_values_match_the_closed_form():
    basis = BesselBasis(3, cutoff_A=5.0).double()
    d = torch.tensor([[2.5], [1.0], [5.0], [6.0]], dtype=torch.float64)
    got = basis(d)
    # d = 2.5 Å = r_c/2: sin(nπ/2) = 1, 0, −1 and u(½) = 1 − 28/64 + 48/128 − 21/256 = 0.85546875
    half = math.sqrt(2 / 5) / 2.5 * 0.85546875
    torch.testing.assert_close(got[0], torch.tensor([half, 0.0, -half], dtype=torch.float64), atol=1e-15, rtol=0)
    # d = 1 Å: x = 0.2, u = 1 − 28·0.2⁶ + 48·0.2⁷ − 21·0.2⁸ = 0.99876864
    expected = [math.sqrt(2 / 5) * math.sin(n * math.pi / 5) / 1.0 * 0.99876864 for n in (1, 2, 3)]
    torch.testing.assert_close(got[1], torch.tensor(expected, dtype=torch.float64), atol=1e-14, rtol=0)
    assert got[2:].abs().max() == 0  # zero at and beyond r_c


def test_gaussian_basis_is_the_old_formula():
    """Moved from the EGCL unchanged: exp(−((d − μ_k)/w)²), μ = 0 … rbf_max_A, w = spacing."""
    basis = GaussianBasis(5, rbf_max_A=4.0).double()
    d = torch.tensor([[0.3], [2.0], [7.5]], dtype=torch.float64)
    centres = torch.tensor([0.0, 1.0, 2.0, 3.0, 4.0], dtype=torch.float64)
    torch.testing.assert_close(basis(d), torch.exp(-((d - centres) / 1.0) ** 2))


def test_envelope_is_one_at_zero_and_flat_zero_at_the_cutoff():
    assert float(polynomial_envelope(torch.tensor(0.0), R_C)) == 1.0
    assert float(polynomial_envelope(torch.tensor(R_C), R_C)) == 0.0
    assert float(polynomial_envelope(torch.tensor(R_C + 0.5), R_C)) == 0.0
    # autograd derivatives against the hand-derived u′ = −168 x⁵ (1 − x)² / r_c and
    # u″ = −168 (5x⁴(1 − x)² − 2x⁵(1 − x)) / r_c², both zero at x = 1
    x = torch.tensor([0.3, 0.5, 0.9, 0.999, 1 - 1e-9, 1.2], dtype=torch.float64)
    d = (x * R_C).requires_grad_(True)
    u = polynomial_envelope(d, R_C)
    torch.testing.assert_close(u.detach(), torch.where(x < 1, envelope_by_hand(x), torch.zeros_like(x)))
    (du,) = torch.autograd.grad(u.sum(), d, create_graph=True)
    (d2u,) = torch.autograd.grad(du.sum(), d)
    inside = x < 1
    du_hand = torch.where(inside, -168 * x**5 * (1 - x) ** 2 / R_C, torch.zeros_like(x))
    d2u_hand = torch.where(inside, -168 * (5 * x**4 * (1 - x) ** 2 - 2 * x**5 * (1 - x)) / R_C**2, torch.zeros_like(x))
    torch.testing.assert_close(du.detach(), du_hand, atol=1e-12, rtol=1e-9)
    torch.testing.assert_close(d2u, d2u_hand, atol=1e-12, rtol=1e-9)
    assert abs(float(du[1].detach())) > 0.1  # not trivially flat
    assert abs(float(du[4])) < 1e-12 and abs(float(d2u[4])) < 1e-6  # first and second derivatives → 0 at r_c


# --- the radius graph ----------------------------------------------------------------------------

def test_radius_graph_keeps_exactly_the_close_pairs_and_is_complete_for_a_large_cutoff():
    zs, ps = random_molecules([5, 9], np.random.default_rng(3))
    b = make_batch(zs, ps, dtype=torch.float64)
    edges, dist = radius_graph(b.edge_index, b.pos, R_C)
    full = torch.from_numpy(complete_graph_edges([5, 9]))
    all_d = (b.pos[full[0]] - b.pos[full[1]]).norm(dim=-1)
    assert 0 < edges.shape[1] < full.shape[1]  # the test molecules have pairs on both sides of r_c
    torch.testing.assert_close(edges, full[:, all_d < R_C], rtol=0, atol=0)
    torch.testing.assert_close(dist[:, 0], all_d[all_d < R_C])
    big, _ = radius_graph(b.edge_index, b.pos, 100.0)
    assert torch.equal(big, full)


def test_a_cutoff_above_the_molecule_gives_the_complete_graph_model():
    zs, ps = random_molecules([5, 9], np.random.default_rng(4))
    b = make_batch(zs, ps, dtype=torch.float64)
    plain = cutoff_model(n_rbf=8, rbf_max_A=5.0)
    wide = cutoff_model(n_rbf=8, rbf_max_A=5.0, cutoff_A=1e4)  # u(d) = 1 − O((d/r_c)⁶) ≈ 1 − 1e-17
    wide.load_state_dict(plain.state_dict())
    torch.testing.assert_close(wide(b.z, b.pos, b.batch, b.edge_index, 2)[0],
                               plain(b.z, b.pos, b.batch, b.edge_index, 2)[0], atol=1e-12, rtol=0)
    narrow = cutoff_model(n_rbf=8, rbf_max_A=5.0, cutoff_A=R_C)
    narrow.load_state_dict(plain.state_dict())
    assert float((narrow(b.z, b.pos, b.batch, b.edge_index, 2)[0] - plain(b.z, b.pos, b.batch, b.edge_index, 2)[0])
                 .abs().max()) > 1e-4  # the cutoff does change the model at 3 Å


def crossing_energies(model, eps=1e-7):
    """Energies with atom 3 at distance r_c − 0.5, r_c − eps and r_c + eps from atom 0 (other distances fixed away from r_c)."""
    base = np.array([[0.0, 0.0, 0.0], [1.1, 0.0, 0.0], [0.4, 1.0, 0.0], [0.0, 0.0, 0.0]])
    z = torch.tensor([6, 8, 1, 1])
    out = []
    for r in (R_C - 0.5, R_C - eps, R_C + eps):
        pos = base.copy()
        pos[3] = [-r, 0.0, 0.0]  # from atom 1: r + 1.1; from atom 2: > r; only the 0–3 pair crosses
        b = make_batch([z.numpy()], [pos], dtype=torch.float64, centre=False)
        with torch.no_grad():
            out.append(float(model(b.z, b.pos, b.batch, b.edge_index, 1)[0]))
    return out


@pytest.mark.parametrize("mitigation,options", [
    ("pairreg", {"rbf": "gaussian", "n_rbf": 8, "rbf_max_A": 5.0}),  # coordinates move; the basis is not zero at r_c
    ("pairreg", {"rbf": "bessel", "n_rbf": 8}),
    ("g2", {"rbf": "gaussian", "n_rbf": 8, "rbf_max_A": 5.0, "mitigation_options": {"g2_aggregation": "mean"}}),
    ("none", {}),  # d² and h_j alone
])
def test_energy_is_continuous_as_an_atom_crosses_the_cutoff(mitigation, options):
    model = cutoff_model(mitigation, n_layers=3, cutoff_A=R_C, **options)
    far, below, above = crossing_energies(model)
    # only the 0–3 distance changes, and every term it enters is switched by u ~ (ε/r_c)³: measured ~1e-17
    assert abs(below - above) < 1e-10
    assert abs(far - below) > 1e-7  # the atom does interact inside the cutoff (measured 1e-6 … 2e-5)


def test_without_the_envelope_the_energy_jumps(monkeypatch):
    """Sensitivity of the test above: a hard cutoff (envelope replaced by 1) makes the energy jump."""
    monkeypatch.setattr(model_module, "polynomial_envelope", lambda dist, cutoff_A: torch.ones_like(dist))
    model = cutoff_model("pairreg", n_layers=3, cutoff_A=R_C, n_rbf=8, rbf_max_A=5.0)
    _, below, above = crossing_energies(model)
    assert abs(below - above) > 1e-6  # measured 7e-5


def test_atoms_beyond_the_cutoff_do_not_reach_each_other():
    """Two clusters farther apart than r_c in one molecule: moving one never changes the other's per-layer
    features or coordinates. (The energy is not a sum over atoms — EGNN pools before a non-linear head —
    so forces on one cluster may still depend on the other through that head.)"""
    rng = np.random.default_rng(5)
    a = rng.normal(scale=0.6, size=(4, 3))
    b = rng.normal(scale=0.6, size=(3, 3)) + [10.0, 0, 0]
    z = np.array([6, 1, 8, 1, 7, 1, 1])
    model = cutoff_model("pairreg", n_layers=3, cutoff_A=R_C, rbf="bessel", n_rbf=8)
    complete = cutoff_model("pairreg", n_layers=3, n_rbf=8, rbf_max_A=5.0)

    def cluster_a_record(m, shift_b):
        batch = make_batch([z], [np.concatenate([a, b + shift_b])], dtype=torch.float64, centre=False)
        with torch.no_grad():
            _, rec = m(batch.z, batch.pos, batch.batch, batch.edge_index, 1)
        return torch.cat([torch.cat([h[:4], x[:4]], dim=1) for h, x in zip(rec.h, rec.x)], dim=1)

    moved = np.array([3.0, -2.0, 1.5])  # cluster b stays > 8 Å from cluster a
    assert torch.equal(cluster_a_record(model, 0.0), cluster_a_record(model, moved))
    assert float((cluster_a_record(complete, 0.0) - cluster_a_record(complete, moved)).abs().max()) > 1e-6


# --- equivariance and batching -------------------------------------------------------------------

@pytest.mark.parametrize("mitigation,options", [
    ("pairreg", {"rbf": "bessel", "n_rbf": 8, "cutoff_A": 20.0}),  # Bessel, graph effectively complete
    ("pairreg", {"rbf": "bessel", "n_rbf": 8, "cutoff_A": R_C}),
    ("pairreg", {"n_rbf": 8, "rbf_max_A": 5.0, "cutoff_A": R_C}),
    ("g2", {"rbf": "bessel", "n_rbf": 8, "cutoff_A": R_C, "mitigation_options": {"update_coords": True}}),
])
def test_equivariance_and_batching_with_bessel_and_cutoff(mitigation, options):
    model = cutoff_model(mitigation, n_layers=3, **options)
    worst = assert_equivariant(model, dtype=torch.float64)
    assert worst["output"] < 1e-9
    assert_batch_independent(model, dtype=torch.float64)


# --- config ----------------------------------------------------------------------------------------

def test_config_keys_defaults_and_validation():
    cfg = load_config("qm9-demo")
    assert cfg.rbf == "gaussian" and cfg.cutoff_A is None  # existing runs are unchanged
    with pytest.raises(ConfigError, match="rbf=bessel needs cutoff_A"):
        load_config("rmd17-cpu", ["rbf=bessel"])
    with pytest.raises(ConfigError, match=r"rbf='sinc' is not valid"):
        load_config("rmd17-cpu", ["rbf=sinc"])
    with pytest.raises(ConfigError, match="cutoff_A must be > 0"):
        load_config("rmd17-cpu", ["cutoff_A=0"])
    with pytest.raises(ConfigError, match="cutoff_A must be a finite number"):
        load_config("rmd17-cpu", ["cutoff_A=.inf"])
    with pytest.raises(ConfigError, match="rbf=bessel: set n_rbf >= 1"):
        load_config("qm9-demo", ["rbf=bessel", "cutoff_A=5", "n_rbf=0"])


def test_build_model_and_count_parameters_get_the_new_keys():
    cfg = load_config("rmd17-cpu", ["hidden=8", "n_layers=2", "rbf=bessel", "cutoff_A=4.5"])
    model = build_model(cfg)
    layer = model.backbone.layers[0]
    assert isinstance(layer.rbf, BesselBasis) and layer.rbf.cutoff_A == 4.5 and model.cutoff_A == 4.5
    assert count_parameters(cfg) == sum(p.numel() for p in model.parameters())
    # the bases hold no saved state: checkpoints keep their keys whichever basis is chosen
    gaussian = build_model(load_config("rmd17-cpu", ["hidden=8", "n_layers=2", "cutoff_A=4.5"]))
    assert set(model.state_dict()) == set(gaussian.state_dict())
    assert not any(".rbf." in key for key in model.state_dict())
