"""PairNorm identities per molecule, and G2's gate, on constructed inputs."""

import numpy as np
import pytest
import torch

from pairreg.data.graphs import complete_graph_edges
from pairreg.data.molecules import make_batch
from pairreg.models import MoleculeModel
from pairreg.models.mitigations import GraphContext, build_mitigation


def two_molecules(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(9, 6, generator=g, dtype=dtype) * 3 + 1
    batch = torch.tensor([0] * 4 + [1] * 5)
    edges = torch.from_numpy(complete_graph_edges([4, 5]))
    return h, GraphContext(batch, edges, 2)


def per_mol(h, graph, k):
    return h[graph.batch == k]


@pytest.mark.parametrize("scale", [1.0, 2.5])
def test_pn_centres_and_fixes_mean_squared_norm_per_molecule(scale):
    h, graph = two_molecules()
    m = build_mitigation("pairnorm", 1, 6, pairnorm_scale=scale)
    out, _ = m.combine(0, None, None, h, None, graph, None)
    for k in range(2):
        o = per_mol(out, graph, k)
        assert o.mean(0).abs().max() < 1e-10
        assert float((o ** 2).sum(-1).mean()) == pytest.approx(scale ** 2, rel=1e-4)


def test_pn_si_gives_each_row_norm_s():
    h, graph = two_molecules()
    m = build_mitigation("pairnorm", 1, 6, pairnorm_mode="pn-si", pairnorm_scale=2.0)
    out, _ = m.combine(0, None, None, h, None, graph, None)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((9,), 2.0, dtype=torch.float64), rtol=1e-4, atol=1e-4)
    for k in range(2):  # each row points along its molecule-centred feature
        centred = per_mol(h, graph, k) - per_mol(h, graph, k).mean(0)
        cos = torch.nn.functional.cosine_similarity(per_mol(out, graph, k), centred, dim=-1)
        torch.testing.assert_close(cos, torch.ones_like(cos))


def test_pn_scs_as_defined():
    h, graph = two_molecules()
    m = build_mitigation("pairnorm", 1, 6, pairnorm_mode="pn-scs", pairnorm_scale=1.5)
    out, _ = m.combine(0, None, None, h, None, graph, None)
    for k in range(2):
        hk = per_mol(h, graph, k)
        expected = 1.5 * hk / (hk.norm(dim=-1, keepdim=True) + 1e-5) - hk.mean(0)
        torch.testing.assert_close(per_mol(out, graph, k), expected)


def test_pairnorm_bad_mode():
    with pytest.raises(ValueError, match="pairnorm_mode"):
        build_mitigation("pairnorm", 1, 6, pairnorm_mode="pn-xx")


def test_g2_rates_in_unit_interval_and_zero_for_identical_neighbours():
    h, graph = two_molecules()
    m = build_mitigation("g2", 1, 6)
    tau = m.rates(torch.rand(9, 6, dtype=torch.float64) * 5, graph.edge_index)
    assert float(tau.min()) >= 0 and float(tau.max()) <= 1
    same = torch.ones(9, 6, dtype=torch.float64)
    assert float(m.rates(same, graph.edge_index).abs().max()) == 0.0


def test_g2_rates_by_hand():
    m = build_mitigation("g2", 1, 1, g2_p=2)
    edges = torch.from_numpy(complete_graph_edges([3]))
    tau_hat = torch.tensor([[0.0], [1.0], [3.0]], dtype=torch.float64)
    # atom 0: |1-0|² + |3-0|² = 10 ; atom 1: 1 + 4 = 5 ; atom 2: 9 + 4 = 13
    torch.testing.assert_close(m.rates(tau_hat, edges), torch.tanh(torch.tensor([[10.0], [5.0], [13.0]], dtype=torch.float64)))
    mean = build_mitigation("g2", 1, 1, g2_aggregation="mean")
    torch.testing.assert_close(mean.rates(tau_hat, edges), torch.tanh(torch.tensor([[5.0], [2.5], [6.5]], dtype=torch.float64)))


def test_g2_leaves_h_unchanged_when_gate_rates_are_identical():
    h, graph = two_molecules()
    m = build_mitigation("g2", 1, 6).double()
    with torch.no_grad():  # make the gate EGCL output a constant: zero every weight, constant bias
        for p in m.gates[0].parameters():
            p.zero_()
        m.gates[0].node_mlp[-1].bias.fill_(0.7)
    out, _ = m.combine(0, h, torch.zeros(9, 3, dtype=torch.float64), torch.randn(9, 6, dtype=torch.float64), None, graph, None)
    torch.testing.assert_close(out, h)


def test_noisynodes_is_denoising_on_the_plain_stack():
    m = build_mitigation("noisynodes", 2, 4, coord_noise=0.1)
    assert (m.residual, m.coord_mix, m.update_coords, m.reg_target, m.reg_weight, m.coord_noise) == (
        "none", "replace", True, "input", 0.1, 0.1)
    with pytest.raises(ValueError, match="do not apply"):
        build_mitigation("noisynodes", 2, 4, residual="add")


def g2_model(hidden=8, **options):
    torch.manual_seed(0)
    return MoleculeModel(n_targets=1, hidden=hidden, n_layers=2, mitigation="g2", n_rbf=6, rbf_max_A=5.0,
                         **options).double()


def water_and_ammonia():
    zs = [np.array([8, 1, 1]), np.array([7, 1, 1, 1])]
    ps = [np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]),
          np.array([[0.0, 0, 0.1], [1.01, 0, 0], [-0.5, 0.87, 0], [-0.5, -0.87, 0]])]
    return make_batch(zs, ps, dtype=torch.float64)


def test_g2_gates_are_built_like_the_main_layers():
    """The gate EGCLs get the main layers' distance basis and node attributes (they had neither)."""
    model = g2_model()
    for layer, gate in zip(model.backbone.layers, model.mitigation.gates):
        assert gate.n_rbf == layer.n_rbf == 6 and gate.edge_in_rbf.in_features == 6
        torch.testing.assert_close(gate.rbf.centres, layer.rbf.centres)
        assert gate.node_mlp[0].in_features == layer.node_mlp[0].in_features == 2 * 8 + model.features.dim
        assert not gate.update_coords
    bare = g2_model(node_attr=False)
    assert bare.mitigation.gates[0].node_mlp[0].in_features == 2 * 8


def test_g2_gate_reads_the_basis_and_the_node_attributes():
    model = g2_model()
    b = water_and_ammonia()
    seen = []
    model.mitigation.gates[0].register_forward_pre_hook(lambda module, args: seen.append(args))
    before = model.predict(b.z, b.pos, b.batch)
    torch.testing.assert_close(seen[0][4], model.features(b.z, torch.float64))  # node_attr reaches the gate
    gate = model.mitigation.gates[0]
    with torch.no_grad():  # the basis path of the gate alone: the prediction must move with it
        gate.edge_in_rbf.weight.add_(0.5)
    after_basis = model.predict(b.z, b.pos, b.batch)
    assert float((after_basis - before).abs().max()) > 1e-6
    with torch.no_grad():  # the gate's weights on the node attributes
        gate.node_mlp[0].weight[:, 2 * 8:].add_(0.5)
    assert float((model.predict(b.z, b.pos, b.batch) - after_basis).abs().max()) > 1e-6
