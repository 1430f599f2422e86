"""dataset=extxyz: your own extended XYZ data (files ASE wrote and files of other codes), units, the random
split, per-element energy references for mixed compositions, errors by frame, and a tiny training run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

import ase.io
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator

from pairreg import units
from pairreg.cli.main import main
from pairreg.config import ConfigError, config_from_dict, dump_yaml, load_config
from pairreg.data import extxyz
from pairreg.data.extxyz import ExtXYZError, fit_element_references, load_extxyz, random_split
from pairreg.training.checkpoint import CheckpointError, load_checkpoint, load_model

# per-element energies (eV) the mixed-composition data are built from, and the test's molecules
REF_EV = {1: -13.6, 6: -1029.5, 7: -1484.2, 8: -2041.3}
FORMULAS = ("CH4", "H2O", "NH3", "C2H6", "CH3OH", "HCN")


def _mixed_frames(n: int = 36, seed: int = 0, with_forces: bool = True) -> list[Atoms]:
    """Molecules of several compositions; energy = Σ per-element energies + a small harmonic term (eV)."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = Atoms(FORMULAS[k % len(FORMULAS)])
        atoms.positions = rng.normal(scale=0.8, size=(len(atoms), 3))
        d = atoms.positions - atoms.positions.mean(0)
        energy = sum(REF_EV[z] for z in atoms.numbers) + 0.05 * float((d ** 2).sum())
        results = {"energy": energy}
        if with_forces:
            results["forces"] = -0.1 * d
        atoms.calc = SinglePointCalculator(atoms, **results)
        frames.append(atoms)
    return frames


def _write(path, frames):
    ase.io.write(str(path), frames, format="extxyz")
    return path


# --- reading --------------------------------------------------------------------------------------------

def test_a_file_ase_wrote_gives_energy_and_forces_from_the_calculator_results_in_meV(tmp_path):
    frames = _mixed_frames(6)
    path = _write(tmp_path / "ase.extxyz", frames)
    back = ase.io.read(str(path), index=":")
    assert "energy" not in back[0].info and "forces" not in back[0].arrays  # ASE moved them to the calculator
    ds = load_extxyz(path)
    assert ds.target_names == ["energy"] and ds.target_units == ["meV"] and ds.force_unit == "meV/Angstrom"
    np.testing.assert_allclose(ds.y[:, 0], [a.get_potential_energy() * 1000 for a in frames], rtol=1e-12)
    # ASE writes 8 decimals of each force component; eV/Å → meV/Å
    np.testing.assert_allclose(ds.forces, np.concatenate([a.get_forces() for a in back]) * 1000, rtol=1e-12)
    np.testing.assert_allclose(ds.forces, np.concatenate([a.get_forces() for a in frames]) * 1000, atol=1e-5)
    np.testing.assert_array_equal(ds.mol_ids, np.arange(6))
    np.testing.assert_array_equal(ds.n_atoms, [len(a) for a in frames])


OTHER_CODE = """3
Properties=species:S:1:pos:R:3:REF_forces:R:3 REF_energy=-47.5 gap=0.25 charge_q=-1 pbc="F F F"
O 0.0 0.0 0.0 0.1 0.2 0.3
H 0.96 0.0 0.0 -0.1 0.0 0.0
H -0.24 0.93 0.0 0.0 -0.2 -0.3
2
Properties=species:S:1:pos:R:3:REF_forces:R:3 REF_energy=-10.25 gap=0.5 charge_q=0
H 0.0 0.0 0.0 1.0 0.0 0.0
H 0.74 0.0 0.0 -1.0 0.0 0.0
"""


