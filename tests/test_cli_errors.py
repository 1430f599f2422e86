"""The CLI's top-level handler: every failure is one line `pairreg CMD: error: ...` (or `interrupted`),
torch's and numpy's advice to switch safe loading off never reaches the user, PAIRREG_DEBUG=1 shows the
traceback."""

import argparse
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from pairreg.cli import data_cmd
from pairreg.cli.main import main

FIXTURE_RMD17 = Path(__file__).parent / "fixtures" / "rmd17"
ADVICE = ("weights_only", "allow_pickle", "Traceback")


def _raising(monkeypatch, err):
    def run(args):
        raise err

    monkeypatch.setattr(data_cmd, "run", run)


def _one_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert not any(word in err for word in ADVICE), err
    return err[:-1]


@pytest.mark.parametrize("err,status,line", [
    (PermissionError(13, "Permission denied", "/runs/ro/config.yaml"), 2,
     "pairreg data: error: /runs/ro/config.yaml: Permission denied"),
    (OSError(28, "No space left on device", "/full/split.npz.tmp"), 2,
     "pairreg data: error: /full/split.npz.tmp: No space left on device"),
    (RuntimeError("PytorchStreamReader failed reading zip archive: failed finding central directory\n"
                  "  at frame 3 ..."), 1,
     "pairreg data: error: unexpected RuntimeError: PytorchStreamReader failed reading zip archive: failed finding "
     "central directory; set PAIRREG_DEBUG=1 to see the traceback"),
    (KeyError("state_dict"), 1, "pairreg data: error: missing key 'state_dict' in the data or checkpoint read "
                                "(KeyError); set PAIRREG_DEBUG=1 to see the traceback"),
    (pickle.UnpicklingError("Weights only load failed. Re-running `torch.load` with `weights_only` set to `False` "
                            "will likely succeed, but it can result in arbitrary code execution."), 2,
     "pairreg data: error: a file this command read is not a pairreg checkpoint or npz file, or it contains "
     "objects that are not allowed (pickled Python objects); refusing to load it"),
    (ValueError("Object arrays cannot be loaded when allow_pickle=False"), 2,
     "pairreg data: error: a file this command read is not a pairreg checkpoint or npz file, or it contains "
     "objects that are not allowed (pickled Python objects); refusing to load it"),
])
def test_errors_end_in_one_line_of_our_own(monkeypatch, capsys, err, status, line):
    monkeypatch.delenv("PAIRREG_DEBUG", raising=False)
    _raising(monkeypatch, err)
    assert main(["data", "qm9"]) == status
    assert _one_line(capsys) == line


def _main_catching_ctrl_c(argv) -> int:
    try:
        return main(argv)
    except KeyboardInterrupt:  # a failure of this test, not a request to stop pytest
        pytest.fail("KeyboardInterrupt escaped main() with a traceback")


def test_ctrl_c_is_status_130_without_a_traceback(monkeypatch, capsys):
    _raising(monkeypatch, KeyboardInterrupt())
    assert _main_catching_ctrl_c(["data", "qm9"]) == 130
    assert _one_line(capsys) == "pairreg data: interrupted"


def test_pairreg_debug_shows_the_traceback(monkeypatch):
    monkeypatch.setenv("PAIRREG_DEBUG", "1")
    _raising(monkeypatch, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        main(["data", "qm9"])
    _raising(monkeypatch, KeyboardInterrupt())
    assert _main_catching_ctrl_c(["data", "qm9"]) == 130  # Ctrl-C stays Ctrl-C with debugging on


def test_checkpoint_with_foreign_objects_is_refused_by_name(tmp_path, monkeypatch, capsys):
    """A real torch.load refusal (weights_only=True) names the file and keeps torch's advice away."""
    monkeypatch.delenv("PAIRREG_DEBUG", raising=False)
    crafted = tmp_path / "crafted.ckpt"
    torch.save({"pairreg": argparse.Namespace(payload="os.system"), "state_dict": {}}, crafted)
    assert main(["evaluate", str(crafted)]) == 2
    line = _one_line(capsys)
    assert line.startswith(f"pairreg evaluate: error: {crafted}") and "refus" in line, line


@pytest.mark.parametrize("loader", ["torch", "numpy"])
def test_unwrapped_safe_load_refusals_name_the_file(tmp_path, monkeypatch, capsys, loader):
    """A command that lets torch.load's / np.load's own refusal through: the handler finds the file in their frames."""
    monkeypatch.delenv("PAIRREG_DEBUG", raising=False)
    if loader == "torch":
        crafted = tmp_path / "x.ckpt"
        torch.save({"a": argparse.Namespace()}, crafted)
        load = lambda args: torch.load(crafted, weights_only=True)  # noqa: E731
    else:
        crafted = tmp_path / "x.npy"
        np.save(crafted, np.array([object()], dtype=object), allow_pickle=True)
        load = lambda args: np.load(crafted)  # noqa: E731
    monkeypatch.setattr(data_cmd, "run", load)
    assert main(["data", "qm9"]) == 2
    assert _one_line(capsys) == (f"pairreg data: error: {crafted} is not a pairreg checkpoint or npz file, or it "
                                 "contains objects that are not allowed (pickled Python objects); refusing to load it")


def test_npz_with_pickled_objects_is_refused_by_name(tmp_path, monkeypatch, capsys):
    """A real np.load refusal (allow_pickle=False) through `pairreg data rmd17`."""
    monkeypatch.delenv("PAIRREG_DEBUG", raising=False)
    for name in ("rmd17_ethanol_test_01.npz",):
        shutil.copy(FIXTURE_RMD17 / name, tmp_path / name)
    np.savez(tmp_path / "rmd17_ethanol_train_01.npz", nuclear_charges=np.array([object()], dtype=object),
             coords=np.zeros((1, 9, 3)), energies=np.zeros(1), forces=np.zeros((1, 9, 3)))
    assert main(["data", "rmd17", "--molecule", "ethanol", "--root", str(tmp_path)]) == 2
    line = _one_line(capsys)
    assert line == (f"pairreg data: error: {tmp_path / 'rmd17_ethanol_train_01.npz'}: not a readable npz file, or it "
                    "holds pickled Python objects; refusing to load it")
