"""SEGNN backbone: equivariance battery (rotations and reflections, l>0 features included) × every mitigation it
takes × l_max, batching, forces, attributes and gates by hand, exact Clebsch–Gordan coefficients in float64, the
mitigation contract on steerable features, refusals, and the CLI."""

import math

import numpy as np
import pytest
import torch
from e3nn import o3

from pairreg.config import Config, ConfigError, count_parameters, validate
from pairreg.data.molecules import make_batch
from pairreg.models import MoleculeModel
from pairreg.models.backbones.segnn import SEGNNLayer, SteerableGate, SteerableInstanceNorm, hidden_irreps
from pairreg.models.mitigations import GraphContext, build_mitigation
from pairreg.models.state import LayerState
from pairreg.testing.equivariance import (assert_batch_independent, assert_equivariant, equivariance_errors,
                                          random_molecules, random_orthogonal)

VARIANTS = {
    "none": ("none", {}),
    "pairreg": ("pairreg", {}),
    "pairreg-replace": ("pairreg", {"coord_mix": "replace"}),
    "pairreg-dense": ("pairreg", {"residual": "dense-concat"}),
    "pairreg-node-only": ("pairreg", {"ablation": "node-only"}),
    "pairreg-coord-only": ("pairreg", {"ablation": "coord-only"}),
    "pairnorm": ("pairnorm", {}),
    "pairnorm-si": ("pairnorm", {"pairnorm_mode": "pn-si"}),
    "pairnorm-scs": ("pairnorm", {"pairnorm_mode": "pn-scs"}),
    "g2": ("g2", {}),
    "g2-mean": ("g2", {"g2_aggregation": "mean", "g2_p": 1.5}),
    "none-cutoff": ("none", {}, {"cutoff_A": 4.0}),  # below the test molecules' largest distances
    "none-rbf": ("none", {}, {"n_rbf": 6, "rbf_max_A": 5.0}),  # Gaussians beside ‖r‖² in the messages
    "pairreg-bessel": ("pairreg", {}, {"n_rbf": 6, "rbf": "bessel", "cutoff_A": 4.0}),
}


def make_segnn(variant="none", depth=2, l_max=1, hidden=None, seed=0, n_targets=2):
    torch.manual_seed(seed)
    mitigation, options, *extra = VARIANTS[variant]
    hidden = hidden or (8 if depth <= 3 else 4)  # 4: 4x0e + 1x1o (+ 1x2e); keeps the 9-layer checks quick
    return MoleculeModel(n_targets=n_targets, hidden=hidden, n_layers=depth, mitigation=mitigation,
                         mitigation_options=options, backbone="segnn", l_max=l_max, **(extra[0] if extra else {}))


@pytest.mark.parametrize("depth", [2, 9])
@pytest.mark.parametrize("l_max", [1, 2])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_equivariance_float64(variant, l_max, depth):
    worst = assert_equivariant(make_segnn(variant, depth, l_max), trials=2 if depth <= 3 else 1)
    assert worst["output"] < 1e-9 and worst["irreps"] < 1e-9


@pytest.mark.parametrize("variant", ["none", "pairreg", "g2"])
def test_equivariance_float32(variant):
    """Relative to the features' size: the published stack (none) grows them to ~1e4 by layer 9 on these
    molecules (residual updates, sums over neighbours, raw d² in Å²), where float32 resolves ~1e-3."""
    model = make_segnn(variant, 9, l_max=2)
    rng = np.random.default_rng(7)
    zs, ps = random_molecules([5, 9], rng)
    b = make_batch(zs, ps, dtype=torch.float32, centre=False)
    with torch.no_grad():
        y, rec = model.float()(b.z, b.pos, b.batch, b.edge_index, 2)
    scale = {"output": float(y.abs().max()), "features": max(float(h.abs().max()) for h in rec.h),
             "irreps": max(float(f.abs().max()) for f in rec.f)}
    for det in (1, -1):
        errs = equivariance_errors(model, zs, ps, det, rng, dtype=torch.float32)
        for key, size in scale.items():
            assert errs[key] <= 2e-5 * max(size, 1.0), (key, det, errs[key], size)


@pytest.mark.parametrize("depth, l_max", [(2, 1), (2, 2), (9, 1), (9, 2)])
@pytest.mark.parametrize("variant", ["none", "pairreg-dense", "pairnorm", "g2-mean", "none-cutoff"])
def test_batched_equals_unbatched(variant, depth, l_max):
    # by layer 9 the published stack's features reach ~1e4 (test_equivariance_float32): float64 rounding of
    # differently sized matrix products is then ~1e-10, so the bound is relative to that size there
    assert_batch_independent(make_segnn(variant, depth, l_max), atol=1e-10 if depth <= 3 else 1e-8)


