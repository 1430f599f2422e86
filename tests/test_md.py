"""MD with a stability report (pairreg.md): pure checks on hand-made geometries, runs with ASE's EMT
calculator (a fast, conservative stand-in for a model), and ``pairreg md`` end to end on a tiny trained run.

Nothing here depends on wall time: ps per hour is only checked to be positive and finite.
"""

from __future__ import annotations

import functools
import json
import math
import re

import numpy as np
import pytest

from pairreg.md import stability
from pairreg.md.run import MDError, MDSettings, format_report, jsonable, read_start, run_md

# Water, O at the origin, O-H 0.96 Å (bonded below 1.2 × (0.66 + 0.31) = 1.164 Å).
Z_WATER = np.array([8, 1, 1])
POS_WATER = np.array([[0.0, 0.0, 0.0], [0.96, 0.0, 0.0], [-0.24, 0.93, 0.0]])


def test_bonds_follow_the_covalent_radius_rule():
    assert stability.bonds(Z_WATER, POS_WATER) == {(0, 1), (0, 2)}  # the H...H distance, 1.52 Å, is no bond
    # the rule's edge: O-H bonded just below 1.2 × 0.97 Å, not just above
    edge = stability.BOND_FACTOR * (0.66 + 0.31)
    for d, bonded in ((edge - 1e-3, True), (edge + 1e-3, False)):
        pos = np.array([[0.0, 0.0, 0.0], [d, 0.0, 0.0], [-0.24, 0.93, 0.0]])
        assert ((0, 1) in stability.bonds(Z_WATER, pos)) is bonded


def test_a_broken_and_a_formed_bond_are_named():
    start = stability.bonds(Z_WATER, POS_WATER)
    # both H leave O (1.6 and 1.75 Å: broken) and end 0.7 Å apart (formed: H-H limit 1.2 × 0.62 = 0.744 Å)
    pos = np.array([[0.0, 0.0, 0.0], [1.6, 0.0, 0.0], [1.6, 0.7, 0.0]])
    broken, formed = stability.bond_changes(start, stability.bonds(Z_WATER, pos))
    assert [stability.pair_label(Z_WATER, p) for p in broken] == ["O1-H2", "O1-H3"]
    assert [stability.pair_label(Z_WATER, p) for p in formed] == ["H2-H3"]
    assert stability.bond_changes(start, start) == ([], [])


def test_falling_apart_is_a_stretched_starting_bond_or_atoms_too_close():
    start = stability.bonds(Z_WATER, POS_WATER)
    assert stability.why_apart(Z_WATER, POS_WATER, start) is None
    # O-H at 1.9 Å: broken by the bond rule, but under 2 × 0.97 = 1.94 Å: not yet fallen apart
    stretched = POS_WATER.copy()
    stretched[1] = [1.9, 0.0, 0.0]
    assert stability.why_apart(Z_WATER, stretched, start) is None
    stretched[1] = [2.0, 0.0, 0.0]
    reason = stability.why_apart(Z_WATER, stretched, start)
    assert reason.startswith("bond O1-H2 stretched to 2.000 Å, beyond 2 × its covalent-radius sum (1.940 Å)")
    close = POS_WATER.copy()
    close[2] = [0.96, 0.4, 0.0]  # 0.4 Å from H2
    assert "atoms H2-H3 are 0.400 Å apart, closer than 0.5 Å" in stability.why_apart(Z_WATER, close, start)
    nan = POS_WATER.copy()
    nan[0, 0] = np.nan
    assert "NaN" in stability.why_apart(Z_WATER, nan, start)