def test_a_file_of_another_code_gives_its_info_and_arrays_keys_in_the_units_given(tmp_path):
    path = tmp_path / "other.xyz"
    path.write_text(OTHER_CODE)
    ds = load_extxyz(path, energy_key="REF_energy", forces_key="REF_forces", energy_unit="kcal/mol",
                     forces_unit="kcal/mol/Å")
    kcal = units.factor("kcal/mol", "meV")
    np.testing.assert_allclose(ds.y[:, 0], [-47.5 * kcal, -10.25 * kcal])
    np.testing.assert_allclose(ds.forces[0], [0.1 * kcal, 0.2 * kcal, 0.3 * kcal])
    # per-molecule scalars of info as targets: a unit is converted into its reporting unit, none is dimensionless
    ds = load_extxyz(path, energy_key="REF_energy", forces_key=None, targets=["energy", "gap:eV", "charge_q"])
    assert ds.target_names == ["energy", "gap", "charge_q"] and ds.target_units == ["meV", "meV", "1"]
    np.testing.assert_allclose(ds.y, [[-47500.0, 250.0, -1.0], [-10250.0, 500.0, 0.0]])
    assert ds.forces is None


def _frame_error(tmp_path, text: str, **kwargs) -> str:
    path = tmp_path / "bad.xyz"
    path.write_text(text)
    with pytest.raises(ExtXYZError) as err:
        load_extxyz(path, **kwargs)
    return str(err.value)


def test_errors_name_the_file_the_frame_its_line_and_the_key(tmp_path):
    # frame 1 (0-based) starts on line 6 and has no REF_energy
    msg = _frame_error(tmp_path, OTHER_CODE.replace("REF_energy=-10.25 ", ""), energy_key="REF_energy",
                       forces_key="REF_forces")
    assert "bad.xyz:6: frame 1: no energy 'REF_energy' (energy_key)" in msg and "gap" in msg
    msg = _frame_error(tmp_path, OTHER_CODE, energy_key="REF_energy", forces_key="forces")
    assert "bad.xyz:1: frame 0: no forces 'forces' (forces_key)" in msg and "REF_forces" in msg
    assert "forces_key=null" in msg
    msg = _frame_error(tmp_path, OTHER_CODE, energy_key="REF_energy", forces_key=None, targets=["energy", "homo:eV"])
    assert "frame 0: no target 'homo'" in msg


def test_nan_and_infinite_values_are_refused_by_frame(tmp_path):
    msg = _frame_error(tmp_path, OTHER_CODE.replace("REF_energy=-10.25", "REF_energy=nan"), energy_key="REF_energy",
                       forces_key="REF_forces")
    assert "bad.xyz:6: frame 1:" in msg and "nan" in msg.lower()
    msg = _frame_error(tmp_path, OTHER_CODE.replace("-1.0 0.0 0.0\n", "-inf 0.0 0.0\n"), energy_key="REF_energy",
                       forces_key="REF_forces")
    assert "frame 1:" in msg and "atom 1" in msg and "infinite" in msg


def test_periodic_frames_vectors_and_text_are_refused_by_frame(tmp_path):
    periodic = OTHER_CODE.replace('pbc="F F F"', 'Lattice="9 0 0 0 9 0 0 0 9" pbc="T T T"')
    msg = _frame_error(tmp_path, periodic, energy_key="REF_energy", forces_key=None)
    assert "bad.xyz:1: frame 0: the frame is periodic" in msg
    vector = OTHER_CODE.replace("gap=0.25", 'gap="0.1 0.2 0.3"')
    msg = _frame_error(tmp_path, vector, energy_key="REF_energy", forces_key=None, targets=["gap:eV"])
    assert "frame 0: info key 'gap' has 3 values" in msg
    text = OTHER_CODE.replace("gap=0.5", "gap=high")
    msg = _frame_error(tmp_path, text, energy_key="REF_energy", forces_key=None, targets=["gap:eV"])
    assert "frame 1: info key 'gap' is 'high', not a number" in msg


