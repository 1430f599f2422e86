"""pairreg.ase.PairregCalculator: units, forces = −∇E, symmetry, agreement with `pairreg predict`, ensembles, errors."""

import contextlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.calculators.calculator import PropertyNotImplementedError

from pairreg.ase import CalculatorError, PairregCalculator
from pairreg.testing.equivariance import random_orthogonal
from pairreg.units import convert

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17" / "rmd17_ethanol_test_01.npz"
README = Path(__file__).parents[1] / "README.md"


def ethanol(frame: int = 0) -> Atoms:
    data = np.load(FIXTURE)
    return Atoms(numbers=data["nuclear_charges"], positions=data["coords"][frame])


def energy_eV(calc, atoms) -> float:
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy()


def test_forces_are_minus_the_finite_difference_gradient_of_the_energy(rmd17_run):
    calc = PairregCalculator(rmd17_run, dtype="float64")  # float64: the model casts with .double()
    atoms = ethanol(3)
    atoms.calc = calc
    forces, energy = atoms.get_forces(), atoms.get_potential_energy()
    h = 1e-3  # Å
    numeric = np.zeros_like(forces)
    for i in range(len(atoms)):
        for k in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, k] += h
            minus.positions[i, k] -= h
            numeric[i, k] = -(energy_eV(calc, plus) - energy_eV(calc, minus)) / (2 * h)
    # The energy is ~ -4,200 eV (the rMD17 mean), so float64 rounding of E alone limits the difference
    # quotient to ~eps·|E|/h ≈ 1e-9 eV/Å; the O(h²) truncation error is smaller. 10× that bound:
    tolerance = 10 * np.finfo(np.float64).eps * abs(energy) / h
    assert np.abs(forces).max() > 1000 * tolerance  # the tiny fixture model's forces are small but not zero
    np.testing.assert_allclose(forces, numeric, rtol=0, atol=tolerance)


def test_units_are_ev_and_ev_per_angstrom(rmd17_run):
    from pairreg.data.molecules import make_batch
    from pairreg.training.checkpoint import load_model

    model, info = load_model(rmd17_run)
    atoms = ethanol(1)
    b = make_batch([atoms.numbers], [atoms.positions])
    e_meV, f_meV_A = model.predict_energy_forces(b.z, b.pos, b.batch, b.edge_index, 1)
    atoms.calc = PairregCalculator(rmd17_run)
    assert info["target_units"] == ["meV"]
    assert atoms.get_potential_energy() == pytest.approx(float(e_meV[0]) / 1000, rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), f_meV_A.numpy() / 1000, rtol=1e-12)


def test_the_calculator_uses_the_ema_weights(rmd17_run):
    from pairreg.training.checkpoint import load_checkpoint

    ckpt = load_checkpoint(rmd17_run)
    averaged, raw = ckpt["state_dict"], ckpt["current_model_state"]  # EMA run: Lightning keeps both
    calc = PairregCalculator(rmd17_run)
    weights = calc.models[0].state_dict()
    differing = [k for k in averaged if k.startswith("model.") and not torch.equal(averaged[k], raw[k])]
    assert differing
    for key in differing:
        assert torch.equal(weights[key[len("model."):]], averaged[key])


def test_energy_invariant_and_forces_rotate_under_rotation_reflection_translation_permutation(rmd17_run):
    calc = PairregCalculator(rmd17_run, dtype="float64")
    rng = np.random.default_rng(0)
    atoms = ethanol(2)
    atoms.calc = calc
    e0, f0 = atoms.get_potential_energy(), atoms.get_forces()
    for det in (1, -1):
        q = random_orthogonal(det, rng).numpy()
        t = rng.normal(scale=3.0, size=3)
        perm = rng.permutation(len(atoms))
        moved = Atoms(numbers=atoms.numbers[perm], positions=(atoms.positions @ q.T + t)[perm])
        moved.calc = calc
        assert moved.get_potential_energy() == pytest.approx(e0, abs=1e-9)
        np.testing.assert_allclose(moved.get_forces(), (f0 @ q.T)[perm], atol=1e-9)


def test_same_energy_as_pairreg_predict(rmd17_run, tmp_path):
    from pairreg.cli.main import main

    atoms = ethanol(4)
    xyz = tmp_path / "ethanol.xyz"
    atoms.write(xyz)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        assert main(["predict", str(xyz), "--checkpoint", str(rmd17_run), "--accelerator", "cpu", "--json"]) == 0
    row = json.loads(buf.getvalue())["predictions"][0]
    from ase.io import read

    atoms = read(xyz)  # the same (rounded) coordinates predict read
    atoms.calc = PairregCalculator(rmd17_run)
    assert atoms.get_potential_energy() == pytest.approx(convert(row["energy_meV"], "meV", "eV"), rel=1e-12)


def perturbed_copy(run: Path, dest: Path, scale: float = 0.05, seed: int = 1) -> Path:
    """The run's best checkpoint with every float weight of the model nudged: a second ensemble member."""
    from pairreg.training.checkpoint import load_checkpoint_file

    ckpt = load_checkpoint_file(run / "checkpoints" / "best.ckpt")
    gen = torch.Generator().manual_seed(seed)
    for key, value in ckpt["state_dict"].items():
        if key.startswith("model.") and value.is_floating_point() and "target_" not in key:
            ckpt["state_dict"][key] = value + scale * torch.randn(value.shape, generator=gen, dtype=value.dtype)
    torch.save(ckpt, dest)
    return dest