@pytest.mark.parametrize("l_max", [1, 2])
def test_steerable_features_are_not_vacuous(l_max):
    """Guard the l>0 check: every degree must be non-zero from the embedding on, and positions never move."""
    model = make_segnn("pairreg", 3, l_max).double()
    zs, ps = random_molecules([6], np.random.default_rng(0))
    b = make_batch(zs, ps, dtype=torch.float64)
    with torch.no_grad():
        _, rec = model(b.z, b.pos, b.batch, b.edge_index, 1)
    assert rec.f_irreps == hidden_irreps(8, l_max)[1:] and len(rec.f) == 4
    for f in (rec.f[0], rec.f[-1]):
        assert f.shape == (6, rec.f_irreps.dim)
        for sl in rec.f_irreps.slices():
            assert float(f[:, sl].abs().max()) > 1e-3
    assert all(torch.equal(x, rec.x[0]) for x in rec.x)  # SEGNN never moves positions


def test_battery_catches_broken_steerable_features():
    """l>0 features that ignore the rotation, or carry the wrong parity, must fail the battery."""
    model = make_segnn("none", 2, l_max=2).double()
    inner = model.forward

    def magnitudes(z, pos, batch, edge_index=None, n_molecules=None):
        y, rec = inner(z, pos, batch, edge_index, n_molecules)
        rec.f = [f.abs() for f in rec.f]  # component magnitudes: not an irrep any more
        return y, rec

    model.forward = magnitudes
    with pytest.raises(AssertionError, match="irreps not equivariant"):
        assert_equivariant(model)

    def wrong_parity(z, pos, batch, edge_index=None, n_molecules=None):
        y, rec = inner(z, pos, batch, edge_index, n_molecules)
        rec.f_irreps = o3.Irreps([(mul, (ir.l, -ir.p)) for mul, ir in rec.f_irreps])  # 1o → 1e, 2e → 2o
        return y, rec

    model.forward = wrong_parity
    rng = np.random.default_rng(3)
    zs, ps = random_molecules([5, 6], rng)
    assert equivariance_errors(model, zs, ps, 1, rng)["irreps"] < 1e-9  # proper rotations cannot tell parity apart
    assert equivariance_errors(model, zs, ps, -1, rng)["irreps"] > 1e-3  # a reflection does
    with pytest.raises(AssertionError, match=r"irreps not equivariant \(det -1"):
        assert_equivariant(model)


@pytest.mark.parametrize("variant", ["none", "pairreg", "g2", "none-rbf", "pairreg-bessel"])
def test_forces_are_equivariant(variant):
    """F(P(x Qᵀ + t)) = P(F(x) Qᵀ), reflections included, in float64."""
    model = make_segnn(variant, 3, l_max=2, n_targets=1).double().eval()
    rng = np.random.default_rng(5)
    zs, ps = random_molecules([7, 5], rng)
    b = make_batch(zs, ps, dtype=torch.float64, centre=False)
    _, f1, _ = model.energy_and_forces(b.z, b.pos, b.batch, b.edge_index, 2)
    assert float(f1.abs().max()) > 1e-6
    for det in (1, -1):
        q = random_orthogonal(det, rng)
        t = torch.from_numpy(rng.normal(size=3))
        perm = torch.from_numpy(np.concatenate([rng.permutation(7), 7 + rng.permutation(5)]))
        _, f2, _ = model.energy_and_forces(b.z[perm], (b.pos @ q.T + t)[perm], b.batch, None, 2)
        assert torch.allclose(f2, (f1 @ q.T)[perm], atol=1e-9)


@pytest.mark.parametrize("l_max", [1, 2])
def test_forces_are_minus_the_energy_gradient_and_train_through_double_backward(l_max):
    model = make_segnn("pairreg", 2, l_max, n_targets=1).double().eval()
    zs, ps = random_molecules([6], np.random.default_rng(2))
    b = make_batch(zs, ps, dtype=torch.float64)
    y, f, _ = model.energy_and_forces(b.z, b.pos, b.batch, b.edge_index, 1, create_graph=True)
    f_value = f.detach()
    h = 1e-6
    for atom, axis in [(0, 0), (3, 2), (5, 1)]:
        plus, minus = b.pos.clone(), b.pos.clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        with torch.no_grad():
            fd = (model(b.z, plus, b.batch, None, 1)[0] - model(b.z, minus, b.batch, None, 1)[0]) / (2 * h)
        assert float(f_value[atom, axis]) == pytest.approx(-float(fd[0, 0]), rel=1e-6, abs=1e-8)
    # a force loss reaches the weights of every layer (second derivatives through the tensor products)
    (f ** 2).sum().backward()
    for layer in model.backbone.layers:
        assert float(layer.message1.weight.grad.abs().max()) > 0


