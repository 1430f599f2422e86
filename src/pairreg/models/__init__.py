"""Models: backbones (EGCL stacks), mitigations (how layers join), and the molecule model."""

from .model import AtomFeatures, MoleculeModel, UnknownElementError, complete_graph

__all__ = ["AtomFeatures", "MoleculeModel", "UnknownElementError", "complete_graph"]