def test_unreadable_files_and_elements_the_model_does_not_embed(tmp_path):
    broken = OTHER_CODE.replace("H 0.74 0.0 0.0 -1.0 0.0 0.0\n", "H 0.74 zero 0.0 -1.0 0.0 0.0\n")
    msg = _frame_error(tmp_path, broken, energy_key="REF_energy", forces_key=None)
    assert msg.startswith(f"{tmp_path / 'bad.xyz'}:9:")
    with pytest.raises(ExtXYZError, match="no such file"):
        load_extxyz(tmp_path / "missing.xyz")
    msg = _frame_error(tmp_path, OTHER_CODE.replace("O 0.0", "S 0.0"), energy_key="REF_energy", forces_key=None,
                       elements=(1, 6, 7, 8, 9))
    assert "frame 0: element S is not one the model embeds (H, C, N, O, F)" in msg and "elements=" in msg


# --- split and config ----------------------------------------------------------------------------------

def test_the_random_split_is_a_seeded_partition_in_the_fractions_given():
    split = random_split(100, 0.15, 0.05, seed=7)
    assert [len(split[k]) for k in ("train", "val", "test")] == [80, 15, 5]
    assert sorted(np.concatenate(list(split.values())).tolist()) == list(range(100))
    again = random_split(100, 0.15, 0.05, seed=7)
    assert all(np.array_equal(split[k], again[k]) for k in split)
    assert not np.array_equal(random_split(100, 0.15, 0.05, seed=8)["val"], split["val"])
    with pytest.raises(ExtXYZError, match="leave none for training"):
        random_split(2, 0.4, 0.4, seed=0)


def test_config_without_a_preset_and_with_rmd17_cpu_whose_dataset_keys_give_way():
    cfg = load_config(None, ["dataset=extxyz", "data_path=my.xyz"])
    assert cfg.targets == ["energy"] and cfg.energy_unit == "eV" and cfg.forces_key == "forces"
    cfg = load_config("rmd17-cpu", ["dataset=extxyz", "data_path=my.xyz"])
    assert (cfg.n_layers, cfg.hidden, cfg.n_rbf, cfg.force_weight, cfg.lr) == (9, 64, 64, 10.0, 1e-3)  # the preset's
    assert (cfg.molecule, cfg.split, cfg.data_root, cfg.targets) == ("aspirin", None, None, ["energy"])  # given way
    for bad, key in (("molecule=ethanol", "molecule"), ("data_root=bundled", "data_root"), ("split=ratio", "split")):
        with pytest.raises(ConfigError, match=key):
            load_config("rmd17-cpu", ["dataset=extxyz", "data_path=my.xyz", bad])
    with pytest.raises(ConfigError, match="force_weight=10 needs forces, but forces_key is null"):
        load_config("rmd17-cpu", ["dataset=extxyz", "data_path=my.xyz", "forces_key=null"])
    with pytest.raises(ConfigError, match="needs data_path"):
        load_config(None, ["dataset=extxyz"])
    with pytest.raises(ConfigError, match="data_path: only for dataset=extxyz"):
        load_config("rmd17-cpu", ["data_path=my.xyz"])
    with pytest.raises(ConfigError, match="set forces_key=null to train on other targets"):
        load_config(None, ["dataset=extxyz", "data_path=my.xyz", "targets=energy,gap:eV"])
    with pytest.raises(ConfigError, match="energy_unit='eV/Angstrom' is not a unit of energy"):
        load_config(None, ["dataset=extxyz", "data_path=my.xyz", "energy_unit=eV/Angstrom"])
    with pytest.raises(ConfigError, match="val_frac \\+ test_frac"):
        load_config(None, ["dataset=extxyz", "data_path=my.xyz", "val_frac=0.5", "test_frac=0.5"])
    # target specs with units survive the run directory's config.yaml
    cfg = load_config(None, ["dataset=extxyz", "data_path=my.xyz", "forces_key=null", "targets=energy,gap:eV,q"])
    assert config_from_dict(yaml.safe_load(dump_yaml(cfg))).targets == ["energy", "gap:eV", "q"]