def test_attributes_by_hand():
    """Two atoms: the node attribute of each is the spherical harmonics of its bond, written out by hand
    (component normalisation: Y⁰ = 1, Y¹ = √3 r̂ in e3nn's x, y, z order, ‖Y²‖ = √5); three atoms: the mean."""
    model = make_segnn("none", 1, l_max=2).double()
    x = torch.tensor([[0.0, 0.0, 0.0], [0.6, -0.8, 1.2]], dtype=torch.float64)
    edge_index = torch.tensor([[0, 1], [1, 0]])
    geo = model.backbone.geometry(x, edge_index, torch.ones(2, 1, dtype=torch.float64), torch.zeros(2, dtype=torch.long), 1)
    bond = x[1] - x[0]
    unit = bond / bond.norm()
    a0 = geo.node_attr[0]
    assert float(a0[0]) == pytest.approx(1.0, abs=1e-15)
    assert torch.allclose(a0[1:4], math.sqrt(3) * unit, atol=1e-14)
    assert float(a0[4:9].norm()) == pytest.approx(math.sqrt(5), abs=1e-13)
    assert torch.allclose(geo.node_attr[1][1:4], -a0[1:4]) and torch.allclose(geo.node_attr[1][4:9], a0[4:9])
    assert torch.allclose(geo.edge_scalars, torch.full((2, 1), float(bond @ bond), dtype=torch.float64))
    # three atoms, complete graph, C = 1/(N − 1): a_0 = ½ (Y(r_01) + Y(r_02))
    x3 = torch.cat([x, torch.tensor([[-1.0, 0.3, 0.2]], dtype=torch.float64)])
    e3 = torch.tensor([[0, 0, 1, 1, 2, 2], [1, 2, 0, 2, 0, 1]])
    geo3 = model.backbone.geometry(x3, e3, torch.full((3, 1), 0.5, dtype=torch.float64),
                                   torch.zeros(3, dtype=torch.long), 1)
    sh = [o3.spherical_harmonics(model.backbone.attr_irreps, x3[k] - x3[0], True, normalization="component")
          for k in (1, 2)]
    assert torch.allclose(geo3.node_attr[0], 0.5 * (sh[0] + sh[1]), atol=1e-14)


def test_gate_by_hand():
    """σ_g: SiLU on the scalars; each l>0 channel times the sigmoid of its own gate scalar."""
    gate = SteerableGate(2, o3.Irreps("2x1o+1x2e"))
    x = torch.randn(3, 2 + 3 + 6 + 5, dtype=torch.float64)
    out = gate(x)
    s, g, v1, v2 = x[:, :2], x[:, 2:5], x[:, 5:11], x[:, 11:]
    sig = torch.sigmoid(g)
    hand = torch.cat([s * torch.sigmoid(s), v1[:, :3] * sig[:, :1], v1[:, 3:] * sig[:, 1:2], v2 * sig[:, 2:3]], -1)
    assert torch.allclose(out, hand, atol=1e-15)


def test_multiplicity_rule():
    assert hidden_irreps(64, 1) == o3.Irreps("64x0e+21x1o")
    assert hidden_irreps(64, 2) == o3.Irreps("64x0e+21x1o+12x2e")
    assert hidden_irreps(4, 2) == o3.Irreps("4x0e+1x1o+1x2e")
    with pytest.raises(ValueError, match="l_max=4 is not valid"):
        hidden_irreps(8, 4)


def test_float64_models_carry_exact_clebsch_gordan_coefficients():
    """A model built in float32 and cast to float64 must hold float64 coefficients, not float32 ones cast up
    (equivariance would then hold only to ~1e-7)."""
    layer = SEGNNLayer(4, 2).double()
    checked = 0
    for name, buf in layer.named_buffers():
        if "_w3j_" in name:
            l1, l2, l3 = map(int, name.rsplit("_w3j_", 1)[1].split("_"))
            assert buf.dtype == torch.float64
            assert torch.equal(buf, o3.wigner_3j(l1, l2, l3, dtype=torch.float64))
            checked += 1
    assert checked > 0


