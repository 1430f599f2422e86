"""PaiNN backbone: equivariance battery × every mitigation it takes, batching, forces, the cutoff, a layer by
hand, and the mitigation contract on vector features."""

import math

import numpy as np
import pytest
import torch

from pairreg.config import Config, ConfigError, validate
from pairreg.data.molecules import make_batch
from pairreg.models import MoleculeModel
from pairreg.models.backbones.painn import PaiNNLayer
from pairreg.models.mitigations import build_mitigation
from pairreg.models.radial import cosine_cutoff
from pairreg.models.state import LayerState
from pairreg.testing.equivariance import (assert_batch_independent, assert_equivariant, random_molecules,
                                          random_orthogonal)

CUTOFF_A = 4.0  # below the test molecules' largest distances (atoms ~ N(0, 1.5² Å²)), so the cutoff is exercised
VARIANTS = {
    "none": ("none", {}),
    "pairreg": ("pairreg", {}),
    "pairreg-replace": ("pairreg", {"coord_mix": "replace"}),
    "pairreg-dense": ("pairreg", {"residual": "dense-concat"}),
    "pairreg-node-only": ("pairreg", {"ablation": "node-only"}),
    "pairreg-coord-only": ("pairreg", {"ablation": "coord-only"}),
    "pairnorm": ("pairnorm", {}),
    "pairnorm-scs": ("pairnorm", {"pairnorm_mode": "pn-scs"}),
    "g2": ("g2", {}),
    "g2-mean": ("g2", {"g2_aggregation": "mean", "g2_p": 1.5}),
    "none-gaussian": ("none", {}, {"rbf": "gaussian", "rbf_max_A": CUTOFF_A}),
}


def make_painn(variant="none", depth=2, hidden=16, seed=0, n_targets=2):
    torch.manual_seed(seed)
    mitigation, options, *extra = VARIANTS[variant]
    kwargs = dict(n_rbf=8, cutoff_A=CUTOFF_A, rbf="bessel")
    kwargs.update(extra[0] if extra else {})
    return MoleculeModel(n_targets=n_targets, hidden=hidden, n_layers=depth, mitigation=mitigation,
                         mitigation_options=options, backbone="painn", **kwargs)


@pytest.mark.parametrize("depth", [2, 9])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_equivariance_float64(variant, depth):
    worst = assert_equivariant(make_painn(variant, depth), dtype=torch.float64)
    assert worst["output"] < 1e-9 and worst["vectors"] < 1e-9


@pytest.mark.parametrize("variant", ["none", "pairreg", "g2"])
def test_equivariance_float32(variant):
    assert_equivariant(make_painn(variant, 9), dtype=torch.float32, atol=2e-3)


@pytest.mark.parametrize("depth", [2, 9])
@pytest.mark.parametrize("variant", ["none", "pairreg", "pairreg-dense", "pairnorm", "g2-mean"])
def test_batched_equals_unbatched(variant, depth):
    assert_batch_independent(make_painn(variant, depth))


def test_vector_features_are_not_vacuous():
    """Guard the vector check: PaiNN's vectors must be non-zero after a layer (they start at zero)."""
    model = make_painn("pairreg", 3).double()
    zs, ps = random_molecules([6], np.random.default_rng(0))
    b = make_batch(zs, ps, dtype=torch.float64)
    with torch.no_grad():
        _, rec = model(b.z, b.pos, b.batch, b.edge_index, 1)
    assert float(rec.v[0].abs().max()) == 0.0
    assert float(rec.v[-1].abs().max()) > 1e-3
    assert torch.equal(rec.x[-1], rec.x[0])  # PaiNN never moves positions


def test_battery_catches_vectors_that_are_not_rotated():
    """A model whose vector features ignore the rotation must fail the battery."""
    model = make_painn("none", 2).double()
    inner = model.forward

    def broken(z, pos, batch, edge_index=None, n_molecules=None):
        y, rec = inner(z, pos, batch, edge_index, n_molecules)
        rec.v = [v.abs() for v in rec.v]  # component magnitudes: not a vector any more
        return y, rec

    model.forward = broken
    with pytest.raises(AssertionError, match="vectors not equivariant"):
        assert_equivariant(model)


