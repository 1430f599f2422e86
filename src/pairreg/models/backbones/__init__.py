"""Message-passing backbones, chosen by the ``backbone`` config key: ``egnn`` (default) and ``painn``.

Every backbone has the same interface — ``forward(h, x, edge_index, inv_deg, graph, node_attr)`` returning
the last layer's invariant features, positions and a per-layer record — so the model's readout, its
energies and forces (−∂E/∂x), and every mitigation plug into any of them.
"""

BACKBONES = ("egnn", "painn")