# --- per-element references -------------------------------------------------------------------------------

def test_fitted_references_recover_the_per_element_energies_only_when_compositions_vary(tmp_path):
    path = _write(tmp_path / "mixed.extxyz", _mixed_frames(36))
    ds = load_extxyz(path, forces_key=None)
    elements = (1, 6, 7, 8, 9)
    # the harmonic term adds a composition-dependent offset; fit on frames with near-zero geometry term instead
    pure = ds.y[:, 0] - np.array([0.05e3 * float(((p - p.mean(0)) ** 2).sum())
                                  for p in (ds.atoms(i)[1] for i in range(len(ds)))])
    ds.y = pure[:, None]
    ref = fit_element_references(ds, np.arange(len(ds)), elements)
    np.testing.assert_allclose(ref[:4, 0], [REF_EV[z] * 1000 for z in (1, 6, 7, 8)], rtol=1e-9)
    assert ref[4, 0] == 0.0  # F: in no molecule
    same = ds.subset(np.arange(0, len(ds), len(FORMULAS)))  # only CH4
    assert fit_element_references(same, np.arange(len(same)), elements) is None


def test_the_model_adds_its_references_and_an_old_checkpoint_without_them_loads(rmd17_run, tmp_path):
    from pairreg.data.molecules import make_batch
    from pairreg.models import MoleculeModel

    ref = np.zeros((5, 1))
    ref[[0, 1], 0] = [-13600.0, -1029500.0]
    model = MoleculeModel(n_targets=1, hidden=8, n_layers=1, target_mean=[5.0], target_scale=[2.0], atom_ref=ref)
    b = make_batch([np.array([6, 1, 1, 1, 1]), np.array([1, 1])], [np.random.rand(5, 3), np.random.rand(2, 3)])
    y_std, _ = model(b.z, b.pos, b.batch)
    e = model.to_physical(y_std, b.z, b.batch)[:, 0]
    torch.testing.assert_close(e, 5.0 + 2.0 * y_std[:, 0].double() + torch.tensor([-1029500.0 - 4 * 13600, -27200.0],
                                                                                    dtype=torch.float64))
    torch.testing.assert_close(model.to_standard(e[:, None], b.z, b.batch), y_std.detach())
    with pytest.raises(ValueError, match="per-element energy references"):
        model.to_physical(y_std)  # never a number without its references
    # a checkpoint written before atom_ref existed (format 1): loads, with zero references
    ckpt = torch.load(rmd17_run / "checkpoints" / "best.ckpt", weights_only=True)
    ckpt["state_dict"].pop("model.atom_ref")
    torch.save(ckpt, tmp_path / "damaged.ckpt")
    ckpt["pairreg"]["format_version"] = 1
    torch.save(ckpt, tmp_path / "old.ckpt")
    old, _ = load_model(tmp_path / "old.ckpt")
    new, _ = load_model(rmd17_run)
    assert not old.atom_ref.any()
    torch.testing.assert_close(old.predict(b.z, b.pos, b.batch), new.predict(b.z, b.pos, b.batch))
    # ... but a format 2 checkpoint without them is damaged, not silently zero
    with pytest.raises(CheckpointError, match="missing 1 \\(e.g. 'atom_ref'\\)"):
        load_model(tmp_path / "damaged.ckpt")


# --- training ---------------------------------------------------------------------------------------------

