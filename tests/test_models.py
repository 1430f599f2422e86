"""Equivariance battery for every backbone × mitigation × depth, plus batching and numerics."""

import numpy as np
import pytest
import torch

from pairreg.data.molecules import make_batch
from pairreg.models import MoleculeModel, UnknownElementError
from pairreg.testing.equivariance import assert_batch_independent, assert_equivariant, random_molecules

# Every mitigation, and each PairReg switch value away from its default.
VARIANTS = {
    "none": ("none", {}),
    "none+coords": ("none", {"update_coords": True}),
    "residual": ("residual", {}),
    "pairreg": ("pairreg", {}),
    "pairreg-add": ("pairreg", {"residual": "add"}),
    "pairreg-noresidual": ("pairreg", {"residual": "none"}),
    "pairreg-dense": ("pairreg", {"residual": "dense-concat"}),
    "pairreg-replace-all-previous": ("pairreg", {"coord_mix": "replace", "reg_layers": "all", "reg_target": "previous"}),
    "pairreg-noise": ("pairreg", {"coord_noise": 0.1}),
    "pairreg-node-only": ("pairreg", {"ablation": "node-only"}),
    "pairreg-coord-only": ("pairreg", {"ablation": "coord-only"}),
    "pairnorm": ("pairnorm", {}),
    "pairnorm-si": ("pairnorm", {"pairnorm_mode": "pn-si"}),
    "pairnorm-scs": ("pairnorm", {"pairnorm_mode": "pn-scs", "pairnorm_scale": 2.0}),
    "g2": ("g2", {}),
    "g2-mean-coords": ("g2", {"g2_aggregation": "mean", "g2_p": 1.5, "update_coords": True}),
    "noisynodes": ("noisynodes", {}),
    "pairreg+rbf": ("pairreg", {}, {"n_rbf": 16, "rbf_max_A": 6.0}),  # distance basis in φ_e (rmd17-cpu)
    "none+rbf": ("none", {}, {"n_rbf": 8}),
    "g2+rbf": ("g2", {}, {"n_rbf": 8, "rbf_max_A": 6.0}),  # the gate EGCLs get the basis too
}


def make_model(variant, depth, hidden=16, seed=0):
    torch.manual_seed(seed)
    mitigation, options, *model_options = VARIANTS[variant]
    return MoleculeModel(n_targets=2, hidden=hidden, n_layers=depth, mitigation=mitigation, mitigation_options=options,
                         **(model_options[0] if model_options else {}))


def perturb_coord_weights(model):
    """Coordinate MLP heads start at gain 1e-3; scale them so coordinates really move in the test."""
    with torch.no_grad():
        for layer in model.backbone.layers:
            if layer.update_coords:
                layer.coord_mlp[-1].weight.mul_(300.0)
    return model


@pytest.mark.parametrize("depth", [2, 9])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_equivariance_float64(variant, depth):
    model = perturb_coord_weights(make_model(variant, depth))
    worst = assert_equivariant(model, dtype=torch.float64)
    assert worst["output"] < 1e-9


@pytest.mark.parametrize("variant", ["none", "pairreg", "pairreg-dense"])
def test_equivariance_float32(variant):
    model = perturb_coord_weights(make_model(variant, 9))
    assert_equivariant(model, dtype=torch.float32, atol=2e-3)


def test_coordinates_really_move():
    """Guard against a vacuous coordinate check: x_L must differ from x_0 under PairReg."""
    model = perturb_coord_weights(make_model("pairreg", 4)).double()
    zs, ps = random_molecules([6], np.random.default_rng(0))
    b = make_batch(zs, ps, dtype=torch.float64)
    with torch.no_grad():
        _, rec = model(b.z, b.pos, b.batch, b.edge_index, 1)
    assert float((rec.x[-1] - rec.x[0]).abs().max()) > 1e-3


def test_battery_catches_a_broken_model():
    """The check must fail for a model whose output depends on absolute coordinates."""
    model = make_model("pairreg", 2).double()
    inner = model.forward

    def leaky_forward(z, pos, batch, edge_index=None, n_molecules=None):
        y, rec = inner(z, pos, batch, edge_index, n_molecules)
        return y + 0.1 * pos[:, :1].sum(), rec

    model.forward = leaky_forward
    with pytest.raises(AssertionError, match="output not invariant"):
        assert_equivariant(model)


