"""The paper's three studies as grids of training runs ("cells"), for two presets.

* ``depth``     — Fig. 2: rMD17 energy MAE vs number of layers, per mitigation.
* ``ablation``  — Table 2 and the brief's switches: PairReg variants at 9 layers on rMD17.
* ``qm9-table`` — Table 1: QM9 MAE per target for the plain EGCL stack (none), EGNN's residual form,
  PairNorm, G2 and PairReg at 9 layers.

Where the paper means EGNN, two rows stand in: ``none``, the plain EGCL stack (h_l = h̃_l), and
``residual``, EGNN's own form (its QM9 model adds h + φ_h(…)); only the second is labelled EGNN.

* ``budget-check`` — is the budget long enough? The 8-layer cell of none, residual and pairreg trained for
  the budget B and for 3 B (issue 14: choose B so that the first is within about 15 % of the second);
  ``budget`` preset only, B from ``--set time_budget_min`` (default 60).
* ``backbones`` — every backbone at its study settings (PaiNN: its paper's), without and with PairReg,
  at one wall-clock budget (issue 16's accuracy at equal compute; ``budget`` preset only); ``backbones-qm9``
  the same on QM9 HOMO with the ``qm9-1h`` recipe.

Each study has a ``paper`` preset (the paper's protocol, for GPUs), a ``cpu`` preset sized for about
two hours on two CPU cores, and a ``budget`` preset: the field's recipe of the one-hour presets
(``rmd17-1h``, ``qm9-1h``) with every cell trained for the same wall time (``time_budget_min``, 60
minutes unless ``--set time_budget_min=M``), the protocol for comparing methods at convergence-level
budgets. A cell is one training run: a base preset, overrides, a seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..config import BACKBONES

PRESETS = ("cpu", "paper", "budget")
DEPTHS = (1, 3, 5, 7, 9, 12)
BUDGET_DEPTHS = (2, 4, 8, 12, 16)  # the budget preset's depth grid (issue 14)
BUDGET_ABLATION_LAYERS = 8
BUDGET_CHECK_ROWS = ("none", "residual", "pairreg")
BUDGET_CHECK_FACTOR = 3  # the longer cell trains this many times the budget
BUDGET_CHECK_TOLERANCE = 0.15  # converged enough: MAE(B) <= (1 + this) x MAE(3 B), for every target
DEFAULT_BUDGET_MIN = 60.0  # the budget presets' time_budget_min
BASELINE_DEPTHS = (3, 9)  # PairNorm and G2 in the depth study
QM9_CPU_TARGETS = ("homo", "gap", "U0", "mu")

# What the cpu presets change on top of the shipped presets, and why (docs/results.md gives the cost).
# rmd17-cpu already trains with forces and a distance basis: the one recorded run without the basis
# (aspirin, lr 1e-3, 1,200 steps) stayed at the mean predictor, and d² alone fits 4 frames' forces
# far more slowly at lr 1e-3 (docs/results.md; other learning rates and budgets were not measured).
RMD17_CPU = ["epochs=6"]  # 6 × 60 = 360 optimiser steps of batch 16
QM9_CPU = ["hidden=64", "batch_size=32", "subset_train=8000", "subset_val=1000", "epochs=8"]

# Table labels of the rows that stand for EGNN: only EGNN's own (residual) form is called EGNN.
ROW_LABELS = {"none": "plain EGCL stack (none)", "residual": "EGNN (residual)"}
BACKBONE_NAMES = {"egnn": "EGNN", "painn": "PaiNN", "segnn": "SEGNN", "clofnet": "ClofNet"}

ABLATION_VARIANTS = {  # label → overrides (at 9 layers); the paper's Table 2 rows first
    ROW_LABELS["none"]: ["mitigation=none"],
    ROW_LABELS["residual"]: ["mitigation=residual"],
    # "Node only", two readings: ours switches coordinate updates off; the authors' script
    # (Del_rmd17_coord) keeps passing updated coordinates on, without averaging or regulariser
    "node only (ours: coords fixed)": ["mitigation=pairreg", "ablation=node-only"],
    "node only (authors: replace, λ=0)": ["mitigation=pairreg", "coord_mix=replace", "reg_weight=0"],
    "coord only": ["mitigation=pairreg", "ablation=coord-only"],
    "full (default)": ["mitigation=pairreg"],
    # the authors' φ_x last layer (bias, PyTorch's default init: coordinates move from step 0; ours starts still)
    "full, authors' φ_x init": ["mitigation=pairreg", "coord_init=authors"],
    "reg_layers=all": ["mitigation=pairreg", "reg_layers=all"],
    "reg_target=previous": ["mitigation=pairreg", "reg_target=previous"],
    "coord_mix=replace": ["mitigation=pairreg", "coord_mix=replace"],
    "λ=0": ["mitigation=pairreg", "reg_weight=0"],
    "λ=0.1": ["mitigation=pairreg", "reg_weight=0.1"],
    "λ=10": ["mitigation=pairreg", "reg_weight=10"],
}


@dataclass(frozen=True)
class Cell:
    """One training run of a study."""

    key: str  # unique, file-name safe: the run directory and the JSON file name
    group: str  # row of the table (mitigation or variant)
    x: object  # column of the table (depth, or None)
    seed: int
    overrides: tuple[str, ...]
    cost: float  # relative cost, for the ETA (≈ number of layers × width factor)


@dataclass
class Study:
    name: str
    preset: str  # cpu | paper
    base_preset: str  # shipped pairreg preset the cells start from
    base_overrides: list[str]
    cells: list[Cell] = field(default_factory=list)
    dataset: str = "rmd17"
    targets: tuple[str, ...] = ("energy",)
    # budget-check's columns as designed (B, 3 B): the table keeps both when --only / --cells narrow the cells
    columns: tuple = ()
    # ``--row-set``: overrides for one row's cells only (e.g. each mitigation at its own learning rate)
    row_overrides: dict = field(default_factory=dict)

    def rows(self) -> list[str]:
        """The study's table rows (mitigations or variants), in grid order."""
        return list(dict.fromkeys(c.group for c in self.cells))

    def resolve(self, names: list[str], option: str = "--only") -> list[str]:
        """The rows named by their label or key, any case (e.g. ``coord-only`` for "coord only";
        ``none`` or ``plain-EGCL-stack-none`` for the depth study's ``none``)."""
        by_name = {}
        for row in self.rows():
            for name in (row, row_label(row)):
                by_name[name.lower()] = by_name[_safe(name).lower()] = row
        unknown = [n for n in names if n.lower() not in by_name]
        if unknown:
            raise ValueError(f"{option} {' '.join(unknown)}: no such row in study {self.name}; "
                             f"rows: {', '.join(_safe(r) for r in self.rows())}")
        return [by_name[n.lower()] for n in names]

    def only(self, names: list[str]) -> "Study":
        """Keep the cells of the named rows (``--only``)."""
        keep = set(self.resolve(names))
        self.cells = [c for c in self.cells if c.group in keep]
        return self

    def keep_cells(self, keys: list[str]) -> "Study":
        """Keep only the cells with these keys, as ``--list`` prints them (``--cells``; e.g. the 3 B column of
        budget-check, or one seed of a row, to split a study across cores or sittings)."""
        have = [c.key for c in self.cells]
        unknown = [k for k in keys if k not in have]
        if unknown:
            raise ValueError(f"--cells {' '.join(unknown)}: no such cell in study {self.name}; "
                             f"cells: {', '.join(have) or 'none'}")
        wanted = set(keys)
        self.cells = [c for c in self.cells if c.key in wanted]
        return self

    def set_rows(self, items: list[str], grid_keys: set[str] = frozenset(),
                 run_keys: tuple[str, ...] = ()) -> "Study":
        """``--row-set ROW:KEY=VALUE``: the override applies to the cells of that row only, after ``--set`` (so
        ``--set lr=1e-3 --row-set residual:lr=4e-3`` trains EGNN's residual at 4e-3 and the other rows at 1e-3: each
        method at its tuned rate). ``ROW@X:KEY=VALUE`` applies to that row's cells at depth (or budget) X only, after
        the row's own (``pairnorm@16:step_budget=11307``: a step budget per depth). Keys the study's grid sets
        (``grid_keys``) and keys of how cells run (``run_keys``: threads, accelerator, ...) are refused."""
        from ..config import FIELDS, parse_overrides

        for item in items:
            row, colon, setting = item.partition(":")
            if not colon or "=" not in setting:
                raise ValueError(f"--row-set {item!r}: expected ROW:KEY=VALUE (e.g. residual:lr=4e-3) or "
                                 f"ROW@DEPTH:KEY=VALUE; rows: {', '.join(_safe(r) for r in self.rows())}")
            row, at, where = row.partition("@")
            (group,) = self.resolve([row.strip()], "--row-set")
            if at:
                xs = sorted({c.x for c in self.cells if c.group == group and c.x is not None})
                x = next((x for x in xs if _number(where) == x), None)
                if x is None:
                    raise ValueError(f"--row-set {item!r}: row {_safe(group)} has no cells at {where.strip()!r} in "
                                     f"this study; it has {', '.join(map(str, xs)) or 'none'}")
                group = f"{group}@{x}"
            (key,) = parse_overrides([setting])
            if key not in FIELDS:
                raise ValueError(f"--row-set {item!r}: unknown config key {key!r}")
            if key in grid_keys:
                raise ValueError(f"--row-set {item!r}: the {self.name} study sets {key} per cell (its grid)")
            if key in run_keys:
                raise ValueError(f"--row-set {item!r}: {key} says how cells run, not what they compute; "
                                 "give it to every cell with --set")
            self.row_overrides.setdefault(group, []).append(setting.strip())
        return self

    def row_settings(self) -> str:
        """``residual: lr=4e-3; pairreg: lr=2e-3; pairreg@16: lr=1e-3`` (the ``--row-set`` overrides of the rows, or
        rows at a depth, it has cells of)."""
        have = {c.group for c in self.cells} | {f"{c.group}@{c.x}" for c in self.cells}
        return "; ".join(f"{'@'.join(_safe(part) for part in row.split('@'))}: {' '.join(sets)}"
                         for row, sets in self.row_overrides.items() if row in have)

    def cell_row_overrides(self, cell: "Cell") -> list[str]:
        """The ``--row-set`` overrides of ``cell``: its row's, then its row's at its depth (or budget)."""
        return [*self.row_overrides.get(cell.group, ()), *self.row_overrides.get(f"{cell.group}@{cell.x}", ())]

    def describe(self) -> str:
        rows = f"; per row (--row-set) {settings}" if (settings := self.row_settings()) else ""
        return (f"study {self.name}, preset {self.preset}: {len(self.cells)} cells from preset "
                f"{self.base_preset!r} with {' '.join(self.base_overrides) or 'no overrides'}{rows}")