def test_drift_is_the_slope_of_a_linear_fit_per_atom():
    t_ps = np.linspace(0.0, 2.0, 201)
    rng = np.random.default_rng(0)
    wiggle = 0.01 * np.sin(40 * t_ps) + 1e-4 * rng.standard_normal(len(t_ps))  # zero-mean fluctuations
    energy_eV = -50.0 + 0.09 * t_ps + wiggle  # 0.09 eV/ps over 9 atoms = 10 meV/atom/ps
    drift = stability.energy_drift_eV_per_atom_per_ps(t_ps, energy_eV, n_atoms=9)
    assert drift * 1000 == pytest.approx(10.0, abs=0.2)
    assert stability.energy_drift_eV_per_atom_per_ps(t_ps, np.full_like(t_ps, -3.0), 9) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(stability.energy_drift_eV_per_atom_per_ps([0.0], [1.0], 9))


def test_shortest_distance_largest_force_and_speed():
    assert stability.shortest_distance_A(POS_WATER) == pytest.approx((0.96, 0, 1))  # O-H3 is 0.9605 Å
    assert stability.largest_force_eV_per_A(np.array([[3.0, 4.0, 0.0], [1.0, 0.0, 0.0]])) == pytest.approx(5.0)
    assert stability.ps_per_hour(2.0, 1800.0) == pytest.approx(4.0)


# ---------------------------------------------------------------- runs with EMT (H, C, N, O)


def _methane():
    """CH4 at EMT's own minimum: EMT keeps methane together at room temperature (ethanol it does not)."""
    return _methane_minimum().copy()


@functools.lru_cache(maxsize=1)
def _methane_minimum():
    from ase.build import molecule
    from ase.calculators.emt import EMT
    from ase.optimize import BFGS

    atoms = molecule("CH4")
    atoms.calc = EMT()
    BFGS(atoms, logfile=None).run(fmax=1e-3, steps=200)
    atoms.calc = None
    return atoms


def _emt():
    from ase.calculators.emt import EMT

    return EMT()


def _read(path):
    import ase.io

    return ase.io.read(path, index=":", format="extxyz")


def test_nve_conserves_energy_at_a_small_timestep(tmp_path):
    out = tmp_path / "nve.extxyz"
    settings = MDSettings(steps=400, timestep_fs=0.25, temperature_K=300, seed=1, log_every=20)
    report = run_md(_methane(), _emt(), settings, out)
    assert report["fell_apart"] is None and report["steps_run"] == 400 and report["simulated_ps"] == pytest.approx(0.1)
    assert report["bonds_start"] == 4 and report["bonds_broken"] == [] and report["bonds_formed"] == []
    # stated tolerance: |drift| below 0.05 meV/atom/ps, and the total energy of every written frame within
    # 1 meV/atom of the first (velocity Verlet at 0.25 fs on a 5-atom molecule)
    assert abs(report["energy_drift_meV_per_atom_per_ps"]) < 0.05 and report["energy_drift_meaningful"]
    frames = _read(out)
    assert len(frames) == report["frames_written"] == 400 // 20 + 1
    assert [f.info["step"] for f in frames] == list(range(0, 401, 20))
    assert frames[-1].info["time_fs"] == pytest.approx(100.0)
    total = np.array([f.get_potential_energy() + f.info["kinetic_energy_eV"] for f in frames])
    assert np.abs(total - total[0]).max() / 5 < 1e-3
    assert frames[0].info["temperature_K"] > 0 and frames[0].get_forces().shape == (5, 3)
    # momenta are written (a frame can restart a run) and the start has no net momentum
    np.testing.assert_allclose(frames[0].get_momenta().sum(axis=0), 0.0, atol=1e-10)
    assert np.isfinite(report["ps_per_hour"]) and report["ps_per_hour"] > 0
    assert 0.5 < report["shortest_distance_A"] < 1.5 and 0 < report["largest_force_eV_per_A"] < 10


