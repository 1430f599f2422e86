"""The PairReg switches do what docs/method.md says, computed by hand on small tensors."""

import pytest
import torch

from pairreg.models.backbones.egnn import LayerRecord
from pairreg.models.mitigations import build_mitigation, mitigation_names


def combine(mit, h_prev, x_prev, h_new, x_new, record=None):
    record = record or LayerRecord(x_prev)
    if not record.h:
        record.append(h_prev, x_prev)
    return mit.combine(0, h_prev, x_prev, h_new, x_new, None, record)


def test_registry_lists_builtins_and_suggests():
    assert {"none", "residual", "pairreg"} <= set(mitigation_names())
    with pytest.raises(ValueError, match="Did you mean 'pairreg'"):
        build_mitigation("pair_regg", 2, 4)
    assert build_mitigation("PairReg", 2, 4).registry_name == "pairreg"


def test_default_is_intended_form():
    m = build_mitigation("pairreg", 3, 4)
    assert (m.residual, m.coord_mix, m.update_coords, m.reg_layers, m.reg_target, m.reg_weight, m.coord_noise) == (
        "concat-project", "average", True, "last", "input", 1.0, 0.0)


def test_concat_project_and_average():
    m = build_mitigation("pairreg", 1, 2)
    h_prev, h_new = torch.randn(3, 2), torch.randn(3, 2)
    x_prev, x_new = torch.randn(3, 3), torch.randn(3, 3)
    h, x = combine(m, h_prev, x_prev, h_new, x_new)
    torch.testing.assert_close(h, m.project[0](torch.cat([h_prev, h_new], -1)))
    torch.testing.assert_close(x, 0.5 * (x_prev + x_new))


@pytest.mark.parametrize("residual,expected", [("add", lambda a, b: a + b), ("none", lambda a, b: b)])
def test_residual_variants(residual, expected):
    m = build_mitigation("pairreg", 1, 2, residual=residual, coord_mix="replace")
    h_prev, h_new, x_prev, x_new = torch.randn(3, 2), torch.randn(3, 2), torch.randn(3, 3), torch.randn(3, 3)
    h, x = combine(m, h_prev, x_prev, h_new, x_new)
    torch.testing.assert_close(h, expected(h_prev, h_new))
    torch.testing.assert_close(x, x_new)


def test_dense_concat_uses_all_previous_layers():
    m = build_mitigation("pairreg", 3, 2, residual="dense-concat")
    assert [p.in_features for p in m.project] == [4, 6, 8]
    rec = LayerRecord(torch.zeros(3, 3))
    hs = [torch.randn(3, 2) for _ in range(3)]
    for h in hs:
        rec.append(h, torch.zeros(3, 3))
    h_new = torch.randn(3, 2)
    out, _ = m.combine(2, hs[-1], torch.zeros(3, 3), h_new, torch.zeros(3, 3), None, rec)
    torch.testing.assert_close(out, m.project[2](torch.cat(hs + [h_new], -1)))


def _record(xs, x_input):
    rec = LayerRecord(x_input)
    for x in xs:
        rec.append(torch.zeros(len(x), 2), x)
    return rec


def test_regulariser_last_input():
    x0 = torch.zeros(2, 3)
    xs = [x0, torch.ones(2, 3), torch.full((2, 3), 2.0)]
    m = build_mitigation("pairreg", 2, 2, reg_weight=0.5)
    # mean_i ||x_L,i - x_0,i||² = 3·2² = 12; λ = 0.5
    assert float(m.extra_loss(_record(xs, x0), None)) == pytest.approx(6.0)


def test_regulariser_all_previous():
    x0 = torch.zeros(2, 3)
    xs = [x0, torch.ones(2, 3), torch.full((2, 3), 3.0)]
    m = build_mitigation("pairreg", 2, 2, reg_layers="all", reg_target="previous")
    # layer 1: ||1-0||² = 3 ; layer 2: ||3-1||² = 12 ; mean 7.5
    assert float(m.extra_loss(_record(xs, x0), None)) == pytest.approx(7.5)


def test_regulariser_input_target_is_clean_geometry_under_noise():
    m = build_mitigation("pairreg", 1, 2, coord_noise=0.5)
    m.train()
    x = torch.zeros(100, 3)
    _, noisy = m.begin(torch.zeros(100, 2), x, None)
    assert 0.3 < float(noisy.std()) < 0.7
    m.eval()
    _, clean = m.begin(torch.zeros(100, 2), x, None)
    assert torch.equal(clean, x)
    rec = _record([noisy, noisy], x)
    assert float(m.extra_loss(rec, None)) == pytest.approx(float((noisy ** 2).sum(-1).mean()))


def test_ablations():
    node = build_mitigation("pairreg", 2, 2, ablation="node-only")
    assert (node.update_coords, node.reg_weight, node.residual) == (False, 0.0, "concat-project")
    assert node.extra_loss(_record([torch.zeros(1, 3)] * 2, torch.zeros(1, 3)), None) is None
    coord = build_mitigation("pairreg", 2, 2, ablation="coord-only")
    assert (coord.update_coords, coord.reg_weight, coord.residual) == (True, 1.0, "none")


@pytest.mark.parametrize("options,match", [
    ({"ablation": "node-only", "update_coords": True}, "contradicts"),
    ({"ablation": "coord-only", "residual": "add"}, "contradicts"),
    ({"update_coords": False, "reg_target": "previous"}, "update_coords is off"),
    ({"update_coords": False, "reg_weight": 1.0}, "regulariser would be 0"),
    ({"residual": "gated"}, "choose one of"),
    ({"reg_weight": -1.0}, ">= 0"),
])
def test_contradictory_switches_are_rejected(options, match):
    with pytest.raises(ValueError, match=match):
        build_mitigation("pairreg", 2, 2, **options)


def test_options_of_other_mitigations_are_rejected():
    with pytest.raises(ValueError, match="do not apply to mitigation 'none'"):
        build_mitigation("none", 2, 2, reg_weight=1.0)