def row_label(group: str, backbone: str = "egnn") -> str:
    """A row's label in tables and plots: ``none`` → "plain EGCL stack (none)", ``residual`` → "EGNN (residual)";
    on another backbone (``--set backbone=painn``) those names would be wrong: ``none`` → "PaiNN (none)"."""
    if backbone != "egnn":
        return f"{BACKBONE_NAMES.get(backbone, backbone)} (none)" if group == "none" else group
    return ROW_LABELS.get(group, group)


def layers(n: int) -> str:
    """``1 layer``, ``12 layers``: a depth in words, for tables and progress lines."""
    return f"{n} layer" if n == 1 else f"{n} layers"


def _safe(text: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-." else "-" for c in text.replace("λ", "lambda"))
    return "-".join(p for p in keep.split("-") if p)


def _cost(mitigation: str, n_layers: int) -> float:
    """Relative cost of a cell for the ETA: layers, doubled for G2 (it runs a second EGCL per layer)."""
    return n_layers * (2.0 if mitigation == "g2" else 1.0)


def _seeds(default: int, override: int | None) -> range:
    return range(override if override is not None else default)


def _rmd17_base(preset: str, molecule: str) -> tuple[str, list[str]]:
    """Base preset and overrides of the rMD17 studies. Fig. 2 uses the field's official-1 split in our cpu and
    budget presets (rmd17-1h has it); the paper preset keeps the paper's 80/10/10."""
    if preset == "budget":
        return "rmd17-1h", [f"molecule={molecule}"]
    if preset == "cpu":
        return "rmd17-cpu", [f"molecule={molecule}", *RMD17_CPU, "split=official-1"]
    return "rmd17-paper", [f"molecule={molecule}"]


def depth_study(preset: str, seeds: int | None = None, molecule: str = "aspirin") -> Study:
    base, base_overrides = _rmd17_base(preset, molecule)
    study = Study("depth", preset, base, base_overrides)
    if preset == "budget":  # issue 14's design: 3 seeds for the plain stack, EGNN and PairReg, 2 for the others
        plan = [(m, BUDGET_DEPTHS, n) for m, n in (("none", 3), ("residual", 3), ("pairreg", 3), ("pairnorm", 2),
                                                   ("g2", 2))]
    else:
        plan = [("none", DEPTHS, 3), ("residual", DEPTHS, 2), ("pairreg", DEPTHS, 3), ("pairnorm", BASELINE_DEPTHS, 2),
                ("g2", BASELINE_DEPTHS, 2)]
    for mitigation, depths, n_seeds in plan:
        for depth in depths:
            for seed in _seeds(n_seeds, seeds):
                study.cells.append(Cell(f"{mitigation}-L{depth}-s{seed}", mitigation, depth, seed,
                                        (f"mitigation={mitigation}", f"n_layers={depth}", f"seed={seed}"),
                                        _cost(mitigation, depth)))
    return study


def ablation_study(preset: str, seeds: int | None = None, molecule: str = "aspirin") -> Study:
    base, base_overrides = _rmd17_base(preset, molecule)
    depth = BUDGET_ABLATION_LAYERS if preset == "budget" else 9
    study = Study("ablation", preset, base, [*base_overrides, f"n_layers={depth}"])
    for label, overrides in ABLATION_VARIANTS.items():
        for seed in _seeds(2, seeds):
            study.cells.append(Cell(f"{_safe(label)}-s{seed}", label, None, seed, (*overrides, f"seed={seed}"),
                                    float(depth)))
    return study


# Published rMD17-style numbers (energy meV, forces meV/Å) beside the backbones study, from
# ../shared/docs/field-recipes.md: PaiNN's as the MACE paper's table lists them (likely original MD17, not
# rMD17; unconfirmed there). EGNN, SEGNN and ClofNet have no published (r)MD17 number.
PUBLISHED_RMD17 = {
    ("painn", "ethanol"): (2.7, 10.0, "PaiNN, as listed in Batatia et al. 2022 (likely original MD17)"),
    ("painn", "aspirin"): (6.9, 16.1, "PaiNN, as listed in Batatia et al. 2022 (likely original MD17)"),
}


def backbone_overrides(backbone: str) -> tuple[str, ...]:
    """``--set`` overrides that give ``backbone`` its study settings (models/backbones STUDY_SETTINGS)."""
    from ..models.backbones import STUDY_SETTINGS  # here, not at the top: reading finished studies needs no torch

    return (f"backbone={backbone}", *(f"{k}={v}" for k, v in STUDY_SETTINGS.get(backbone, {}).items()))


# QM9 HOMO (meV) beside the QM9 backbones study, from ../shared/docs/field-recipes.md (EGNN/Cormorant split unless
# noted). ClofNet's paper reports no QM9 property.
PUBLISHED_QM9_HOMO = {
    "egnn": (29, "EGNN, Satorras et al. 2021, Table 3"),
    "painn": (27.6, "PaiNN, Schütt et al. 2021 (its 110k-train split)"),
    "segnn": (24, "SEGNN, Brandstetter et al. 2022"),
}


def _backbone_rows(study: Study, seeds: int | None, egnn_layers: int) -> Study:
    """Rows ``<backbone> none`` and ``<backbone> pairreg`` for every backbone at its study settings, 2 seeds."""
    from ..models.backbones import STUDY_SETTINGS

    for backbone in BACKBONES:
        settings = backbone_overrides(backbone)
        layers_ = int(STUDY_SETTINGS.get(backbone, {}).get("n_layers", egnn_layers))
        for mitigation in ("none", "pairreg"):
            group = f"{backbone} {mitigation}"
            for seed in _seeds(2, seeds):
                study.cells.append(Cell(f"{_safe(group)}-s{seed}", group, None, seed,
                                        (*settings, f"mitigation={mitigation}", f"seed={seed}"), float(layers_)))
    return study


def backbones_study(preset: str, seeds: int | None = None, molecule: str = "aspirin") -> Study:
    """Every backbone at its study settings (STUDY_SETTINGS; EGNN and ClofNet at the rmd17-1h preset's 6 x 64),
    without and with PairReg, the same wall budget, 2 seeds; rMD17 energies and forces."""
    if preset != "budget":
        raise ValueError(f"study backbones compares at equal wall time: use --preset budget (not {preset!r})")
    base, base_overrides = _rmd17_base(preset, molecule)
    return _backbone_rows(Study("backbones", preset, base, base_overrides), seeds, egnn_layers=6)


def backbones_qm9_study(preset: str, seeds: int | None = None) -> Study:
    """The backbones study on QM9 HOMO: the qm9-1h recipe (EGNN and ClofNet at its 7 x 64) and wall budget."""
    if preset != "budget":
        raise ValueError(f"study backbones-qm9 compares at equal wall time: use --preset budget (not {preset!r})")
    study = Study("backbones-qm9", preset, "qm9-1h", ["targets=homo"], dataset="qm9", targets=("homo",))
    return _backbone_rows(study, seeds, egnn_layers=7)


def budget_check_study(preset: str, seeds: int | None = None, molecule: str = "aspirin",
                       budget_min: float | None = None, budget_steps: int | None = None) -> Study:
    """Rows none, residual, pairreg at the ablation's depth (8 layers); columns x = the training budget, B and 3 B:
    minutes of wall time (``time_budget_min``, default), or optimiser steps (``budget_steps``: ``step_budget``,
    the same compute on any machine). Each cell sets its own budget, so ``--set`` gives B, not every cell's."""
    if preset != "budget":
        raise ValueError(f"study budget-check checks the budget preset's wall time: use --preset budget (not {preset!r})")
    if budget_min is not None and budget_steps is not None:
        raise ValueError("budget-check: give B in minutes (time_budget_min) or in steps (step_budget), not both")
    base, base_overrides = _rmd17_base(preset, molecule)
    if budget_steps is not None:
        if isinstance(budget_steps, bool) or not isinstance(budget_steps, int) or budget_steps <= 0:
            raise ValueError(f"--set step_budget: budget-check needs a whole number of steps > 0, got {budget_steps!r}")
        # B in the base overrides too: the study folder's manifest then refuses a rerun with another B
        study = Study("budget-check", preset, base, [*base_overrides, f"n_layers={BUDGET_ABLATION_LAYERS}",
                                                     "time_budget_min=null", f"step_budget={budget_steps}"])
        budgets = [(n, f"{n}steps", f"step_budget={n}") for n in (budget_steps, BUDGET_CHECK_FACTOR * budget_steps)]
    else:
        budget = DEFAULT_BUDGET_MIN if budget_min is None else float(budget_min)
        if not budget > 0:
            raise ValueError(f"--set time_budget_min: budget-check needs a budget > 0 minutes, got {budget_min}")
        study = Study("budget-check", preset, base, [*base_overrides, f"n_layers={BUDGET_ABLATION_LAYERS}",
                                                     f"time_budget_min={budget:g}"])
        budgets = [(m, f"{m:g}min", f"time_budget_min={m:g}") for m in (budget, BUDGET_CHECK_FACTOR * budget)]
    study.columns = tuple(x for x, _, _ in budgets)
    for x, name, override in budgets:
        for mitigation in BUDGET_CHECK_ROWS:
            for seed in _seeds(1, seeds):
                study.cells.append(Cell(f"{mitigation}-{name}-s{seed}", mitigation, x, seed,
                                        (f"mitigation={mitigation}", override, f"seed={seed}"),
                                        x / budgets[0][0] * BUDGET_ABLATION_LAYERS))
    return study


def budget_unit(study: Study) -> str:
    """What budget-check's columns count: "steps" or "min"."""
    return "steps" if any(o.startswith("step_budget=") for o in study.base_overrides) else "min"


def budget_amount(x, unit: str) -> str:
    """A budget-check column's number as tables print it: minutes as given (``30``, ``7.5``), optimiser steps
    written out (``38134``, never ``3.8e+04``)."""
    return f"{x:g}" if unit == "min" else str(x)


def qm9_table_study(preset: str, seeds: int | None = None) -> Study:
    """cpu: one multi-target model per (mitigation, seed) on 4 targets; paper: one model per target (as EGNN)."""
    mitigations = ("none", "residual", "pairnorm", "g2", "pairreg")
    if preset in ("cpu", "budget"):  # one model on 4 targets; budget: the qm9-1h recipe and wall time
        base, base_overrides = ("qm9-cpu", QM9_CPU) if preset == "cpu" else ("qm9-1h", [])
        study = Study("qm9-table", preset, base, base_overrides + ["targets=" + ",".join(QM9_CPU_TARGETS)],
                      dataset="qm9", targets=QM9_CPU_TARGETS)
        for mitigation in mitigations:
            for seed in _seeds(2, seeds):
                study.cells.append(Cell(f"{mitigation}-s{seed}", mitigation, None, seed,
                                        (f"mitigation={mitigation}", f"seed={seed}"),
                                        _cost(mitigation, 9)))
        return study
    from ..data import qm9  # here, not at the top: it imports torch

    targets = tuple(qm9.TARGET_NAMES)
    study = Study("qm9-table", preset, "qm9-paper", [], dataset="qm9", targets=targets)
    for target in targets:
        # one model per target as in EGNN's and the paper's tables, the paper's schedule (qm9-paper)
        for mitigation in mitigations:
            for seed in _seeds(1, seeds):
                study.cells.append(Cell(f"{_safe(target)}-{mitigation}-s{seed}", mitigation, target, seed,
                                        (f"targets={target}", f"mitigation={mitigation}", f"seed={seed}"),
                                        _cost(mitigation, 9)))
    return study


STUDIES = {"depth": depth_study, "ablation": ablation_study, "qm9-table": qm9_table_study,
           "backbones": backbones_study, "backbones-qm9": backbones_qm9_study, "budget-check": budget_check_study}


def build_study(name: str, preset: str, seeds: int | None = None, molecule: str = "aspirin",
                depths: list[int] | None = None, budget_min: float | None = None,
                budget_steps: int | None = None) -> Study:
    """The study's cells, seed 0 of every configuration first: a partly run study has one seed of everything.
    ``depths`` keeps only those columns of the depth study (``--depths``); ``budget_min`` or ``budget_steps`` is
    budget-check's B."""
    if (budget_min is not None or budget_steps is not None) and name != "budget-check":
        raise ValueError(f"a base budget applies to the budget-check study only (not {name})")
    study = _build(name, preset, seeds, molecule, budget_min, budget_steps)
    if depths:
        if name != "depth":
            raise ValueError(f"--depths applies to the depth study only (not {name})")
        grid = sorted({c.x for c in study.cells})
        missing = [d for d in depths if d not in grid]
        if missing:
            raise ValueError(f"--depths {' '.join(map(str, missing))}: not in this preset's grid {grid}")
        study.cells = [c for c in study.cells if c.x in depths]
    study.cells.sort(key=lambda c: c.seed)  # stable: the grid order within a seed
    return study


def cell_keys(study: Study) -> set[str]:
    """Config keys the study's cells set themselves (its grid): a ``--set`` of one would collapse the grid."""
    return {o.split("=", 1)[0] for c in study.cells for o in c.overrides}


def _build(name: str, preset: str, seeds: int | None, molecule: str, budget_min: float | None,
           budget_steps: int | None) -> Study:
    if name not in STUDIES:
        raise ValueError(f"unknown study {name!r}; choose one of {list(STUDIES)}")
    if preset not in PRESETS:
        raise ValueError(f"--preset {preset!r} is not valid; choose one of {list(PRESETS)}")
    if seeds is not None and seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {seeds}")
    if name == "qm9-table":
        return qm9_table_study(preset, seeds)
    if name == "backbones-qm9":
        return backbones_qm9_study(preset, seeds)
    if name == "budget-check":
        return budget_check_study(preset, seeds, molecule, budget_min, budget_steps)
    return STUDIES[name](preset, seeds, molecule)


def _number(text: str) -> float | None:
    """``"16"`` → 16.0; None when ``text`` is not a number (``ROW@X`` of ``--row-set``)."""
    try:
        return float(text)
    except ValueError:
        return None