def test_a_tiny_mixed_composition_run_fits_references_saves_its_split_and_evaluates_totals(tmp_path, capsys):
    path = _write(tmp_path / "mixed.extxyz", _mixed_frames(40))
    args = ["train", "--out", str(tmp_path / "runs"), "--set", "dataset=extxyz", f"data_path={path}", "hidden=16",
            "n_layers=2", "n_rbf=8", "rbf_max_A=4", "force_weight=1", "batch_size=8", "epochs=2", "progress=false",
            "threads=1", "val_frac=0.2", "test_frac=0.1", "split_seed=5", "name=mixed"]
    assert main(args) == 0
    run = tmp_path / "runs" / "mixed"
    metrics = json.loads((run / "metrics.json").read_text())
    with np.load(run / "split.npz") as saved:
        expected = random_split(40, 0.2, 0.1, seed=5)
        for k in ("train", "val", "test"):
            np.testing.assert_array_equal(saved[k], expected[k])  # frame indices of the file
    # the references in the checkpoint are the least-squares fit on the training frames (meV)
    ckpt = load_checkpoint(run)
    ds = load_extxyz(path)
    want = fit_element_references(ds, expected["train"], (1, 6, 7, 8, 9))
    np.testing.assert_allclose(ckpt["state_dict"]["model.atom_ref"].numpy(), want)
    # evaluate sees total energies: the same test MAE as the run's own test, far below the energies' spread
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["mae"]["energy"]["value"] == pytest.approx(metrics["test"]["test/energy_mae_meV"], rel=1e-5)
    assert result["mae"]["forces"]["value"] == pytest.approx(metrics["test"]["test/forces_mae_meV_per_Angstrom"],
                                                             rel=1e-5)
    assert result["mae"]["energy"]["value"] < 0.01 * np.std(ds.y[:, 0])
    # so does the ASE calculator (eV): the model's total energy, references included
    from pairreg.ase import PairregCalculator

    frame = ase.io.read(str(path), index=int(expected["test"][0]))
    reference_eV = frame.get_potential_energy()
    frame.calc = PairregCalculator(run)
    model, _ = load_model(run)
    b = ds.collate([int(expected["test"][0])])
    want_eV = float(model.predict(b.z, b.pos, b.batch)[0, 0]) / 1000
    assert frame.get_potential_energy() == pytest.approx(want_eV, rel=1e-6)
    assert abs(frame.get_potential_energy() - reference_eV) < 0.01 * abs(reference_eV)
    # resuming reuses (and checks) the saved split: the run is complete, so nothing more is trained
    from pairreg.training.run import resume_config, train

    summary = train(resume_config(run), resume=True)
    assert summary["best_epoch"] == metrics["best_epoch"]
    # a file changed in place (same frame count, so the same split) is refused on resume, by name
    frames = ase.io.read(str(path), index=":")
    frames[0].calc.results["energy"] += 1.0
    _write(path, frames)
    from pairreg.training.run import RunDirectoryError

    with pytest.raises(RunDirectoryError, match="mixed.extxyz has changed since this run started"):
        train(resume_config(run), resume=True)


def test_train_errors_name_the_data_file(tmp_path, capsys):
    path = tmp_path / "energies.xyz"
    path.write_text(OTHER_CODE)
    assert main(["train", "--out", str(tmp_path), "--set", "dataset=extxyz", f"data_path={path}",
                 "energy_key=REF_energy", "progress=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"pairreg train: error: {path}:1: frame 0: no forces 'forces' (forces_key)")


def test_the_readme_conversion_of_rmd17_to_extended_xyz_runs_and_keeps_the_values(tmp_path, monkeypatch):
    import re
    from pathlib import Path

    from pairreg.data.rmd17 import bundled_root

    text = (Path(__file__).parents[1] / "README.md").read_text()
    block = re.search(r"<!-- example: extxyz-convert -->\s*```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), {})
    ds = load_extxyz(tmp_path / "ethanol.extxyz")
    with np.load(bundled_root() / "rmd17_ethanol_train_01.npz") as d:
        energies, forces = d["energies"], d["forces"]
    assert len(ds) == len(energies) == 1000
    np.testing.assert_allclose(ds.y[:, 0], units.convert(energies, "kcal/mol", "meV"), rtol=1e-12)
    np.testing.assert_allclose(ds.forces, units.convert(forces, "kcal/mol/Angstrom", "meV/Angstrom").reshape(-1, 3),
                               atol=1e-5)
