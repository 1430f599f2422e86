"""The shipped rMD17 models (ethanol, aspirin; EGNN and PaiNN): each card's accuracy holds on official test frames
the model never saw, in the right units, through both `pairreg evaluate`'s code and the ASE calculator."""

from __future__ import annotations

import json
import re
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from pairreg import pretrained
from pairreg.ase import PairregCalculator
from pairreg.data.rmd17 import read_npz, to_set
from pairreg.evaluation.forces import predict_energy_forces
from pairreg.training.checkpoint import load_model
from pairreg.units import convert

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17"
ETHANOL = "rmd17-ethanol-pairreg"
ASPIRIN = "rmd17-aspirin-pairreg"
ETHANOL_PAINN = "rmd17-ethanol-painn"
ASPIRIN_PAINN = "rmd17-aspirin-painn"


def test_the_shipped_models_are_listed_and_the_default_is_qm9():
    assert {pretrained.DEFAULT, ETHANOL, ASPIRIN, ETHANOL_PAINN, ASPIRIN_PAINN,
            "qm9-homo-residual", "qm9-homo-painn", "rmd17-ethanol-residual"} <= set(pretrained.names())
    assert pretrained.DEFAULT == "qm9-homo-lumo-gap-pairreg"


@pytest.mark.parametrize("molecule, name", [("ethanol", ETHANOL), ("aspirin", ASPIRIN), ("ethanol", ETHANOL_PAINN),
                                             ("aspirin", ASPIRIN_PAINN), ("ethanol", "rmd17-ethanol-residual")])
def test_shipped_rmd17_model_matches_its_card_on_unseen_test_frames(molecule, name):
    model, info = load_model(pretrained.PREFIX + name)
    assert info["target_names"] == ["energy"] and info["target_units"] == ["meV"]
    card = json.loads((resources.files("pairreg.pretrained") / f"{name}.metrics.json").read_text())["test"]
    # the first 20 frames of the official test file (the model trained on frames of the train file only)
    ds = to_set(read_npz(FIXTURE / f"rmd17_{molecule}_test_01.npz", molecule))
    energy_meV, forces_meV_A = predict_energy_forces(model, ds)
    e_mae = np.abs(energy_meV - ds.y[:, 0]).mean()
    f_mae = np.abs(forces_meV_A - ds.forces).mean()
    # 20 frames scatter around the 1,000-frame figure; a unit slip (kcal/mol, eV) would be off 20x-1000x
    assert f_mae < 2 * card["test/forces_mae_meV_per_Angstrom"], f_mae
    assert e_mae < 3 * card["test/energy_mae_meV"], e_mae
    assert f_mae > 0.25 * card["test/forces_mae_meV_per_Angstrom"]  # not a memorised frame either

    calc = PairregCalculator(pretrained.PREFIX + name)
    z, pos = ds.atoms(0)
    atoms = Atoms(numbers=z, positions=pos, calculator=calc)
    np.testing.assert_allclose(atoms.get_potential_energy(), convert(energy_meV[0], "meV", "eV"), rtol=1e-9)
    np.testing.assert_allclose(atoms.get_forces(), convert(forces_meV_A[: len(z)], "meV/Angstrom", "eV/Angstrom"),
                               rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["qm9-homo-residual", "qm9-homo-painn"])
def test_shipped_qm9_homo_model_matches_its_card_on_typical_sample_molecules(name, qm9_sample_env):
    """A one-hour QM9 HOMO model on the sample's typical (9 heavy atoms) molecules: MAE of the size of its
    test MAE (a Hartree/eV slip would be off by orders of magnitude)."""
    from pairreg.data import qm9

    model, info = load_model(pretrained.PREFIX + name)
    assert info["target_names"] == ["homo"] and info["target_units"] == ["meV"]
    card = info["metrics"]["test"]["test/homo_mae_meV"]
    sample = qm9.load_qm9(["homo"], verbose=False)
    typical = [i for i in range(len(sample)) if (sample.atoms(i)[0] > 1).sum() == 9]
    b = sample.collate(np.asarray(typical))
    mae = np.abs(model.predict(b.z, b.pos, b.batch).numpy()[:, 0] - sample.y[typical, 0]).mean()
    assert 0.3 * card < mae < 1.5 * card, (mae, card)


def test_every_shipped_model_has_a_card_whose_table_matches_its_metrics():
    """The model table of pretrained/README.md quotes each model's test MAE as recorded in its metrics.json
    (to the digits shown), and every shipped checkpoint has a row and a card: a model replaced without its
    card (or the reverse) fails here."""
    folder = resources.files("pairreg.pretrained")
    readme = (folder / "README.md").read_text()
    rows = {line.split("|")[1].strip().split()[0].strip("`"): line.split("|")[-2]
            for line in readme.split("\n## ")[0].splitlines() if line.startswith("| `")}  # the table above the cards
    for name in pretrained.names():
        assert name in rows, f"{name} has no row in the table of pretrained/README.md"
        assert f"## `{name}.ckpt`" in readme, f"{name} has no card in pretrained/README.md"
        test = json.loads((folder / f"{name}.metrics.json").read_text())["test"]
        recorded = [v for k, v in test.items() if k != "test/mae_std"]
        shown = re.findall(r"\d+(?:\.\d+)?", rows[name])
        assert len(shown) == len(recorded), (name, shown, recorded)
        for text, value in zip(shown, recorded):
            decimals = len(text.split(".")[1]) if "." in text else 0
            assert abs(float(text) - value) <= 0.5 * 10 ** -decimals + 1e-9, (name, text, value)
