"""benchmarks/force_step.py: it times the step `pairreg train` takes, and its quick mode runs end to end."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import torch

from pairreg.config import load_config
from pairreg.data.rmd17 import load_rmd17
from pairreg.training.datamodule import target_statistics
from pairreg.training.module import PropertyModule

ROOT = Path(__file__).parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "rmd17"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("force_step", ROOT / "benchmarks" / "force_step.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_timed_loss_is_the_training_steps_loss():
    bench = _load_benchmark()
    cfg = load_config("rmd17-1h", ["n_layers=2", "hidden=16", "n_rbf=8", f"data_root={FIXTURE}", "threads=1"])
    ds, idx = load_rmd17("ethanol", cfg.split, root=FIXTURE, download=False)
    mean, scale = target_statistics(ds, idx["train"], cfg.energy_scale)
    torch.manual_seed(0)
    module = PropertyModule(cfg, ds.target_names, ds.target_units, mean, scale, force_unit=ds.force_unit)
    b = ds.collate(idx["train"][:4])
    expected = module.training_step(b, 0)
    y_std, f_std, record = module.model.energy_and_forces(b.z, b.pos, b.batch, b.edge_index, b.num_molecules,
                                                          create_graph=True)
    got = bench.force_training_loss(module.model, cfg, b, y_std, f_std, record)
    assert torch.isclose(got, expected, rtol=1e-6), (float(got), float(expected))


def test_quick_prints_every_phase_and_a_rate(capsys):
    bench = _load_benchmark()
    assert bench.main(["--quick", "--molecules", "ethanol", "--data-root", str(FIXTURE), "--set", "threads=1"]) == 0
    out = capsys.readouterr().out
    for phase in bench.PHASES + ("force step", "energy-only step"):
        assert re.search(rf"^\| {phase} \| \d+\.\d\d \|", out, re.M), phase
    rate = float(re.search(r"^force_steps_per_s_ethanol=(\S+)$", out, re.M).group(1))
    assert np.isfinite(rate) and rate > 0
