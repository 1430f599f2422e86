"""ClofNet backbone: SE(3) battery × every mitigation, what a reflection does, batching with uncentred molecules,
forces (also where the frame degenerates), the cutoff, the local frame by hand, and the CLI."""

import numpy as np
import pytest
import torch
from torch import nn

from pairreg.config import Config, validate
from pairreg.data.molecules import make_batch
from pairreg.models import MoleculeModel
from pairreg.models.backbones.clofnet import FRAME_EPS_A2, centred_positions, local_frames
from pairreg.testing.equivariance import (assert_batch_independent, assert_equivariant, equivariance_errors,
                                          random_molecules, random_orthogonal)

from test_models import VARIANTS as EGNN_VARIANTS  # every mitigation and switch applies to ClofNet as to EGNN

CUTOFF_A = 4.0  # below the test molecules' largest distances (atoms ~ N(0, 1.5² Å²)), so the cutoff is exercised
VARIANTS = {
    **EGNN_VARIANTS,
    "residual+coords": ("residual", {"update_coords": True}),
    "pairnorm+coords": ("pairnorm", {"update_coords": True}),
    "pairreg+cutoff-bessel": ("pairreg", {}, {"cutoff_A": CUTOFF_A, "n_rbf": 8, "rbf": "bessel"}),
    "noisynodes+cutoff": ("noisynodes", {}, {"cutoff_A": CUTOFF_A}),
}
SE3 = (1,)  # proper rotations only: ClofNet is not reflection-equivariant


def make_clofnet(variant="pairreg", depth=2, hidden=16, seed=0, n_targets=2, coord_gain=1.0):
    """A ClofNet model; ``coord_gain`` re-initialises φ_x's last layer (built at gain 1e-3, so coordinates
    would hardly move) so the coordinate path is exercised at the scale of a trained model (moves ~0.1 Å)."""
    torch.manual_seed(seed)
    mitigation, options, *extra = VARIANTS[variant]
    model = MoleculeModel(n_targets=n_targets, hidden=hidden, n_layers=depth, mitigation=mitigation,
                          mitigation_options=options, backbone="clofnet", **(extra[0] if extra else {}))
    if coord_gain is not None:
        for layer in model.backbone.layers:
            if layer.update_coords:
                nn.init.xavier_uniform_(layer.coord_mlp[-1].weight, gain=coord_gain)
    return model


def batch_of(zs, ps):
    return make_batch(zs, ps, dtype=torch.float64, centre=False)


@pytest.mark.parametrize("depth", [2, 9])
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_equivariance_float64(variant, depth):
    worst = assert_equivariant(make_clofnet(variant, depth), dtype=torch.float64, dets=SE3)
    assert worst["output"] < 1e-9 and worst["coords"] < 1e-9


@pytest.mark.parametrize("variant", ["none", "pairreg", "g2-mean-coords", "noisynodes"])
def test_equivariance_float32(variant):
    assert_equivariant(make_clofnet(variant, 9), dtype=torch.float32, atol=2e-3, dets=SE3)


def test_coordinates_really_move():
    """Guard the coordinate checks: with coordinate updates every layer moves atoms, by ~0.1 Å in the tests
    and still measurably at the built-in initialisation (gain 1e-3); without them they stay put."""
    zs, ps = random_molecules([7], np.random.default_rng(0))
    b = batch_of(zs, ps)
    for gain, lowest in ((1.0, 1e-2), (None, 1e-5)):
        model = make_clofnet("pairreg", 3, coord_gain=gain).double().eval()
        with torch.no_grad():
            _, rec = model(b.z, b.pos, b.batch, b.edge_index, 1)
        for before, after in zip(rec.x[:-1], rec.x[1:]):
            assert float((after - before).norm(dim=-1).max()) > lowest
    fixed = make_clofnet("none", 3).double().eval()
    with torch.no_grad():
        _, rec = fixed(b.z, b.pos, b.batch, b.edge_index, 1)
    assert all(torch.equal(x, b.pos) for x in rec.x)