def test_parameters_are_counted_on_the_meta_device():
    """The config's size check builds the model on ``meta``; e3nn's tensor products must build there too."""
    cfg = validate(Config(dataset="rmd17", molecule="ethanol", targets=["energy"], backbone="segnn", hidden=16,
                          n_layers=3, l_max=2, mitigation="g2"))
    from pairreg.models.model import build_model

    assert count_parameters(cfg) == sum(p.numel() for p in build_model(cfg).parameters())


def test_pairreg_averages_steerable_features_and_keeps_no_coordinate_term():
    mit = build_mitigation("pairreg", 2, 4, backbone="segnn")
    assert mit.update_coords is False and mit.reg_weight == 0.0 and mit.vector_mix == "average"
    f_prev, f_new = torch.randn(3, 8), torch.randn(3, 8)
    assert torch.allclose(mit.combine_irreps(0, f_prev, f_new, None, None), 0.5 * (f_prev + f_new))
    node_only = build_mitigation("pairreg", 2, 4, backbone="segnn", ablation="node-only")
    assert torch.equal(node_only.combine_irreps(0, f_prev, f_new, None, None), f_new)
    for name in ("none", "pairnorm"):
        assert torch.equal(build_mitigation(name, 2, 4, backbone="segnn").combine_irreps(0, f_prev, f_new, None, None),
                           f_new)


