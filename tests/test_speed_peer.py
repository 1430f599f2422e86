"""benchmarks/speed.py's peer at EGNN's widths: the layers have EGNN's MLP sizes and do a fraction of the
default-width peer's matmul work (FLOPs are counted, never timed, here)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pairreg.data.molecules import make_batch
from pairreg.models.model import AtomFeatures

SPEED = Path(__file__).parents[1] / "benchmarks" / "speed.py"


def _speed():
    spec = importlib.util.spec_from_file_location("speed", SPEED)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _linear_shapes(seq: nn.Sequential) -> list[tuple[int, int]]:
    return [(m.in_features, m.out_features) for m in seq if isinstance(m, nn.Linear)]


def _train_flops(model, inputs) -> int:
    with FlopCounterMode(display=False) as counter:
        model(*inputs).sum().backward()
    return counter.get_total_flops()


def test_peer_at_egnn_widths_has_egnns_mlps_and_far_fewer_flops():
    speed = _speed()
    H = 32
    features = AtomFeatures()
    rng = np.random.default_rng(0)
    zs = [np.array([6, 1, 1, 1, 8]), np.array([6, 6, 1, 1, 1, 1, 7])]
    b = make_batch(zs, [rng.normal(size=(len(z), 3)) for z in zs], np.zeros((2, 1)))
    inputs = speed.padded(b, features)
    torch.manual_seed(0)
    default = speed.EGNNPytorchPeer(features.dim, H, 2, update_coors=True)
    matched = speed.EGNNPytorchPeer(features.dim, H, 2, update_coors=True, egnn_widths=True)
    layer = matched.layers[0]
    assert _linear_shapes(layer.edge_mlp) == [(2 * H + 1, H), (H, H)]
    assert _linear_shapes(layer.node_mlp) == [(2 * H, H), (H, H)]
    assert _linear_shapes(layer.coors_mlp) == [(H, H), (H, 1)]
    assert _linear_shapes(default.layers[0].edge_mlp) == [(2 * H + 1, 2 * (2 * H + 1)), (2 * (2 * H + 1), H)]
    out = matched(*inputs)
    assert out.shape == (2, 1) and torch.isfinite(out).all()
    # the default widths (edge hidden 2(2H+1), coordinate hidden 4H) cost several times EGNN's sizes
    assert _train_flops(default, inputs) > 2.5 * _train_flops(matched, inputs)