@pytest.mark.parametrize("thermostat", ["nve", "langevin"])
def test_a_seed_reproduces_the_run_and_another_seed_does_not(tmp_path, thermostat):
    def positions(seed, name):
        settings = MDSettings(steps=60, timestep_fs=0.5, temperature_K=300, thermostat=thermostat, seed=seed,
                              log_every=60)
        run_md(_methane(), _emt(), settings, tmp_path / name)
        return _read(tmp_path / name)[-1].get_positions()

    a, b, c = positions(7, "a.extxyz"), positions(7, "b.extxyz"), positions(8, "c.extxyz")
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_langevin_drift_is_reported_but_marked_not_meaningful(tmp_path):
    settings = MDSettings(steps=40, timestep_fs=0.5, temperature_K=300, thermostat="langevin", friction_per_fs=0.02)
    report = run_md(_methane(), _emt(), settings, tmp_path / "nvt.extxyz")
    assert report["energy_drift_meaningful"] is False and math.isfinite(report["energy_drift_meV_per_atom_per_ps"])
    assert "not a conservation measure" in format_report(report)


def test_a_huge_timestep_stops_the_run_and_keeps_a_readable_trajectory(tmp_path):
    out = tmp_path / "boom.extxyz"
    settings = MDSettings(steps=500, timestep_fs=8.0, temperature_K=1000, seed=0, log_every=5)
    report = run_md(_methane(), _emt(), settings, out)
    apart = report["fell_apart"]
    assert apart is not None and 0 < apart["step"] < 500 and report["steps_run"] == apart["step"]
    assert "stretched" in apart["reason"] or "closer than" in apart["reason"]
    assert apart["time_ps"] == pytest.approx(apart["step"] * 8.0 / 1000)
    frames = _read(out)  # readable, and its last frame is the one that fell apart
    assert len(frames) == report["frames_written"] >= 2 and frames[-1].info["step"] == apart["step"]
    assert "FELL APART at step" in format_report(report)


def test_a_compressed_start_flies_apart(tmp_path):
    atoms = _methane()
    c, h = atoms.positions[0], atoms.positions[1]
    atoms.positions[1] = c + 0.55 * (h - c) / np.linalg.norm(h - c)  # C-H at 0.55 Å: still a bond, far too short
    out = tmp_path / "compressed.extxyz"
    report = run_md(atoms, _emt(), MDSettings(steps=400, timestep_fs=0.25, temperature_K=0, log_every=100), out)
    assert report["fell_apart"] is not None and "C1-H2" in report["fell_apart"]["reason"]
    assert "C1-H2" in report["bonds_broken"]
    assert [f.info["step"] for f in _read(out)][-1] == report["fell_apart"]["step"]
    assert json.loads(json.dumps(jsonable(report), allow_nan=False))["fell_apart"]["step"] == report["steps_run"]


@pytest.mark.parametrize("field, value, flag", [("steps", 0, "--steps"), ("timestep_fs", -1.0, "--timestep"),
                                                ("temperature_K", float("nan"), "--temperature"),
                                                ("thermostat", "berendsen", "--thermostat"),
                                                ("log_every", 0, "--log-every")])
def test_bad_settings_name_the_option(field, value, flag):
    settings = MDSettings(steps=10, timestep_fs=0.5, temperature_K=300)
    setattr(settings, field, value)
    with pytest.raises(MDError, match=flag):
        settings.check()
    with pytest.raises(MDError, match="--friction"):
        MDSettings(steps=10, timestep_fs=0.5, temperature_K=300, thermostat="langevin", friction_per_fs=0).check()


def test_start_frame_is_chosen_and_out_of_range_is_named(tmp_path):
    path = tmp_path / "two.xyz"
    path.write_text("3\nfirst\nO 0 0 0\nH 0.96 0 0\nH -0.24 0.93 0\n2\nsecond\nH 0 0 0\nH 0.74 0 0\n")
    assert read_start(path)[0].get_chemical_formula() == "H2O"
    assert read_start(path, frame=1)[0].get_chemical_formula() == "H2"
    assert read_start(path, frame=-1)[0].get_chemical_formula() == "H2"
    with pytest.raises(MDError, match=r"two.xyz: --frame 2 is out of range: the file holds 2 molecules"):
        read_start(path, frame=2)


# ---------------------------------------------------------------- pairreg md, end to end


