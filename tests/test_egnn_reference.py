"""Where our defaults claim to follow EGNN's reference code: the qm9-egnn preset and the EGCL's first-layer init."""

import pytest
import torch

from pairreg.config import load_config
from pairreg.models.backbones.egnn import EGCL


def test_qm9_egnn_preset_runs_egnn_published_commands():
    """EGNN's main_qm9.py runs with --node_attr 0 (its default; the README's commands leave it unset)."""
    cfg = load_config("qm9-egnn")
    assert cfg.node_attr is False
    assert (cfg.mitigation, cfg.n_layers, cfg.hidden, cfg.n_rbf) == ("residual", 7, 128, 0)


@pytest.mark.parametrize("n_rbf", [0, 64])
def test_split_first_edge_layer_is_initialised_like_one_linear(n_rbf):
    """W_i, b, W_j, w (d²): uniform in ±1/√(2H + 1 + n_rbf), one Linear's bound. The basis weights keep
    PyTorch's default for their own Linear, ±1/√n_rbf (0.125 for 64 functions), wider than the joint
    bound (0.101 at H = 16): measured to learn forces faster (egnn.py)."""
    torch.manual_seed(0)
    hidden = 16
    layer = EGCL(hidden, n_rbf=n_rbf, rbf_max_A=6.0)
    bound = 1.0 / (2 * hidden + 1 + n_rbf) ** 0.5
    for p in [layer.edge_in_i.weight, layer.edge_in_i.bias, layer.edge_in_j.weight, layer.edge_in_d2]:
        assert float(p.abs().max()) <= bound
    widest = max(float(p.abs().max()) for p in (layer.edge_in_i.weight, layer.edge_in_j.weight))
    assert widest > 0.95 * bound  # the bound is reached, not a narrower init
    if n_rbf:
        own = 1.0 / n_rbf ** 0.5
        basis = float(layer.edge_in_rbf.weight.abs().max())
        assert bound < 0.95 * own < basis <= own  # its own Linear's bound, not the joint one