def test_a_reflection_changes_the_output_once_layers_move_coordinates():
    """ClofNet is SE(3)-, not E(3)-equivariant: b = x̃_i × x̃_j is a pseudo-vector, so under a reflection the
    β-part of every coordinate update points the other way. Layer 1's coordinates are then not the mirror
    image, and from layer 2 on the invariant output differs too. The battery with reflections must fail."""
    rng = np.random.default_rng(3)
    zs, ps = random_molecules([6, 8], rng)
    model = make_clofnet("pairreg", 3).double()
    proper = equivariance_errors(model, zs, ps, 1, rng)
    mirror = equivariance_errors(model, zs, ps, -1, rng)
    assert proper["output"] < 1e-14 and proper["coords"] < 1e-12
    assert mirror["coords"] > 1e-2  # Å: the mirrored molecule's atoms move elsewhere
    # small at initialisation (an untrained readout hardly reads geometry: 3e-6 here) but 1e10 × float64 noise
    assert mirror["output"] > 1e-7
    with pytest.raises(AssertionError, match=r"not invariant \(det -1"):
        assert_equivariant(model)  # the default E(3) battery is unchanged and catches it


def test_with_positions_fixed_clofnet_is_reflection_invariant():
    """The flip side, stated so nobody claims more: the scalars ⟨x̃, a⟩, ⟨x̃, c⟩ of an edge and the molecule's
    mean (three points, no handedness) do not change under a reflection, so without coordinate updates the
    output is E(3)-invariant — chirality enters only through the coordinate updates."""
    for variant in ("none", "pairreg-node-only", "g2"):
        assert_equivariant(make_clofnet(variant, 3), dets=(1, -1))


@pytest.mark.parametrize("depth", [2, 9])
@pytest.mark.parametrize("variant", ["none+coords", "pairreg", "pairreg-dense", "pairnorm", "g2-mean-coords",
                                     "pairreg+cutoff-bessel"])
def test_batched_equals_unbatched(variant, depth):
    assert_batch_independent(make_clofnet(variant, depth))


@pytest.mark.parametrize("depth", [2, 9])
def test_batched_equals_unbatched_for_molecules_far_apart(depth):
    """make_batch centres molecules by default, which would hide a mean taken over the whole batch: here each
    molecule keeps its own, distant, position."""
    rng = np.random.default_rng(6)
    zs, ps = random_molecules([4, 7, 5], rng)
    ps = [p + offset for p, offset in zip(ps, ([10.0, 0, 0], [0, -8.0, 3.0], [-5.0, 5.0, 5.0]))]
    model = make_clofnet("pairreg", depth).double().eval()
    with torch.no_grad():
        b = batch_of(zs, ps)
        together, rec = model(b.z, b.pos, b.batch, b.edge_index, 3)
        for k, (z, p) in enumerate(zip(zs, ps)):
            alone, rec1 = model(*_args(batch_of([z], [p])))
            assert float((alone[0] - together[k]).abs().max()) < 1e-10
            assert float((rec1.x[-1] - rec.x[-1][b.batch == k]).abs().max()) < 1e-10


def _args(b):
    return b.z, b.pos, b.batch, b.edge_index, b.num_molecules


def test_centring_is_per_molecule():
    x = torch.tensor([[0.0, 0, 0], [2.0, 0, 0], [10.0, 10, 10], [10.0, 12, 10], [10.0, 10, 13]], dtype=torch.float64)
    batch = torch.tensor([0, 0, 1, 1, 1])
    xc = centred_positions(x, batch, 2)
    assert torch.allclose(xc[:2], torch.tensor([[-1.0, 0, 0], [1.0, 0, 0]], dtype=torch.float64))
    assert torch.allclose(xc[2:], x[2:] - torch.tensor([10.0, 32 / 3, 11.0], dtype=torch.float64))


@pytest.mark.parametrize("variant", ["none+coords", "pairreg", "g2", "noisynodes"])
def test_forces_are_equivariant_under_proper_rotations(variant):
    """F(P(x Qᵀ + t)) = P(F(x) Qᵀ) for det Q = +1, in float64."""
    model = make_clofnet(variant, 3, n_targets=1).double().eval()
    rng = np.random.default_rng(5)
    zs, ps = random_molecules([7, 5], rng)
    b = batch_of(zs, ps)
    _, f1, _ = model.energy_and_forces(b.z, b.pos, b.batch, b.edge_index, 2)
    assert float(f1.abs().max()) > 1e-6
    for _ in range(2):
        q = random_orthogonal(1, rng)
        t = torch.from_numpy(rng.normal(scale=3.0, size=3))
        perm = torch.from_numpy(np.concatenate([rng.permutation(7), 7 + rng.permutation(5)]))
        _, f2, _ = model.energy_and_forces(b.z[perm], (b.pos @ q.T + t)[perm], b.batch, None, 2)
        assert torch.allclose(f2, (f1 @ q.T)[perm], atol=1e-10)