def _ethanol_xyz(tmp_path, stretch_A: float = 0.0):
    """The first frame of the rMD17 ethanol fixture as an XYZ file (optionally an O-H pulled out)."""
    from pairreg.data.rmd17 import load_rmd17

    from conftest import RMD17_FIXTURE

    ds, idx = load_rmd17("ethanol", root=RMD17_FIXTURE)
    z, pos = ds.atoms(int(idx["test"][0]))
    pos = pos.copy()
    if stretch_A:
        o = int(np.nonzero(z == 8)[0][0])
        h = int(np.argsort(np.linalg.norm(pos - pos[o], axis=1))[1])  # the hydroxyl H
        pos[h] += stretch_A * (pos[h] - pos[o]) / np.linalg.norm(pos[h] - pos[o])
    from ase.data import chemical_symbols

    path = tmp_path / "ethanol.xyz"
    path.write_text(f"{len(z)}\nethanol\n" + "".join(f"{chemical_symbols[int(a)]} {x:.6f} {y:.6f} {w:.6f}\n"
                                                     for a, (x, y, w) in zip(z, pos)))
    return path


class _FailsAfter:
    """EMT that raises ValueError (as PairregCalculator does for a non-finite energy) from its n-th evaluation on."""

    def __new__(cls, n):
        from ase.calculators.emt import EMT

        class Failing(EMT):
            calls = 0

            def calculate(self, *args, **kwargs):
                Failing.calls += 1
                if Failing.calls >= n:
                    raise ValueError("C H4: the model's energy or forces are not finite;\ncheck the positions")
                return super().calculate(*args, **kwargs)

        return Failing()


def test_a_calculator_refusing_mid_run_stops_it_like_falling_apart(tmp_path):
    out = tmp_path / "refused.extxyz"
    report = run_md(_methane(), _FailsAfter(31), MDSettings(steps=100, timestep_fs=0.25, temperature_K=300,
                                                           log_every=10), out)
    assert report["fell_apart"]["step"] == 30 and report["steps_run"] == 30  # evaluation 31 is step 30's
    assert report["fell_apart"]["reason"] == ("the calculator failed: C H4: the model's energy or forces are not "
                                              "finite; check the positions")
    assert [f.info["step"] for f in _read(out)] == [0, 10, 20]
    with pytest.raises(ValueError, match="not finite"):  # at the start it is the input's fault: raised as is
        run_md(_methane(), _FailsAfter(1), MDSettings(steps=10, timestep_fs=0.25, temperature_K=300), out)


