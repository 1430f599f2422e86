"""Message-passing backbones, chosen by the ``backbone`` config key: ``egnn`` (default), ``painn`` and
``clofnet``, and ``segnn`` (steerable features up to degree ``l_max``, built on e3nn).

Every backbone has the same interface — ``forward(h, x, edge_index, inv_deg, graph, node_attr)`` returning
the last layer's invariant features, positions and a per-layer record — so the model's readout, its
energies and forces (−∂E/∂x), and every mitigation plug into any of them.
"""

BACKBONES = ("egnn", "painn", "clofnet", "segnn")

# Each backbone's published settings as config keys (its paper's MD17 model); the studies' backbone rows and
# benchmarks/speed.py use them. EGNN's are the model's defaults plus the presets' distance basis.
PAPER_SETTINGS = {
    "egnn": {},
    "painn": {"n_layers": 3, "hidden": 128, "cutoff_A": 5.0, "n_rbf": 20, "rbf": "bessel"},  # Schütt et al. 2021
}