@pytest.mark.parametrize("variant", ["none", "pairreg", "g2"])
def test_forces_are_equivariant(variant):
    """F(P(x Qᵀ + t)) = P(F(x) Qᵀ), reflections included, in float64."""
    model = make_painn(variant, 3, n_targets=1).double().eval()
    rng = np.random.default_rng(5)
    zs, ps = random_molecules([7, 5], rng)
    b = make_batch(zs, ps, dtype=torch.float64, centre=False)
    _, f1, _ = model.energy_and_forces(b.z, b.pos, b.batch, b.edge_index, 2)
    assert float(f1.abs().max()) > 1e-6
    for det in (1, -1):
        q = random_orthogonal(det, rng)
        t = torch.from_numpy(rng.normal(size=3))
        perm = torch.from_numpy(np.concatenate([rng.permutation(7), 7 + rng.permutation(5)]))
        pos2 = (b.pos @ q.T + t)[perm]
        _, f2, _ = model.energy_and_forces(b.z[perm], pos2, b.batch, None, 2)
        assert torch.allclose(f2, (f1 @ q.T)[perm], atol=1e-10)


def test_forces_are_minus_the_energy_gradient():
    model = make_painn("pairreg", 2, n_targets=1).double().eval()
    zs, ps = random_molecules([6], np.random.default_rng(2))
    b = make_batch(zs, ps, dtype=torch.float64)
    y, f, _ = model.energy_and_forces(b.z, b.pos, b.batch, b.edge_index, 1)
    h = 1e-6
    for atom, axis in [(0, 0), (3, 2), (5, 1)]:
        plus, minus = b.pos.clone(), b.pos.clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        with torch.no_grad():
            fd = (model(b.z, plus, b.batch, None, 1)[0] - model(b.z, minus, b.batch, None, 1)[0]) / (2 * h)
        assert float(f[atom, axis]) == pytest.approx(-float(fd[0, 0]), rel=1e-6, abs=1e-8)


def test_atoms_beyond_the_cutoff_are_irrelevant():
    """PaiNN's published property: an atom farther than r_c from every other atom does not interact, so moving
    it anywhere beyond the cutoff leaves the energy unchanged (and brings it in changes it)."""
    model = make_painn("none", 3, n_targets=1).double().eval()
    rng = np.random.default_rng(4)
    z = np.array([6, 1, 1, 8, 1])
    core = rng.normal(scale=0.7, size=(4, 3))

    def energy(far_position):
        pos = np.vstack([core, far_position])
        b = make_batch([z], [pos], dtype=torch.float64, centre=False)
        with torch.no_grad():
            return float(model(b.z, b.pos, b.batch, None, 1)[0][0, 0])

    reach = np.abs(core).max() + CUTOFF_A + 0.1
    far = [energy(np.array([reach, 0, 0])), energy(np.array([0, -reach - 3, 1])), energy(np.array([5, 5, reach]))]
    assert max(far) - min(far) < 1e-12
    assert abs(energy(np.array([1.0, 0.0, 0.0])) - far[0]) > 1e-6


def test_energy_and_forces_are_continuous_as_a_pair_crosses_the_cutoff():
    model = make_painn("none", 2, n_targets=1).double().eval()
    z = torch.tensor([6, 8])
    batch = torch.zeros(2, dtype=torch.long)
    out = []
    for d in (CUTOFF_A - 1e-7, CUTOFF_A + 1e-7):
        pos = torch.tensor([[0.0, 0.0, 0.0], [d, 0.0, 0.0]], dtype=torch.float64)
        y, f, _ = model.energy_and_forces(z, pos, batch, None, 1)
        out.append((float(y.detach()), f))
    assert abs(out[0][0] - out[1][0]) < 1e-9
    assert float((out[0][1] - out[1][1]).abs().max()) < 1e-6


