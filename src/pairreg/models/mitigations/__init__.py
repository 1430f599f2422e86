"""Mitigations of oversmoothing, chosen by name: ``build_mitigation("pairreg", ...)``."""

from .base import GraphContext, LayerState, Mitigation, mitigation_names, register, resolve
from . import g2, noisynodes, pairnorm, pairreg, plain  # noqa: F401  (registers the built-in mitigations)


def build_mitigation(name: str, n_layers: int, hidden: int, backbone: str = "egnn", **options) -> Mitigation:
    """Instantiate mitigation ``name`` for ``backbone``; ``options`` that it does not take raise a ValueError
    naming them, and so does a combination the backbone cannot carry out."""
    import inspect

    cls = resolve(name)
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "n_layers", "hidden", "backbone"}
    unknown = sorted(k for k, v in options.items() if v is not None and k not in accepted)
    if unknown:
        raise ValueError(
            f"option(s) {unknown} do not apply to mitigation {cls.registry_name!r} "
            f"(it takes {sorted(accepted) or 'no options'})"
        )
    return cls(n_layers, hidden, backbone=backbone, **{k: v for k, v in options.items() if k in accepted})


__all__ = ["GraphContext", "LayerState", "Mitigation", "build_mitigation", "mitigation_names", "register", "resolve"]
