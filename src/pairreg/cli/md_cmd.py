"""``pairreg md FILE --checkpoint CKPT --steps N --timestep FS --temperature K --out TRAJ.extxyz ...``.

Molecular dynamics of one molecule with a trained energy + forces model (through
:class:`pairreg.ase.PairregCalculator`), then the stability report of :mod:`pairreg.md.run`. A molecule that
falls apart stops the run: the report is still printed, then one error line, exit status 2.
"""

from __future__ import annotations

import json
import sys


def add_parser(sub):
    p = sub.add_parser("md", help="molecular dynamics of one molecule with a trained model, with a stability report")
    p.add_argument("file", help="molecule file (.xyz, .extxyz, .sdf, .mol); the first molecule unless --frame")
    p.add_argument("--frame", type=int, default=0,
                   help="which molecule of the file to start from, 0-based (-1: the last; default 0)")
    p.add_argument("--checkpoint", required=True, nargs="+", metavar="CKPT",
                   help="run directory or .ckpt file of an energy model (several: an ensemble, their mean "
                        "drives the dynamics)")
    p.add_argument("--steps", type=int, required=True, help="number of MD steps")
    p.add_argument("--timestep", type=float, required=True, metavar="FS", help="time step in fs (e.g. 0.5)")
    p.add_argument("--temperature", type=float, required=True, metavar="K",
                   help="temperature in K: of the Maxwell-Boltzmann starting velocities, and Langevin's target")
    p.add_argument("--thermostat", choices=["nve", "langevin"], default="nve",
                   help="nve: velocity Verlet, energy conserved; langevin: NVT at --temperature (default nve)")
    p.add_argument("--friction", type=float, default=0.01, metavar="PER_FS",
                   help="Langevin friction in fs⁻¹ (default 0.01: velocities relax in ~100 fs)")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting velocities and Langevin noise (default 0)")
    p.add_argument("--out", required=True, metavar="TRAJ.extxyz",
                   help="trajectory written as extended XYZ (replaced if it exists), with energy (eV) and forces "
                        "(eV/Å) per frame")
    p.add_argument("--log-every", type=int, default=10, metavar="K",
                   help="write a trajectory frame every K steps (default 10; the first and last step always)")
    p.add_argument("--accelerator", default="cpu", choices=["auto", "cpu", "gpu"],
                   help="where the model runs (default cpu)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"],
                   help="the model's precision: float32 (as trained) or float64 (smoother energies for long NVE "
                        "runs; slower)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch CPU threads (default: torch's; on a machine busy with other jobs use 1, see "
                        "docs/training.md)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def run(args) -> int:
    from ..data.readers import geometry_warnings
    from ..md.run import MDError, MDSettings, MoleculeFellApart, format_report, jsonable, read_start, run_md

    # Settings and input first: mistakes are refused before the model (and torch) loads.
    settings = MDSettings(steps=args.steps, timestep_fs=args.timestep, temperature_K=args.temperature,
                          thermostat=args.thermostat, friction_per_fs=args.friction, seed=args.seed,
                          log_every=args.log_every)
    settings.check()
    if args.threads is not None and args.threads < 1:
        raise MDError(f"--threads must be at least 1, got {args.threads}")
    atoms, mol = read_start(args.file, args.frame)
    for message in geometry_warnings(mol):
        print(f"pairreg md: warning: {message}", file=sys.stderr)

    import torch

    from ..ase import PairregCalculator

    if args.threads is not None:
        torch.set_num_threads(args.threads)

    checkpoint = args.checkpoint[0] if len(args.checkpoint) == 1 else list(args.checkpoint)
    calc = PairregCalculator(checkpoint, accelerator=args.accelerator, dtype=args.dtype)
    report = run_md(atoms, calc, settings, args.out, progress=not args.no_progress)
    report = {"input": mol.where, "checkpoint": args.checkpoint, **report}
    if args.json:
        print(json.dumps(jsonable(report), indent=2, allow_nan=False))
    else:
        print(f"input               {mol.where}")
        print(format_report(report))
    apart = report["fell_apart"]
    if apart:
        raise MoleculeFellApart(
            f"{report['formula']} fell apart at step {apart['step']} ({apart['time_ps']:.4g} ps): {apart['reason']}; "
            f"the trajectory so far ({report['frames_written']} frames) is in {report['trajectory']}")
    return 0