def _finite_difference_check(model, z, pos, atoms_axes, h=1e-6):
    batch = torch.zeros(len(z), dtype=torch.long)
    _, f, _ = model.energy_and_forces(z, pos, batch, None, 1)
    assert torch.isfinite(f).all()
    for atom, axis in atoms_axes:
        plus, minus = pos.clone(), pos.clone()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        with torch.no_grad():
            fd = (model(z, plus, batch, None, 1)[0] - model(z, minus, batch, None, 1)[0]) / (2 * h)
        assert float(f[atom, axis]) == pytest.approx(-float(fd[0, 0]), rel=1e-6, abs=1e-8)
    return f


def test_forces_are_minus_the_energy_gradient():
    model = make_clofnet("pairreg", 2, n_targets=1).double().eval()
    zs, ps = random_molecules([6], np.random.default_rng(2))
    pos = torch.from_numpy(ps[0] + 2.0)  # off the origin: the frame's centring is differentiated too
    _finite_difference_check(model, torch.from_numpy(zs[0]), pos, [(0, 0), (3, 2), (5, 1)])


def test_forces_stay_finite_where_the_frame_degenerates():
    """x̃_i × x̃_j = 0 on every edge of a diatomic and of a linear molecule: b shrinks smoothly to 0 (ε), and
    the forces are finite and still −∂E/∂x."""
    model = make_clofnet("pairreg", 3, n_targets=1).double().eval()
    diatomic = torch.tensor([[0.1, 0.2, 0.3], [1.2, 0.2, 0.3]], dtype=torch.float64)
    linear = torch.tensor([[-1.16, 0.0, 0.0], [0.0, 0.0, 0.0], [1.16, 0.0, 0.0]], dtype=torch.float64)
    _finite_difference_check(model, torch.tensor([6, 8]), diatomic, [(0, 0), (1, 1)])
    _finite_difference_check(model, torch.tensor([8, 6, 8]), linear, [(0, 0), (1, 1), (2, 2)])


def test_energy_and_forces_are_continuous_as_a_pair_crosses_the_cutoff():
    model = make_clofnet("pairreg+cutoff-bessel", 2, n_targets=1).double().eval()
    z = torch.tensor([6, 8, 1])
    batch = torch.zeros(3, dtype=torch.long)
    out = []
    for d in (CUTOFF_A - 1e-7, CUTOFF_A + 1e-7):  # atoms 0 and 1 cross r_c; atom 2 stays bonded to both
        pos = torch.tensor([[0.0, 0.0, 0.0], [d, 0.0, 0.0], [d / 2, 1.0, 0.3]], dtype=torch.float64)
        y, f, _ = model.energy_and_forces(z, pos, batch, None, 1)
        out.append((float(y.detach()), f))
    assert abs(out[0][0] - out[1][0]) < 1e-9
    assert float((out[0][1] - out[1][1]).abs().max()) < 1e-6


def test_local_frame_by_hand():
    """Three atoms whose mean is the origin; edge 0 ← 1: a = (x₀ − x₁)/‖·‖, w = x₀ × x₁, b = w/√(‖w‖² + ε²),
    c = a × b, written out."""
    x = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [-1.0, -2.0, 0.0]], dtype=torch.float64)
    frame, d2 = local_frames(centred_positions(x, torch.zeros(3, dtype=torch.long), 1), torch.tensor([[0], [1]]))
    beta = 2.0 / np.sqrt(4.0 + FRAME_EPS_A2 ** 2)  # ‖b‖: w = (0, 0, 2)
    expected = np.array([[1 / np.sqrt(5), -2 / np.sqrt(5), 0.0],  # a
                         [0.0, 0.0, beta],  # b
                         [-2 * beta / np.sqrt(5), -beta / np.sqrt(5), 0.0]])  # c = a × b
    np.testing.assert_allclose(frame[0].numpy(), expected, rtol=1e-14, atol=1e-15)
    assert float(d2[0, 0]) == pytest.approx(5.0, rel=1e-15)