def test_one_layer_by_hand():
    """One PaiNN layer on two atoms, written out component by component with numpy from the paper's equations."""
    torch.manual_seed(1)
    F, n_rbf, rc = 3, 4, 5.0
    layer = PaiNNLayer(F, n_rbf).double()
    s = torch.randn(2, F, dtype=torch.float64)
    v = torch.randn(2, 3, F, dtype=torch.float64)
    x = np.array([[0.0, 0.0, 0.0], [0.6, -0.8, 1.2]])
    from pairreg.models.backbones.painn import EdgeGeometry
    from pairreg.models.radial import BesselBasis

    rbf = BesselBasis(n_rbf, rc, envelope=False).double()
    i, j = torch.tensor([0, 1]), torch.tensor([1, 0])
    r = torch.from_numpy(x[[1, 0]] - x[[0, 1]])
    d = r.norm(dim=-1, keepdim=True)
    edges = EdgeGeometry(i, j, rbf(d), r / d, cosine_cutoff(d, rc))
    with torch.no_grad():
        s_out, v_out = layer(s, v, edges)

    P = {k: p.detach().numpy() for k, p in layer.named_parameters()}
    silu = lambda a: a / (1 + np.exp(-a))  # noqa: E731
    sn, vn = s.numpy(), v.numpy()
    s_msg, v_msg = sn.copy(), vn.copy()
    for a, b in ((0, 1), (1, 0)):  # receiver a, sender b
        rab = x[b] - x[a]
        dist = np.linalg.norm(rab)
        basis = np.sqrt(2 / rc) * np.sin(np.arange(1, n_rbf + 1) * np.pi * dist / rc) / dist
        cut = 0.5 * (np.cos(np.pi * dist / rc) + 1)
        phi = P["phi.2.weight"] @ silu(P["phi.0.weight"] @ sn[b] + P["phi.0.bias"]) + P["phi.2.bias"]
        w = (P["filter.weight"] @ basis + P["filter.bias"]) * cut
        m = phi * w
        s_msg[a] += m[:F]
        v_msg[a] += vn[b] * m[F:2 * F] + np.outer(rab / dist, m[2 * F:])
    s_hand, v_hand = s_msg.copy(), v_msg.copy()
    for a in range(2):
        uv = v_msg[a] @ P["vec_u.weight"].T  # (3, F)
        vv = v_msg[a] @ P["vec_v.weight"].T
        norm = np.sqrt((vv ** 2).sum(0) + 1e-8)
        hid = silu(P["update_mlp.0.weight"] @ np.concatenate([s_msg[a], norm]) + P["update_mlp.0.bias"])
        out = P["update_mlp.2.weight"] @ hid + P["update_mlp.2.bias"]
        v_hand[a] += out[:F] * uv
        s_hand[a] += out[F:2 * F] * (uv * vv).sum(0) + out[2 * F:]
    np.testing.assert_allclose(s_out.numpy(), s_hand, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(v_out.numpy(), v_hand, rtol=1e-12, atol=1e-12)


def test_pairreg_averages_vector_features_and_keeps_no_coordinate_term():
    mit = build_mitigation("pairreg", 2, 4, backbone="painn")
    assert mit.update_coords is False and mit.reg_weight == 0.0 and mit.vector_mix == "average"
    v_prev, v_new = torch.randn(3, 3, 4), torch.randn(3, 3, 4)
    assert torch.allclose(mit.combine_vectors(0, v_prev, v_new, None, None), 0.5 * (v_prev + v_new))
    node_only = build_mitigation("pairreg", 2, 4, backbone="painn", ablation="node-only")
    assert torch.equal(node_only.combine_vectors(0, v_prev, v_new, None, None), v_new)
    assert build_mitigation("pairreg", 2, 4, backbone="painn", ablation="coord-only").residual == "none"


def test_g2_gates_vectors_with_the_scalar_rates():
    """Identical gate inputs over a molecule give τ = 0: scalars and vectors both keep the previous layer."""
    model = make_painn("g2", 2, hidden=4).double()
    mit = model.backbone.mitigation
    from pairreg.models.mitigations import GraphContext

    n = 4
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(n, 3)))
    i, j = zip(*[(a, b) for a in range(n) for b in range(n) if a != b])
    edge_index = torch.tensor([i, j])
    graph = GraphContext(torch.zeros(n, dtype=torch.long), edge_index, 1)
    graph.edges = model.backbone.edge_geometry(x, edge_index)
    prev = LayerState(torch.ones(n, 4, dtype=torch.float64), x, torch.zeros(n, 3, 4, dtype=torch.float64))
    new = LayerState(torch.randn(n, 4, dtype=torch.float64), x, torch.randn(n, 3, 4, dtype=torch.float64))
    # all atoms identical and vectors zero: the gate's scalar output differs per atom only through geometry,
    # so force identical rates by making every gate weight that reads geometry zero
    with torch.no_grad():
        mit.gates[0].filter.weight.zero_()
        mit.gates[0].filter.bias.zero_()
    out = mit.combine_state(0, prev, new, graph, None)
    assert torch.allclose(out.h, prev.h) and torch.allclose(out.v, prev.v)


