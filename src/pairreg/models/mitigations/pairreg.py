"""PairReg (Ren, Liu & Zhang, PLOS ONE 2025, doi:10.1371/journal.pone.0328501).

Intended form (the paper's Eqs. 6–8 are missing from its text; the authors' scripts pin them)::

    (h̃_l, x̃_l) = EGCL_l(h_{l−1}, x_{l−1})
    h_l = W_l [h_{l−1} ‖ h̃_l]                              compromise residual (concat-project)
    x_l = ½ (x_{l−1} + x̃_l)                                coordinate transmission by averaging
    L   = L_task + λ · mean_i ‖x_{L,i} − x_{0,i}‖²          coordinate regression (Å²)

Every other reading of the paper's words is a switch (docs/method.md sets each beside the
paper's phrase).

On a backbone that keeps positions fixed and carries vector features (PaiNN), the coordinate
transmission becomes the same averaging of the vector features, v_l = ½ (v_{l−1} + ṽ_l) (``coord_mix``
chooses average or replace for them; the node-only ablation replaces), the residual acts on the
scalars as above, and the coordinate regulariser is off: positions never move, so there is nothing
to regress. Setting ``update_coords``, ``reg_weight`` > 0, ``reg_layers``, ``reg_target`` or
``coord_noise`` there is refused by name. On SEGNN (positions fixed, steerable l>0 features f in e3nn's
layout) the same holds with f in place of v: h_l = W_l[h_{l−1} ‖ h̃_l] on the l=0 part, f_l = ½ (f_{l−1} + f̃_l),
an average with invariant coefficients and so equivariant; ``residual=add`` is refused there as on PaiNN
(both layers add their update to their input already).
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Mitigation, refuse_additive_skip, register

RESIDUALS = ("none", "add", "concat-project", "dense-concat")
COORD_MIXES = ("replace", "average")
REG_LAYERS = ("last", "all")
REG_TARGETS = ("input", "previous")
ABLATIONS = ("full", "node-only", "coord-only")


def _choice(field: str, value, choices):
    value = str(value).strip().lower().replace("_", "-")
    if value not in choices:
        raise ValueError(f"{field}={value!r} is not valid; choose one of {list(choices)}")
    return value


@register("pairreg")
class PairReg(Mitigation):
    """PairReg mitigation.

    Args (``None`` means the default given here; ablations override as stated):
        residual: ``"concat-project"`` (default: h_l = W_l[h_{l−1} ‖ h̃_l], one Linear 2H→H),
            ``"add"`` (h_{l−1} + h̃_l), ``"none"`` (h̃_l), ``"dense-concat"``
            (W_l[h_0 ‖ … ‖ h_{l−1} ‖ h̃_l]).
        coord_mix: ``"average"`` (default: x_l = ½(x_{l−1} + x̃_l)) or ``"replace"`` (x_l = x̃_l).
        update_coords: transmit coordinates through the layers (default True).
        reg_layers: regress ``"last"`` (default) layer's coordinates, or ``"all"`` (mean over layers).
        reg_target: regress to the ``"input"`` geometry x_0 (default) or to the layer's own input
            x_{l−1} (``"previous"``, the paper's "current coordinates").
        reg_weight: λ ≥ 0 (default 1.0); the regulariser is in Å².
        coord_noise: σ ≥ 0 in Å (default 0). During training the input coordinates get Gaussian
            noise and ``reg_target="input"`` becomes the clean geometry (Noisy Nodes denoising).
        ablation: ``"full"`` (default, switches as set), ``"node-only"`` (no coordinate terms:
            update_coords=False, λ=0), ``"coord-only"`` (no residual: residual="none").
    """

    def __init__(
        self,
        n_layers: int,
        hidden: int,
        residual: str | None = None,
        coord_mix: str | None = None,
        update_coords: bool | None = None,
        reg_layers: str | None = None,
        reg_target: str | None = None,
        reg_weight: float | None = None,
        coord_noise: float | None = None,
        ablation: str | None = None,
        backbone: str = "egnn",
    ):
        super().__init__(n_layers, hidden, backbone)
        ablation = requested_ablation = _choice("ablation", ablation or "full", ABLATIONS)
        self.vector_mix = "replace"  # vector features (positions-fixed backbones only): see the module docstring
        if self.positions_fixed:
            for field, value in (("update_coords", update_coords), ("reg_layers", reg_layers),
                                 ("reg_target", reg_target), ("coord_noise", coord_noise)):
                if value is not None and value is not False:
                    raise ValueError(f"{field}={value!r}: backbone {backbone!r} keeps positions fixed, so PairReg's "
                                     "coordinate terms do not apply (it averages the vector / steerable features instead)")
            if reg_weight not in (None, 0, 0.0):
                raise ValueError(f"reg_weight={reg_weight}: backbone {backbone!r} keeps positions fixed, so the "
                                 "coordinate regulariser would be 0")
            mix = _choice("coord_mix", coord_mix or "average", COORD_MIXES)
            self.vector_mix = "replace" if ablation == "node-only" else mix
            update_coords, coord_mix, reg_weight = False, None, 0.0
            ablation = "coord-only" if ablation == "coord-only" else "full"  # node-only's only effect is made above
        if ablation == "node-only":
            for field, value, forced in (("update_coords", update_coords, False), ("reg_weight", reg_weight, 0.0)):
                if value is not None and value != forced:
                    raise ValueError(f"ablation='node-only' drops the coordinate terms; {field}={value!r} contradicts it")
            update_coords, reg_weight = False, 0.0
        if ablation == "coord-only":
            if residual is not None and _choice("residual", residual, RESIDUALS) != "none":
                raise ValueError(f"ablation='coord-only' drops the residual; residual={residual!r} contradicts it")
            residual = "none"
        self.update_coords = True if update_coords is None else bool(update_coords)
        if not self.update_coords:
            # coordinates never move: the coordinate switches would silently do nothing
            for field, value in (("coord_mix", coord_mix), ("reg_layers", reg_layers), ("reg_target", reg_target),
                                 ("coord_noise", coord_noise)):
                if value is not None:
                    raise ValueError(f"{field} is set but update_coords is off, so coordinates never move")
            if reg_weight not in (None, 0, 0.0):
                raise ValueError(f"reg_weight={reg_weight} but update_coords is off: the regulariser would be 0")
            reg_weight = 0.0
        self.ablation = requested_ablation
        self.residual = _choice("residual", residual or "concat-project", RESIDUALS)
        if self.residual == "add":
            refuse_additive_skip("PairReg's residual='add'", backbone)
        self.coord_mix = _choice("coord_mix", coord_mix or "average", COORD_MIXES)
        self.reg_layers = _choice("reg_layers", reg_layers or "last", REG_LAYERS)
        self.reg_target = _choice("reg_target", reg_target or "input", REG_TARGETS)
        self.reg_weight = 1.0 if reg_weight is None else float(reg_weight)
        self.coord_noise = 0.0 if coord_noise is None else float(coord_noise)
        if self.reg_weight < 0 or self.coord_noise < 0:
            raise ValueError(f"reg_weight and coord_noise must be >= 0 (got {self.reg_weight}, {self.coord_noise})")
        if self.residual == "concat-project":
            self.project = nn.ModuleList(nn.Linear(2 * hidden, hidden) for _ in range(n_layers))
        elif self.residual == "dense-concat":
            self.project = nn.ModuleList(nn.Linear((l + 2) * hidden, hidden) for l in range(n_layers))

    def extra_repr(self) -> str:
        return (f"residual={self.residual}, coord_mix={self.coord_mix}, update_coords={self.update_coords}, "
                f"reg_layers={self.reg_layers}, reg_target={self.reg_target}, reg_weight={self.reg_weight}, "
                f"coord_noise={self.coord_noise}, ablation={self.ablation}"
                + (f", vector_mix={self.vector_mix}" if self.positions_fixed else ""))

    def begin(self, h, x, graph):
        if self.training and self.coord_noise > 0:
            x = x + self.coord_noise * torch.randn_like(x)
        return h, x

    def combine(self, layer, h_prev, x_prev, h_new, x_new, graph, record):
        if self.residual == "none":
            h = h_new
        elif self.residual == "add":
            h = h_prev + h_new
        elif self.residual == "concat-project":
            h = self.project[layer](torch.cat([h_prev, h_new], dim=-1))  # (n_atoms, H)
        else:  # dense-concat: record.h holds h_0 … h_{l−1}, the last being h_prev
            h = self.project[layer](torch.cat([*record.h, h_new], dim=-1))
        if not self.update_coords:
            x = x_prev
        elif self.coord_mix == "average":
            x = 0.5 * (x_prev + x_new)
        else:
            x = x_new
        return h, x

    def combine_vectors(self, layer, v_prev, v_new, graph, record):
        return 0.5 * (v_prev + v_new) if self.vector_mix == "average" else v_new

    def combine_irreps(self, layer, f_prev, f_new, graph, record):
        return 0.5 * (f_prev + f_new) if self.vector_mix == "average" else f_new

    def extra_loss(self, record, graph):
        """λ · mean over chosen layers of mean_i ‖x_{l,i} − target_i‖² (Å²); None when λ = 0."""
        if self.reg_weight == 0:
            return None
        layers = [len(record) - 1] if self.reg_layers == "last" else range(1, len(record))
        terms = []
        for l in layers:
            target = record.x_input if self.reg_target == "input" else record.x[l - 1]
            terms.append(((record.x[l] - target) ** 2).sum(-1).mean())
        return self.reg_weight * torch.stack(terms).mean()