def test_g2_gates_steerable_features_with_the_mean_rate():
    """f_l = (1 − τ̄) f_{l−1} + τ̄ f̃_l with τ̄ the atom's mean τ; scalars use their own channel's τ."""
    mit = build_mitigation("g2", 2, 4, backbone="segnn")
    tau = torch.tensor([[0.0, 0.2, 0.4, 0.6], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    mit.gate = lambda layer, prev, graph: tau
    x = torch.zeros(3, 3, dtype=torch.float64)
    prev = LayerState(torch.randn(3, 4, dtype=torch.float64), x, f=torch.randn(3, 8, dtype=torch.float64))
    new = LayerState(torch.randn(3, 4, dtype=torch.float64), x, f=torch.randn(3, 8, dtype=torch.float64))
    out = mit.combine_state(0, prev, new, GraphContext(torch.zeros(3, dtype=torch.long), None, 1), None)
    mean = torch.tensor([[0.3], [1.0], [0.0]], dtype=torch.float64)
    assert torch.allclose(out.f, (1 - mean) * prev.f + mean * new.f)
    assert torch.allclose(out.h, (1 - tau) * prev.h + tau * torch.relu(new.h))
    assert torch.equal(out.f[2], prev.f[2]) and torch.equal(out.h[2], prev.h[2])  # τ = 0 keeps the previous layer


# the refusals by name (residual layers, positions fixed) are tested for PaiNN and SEGNN together in test_painn.py


def test_config_l_max_and_backbone_keys():
    base = dict(dataset="rmd17", molecule="ethanol", targets=["energy"])
    assert validate(Config(**base, backbone="segnn", l_max=2, mitigation="pairreg")).l_max == 2
    assert validate(Config(**base, backbone="segnn", cutoff_A=5.0)).cutoff_A == 5.0
    with pytest.raises(ConfigError, match="l_max must be 1 … 3 for backbone=segnn, got 0"):
        validate(Config(**base, backbone="segnn", l_max=0))
    with pytest.raises(ConfigError, match="l_max=2: only backbone=segnn"):
        validate(Config(**base, l_max=2))
    assert validate(Config(**base, backbone="segnn", n_rbf=8)).n_rbf == 8  # a radial basis in the messages
    with pytest.raises(ConfigError, match="mitigation='residual'.*segnn"):
        validate(Config(**base, backbone="segnn", mitigation="residual"))
    with pytest.raises(ConfigError, match="mitigation='noisynodes'.*segnn"):
        validate(Config(**base, backbone="segnn", mitigation="noisynodes"))


def test_fine_tuning_compares_l_max_and_freezes_the_steerable_embedding():
    from pairreg.training.finetune import MODEL_KEYS, frozen_names

    assert "l_max" in MODEL_KEYS
    names = frozen_names(make_segnn("pairreg", 3), 1)
    assert "backbone.embedding.weight" in names and "embedding.weight" in names
    assert any(n.startswith("backbone.layers.0.") for n in names)
    assert not any(n.startswith("backbone.layers.1.") for n in names)


@pytest.mark.slow
def test_train_and_predict_a_segnn_model_from_the_cli(tmp_path, capsys):
    """backbone=segnn through the whole tool: train with forces (double backward), the checkpoint rebuilds it."""
    from conftest import train_and_predict

    model, info = train_and_predict(tmp_path, capsys, "segnn", ["l_max=2", "hidden=4"])
    assert info["config"].backbone == "segnn" and info["config"].l_max == 2
    assert type(model.backbone).__name__ == "SEGNNBackbone" and model.backbone.irreps == hidden_irreps(4, 2)


def test_features_do_not_grow_with_molecule_size_or_depth():
    """Messages are summed and each layer ends in the instance norm (the paper's QM9 models): without it, a sum
    over a QM9-sized molecule's ~17 neighbours (complete graph) multiplied the features ~5x per layer at
    initialisation (the 4 x 64 model's readout started hundreds of standard deviations off; training diverged)."""
    rng = np.random.default_rng(3)
    model = make_segnn("none", 9, hidden=16).double()
    rms = {}
    for n in (5, 28):
        zs, ps = random_molecules([n], rng)
        b = make_batch(zs, ps, dtype=torch.float64)
        with torch.no_grad():
            _, record = model(b.z, b.pos, b.batch, b.edge_index, b.num_molecules)
        rms[n] = [float(h.pow(2).mean().sqrt()) for h in record.h]
    for n, per_layer in rms.items():
        assert (per_layer[-1] / per_layer[0]) ** (1 / 9) < 2, (n, per_layer)
    assert rms[28][-1] < 3 * rms[5][-1], rms  # and not a factor N − 1 per layer


def test_instance_norm_by_hand():
    """Scalars: centred and divided by their RMS over the molecule's atoms; an l=1 channel: divided by the RMS over
    the atoms of ‖f‖/√3; each molecule on its own; a rotation of the l=1 part commutes with it."""
    norm = SteerableInstanceNorm(o3.Irreps("1x0e+1x1o"), eps=0.0).double()
    # molecule 0: atoms 0, 1; molecule 1: atoms 2, 3, 4
    full = torch.tensor([[1.0, 3.0, 0.0, 4.0], [3.0, 0.0, 0.0, 0.0],
                         [0.0, 1.0, 2.0, 2.0], [3.0, 0.0, 0.0, 3.0], [6.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1, 1])
    out = norm(full, batch, 2)
    # molecule 0 scalars 1, 3: mean 2, deviations −1, 1, RMS 1; molecule 1 scalars 0, 3, 6: deviations −3, 0, 3, RMS √6
    assert torch.allclose(out[:, 0], torch.tensor([-1.0, 1.0, -3 / 6 ** 0.5, 0.0, 3 / 6 ** 0.5], dtype=torch.float64))
    # molecule 0 vectors: ‖f‖² = 25, 0 → mean of ‖f‖²/3 = 25/6; molecule 1: 9, 9, 0 → 2
    expect = torch.cat([full[:2, 1:] / (25 / 6) ** 0.5, full[2:, 1:] / 2 ** 0.5])
    assert torch.allclose(out[:, 1:], expect)
    rotation = o3.rand_matrix(dtype=torch.float64)
    d1 = o3.Irreps("1x1o").D_from_matrix(rotation)
    rotated = torch.cat([full[:, :1], full[:, 1:] @ d1.T], dim=-1)
    assert torch.allclose(norm(rotated, batch, 2)[:, 1:], out[:, 1:] @ d1.T, atol=1e-12)


def test_radial_basis_reaches_the_messages():
    """With n_rbf > 0 the first message product reads ‖r‖² and the basis: its input has n_rbf more scalars, and
    changing the basis (Gaussians of another width) changes the energy of the same molecule."""
    plain, with_rbf = make_segnn("none", 2), make_segnn("none-rbf", 2)
    extra = with_rbf.backbone.layers[0].message1.irreps_in1[0].mul - plain.backbone.layers[0].message1.irreps_in1[0].mul
    assert extra == 6
    zs, ps = random_molecules([5], np.random.default_rng(4))
    b = make_batch(zs, ps)
    with torch.no_grad():
        before = with_rbf(b.z, b.pos, b.batch, b.edge_index, 1)[0]
        with_rbf.backbone.basis.width *= 2
        after = with_rbf(b.z, b.pos, b.batch, b.edge_index, 1)[0]
    assert float((before - after).abs().max()) > 1e-6