def test_frame_is_orthogonal_right_handed_and_rotates_with_the_molecule():
    """On generic molecules: a unit, a ⊥ b ⊥ c, (a, b, c) right-handed, ‖b‖ = ‖c‖ = ‖w‖/√(‖w‖² + ε²); a and c
    rotate as vectors under any orthogonal map Q, b as a pseudo-vector, det(Q) · Q b."""
    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.normal(scale=1.5, size=(6, 3)))
    batch = torch.zeros(6, dtype=torch.long)
    edges = torch.tensor([[i for i in range(6) for j in range(6) if i != j], [j for i in range(6) for j in range(6) if i != j]])
    frame, _ = local_frames(centred_positions(x, batch, 1), edges)
    a, b, c = frame.unbind(1)
    xc = centred_positions(x, batch, 1)
    w = torch.linalg.cross(xc[edges[0]], xc[edges[1]], dim=-1)
    norm = w.norm(dim=-1) / (w.norm(dim=-1) ** 2 + FRAME_EPS_A2 ** 2).sqrt()
    assert torch.allclose(a.norm(dim=-1), torch.ones(len(a), dtype=torch.float64))
    assert torch.allclose(b.norm(dim=-1), norm) and torch.allclose(c.norm(dim=-1), norm)
    gram = frame @ frame.transpose(1, 2)  # (n_edges, 3, 3)
    off_diagonal = gram - torch.diag_embed(torch.diagonal(gram, dim1=1, dim2=2))
    assert float(off_diagonal.abs().max()) < 1e-14
    assert bool((torch.linalg.det(frame) > 0).all())  # right-handed
    for det in (1, -1):
        q = random_orthogonal(det, rng)
        moved, _ = local_frames(centred_positions(x @ q.T + 5.0, batch, 1), edges)
        assert torch.allclose(moved[:, 0], a @ q.T, atol=1e-13)
        assert torch.allclose(moved[:, 1], det * (b @ q.T), atol=1e-13)
        assert torch.allclose(moved[:, 2], c @ q.T, atol=1e-13)


def test_pairreg_regulariser_is_invariant_and_acts_on_moving_coordinates():
    model = make_clofnet("pairreg-replace-all-previous", 3, n_targets=1).double().eval()
    rng = np.random.default_rng(8)
    zs, ps = random_molecules([6], rng)
    q, t = random_orthogonal(1, rng), rng.normal(size=3)
    losses = []
    for p in (ps[0], ps[0] @ q.numpy().T + t):
        b = batch_of(zs, [p])
        with torch.no_grad():
            _, rec = model(*_args(b))
        losses.append(float(model.extra_loss(rec)))
    assert losses[0] > 1e-6
    assert losses[1] == pytest.approx(losses[0], rel=1e-10)


def test_config_accepts_clofnet_and_the_model_is_built_from_it():
    cfg = validate(Config(dataset="rmd17", molecule="ethanol", targets=["energy"], backbone="clofnet", hidden=64,
                          n_layers=4, n_rbf=16, coord_act="silu"))
    from pairreg.models.model import build_model

    model = build_model(cfg)
    assert type(model.backbone).__name__ == "ClofNetBackbone"
    assert isinstance(model.backbone.layers[0].coord_mlp[1], nn.SiLU)  # pairreg moves coordinates; coord_act read
    assert model.node_attr is False  # φ_h does not read the atom features again (EGNN-only)


def test_train_and_predict_a_clofnet_model_from_the_cli(tmp_path, capsys):
    """backbone=clofnet through the whole tool: train with forces, the checkpoint rebuilds the same model."""
    from conftest import train_and_predict

    model, info = train_and_predict(tmp_path, capsys, "clofnet", ["n_rbf=8", "hidden=8"])
    assert info["config"].backbone == "clofnet" and type(model.backbone).__name__ == "ClofNetBackbone"
    assert model.backbone.layers[0].update_coords