def test_pairreg_md_runs_a_trained_model_and_reports(rmd17_run, tmp_path, capsys):
    from pairreg.cli.main import main

    xyz, out = _ethanol_xyz(tmp_path), tmp_path / "md.extxyz"
    args = ["md", str(xyz), "--checkpoint", str(rmd17_run), "--steps", "6", "--timestep", "0.5",
            "--temperature", "300", "--out", str(out), "--log-every", "2", "--no-progress", "--seed", "4"]
    import torch

    threads = torch.get_num_threads()
    try:
        assert main(args + ["--json", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
    report = json.loads(capsys.readouterr().out)
    assert report["steps_run"] == 6 and report["simulated_ps"] == pytest.approx(0.003) and report["fell_apart"] is None
    assert report["formula"] == "C2H6O" and report["bonds_start"] == 8 and report["settings"]["seed"] == 4
    assert report["input"] == f"{xyz}:1" and report["checkpoint"] == [str(rmd17_run)]
    assert report["ps_per_hour"] > 0 and math.isfinite(report["ps_per_hour"])
    frames = _read(out)
    assert [f.info["step"] for f in frames] == [0, 2, 4, 6] and frames[0].get_forces().shape == (9, 3)
    # the trajectory's energies and forces are the calculator's (eV, eV/Å)
    from pairreg.ase import PairregCalculator

    check = frames[2].copy()
    check.calc = PairregCalculator(str(rmd17_run))
    assert check.get_potential_energy() == pytest.approx(frames[2].get_potential_energy(), abs=1e-4)
    np.testing.assert_allclose(check.get_forces(), frames[2].get_forces(), atol=1e-4)
    assert report["largest_energy_std_eV"] is None  # one model: no ensemble spread
    # text report, Langevin, an ensemble (the same model twice: spread 0)
    ensemble = args[:3] + [str(rmd17_run), str(rmd17_run)] + args[4:]
    assert main(ensemble + ["--thermostat", "langevin", "--friction", "0.02"]) == 0
    text = capsys.readouterr().out
    assert "held together" in text and "friction 0.02 fs⁻¹" in text and "bond rule" in text
    assert "simulated ps per hour" in text and "ensemble spread     largest energy std 0 eV" in text


def test_pairreg_md_falling_apart_is_one_error_line_and_keeps_the_trajectory(rmd17_run, tmp_path, capsys):
    from pairreg.cli.main import main

    # 50 fs steps at 3,000 K: hydrogens move ~4 Å per step, so a bond is torn apart within the first steps
    xyz, out = _ethanol_xyz(tmp_path), tmp_path / "apart.extxyz"
    status = main(["md", str(xyz), "--checkpoint", str(rmd17_run), "--steps", "50", "--timestep", "50",
                   "--temperature", "3000", "--out", str(out), "--log-every", "100", "--no-progress"])
    captured = capsys.readouterr()
    assert status == 2
    errors = [line for line in captured.err.splitlines() if line.startswith("pairreg md: ")]
    assert len(errors) == 1, captured.err
    match = re.fullmatch(r"pairreg md: error: C2H6O fell apart at step (\d+) \(([0-9.]+) ps\): (.+); the trajectory "
                         r"so far \((\d+) frames\) is in (.+)", errors[0])
    assert match, errors[0]
    step = int(match[1])
    assert 1 <= step < 50 and float(match[2]) == pytest.approx(step * 0.05)
    assert "stretched" in match[3] or "closer than 0.5 Å" in match[3]
    assert match[4] == "2" and match[5] == str(out)
    assert "FELL APART" in captured.out  # the report is printed before the error
    assert [f.info["step"] for f in _read(out)] == [0, step]  # first frame and the one that fell apart


def test_pairreg_md_bad_input_is_one_line_before_the_model_loads(tmp_path, capsys):
    from pairreg.cli.main import main

    bad = tmp_path / "bad.xyz"
    bad.write_text("3\nwater\nO 0 0 0\nH 0.96 0 0\n")
    common = ["--checkpoint", str(tmp_path / "missing"), "--steps", "5", "--timestep", "0.5", "--temperature",
              "300", "--out", str(tmp_path / "t.extxyz")]
    assert main(["md", str(bad), *common]) == 2
    assert capsys.readouterr().err.strip().startswith(f"pairreg md: error: {bad}:")
    assert main(["md", str(bad), *common[:-2], "--timestep", "0", "--out", "x"]) == 2
    assert "--timestep must be a positive number of fs" in capsys.readouterr().err
    assert main(["md", str(bad), *common, "--threads", "0"]) == 2
    assert "--threads must be at least 1, got 0" in capsys.readouterr().err


def test_the_progress_bar_goes_to_stderr_and_counts_steps(tmp_path, capsys):
    run_md(_methane(), _emt(), MDSettings(steps=20, timestep_fs=0.25, temperature_K=300), tmp_path / "p.extxyz",
           progress=True)
    captured = capsys.readouterr()
    assert "md: 100%" in captured.err and "20/20" in captured.err and captured.out == ""


def test_an_unwritable_trajectory_is_one_line_naming_it(tmp_path):
    from pairreg.atomic import WriteError

    out = tmp_path / "missing-folder" / "t.extxyz"
    with pytest.raises(WriteError, match=f"{out}: cannot write") as err:
        run_md(_methane(), _emt(), MDSettings(steps=5, timestep_fs=0.25, temperature_K=300), out)
    assert "\n" not in str(err.value)
