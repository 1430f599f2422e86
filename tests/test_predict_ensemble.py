"""`pairreg predict FILE --checkpoint A B ...`: the ensemble mean and its spread per molecule, in every format."""

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from pairreg.cli.main import main
from test_ase_calculator import perturbed_copy  # tests/ is on sys.path (pytest's prepend import mode)

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17" / "rmd17_ethanol_test_01.npz"


def predict(*args) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(["predict", *map(str, args), "--accelerator", "cpu"])
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def frames(tmp_path_factory) -> Path:
    """Three ethanol frames in one extended-XYZ file."""
    data = np.load(FIXTURE)
    path = tmp_path_factory.mktemp("ensemble") / "ethanol.extxyz"
    from ase.io import write

    write(path, [Atoms(numbers=data["nuclear_charges"], positions=data["coords"][i]) for i in range(3)])
    return path


@pytest.fixture(scope="module")
def second_member(rmd17_run, tmp_path_factory) -> Path:
    """The fixture run's best checkpoint with its weights nudged (saved with torch.save): another ensemble member."""
    return perturbed_copy(rmd17_run, tmp_path_factory.mktemp("member") / "member.ckpt", seed=7)


def singles(frames, *checkpoints) -> list[np.ndarray]:
    """Each checkpoint's energies (meV) alone, through the unchanged one-checkpoint path."""
    energies = []
    for ckpt in checkpoints:
        status, out, _ = predict(frames, "--checkpoint", ckpt, "--json")
        assert status == 0
        document = json.loads(out)
        assert set(document) == {"checkpoint", "predictions"}  # one checkpoint: the output as before
        assert "energy_std_meV" not in document["predictions"][0]
        energies.append(np.array([r["energy_meV"] for r in document["predictions"]]))
    return energies


def test_json_gives_the_mean_and_the_spread_of_the_members(frames, rmd17_run, second_member):
    a, b = singles(frames, rmd17_run, second_member)
    assert np.abs(a - b).min() > 1e-3  # the members disagree
    status, out, err = predict(frames, "--checkpoint", rmd17_run, second_member, "--json")
    assert status == 0
    document = json.loads(out)
    assert len(document["checkpoints"]) == 2
    rows = document["predictions"]
    assert [list(r) for r in rows] == [["source", "formula", "n_atoms", "energy_meV", "energy_std_meV"]] * 3
    np.testing.assert_allclose([r["energy_meV"] for r in rows], (a + b) / 2, rtol=1e-12)
    np.testing.assert_allclose([r["energy_std_meV"] for r in rows], np.abs(a - b) / 2, rtol=1e-9)  # ddof 0
    assert err.count("pairreg predict: model:") == 2  # each member named on stderr


def test_csv_and_table_carry_the_spread_column(frames, rmd17_run, second_member):
    status, out, _ = predict(frames, "--checkpoint", rmd17_run, second_member, "--csv")
    assert status == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 3 and float(rows[0]["energy_std_meV"]) > 0
    status, out, _ = predict(frames, "--checkpoint", rmd17_run, second_member)
    assert status == 0
    lines = out.splitlines()
    assert lines[0].split("\t") == ["source", "formula", "energy_meV", "energy_std_meV"]
    assert len(lines) == 4
    assert float(lines[1].split("\t")[3]) == pytest.approx(float(rows[0]["energy_std_meV"]), rel=1e-5)


def test_members_with_different_targets_are_refused_naming_both(frames, rmd17_run, capsys):
    from pairreg.cli.predict_cmd import pretrained_checkpoint

    qm9 = str(pretrained_checkpoint())
    assert main(["predict", str(frames), "--checkpoint", str(rmd17_run), qm9]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("pairreg predict: error: an ensemble needs the same targets and units: ")
    assert "ethanol/checkpoints/best.ckpt predicts energy [meV]" in err
    assert "qm9-homo-lumo-gap-pairreg.ckpt predicts homo [meV], lumo [meV], gap [meV]" in err


def test_members_with_different_units_are_refused_naming_both(frames, rmd17_run, tmp_path, capsys):
    from pairreg.training.checkpoint import load_checkpoint_file

    ckpt = load_checkpoint_file(rmd17_run / "checkpoints" / "best.ckpt")
    ckpt["pairreg"]["target_units"] = ["kcal/mol"]
    torch.save(ckpt, tmp_path / "kcal.ckpt")
    assert main(["predict", str(frames), "--checkpoint", str(rmd17_run), str(tmp_path / "kcal.ckpt")]) == 2
    err = capsys.readouterr().err
    assert "predicts energy [meV] but" in err and "kcal.ckpt predicts energy [kcal/mol]" in err


def test_files_after_a_single_checkpoint_still_work_and_no_files_is_one_line(frames, rmd17_run, capsys):
    status, before, _ = predict(frames, "--checkpoint", rmd17_run, "--json")
    assert status == 0
    status, after, _ = predict("--checkpoint", rmd17_run, frames, "--json")  # the order accepted before ensembles
    assert status == 0 and json.loads(after) == json.loads(before)
    assert main(["predict", "--checkpoint", str(rmd17_run)]) == 2
    assert capsys.readouterr().err.strip() == ("pairreg predict: error: no molecule files given: pairreg predict "
                                               "FILE ... [--checkpoint RUN_DIR_OR_CKPT ...]")
    assert main(["predict", "--checkpoint", str(frames)]) == 2
    assert "a molecule file, not a run directory or .ckpt file" in capsys.readouterr().err
