"""Message-passing backbones, chosen by the ``backbone`` config key: ``egnn`` (default), ``painn`` and
``clofnet``, and ``segnn`` (steerable features up to degree ``l_max``, built on e3nn).

Every backbone has the same interface — ``forward(h, x, edge_index, inv_deg, graph, node_attr)`` returning
the last layer's invariant features, positions and a per-layer record — so the model's readout, its
energies and forces (−∂E/∂x), and every mitigation plug into any of them.
"""

from ...config import BACKBONES  # noqa: F401 (the config key's choices, defined once there)

# The settings each backbone runs with in the backbones study and benchmarks/speed.py, as config keys on top of
# the preset (rmd17-1h: 6 layers x 64, 16 Gaussians to 5 A). PaiNN: its paper's MD17 model. ClofNet: its paper has
# no MD17/QM9 model, so the preset's. SEGNN: not its paper's QM9 model (7 x 128, l_max 2), which trains at 0.33
# force steps/s on one CPU core (12 minutes per ethanol epoch); 4 x 64 with l_max 1 runs at 4 steps/s, EGNN's order.
STUDY_SETTINGS = {
    "egnn": {},
    "painn": {"n_layers": 3, "hidden": 128, "cutoff_A": 5.0, "n_rbf": 20, "rbf": "bessel"},  # Schütt et al. 2021
    "clofnet": {},
    "segnn": {"n_layers": 4, "hidden": 64, "l_max": 1},  # the preset's radial basis, as EGNN and ClofNet
}