def test_ensemble_mean_and_spread_from_two_single_calculators(rmd17_run, tmp_path):
    other = perturbed_copy(rmd17_run, tmp_path / "other.ckpt")
    atoms = ethanol(5)
    singles = []
    for ckpt in (rmd17_run, other):
        a = atoms.copy()
        a.calc = PairregCalculator(ckpt)
        singles.append((a.get_potential_energy(), a.get_forces()))
    (e1, f1), (e2, f2) = singles
    assert abs(e1 - e2) > 1e-6  # the members really differ
    atoms.calc = PairregCalculator([rmd17_run, other])
    assert atoms.get_potential_energy() == pytest.approx((e1 + e2) / 2, rel=1e-12)
    np.testing.assert_allclose(atoms.get_forces(), (f1 + f2) / 2, rtol=1e-12, atol=1e-15)
    assert atoms.calc.results["energy_std"] == pytest.approx(abs(e1 - e2) / 2, rel=1e-9)  # std (ddof 0) of two
    np.testing.assert_allclose(atoms.calc.results["forces_std"], np.abs(f1 - f2) / 2, rtol=1e-9, atol=1e-15)
    single = PairregCalculator(rmd17_run)
    single.get_potential_energy(ethanol(5))
    assert "energy_std" not in single.results


def test_stress_is_refused_naming_what_is_provided(rmd17_run):
    atoms = ethanol()
    atoms.calc = PairregCalculator(rmd17_run)
    with pytest.raises(PropertyNotImplementedError, match="only energy and forces, not stress"):
        atoms.get_stress()


def test_a_model_that_is_not_one_energy_is_refused_by_name():
    from pairreg.cli.predict_cmd import pretrained_checkpoint

    with pytest.raises(CalculatorError, match=r"qm9-homo-lumo-gap.*homo \[meV\], lumo \[meV\], gap \[meV\]; the "
                                              r"calculator needs a model of one target, the potential energy 'energy'"):
        PairregCalculator(str(pretrained_checkpoint()))


def test_an_energy_in_a_unit_that_is_not_an_energy_is_refused(rmd17_run, tmp_path):
    from pairreg.training.checkpoint import load_checkpoint_file

    ckpt = load_checkpoint_file(rmd17_run / "checkpoints" / "best.ckpt")
    ckpt["pairreg"]["target_units"] = ["D"]
    torch.save(ckpt, tmp_path / "debye.ckpt")
    with pytest.raises(CalculatorError, match=r"debye.ckpt: its targets are energy \[D\]; 'D' is not an energy unit"):
        PairregCalculator(tmp_path / "debye.ckpt")


def test_unknown_elements_are_named_by_symbol(rmd17_run):
    atoms = Atoms("CSCl", positions=[[0, 0, 0], [1.8, 0, 0], [0, 1.8, 0]])
    atoms.calc = PairregCalculator(rmd17_run)
    with pytest.raises(CalculatorError, match=r"element\(s\) S, Cl not known to this model, which was trained on "
                                              r"H, C, N, O, F"):
        atoms.get_potential_energy()


def test_larger_molecules_are_refused_with_the_counts_unless_allowed(rmd17_run):
    two = ethanol(0) + ethanol(1)
    two.positions[9:] += [8.0, 0, 0]
    two.calc = PairregCalculator(rmd17_run)
    with pytest.raises(CalculatorError, match=r"C4H12O2 has 18 atoms, more than the largest training molecule "
                                              r"\(9 atoms\); pass allow_larger=True"):
        two.get_potential_energy()
    two.calc = PairregCalculator(rmd17_run, allow_larger=True)
    assert np.isfinite(two.get_potential_energy())


def test_periodic_cells_are_refused(rmd17_run):
    atoms = ethanol()
    atoms.cell = [10, 10, 10]
    atoms.pbc = True
    atoms.calc = PairregCalculator(rmd17_run)
    with pytest.raises(CalculatorError, match=r"periodic cell .* not supported"):
        atoms.get_forces()


def test_ensembles_of_different_targets_and_bad_arguments_are_refused(rmd17_run):
    from pairreg.cli.predict_cmd import pretrained_checkpoint

    with pytest.raises(CalculatorError, match="qm9-homo-lumo-gap"):
        PairregCalculator([rmd17_run, str(pretrained_checkpoint())])
    with pytest.raises(CalculatorError, match="no checkpoint given"):
        PairregCalculator([])
    with pytest.raises(CalculatorError, match=r"dtype: 'float16' is not one of"):
        PairregCalculator(rmd17_run, dtype="float16")
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        PairregCalculator(rmd17_run / "missing.ckpt")


def test_the_readme_calculator_example_runs(rmd17_run, tmp_path, monkeypatch):
    text = README.read_text()
    match = re.search(r"<!-- example: ase-calculator -->\s*```python\n(.*?)```", text, re.S)
    assert match, "README has no ase-calculator example"
    code = match.group(1)
    assert len(code.strip().splitlines()) <= 5
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "ethanol").symlink_to(rmd17_run)
    ethanol().write(tmp_path / "ethanol.xyz")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert "eV" in out.getvalue()


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_gpu_gives_the_cpu_numbers(rmd17_run):
    atoms = ethanol(6)
    results = []
    for accelerator in ("cpu", "gpu"):
        atoms.calc = PairregCalculator(rmd17_run, accelerator=accelerator, dtype="float64")
        results.append((atoms.get_potential_energy(), atoms.get_forces()))
    (e_cpu, f_cpu), (e_gpu, f_gpu) = results
    assert e_gpu == pytest.approx(e_cpu, rel=1e-12)  # float64 on both: only summation order differs
    np.testing.assert_allclose(f_gpu, f_cpu, rtol=0, atol=1e-10)
