"""MD stability of trained rMD17 models: does a model with a low force error also give stable dynamics?

For each checkpoint (a run directory or .ckpt of an rMD17 energy + forces model), from several frames of
that model's own test set (its ``split``; official-N: test file N), run ``--ps`` ps of NVE (velocity Verlet)
and ``--ps`` ps of Langevin at ``--temperature-K`` with ``pairreg md``'s code (:func:`pairreg.md.run.run_md`,
through :class:`pairreg.ase.PairregCalculator`). Starting velocities are Maxwell–Boltzmann at the same
temperature, seeded per frame. A run stops early when the molecule falls apart (pairreg.md.stability: a
starting bond beyond 2 × its covalent-radius sum, or two atoms closer than 0.5 Å).

Writes into ``--out``:
  runs/<model>-<thermostat>-frame<id>.json   one report per run (a finished run is not run again with the same
                                             settings: the script resumes after an interruption)
  traj/<model>-<thermostat>-frame<id>.extxyz the trajectories (a frame every --log-every-fs)
  table.md                                   one row per model and thermostat (printed too)
  distances.png                              distribution of interatomic distances: MD frames vs the test set

Usage (full: 2 x frames x ps of MD per model; at ~0.5 fs steps that is 2 x 3 x 20,000 model evaluations):
  .venv/bin/python benchmarks/md_stability.py runs/ethanol runs/aspirin --data-root ../shared/data/rmd17
  .venv/bin/python benchmarks/md_stability.py --quick RUN_DIR --data-root tests/fixtures/rmd17   # toy sizes
  .venv/bin/python benchmarks/md_stability.py RUN_DIR --report    # redraw table and plot from finished runs

The data root defaults to $PAIRREG_RMD17_ROOT, else /work/shared/data/rmd17; ``bundled`` reads ethanol's
official-1 files shipped with the package.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np

from pairreg.atomic import make_dirs, write_atomic
from pairreg.md import stability
from pairreg.md.run import MDSettings, jsonable, run_md

THERMOSTATS = ("nve", "langevin")
DEFAULT_ROOT = "/work/shared/data/rmd17"
HIST_MAX_A, HIST_BIN_A = 10.0, 0.02


class BenchError(ValueError):
    """Bad arguments or inputs; one line."""


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="run directories or .ckpt files of rMD17 energy + forces models")
    p.add_argument("--data-root", default=None,
                   help=f"rMD17 folder, or 'bundled' (default $PAIRREG_RMD17_ROOT, else {DEFAULT_ROOT})")
    p.add_argument("--frames", type=int, default=None, help="test-set frames to start from, evenly spaced (default 3)")
    p.add_argument("--ps", type=float, default=None, help="simulated time per run in ps (default 10)")
    p.add_argument("--timestep-fs", type=float, default=0.5, help="time step in fs (default 0.5)")
    p.add_argument("--temperature-K", type=float, default=300.0,
                   help="Langevin temperature and starting-velocity temperature in K (default 300)")
    p.add_argument("--friction-per-fs", type=float, default=0.01, help="Langevin friction in fs⁻¹ (default 0.01)")
    p.add_argument("--log-every-fs", type=float, default=None,
                   help="trajectory frame interval in fs (default 10; these frames feed the distance plot)")
    p.add_argument("--seed", type=int, default=0, help="seed of frame k's run is seed + k (default 0)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="model precision (default float32, as trained and as `pairreg md` runs it)")
    p.add_argument("--thermostats", nargs="+", choices=THERMOSTATS, default=list(THERMOSTATS))
    p.add_argument("--test-frames-hist", type=int, default=None,
                   help="test frames in the reference distance histogram (default all; --quick 20)")
    p.add_argument("--out", default=None, help="output folder (default runs/md_stability[-quick])")
    p.add_argument("--quick", action="store_true",
                   help="the same code paths at toy sizes (1 frame, 10 steps); numbers mean nothing")
    p.add_argument("--report", action="store_true", help="only redraw table.md and the plot from finished runs")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.frames = args.frames or (1 if args.quick else 3)
    args.ps = args.ps or (0.005 if args.quick else 10.0)
    args.log_every_fs = args.log_every_fs or (1.0 if args.quick else 10.0)
    if args.test_frames_hist is None and args.quick:
        args.test_frames_hist = 20
    for name in ("ps", "timestep_fs", "log_every_fs"):
        if not (getattr(args, name) > 0 and math.isfinite(getattr(args, name))):
            raise BenchError(f"--{name.replace('_', '-')} must be a positive number, got {getattr(args, name)}")
    if args.frames < 1:
        raise BenchError(f"--frames must be ≥ 1, got {args.frames}")
    args.steps = int(round(args.ps * 1000.0 / args.timestep_fs))
    args.log_every = max(1, int(round(args.log_every_fs / args.timestep_fs)))
    if args.steps < 1:
        raise BenchError(f"--ps {args.ps} is shorter than one --timestep-fs {args.timestep_fs} step")
    args.data_root = args.data_root or os.environ.get("PAIRREG_RMD17_ROOT") or DEFAULT_ROOT
    args.out = Path(args.out or ("runs/md_stability-quick" if args.quick else "runs/md_stability"))
    return args


def model_label(checkpoint: str) -> str:
    """A short name: the run directory's name, or the checkpoint file's stem (with its run's name)."""
    path = Path(checkpoint)
    if path.is_dir():
        return path.name
    if path.parent.name == "checkpoints":
        return f"{path.parent.parent.name}-{path.stem}"
    return path.stem


def load_test_frames(cfg, data_root: str):
    """(z, positions of every test frame (F, n, 3) Å, test frame ids) of the model's own rMD17 split."""
    from pairreg.data.rmd17 import load_rmd17

    if cfg.dataset != "rmd17":
        raise BenchError(f"the model was trained on dataset={cfg.dataset}; this benchmark needs an rMD17 model")
    ds, idx = load_rmd17(cfg.molecule, cfg.split or "official-1", root=data_root, split_seed=cfg.split_seed,
                         download=False)
    test = np.asarray(idx["test"])
    n_atoms = int(ds.n_atoms[0])
    pos = ds.pos.reshape(len(ds), n_atoms, 3)[test]
    z = ds.atoms(int(test[0]))[0]
    ids = np.asarray(ds.mol_ids)[test] if ds.mol_ids is not None else test
    return z, pos, ids


def start_rows(n_test: int, n_frames: int) -> list[int]:
    """Rows of the test set to start from: ``n_frames`` evenly spaced, first and last included."""
    return sorted({int(round(r)) for r in np.linspace(0, n_test - 1, min(n_frames, n_test))})


def run_name(model: str, thermostat: str, frame_id) -> str:
    return f"{model}-{thermostat}-frame{frame_id}"


def settings_for(args, thermostat: str, k: int) -> MDSettings:
    return MDSettings(steps=args.steps, timestep_fs=args.timestep_fs, temperature_K=args.temperature_K,
                      thermostat=thermostat, friction_per_fs=args.friction_per_fs, seed=args.seed + k,
                      log_every=args.log_every)


def run_model(args, checkpoint: str) -> dict:
    """Every run of one model (finished ones read back); the model's section of summary.json."""
    from ase import Atoms

    from pairreg.ase import PairregCalculator

    calc = PairregCalculator(checkpoint, dtype=args.dtype)
    cfg = calc.infos[0]["config"]
    z, pos, ids = load_test_frames(cfg, args.data_root)
    label = model_label(checkpoint)
    runs = []
    for k, row in enumerate(start_rows(len(pos), args.frames)):
        for thermostat in args.thermostats:
            name = run_name(label, thermostat, ids[row])
            settings = settings_for(args, thermostat, k)
            record_path = args.out / "runs" / f"{name}.json"
            wanted = {"checkpoint": str(checkpoint), "frame_id": int(ids[row]), "dtype": args.dtype,
                      "settings": asdict(settings)}
            if record_path.is_file():
                done = json.loads(record_path.read_text())
                if {key: done.get(key) for key in wanted} == wanted:
                    print(f"[md_stability] {name}: finished earlier, not run again", file=sys.stderr)
                    runs.append(done)
                    continue
            if args.report:
                print(f"[md_stability] {name}: not run yet (--report: left out)", file=sys.stderr)
                continue
            print(f"[md_stability] {name}: {settings.steps} steps of {settings.timestep_fs:g} fs", file=sys.stderr)
            report = run_md(Atoms(numbers=z, positions=pos[row]), calc, settings,
                            args.out / "traj" / f"{name}.extxyz", progress=not args.no_progress)
            record = {**wanted, "model": label, "molecule": cfg.molecule, **jsonable(report)}
            write_atomic(record_path, json.dumps(record, indent=2, allow_nan=False))
            runs.append(record)
    return {"model": label, "checkpoint": str(checkpoint), "molecule": cfg.molecule, "split": cfg.split or "official-1",
            "test_frames_hist": _hist_positions(pos, args.test_frames_hist), "z": z, "runs": runs}


def _hist_positions(pos: np.ndarray, n: int | None) -> np.ndarray:
    if n is None or n >= len(pos):
        return pos
    return pos[np.linspace(0, len(pos) - 1, n).round().astype(int)]


def pair_distances_A(frames_pos) -> np.ndarray:
    """Every interatomic distance (i < j) of every frame, flattened, in Å."""
    out = []
    for p in frames_pos:
        d = stability.distances_A(p)
        out.append(d[np.triu_indices(len(p), k=1)])
    return np.concatenate(out) if out else np.zeros(0)


def table(models: list[dict], args) -> str:
    """Markdown: one row per model and thermostat, aggregated over start frames."""
    head = ("| model | molecule | start frames (MD17 index) | thermostat | drift (meV/atom/ps) | broke | largest force (eV/Å) | "
            "shortest distance (Å) | ps/hour |")
    lines = [head, "|" + "---|" * 9]
    for m in models:
        for thermostat in args.thermostats:
            runs = [r for r in m["runs"] if r["settings"]["thermostat"] == thermostat]
            if not runs:
                continue
            drifts = [r["energy_drift_meV_per_atom_per_ps"] for r in runs
                      if r["energy_drift_meV_per_atom_per_ps"] is not None]
            drift = (f"{np.mean(drifts):+.3g} ± {np.std(drifts):.2g}" if len(drifts) > 1 else
                     f"{drifts[0]:+.3g}" if drifts else "–")
            if thermostat != "nve" and drifts:
                drift = f"({drift}, not conserved)"
            broke = [r for r in runs if r["fell_apart"]]
            broke_text = ("no" if not broke else
                          f"yes, {len(broke)}/{len(runs)} at " + ", ".join(f"{r['fell_apart']['time_ps']:.3g}"
                                                                           for r in broke) + " ps")
            forces = [r["largest_force_eV_per_A"] for r in runs]
            shortest = [r["shortest_distance_A"] for r in runs if r["shortest_distance_A"] is not None]
            speed = [r["ps_per_hour"] for r in runs if r["ps_per_hour"] is not None]
            frames = ", ".join(str(r["frame_id"]) for r in runs)
            lines.append(f"| {m['model']} | {m['molecule']} | {frames} | {thermostat} | {drift} | {broke_text} | "
                         f"{max(forces):.3g} | {min(shortest):.3g} | {np.mean(speed):.3g} |")
    return "\n".join(lines)


def plot(models: list[dict], args, path: Path) -> None:
    """Distance distributions (density) of the MD frames of each thermostat against the model's test frames."""
    import ase.io
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bins = np.arange(0.0, HIST_MAX_A + HIST_BIN_A, HIST_BIN_A)
    fig, axes = plt.subplots(len(models), 1, figsize=(8, 3.2 * len(models)), squeeze=False)
    for ax, m in zip(axes[:, 0], models):
        ref = pair_distances_A(m["test_frames_hist"])
        ax.hist(ref, bins=bins, density=True, histtype="stepfilled", color="0.8",
                label=f"rMD17 test ({len(m['test_frames_hist'])} frames)")
        for thermostat in args.thermostats:
            frames = []
            for r in m["runs"]:
                if r["settings"]["thermostat"] == thermostat and Path(r["trajectory"]).is_file():
                    frames += [a.get_positions() for a in ase.io.read(r["trajectory"], index=":", format="extxyz")]
            if frames:
                ax.hist(pair_distances_A(frames), bins=bins, density=True, histtype="step", linewidth=1.2,
                        label=f"MD {thermostat} ({len(frames)} frames)")
        ax.set_title(f"{m['model']} ({m['molecule']})")
        ax.set_xlabel("interatomic distance (Å)")
        ax.set_ylabel("density (1/Å)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def header(args) -> str:
    return (f"MD stability: {args.ps:g} ps per run at {args.timestep_fs:g} fs ({args.steps} steps), NVE and Langevin "
            f"({args.temperature_K:g} K, friction {args.friction_per_fs:g} fs⁻¹), start velocities Maxwell–Boltzmann "
            f"at {args.temperature_K:g} K, {args.frames} test frame(s) per model, model in {args.dtype}. Broke: a "
            f"starting bond beyond {stability.APART_FACTOR:g} × its covalent-radius sum or atoms closer than "
            f"{stability.MIN_DISTANCE_A} Å. Drift: linear fit of total energy vs time (meaningful for NVE only). "
            f"Command: `{' '.join(args.argv)}`")


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
        args.argv = ["benchmarks/md_stability.py", *(sys.argv[1:] if argv is None else argv)]
        make_dirs(args.out / "runs")
        make_dirs(args.out / "traj")
        models = [run_model(args, c) for c in args.checkpoints]
    except (ValueError, OSError) as err:
        print(f"md_stability: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    text = header(args) + "\n\n" + table(models, args) + "\n"
    write_atomic(args.out / "table.md", text)
    plot(models, args, args.out / "distances.png")
    summary = {"settings": {k: v for k, v in vars(args).items() if k not in ("out",)} | {"out": str(args.out)},
               "models": [{k: v for k, v in m.items() if k not in ("test_frames_hist", "z")} for m in models]}
    write_atomic(args.out / "summary.json", json.dumps(jsonable(summary), indent=2, default=str))
    print(text)
    print(f"table: {args.out / 'table.md'}; plot: {args.out / 'distances.png'}; runs: {args.out / 'runs'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