@pytest.mark.parametrize("mitigation, options, message", [
    ("residual", {}, "already add their updates"),
    ("pairreg", {"residual": "add"}, "already add their updates"),
    ("noisynodes", {}, "keeps positions fixed"),
    ("pairreg", {"reg_weight": 1.0}, "regulariser would be 0"),
    ("pairreg", {"update_coords": True}, "keeps positions fixed"),
    ("pairreg", {"coord_noise": 0.1}, "keeps positions fixed"),
    ("none", {"update_coords": True}, "keeps positions fixed"),
    ("g2", {"update_coords": True}, "keeps positions fixed"),
    ("pairnorm", {"update_coords": True}, "keeps positions fixed"),
])
@pytest.mark.parametrize("backbone", ["painn", "segnn"])  # both keep positions fixed and have residual layers
def test_combinations_that_make_no_sense_are_refused_by_name(backbone, mitigation, options, message):
    with pytest.raises(ValueError, match=message) as err:
        build_mitigation(mitigation, 2, 4, backbone=backbone, **options)
    assert backbone in str(err.value)


def test_config_needs_a_cutoff_and_a_basis_for_painn():
    with pytest.raises(ConfigError, match="backbone=painn needs cutoff_A"):
        validate(Config(dataset="rmd17", molecule="ethanol", targets=["energy"], backbone="painn", n_rbf=20))
    with pytest.raises(ConfigError, match="mitigation='residual'.*painn"):
        validate(Config(dataset="rmd17", molecule="ethanol", targets=["energy"], backbone="painn", n_rbf=20,
                        cutoff_A=5.0, mitigation="residual"))
    with pytest.raises(ConfigError, match="backbone='schnet' is not valid"):
        validate(Config(backbone="schnet"))
    cfg = validate(Config(dataset="rmd17", molecule="ethanol", targets=["energy"], backbone="painn", n_rbf=20,
                          cutoff_A=5.0, rbf="bessel", mitigation="pairreg"))
    assert cfg.backbone == "painn"


def test_cosine_cutoff_values():
    d = torch.tensor([0.0, 2.5, 5.0, 6.0], dtype=torch.float64)
    assert cosine_cutoff(d, 5.0).tolist() == pytest.approx([1.0, 0.5, 0.0, 0.0], abs=1e-15)
    assert float(cosine_cutoff(torch.tensor(1.0, dtype=torch.float64), 5.0)) == pytest.approx(
        0.5 * (math.cos(math.pi / 5) + 1))


def test_train_and_predict_a_painn_model_from_the_cli(tmp_path, capsys):
    """backbone=painn through the whole tool: train with forces, the checkpoint rebuilds the same model."""
    from conftest import train_and_predict

    model, info = train_and_predict(tmp_path, capsys, "painn", ["cutoff_A=5", "n_rbf=8", "rbf=bessel", "hidden=8"])
    assert info["config"].backbone == "painn" and type(model.backbone).__name__ == "PaiNNBackbone"
    assert model.backbone.mitigation.vector_mix == "average"
