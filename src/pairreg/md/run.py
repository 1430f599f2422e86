"""Run MD on one molecule with any ASE calculator, write the trajectory, and report how stable it was.

Integrators are ASE's: velocity Verlet (NVE) or Langevin (NVT). Starting velocities are drawn from the
Maxwell–Boltzmann distribution at ``temperature_K`` with ``seed``, then the centre-of-mass momentum and the
rotation are removed (a free molecule's drift and spin would only add kinetic energy that is not heat).
The same seeded generator drives Langevin's noise, so a seed reproduces a run exactly.

Every ``log_every`` steps (and at the first and the last step) a frame is appended to an extended XYZ file
with its potential energy (eV), forces (eV/Å), momenta, ``step``, ``time_fs``, ``kinetic_energy_eV`` and
``temperature_K``; the file is flushed after each frame, so whatever stops the run leaves a readable
trajectory. Energies for the drift fit are kept at every step.

After every step the geometry is checked (:func:`stability.why_apart`); a molecule that has fallen apart
ends the run, and the report says when and why. :func:`run_md` returns the report; the command line turns
a fallen-apart run into an error (:class:`MoleculeFellApart`) after printing it.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..atomic import write_error
from . import stability

THERMOSTATS = ("nve", "langevin")


class MDError(ValueError):
    """Bad MD settings or input; the message names the option or file."""


class MoleculeFellApart(MDError):
    """The molecule fell apart during MD (see :mod:`pairreg.md.stability`); the trajectory so far is kept."""


@dataclass
class MDSettings:
    steps: int
    timestep_fs: float
    temperature_K: float
    thermostat: str = "nve"
    friction_per_fs: float = 0.01  # Langevin only; 0.01 fs⁻¹ = a 100 fs velocity relaxation time
    seed: int = 0
    log_every: int = 10  # steps between trajectory frames

    def check(self) -> None:
        """Refuse impossible settings, naming the command-line option."""
        if not isinstance(self.steps, int) or self.steps < 1:
            raise MDError(f"--steps must be a whole number ≥ 1, got {self.steps!r}")
        if not (math.isfinite(self.timestep_fs) and self.timestep_fs > 0):
            raise MDError(f"--timestep must be a positive number of fs, got {self.timestep_fs!r}")
        if not (math.isfinite(self.temperature_K) and self.temperature_K >= 0):
            raise MDError(f"--temperature must be ≥ 0 K, got {self.temperature_K!r}")
        if self.thermostat not in THERMOSTATS:
            raise MDError(f"--thermostat must be one of {', '.join(THERMOSTATS)}, got {self.thermostat!r}")
        if self.thermostat == "langevin" and not (math.isfinite(self.friction_per_fs) and self.friction_per_fs > 0):
            raise MDError(f"--friction must be a positive rate in fs⁻¹ for Langevin, got {self.friction_per_fs!r}")
        if not isinstance(self.log_every, int) or self.log_every < 1:
            raise MDError(f"--log-every must be a whole number of steps ≥ 1, got {self.log_every!r}")


def read_start(path: str | Path, frame: int = 0):
    """(ase.Atoms, where) of molecule ``frame`` (0-based; negative counts from the end) of a user file.

    Reading and validation are :func:`pairreg.data.readers.read_molecules`' (errors name file and line).
    """
    from ase import Atoms

    from ..data.readers import read_molecules

    molecules = read_molecules(path)
    if not -len(molecules) <= frame < len(molecules):
        raise MDError(f"{path}: --frame {frame} is out of range: the file holds {len(molecules)} "
                      f"molecule{'s' if len(molecules) != 1 else ''} (frames 0 to {len(molecules) - 1})")
    mol = molecules[frame]
    return Atoms(numbers=mol.z, positions=mol.pos), mol


def _maxwell_boltzmann(atoms, temperature_K: float, rng) -> None:
    """Momenta drawn from Maxwell–Boltzmann at ``temperature_K`` (ASE ≥ 3.29 renamed the function)."""
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):
        vd.thermalize_momenta(atoms, temperature_K, rng=rng)
    else:
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)


def _integrator(atoms, settings: MDSettings, rng):
    from ase import units
    from ase.md.langevin import Langevin
    from ase.md.verlet import VelocityVerlet

    dt = settings.timestep_fs * units.fs
    if settings.thermostat == "nve":
        return VelocityVerlet(atoms, timestep=dt)
    # fixcm=False: ASE's fixcm=True is deprecated (it does not sample the right ensemble); a free molecule's
    # centre of mass may then wander, which changes no distance and no energy we report.
    return Langevin(atoms, timestep=dt, temperature_K=settings.temperature_K,
                    friction=settings.friction_per_fs / units.fs, fixcm=False, rng=rng)


def _frame_text(atoms, step: int, time_fs: float, energy_eV: float | None, forces) -> str:
    """One extended XYZ frame: positions, momenta, and (when finite) energy and forces as calculator results."""
    import io

    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    snap = atoms.copy()  # keeps momenta; drops the live calculator
    results = {}
    if energy_eV is not None and math.isfinite(energy_eV):
        results["energy"] = energy_eV
    if forces is not None and np.isfinite(forces).all():
        results["forces"] = forces
    if results:
        snap.calc = SinglePointCalculator(snap, **results)
    snap.info.update(step=step, time_fs=round(time_fs, 9), kinetic_energy_eV=atoms.get_kinetic_energy(),
                     temperature_K=atoms.get_temperature())
    buf = io.StringIO()
    ase.io.write(buf, snap, format="extxyz")
    return buf.getvalue()


def run_md(atoms, calculator, settings: MDSettings, out_path: str | Path, progress: bool = False,
           clock=time.perf_counter) -> dict:
    """Run ``settings.steps`` steps of MD from ``atoms`` (positions in Å) with ``calculator``; write the
    trajectory to ``out_path`` (replaced if it exists) and return the stability report (a JSON-able dict).

    The run stops early when the molecule falls apart; ``report["fell_apart"]`` then says at which step and why.
    ``clock`` measures wall time for ps/hour only (from the end of step 0, whose first model evaluation
    carries start-up costs, to the end); nothing else depends on it.
    """
    from ase.md.velocitydistribution import Stationary, ZeroRotation
    from tqdm import tqdm

    settings.check()
    out_path = Path(out_path)
    atoms = atoms.copy()
    atoms.calc = calculator
    z = atoms.get_atomic_numbers()
    n_atoms = len(atoms)
    rng = np.random.default_rng(settings.seed)
    _maxwell_boltzmann(atoms, settings.temperature_K, rng)
    Stationary(atoms)
    with np.errstate(invalid="ignore", divide="ignore"):  # a linear molecule has a zero moment of inertia
        ZeroRotation(atoms)
    start_bonds = stability.bonds(z, atoms.get_positions())
    dyn = _integrator(atoms, settings, rng)

    times_ps, totals_eV, temps_K = [], [], []
    largest_force, largest_force_step = 0.0, 0
    shortest = (math.inf, 0, 1)
    shortest_step = 0
    energy_std_max = None
    fell_apart = None
    frames = 0
    step = 0
    started = None  # set after step 0: the first evaluation carries one-off start-up costs, not speed
    try:
        fh = open(out_path, "w", encoding="utf-8")
    except OSError as err:
        raise write_error(out_path, err) from None
    bar = tqdm(total=settings.steps, disable=not progress, unit="step", file=sys.stderr, desc="md")
    steps = dyn.irun(settings.steps)
    with fh, bar:
        try:
            while True:
                try:
                    next(steps)
                except StopIteration:
                    break
                except ValueError as err:  # e.g. the calculator refusing a non-finite energy mid-run
                    if not times_ps:
                        raise  # at the start: bad input (unknown element, ...), not instability
                    step = dyn.nsteps + 1
                    fell_apart = {"step": step, "time_ps": step * settings.timestep_fs / 1000.0,
                                  "reason": f"the calculator failed: {' '.join(str(err).split())}"}
                    break
                step = dyn.nsteps
                if started is None:
                    started = clock()
                time_fs = step * settings.timestep_fs
                pos = atoms.get_positions()
                forces = atoms.get_forces()
                energy = float(atoms.get_potential_energy())
                std = atoms.calc.results.get("energy_std")
                if std is not None and math.isfinite(float(std)):
                    energy_std_max = max(energy_std_max or 0.0, float(std))
                reason = stability.why_apart(z, pos, start_bonds)
                if reason is None and not (math.isfinite(energy) and np.isfinite(forces).all()):
                    reason = "the model gave a non-finite energy or forces"
                if reason is None:
                    times_ps.append(time_fs / 1000.0)
                    totals_eV.append(energy + atoms.get_kinetic_energy())
                    temps_K.append(atoms.get_temperature())
                    f_max = stability.largest_force_eV_per_A(forces)
                    if f_max > largest_force:
                        largest_force, largest_force_step = f_max, step
                    d = stability.shortest_distance_A(pos)
                    if d[0] < shortest[0]:
                        shortest, shortest_step = d, step
                last = reason is not None or step == settings.steps
                if (step % settings.log_every == 0 or last) and np.isfinite(pos).all():
                    fh.write(_frame_text(atoms, step, time_fs, energy, forces))
                    fh.flush()  # a stop or a crash keeps every frame written so far
                    frames += 1
                if reason is not None:
                    fell_apart = {"step": step, "time_ps": time_fs / 1000.0, "reason": reason}
                    break
                if step:
                    bar.update(1)
                    if step % 50 == 0:
                        bar.set_postfix(T_K=f"{temps_K[-1]:.0f}", t_ps=f"{time_fs / 1000:.3f}", refresh=False)
        except OSError as err:
            raise write_error(out_path, err) from None
    wall_s = clock() - started if started is not None else 0.0

    simulated_ps = step * settings.timestep_fs / 1000.0
    drift = stability.energy_drift_eV_per_atom_per_ps(np.array(times_ps), np.array(totals_eV), n_atoms)
    final = atoms.get_positions()
    broken, formed = stability.bond_changes(start_bonds, stability.bonds(z, final)) if np.isfinite(final).all() \
        else (sorted(start_bonds), [])
    nve = settings.thermostat == "nve"
    return {
        "formula": atoms.get_chemical_formula(), "n_atoms": n_atoms,
        "settings": asdict(settings), "trajectory": str(out_path), "frames_written": frames,
        "steps_run": step, "simulated_ps": simulated_ps,
        "fell_apart": fell_apart,
        "energy_drift_meV_per_atom_per_ps": drift * 1000.0,
        "energy_drift_meaningful": nve,
        "energy_drift_note": ("linear fit of total energy (potential + kinetic) against time, per atom" if nve else
                              "Langevin adds and removes energy: the drift is reported but does not measure "
                              "energy conservation"),
        "largest_force_eV_per_A": largest_force, "largest_force_step": largest_force_step,
        "shortest_distance_A": shortest[0] if math.isfinite(shortest[0]) else None,
        "shortest_distance_pair": stability.pair_label(z, shortest[1:]) if math.isfinite(shortest[0]) else None,
        "shortest_distance_step": shortest_step,
        "temperature_start_K": temps_K[0] if temps_K else None,
        "temperature_mean_K": float(np.mean(temps_K)) if temps_K else None,
        "bond_rule": (f"bonded when d < {stability.BOND_FACTOR:g} × (r_i + r_j), r = covalent radii "
                      "(ase.data.covalent_radii); fell apart when a starting bond exceeds "
                      f"{stability.APART_FACTOR:g} × (r_i + r_j) or two atoms are closer than "
                      f"{stability.MIN_DISTANCE_A} Å"),
        "bonds_start": len(start_bonds),
        "bonds_broken": [stability.pair_label(z, p) for p in broken],
        "bonds_formed": [stability.pair_label(z, p) for p in formed],
        "largest_energy_std_eV": energy_std_max,
        "wall_s": wall_s, "ps_per_hour": stability.ps_per_hour(simulated_ps, wall_s),
    }


def jsonable(report: dict) -> dict:
    """The report with NaN and infinities as None (JSON has no NaN)."""
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    return clean(report)


def format_report(report: dict) -> str:
    """The report as aligned text lines (what ``pairreg md`` prints without ``--json``)."""
    s = report["settings"]
    drift = report["energy_drift_meV_per_atom_per_ps"]
    drift_text = "n/a (too few steps)" if not math.isfinite(drift) else f"{drift:+.4g} meV/atom/ps"
    if not report["energy_drift_meaningful"]:
        drift_text += " (Langevin: not a conservation measure)"
    apart = report["fell_apart"]
    lines = [
        f"molecule            {report['formula']} ({report['n_atoms']} atoms)",
        f"dynamics            {s['thermostat']}, {s['timestep_fs']:g} fs × {report['steps_run']} of {s['steps']} "
        f"steps = {report['simulated_ps']:.4g} ps, start {s['temperature_K']:g} K, seed {s['seed']}"
        + (f", friction {s['friction_per_fs']:g} fs⁻¹" if s["thermostat"] == "langevin" else ""),
        f"trajectory          {report['trajectory']} ({report['frames_written']} frames, every {s['log_every']} steps)",
        f"stability           " + (f"FELL APART at step {apart['step']} ({apart['time_ps']:.4g} ps): "
                                   f"{apart['reason']}" if apart else "held together"),
        f"energy drift        {drift_text}",
        f"largest force       {report['largest_force_eV_per_A']:.4g} eV/Å (step {report['largest_force_step']})",
    ]
    if report["shortest_distance_A"] is not None:
        lines.append(f"shortest distance   {report['shortest_distance_A']:.4g} Å ({report['shortest_distance_pair']}, "
                     f"step {report['shortest_distance_step']})")
    if report["temperature_mean_K"] is not None:
        lines.append(f"temperature         mean {report['temperature_mean_K']:.1f} K")
    lines += [
        f"bonds broken        {', '.join(report['bonds_broken']) or 'none'} (of {report['bonds_start']} at the start)",
        f"bonds formed        {', '.join(report['bonds_formed']) or 'none'}",
        f"bond rule           {report['bond_rule']}",
    ]
    if report["largest_energy_std_eV"] is not None:
        lines.append(f"ensemble spread     largest energy std {report['largest_energy_std_eV']:.4g} eV")
    lines.append(f"speed               {report['ps_per_hour']:.4g} simulated ps per hour of wall time "
                 f"({report['wall_s']:.3g} s wall)")
    return "\n".join(lines)
