"""pairreg: deep E(n)-equivariant GNNs on 3D molecules, with the PairReg oversmoothing mitigation.

Data flow, one sub-package each: ``data`` (files → datasets → batches), ``models`` (backbones,
mitigations, the molecule model), ``training`` (loss, Lightning module, trainer),
``evaluation`` (metrics, predictions), ``cli`` (the ``pairreg`` command).
"""

__version__ = "0.1.0"