@pytest.mark.parametrize("depth", [2, 9])
@pytest.mark.parametrize("variant", ["none", "residual", "pairreg", "pairreg-dense", "pairreg-replace-all-previous",
                                     "pairnorm", "pairnorm-si", "pairnorm-scs", "g2", "g2-mean-coords", "noisynodes"])
def test_batched_equals_unbatched(variant, depth):
    assert_batch_independent(perturb_coord_weights(make_model(variant, depth)))


@pytest.mark.parametrize("depth", [9, 16])
@pytest.mark.parametrize("variant", ["none", "pairreg", "pairreg-replace-all-previous", "pairnorm-scs", "g2"])
def test_finite_outputs_and_gradients_at_depth_with_coincident_atoms(variant, depth):
    model = make_model(variant, depth, hidden=32)
    rng = np.random.default_rng(3)
    zs, ps = random_molecules([7, 5], rng)
    ps[0][1] = ps[0][0]  # two atoms at the same position
    b = make_batch(zs, ps)
    model.train()
    y, rec = model(b.z, b.pos, b.batch, b.edge_index, 2)
    loss = y.abs().mean()
    extra = model.extra_loss(rec)
    if extra is not None:
        loss = loss + extra
    loss.backward()
    assert torch.isfinite(y).all()
    assert all(torch.isfinite(x).all() for x in rec.x)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_two_atom_and_single_atom_molecules_are_finite():
    model = make_model("pairreg", 3)
    b = make_batch([np.array([1, 1]), np.array([6])], [np.zeros((2, 3)) + [[0, 0, 0], [0.74, 0, 0]], np.zeros((1, 3))])
    y, _ = model(b.z, b.pos, b.batch, b.edge_index, 2)
    assert torch.isfinite(y).all()


def test_default_edge_index_matches_collated():
    model = make_model("pairreg", 2)
    zs, ps = random_molecules([3, 6], np.random.default_rng(0))
    b = make_batch(zs, ps)
    with torch.no_grad():
        y1, _ = model(b.z, b.pos, b.batch, b.edge_index, 2)
        y2, _ = model(b.z, b.pos, b.batch)
    torch.testing.assert_close(y1, y2)


def test_unknown_element_is_named():
    model = make_model("none", 2)
    b = make_batch([np.array([6, 17])], [np.zeros((2, 3)) + [[0, 0, 0], [1.7, 0, 0]]])
    with pytest.raises(UnknownElementError, match=r"\[17\]"):
        model(b.z, b.pos, b.batch, b.edge_index, 1)


def test_physical_units_round_trip():
    model = MoleculeModel(n_targets=2, hidden=8, n_layers=1, target_mean=[10.0, -5.0], target_scale=[2.0, 0.5])
    y = torch.tensor([[12.0, -4.0]])
    std = model.to_standard(y)
    torch.testing.assert_close(std, torch.tensor([[1.0, 2.0]]))
    torch.testing.assert_close(model.to_physical(std), y.double())


def test_authors_coord_init_moves_coordinates_from_the_start_and_stays_equivariant():
    """coord_init=authors: φ_x's last layer keeps a bias and PyTorch's default init (the PairReg authors' scripts), so
    an untrained PairReg model moves coordinates ~60x more than with EGNN's gain-1e-3 start; still E(3)."""
    from pairreg.config import Config, ConfigError, validate

    zs, ps = random_molecules([6], np.random.default_rng(0))
    b = make_batch(zs, ps, dtype=torch.float64)
    moved = {}
    for init in ("egnn", "authors"):
        torch.manual_seed(0)
        model = MoleculeModel(hidden=16, n_layers=4, mitigation="pairreg", coord_init=init).double()
        assert (model.backbone.layers[0].coord_mlp[-1].bias is not None) == (init == "authors")
        assert_equivariant(model)
        with torch.no_grad():
            _, rec = model(b.z, b.pos, b.batch, b.edge_index, 1)
        moved[init] = float((rec.x[-1] - rec.x[0]).abs().max())
    assert moved["authors"] > 20 * moved["egnn"]
    with pytest.raises(ConfigError, match="coord_init=authors: only backbone=egnn"):
        validate(Config(coord_init="authors", backbone="clofnet"))
    from pairreg.bench.studies import ABLATION_VARIANTS

    assert "coord_init=authors" in ABLATION_VARIANTS["full, authors' φ_x init"]
