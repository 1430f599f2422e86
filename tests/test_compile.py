"""``compile=true``: the training forward pass through ``torch.compile`` trains the same model as the eager one,
writes the same checkpoints, and force training (a double backward) is refused by name."""

from __future__ import annotations

import pytest
import torch

from pairreg.config import ConfigError, load_config
from pairreg.training.checkpoint import load_model
from pairreg.training.run import train

TINY_QM9 = ["subset_train=32", "subset_val=16", "subset_test=16", "epochs=2", "n_layers=1", "hidden=8",
            "batch_size=16", "targets=homo", "progress=false", "threads=1", "seed=5", "eval_test=true"]


def test_compile_with_force_training_is_refused_by_name():
    with pytest.raises(ConfigError, match="compile=true.*double backward.*force_weight=0"):
        load_config("rmd17-1h", ["compile=true"])
    load_config("rmd17-1h", ["compile=true", "force_weight=0"])  # energies only: allowed


@pytest.mark.slow  # one torch.compile of a one-layer model: tens of seconds on a CPU
def test_a_compiled_run_trains_the_same_model_and_writes_the_same_checkpoint(qm9_sample_env):
    from torch._dynamo.utils import counters

    out = qm9_sample_env / "runs"
    eager = train(load_config("qm9-demo", [*TINY_QM9, f"out={out}", "name=eager"]))
    torch._dynamo.reset()
    counters.clear()
    compiled = train(load_config("qm9-demo", [*TINY_QM9, f"out={out}", "name=compiled", "compile=true"]))
    assert counters["stats"]["unique_graphs"] >= 1  # the run went through torch.compile
    for part in ("val", "test"):
        assert set(compiled[part]) == set(eager[part])
        for key, value in eager[part].items():
            # compiled kernels may round float32 sums in another order: equal to float32 precision, not bitwise
            assert compiled[part][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (part, key)
    a, b = load_model(out / "eager")[0].state_dict(), load_model(out / "compiled")[0].state_dict()
    assert list(a) == list(b)  # no compiled-wrapper prefixes: `evaluate`/`predict` load it like any checkpoint
    for key in a:
        assert torch.allclose(a[key].double(), b[key].double(), rtol=1e-4, atol=1e-6), key
