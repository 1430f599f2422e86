"""Time to accuracy on rMD17: test MAE after a wall-clock training budget, ours beside MACE.

For every molecule (``--molecule``, default ethanol and aspirin) and budget (``--budgets``, default
10 30 60 minutes), on the official-1 split (950 train + 50 validation frames of train file 01, all
1,000 frames of test file 01):

* **ours**: ``pairreg.training.run.train`` with ``--preset`` (default ``rmd17-1h``; ``rmd17-cpu``
  while that preset is not shipped) plus ``time_budget_min=<budget>``, ``threads=--threads`` and the
  ``--set`` overrides. The run ends when the budget is spent; its warm-up and decay are fractions of
  the budget. Reported: test energy / force MAE of the best-validation checkpoint on the full test
  file (the run's ``metrics.json``) and the training time the budget counted (training + validation
  epochs; data loading and the final test are not counted).
* **MACE** (``mace-torch`` in its own venv, ``--mace-python``; never imported here): its own CLI,
  ``python -m mace.cli.run_train``, with the small model of the issue (32 channels, max_L 1,
  correlation 3, r_max 5 Å, 2 interactions, batch 5, AMSGrad lr 0.01, EMA 0.99, energy : force
  1 : 100, float32) and its second stage (``--stage_two``: energy weight 1000 from MACE's default
  epoch, 3/4 of the run). MACE has no time budget, so its epoch count is *planned*: a probe run of
  ``PROBE_EPOCHS`` epochs (once per molecule, cached) measures the seconds per epoch and the fixed
  cost before the first one, and the budget run gets ``max_num_epochs = (budget - fixed) / per
  epoch``. This was preferred over stopping it with a signal: MACE then runs a complete schedule
  (its stage two starts at 3/4 of the run, as it would for a user who chose that epoch count),
  and ends normally, saving its best-validation (EMA) models. Its training time is read from its
  own log (from "Started training" to the last epoch's validation line) and reported as measured,
  so a run that went slower than the probe shows it. Evaluation: the final model (stage two's when
  it ran) through MACE's ASE calculator on the same 1,000 test frames, converted to float64 so that
  totals near -4,200 eV (ethanol) or -17,600 eV (aspirin) are not rounded to float32's 0.5 / 2 meV
  spacing (``--mace-eval-dtype float32`` evaluates as trained).

MACE's venv (outside the repository; torch pinned first, mace-torch 0.3.16 asks only torch>=1.12, so pip keeps it):
``python3 -m venv /work/mace-venv && /work/mace-venv/bin/pip install torch==2.13.0 &&
/work/mace-venv/bin/pip install mace-torch``.

MACE's input is extended XYZ in eV and eV/Å written from ``pairreg.data.rmd17.load_rmd17`` (the
same rows our run trains on, with the same ``split_seed``; each run's ``split.npz`` is checked
against them). Units go through ``pairreg.units`` (1 kcal/mol = 43.364 meV).

Resumable: each finished (molecule, budget, model) cell is ``--out/cells/<molecule>-<budget>min-
<model>.json`` and is not run again; an interrupted run of ours resumes from its ``last.ckpt`` (its
budget continues); an interrupted MACE run starts again. Cells of different settings are refused.
``--report`` redraws the table and plot from the finished cells without training.

Outputs in ``--out``: ``table.md`` (molecule × budget: ours E/F, MACE E/F, ratios ours/MACE; the
command and machine in its header), ``mae_vs_time.png`` (MAE vs training time, log y), ``cells/``,
``runs/`` (our run directories) and ``mace/`` (XYZ files, probe and runs, logs).

Full protocol (about 2 × (10 + 30 + 60) min per model, i.e. ~6.7 h for both models and molecules
on 2 CPU cores, plus probes and evaluation; run it in several sittings if needed):

    .venv/bin/python benchmarks/time_to_accuracy.py --out runs/time_to_accuracy

Quick check of the code path (tiny budgets on the committed fixture, MACE only with --mace-python):

    .venv/bin/python benchmarks/time_to_accuracy.py --quick --set hidden=16 n_layers=2
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import numpy as np
import yaml

from pairreg import units
from pairreg.atomic import make_dirs, write_atomic
from pairreg.config import config_from_dict, load_config, parse_overrides, preset_names
from pairreg.data import rmd17
from pairreg.training import run as run_mod
from pairreg.training.checkpoint import CHECKPOINT_DIR
from pairreg.training.module import FORCE_NAME, metric_name

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "rmd17"
DEFAULT_MACE_PYTHON = Path("/work/mace-venv/bin/python")
PRESET, FALLBACK_PRESET = "rmd17-1h", "rmd17-cpu"
BUDGETS_MIN, QUICK_BUDGETS_MIN = [10.0, 30.0, 60.0], [0.2]
MOLECULES = ["ethanol", "aspirin"]
MODELS = ("ours", "mace")
E_UNIT, F_UNIT = rmd17.ENERGY_UNIT, rmd17.FORCE_UNIT  # meV, meV/Angstrom
EPOCH_CAP = 100_000  # our runs end by their budget; epochs only caps them
# keys the benchmark sets itself: the data, the budget and where runs go must be the same for both models
CONTROLLED_KEYS = ("dataset", "molecule", "split", "data_root", "time_budget_min", "out", "name", "eval_test",
                   "subset_train", "subset_val", "subset_test", "threads", "progress")

# MACE's settings (issue 14, "The peer"): the small model a new user would train with its own CLI
MACE_ARGS = ["--model", "MACE", "--num_channels", "32", "--max_L", "1", "--correlation", "3", "--r_max", "5.0",
             "--num_interactions", "2", "--batch_size", "5", "--valid_batch_size", "10", "--lr", "0.01",
             "--amsgrad", "--ema", "--ema_decay", "0.99", "--energy_weight", "1", "--forces_weight", "100",
             "--E0s", "average", "--default_dtype", "float32", "--device", "cpu", "--error_table", "TotalMAE",
             "--plot", "False"]
MACE_STAGE_TWO = ["--stage_two", "--stage_two_energy_weight", "1000", "--stage_two_forces_weight", "100"]
PROBE_EPOCHS = 3  # epoch 0 carries one-off costs: the per-epoch time comes from epochs 1..2
MACE_KEYS = {"energy": "REF_energy", "forces": "REF_forces"}  # MACE's default --energy_key/--forces_key
LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) \w+: (.*)$")
EPOCH_LINE = re.compile(r"^Epoch (\d+): ")

# Run by MACE's python: the saved model through its ASE calculator, energies (eV) and forces (eV/Å) to npz
MACE_EVAL = """
import sys, numpy as np, ase.io
from mace.calculators import MACECalculator
model, xyz, out, dtype = sys.argv[1:5]
calc = MACECalculator(model_paths=model, device="cpu", default_dtype=dtype)
frames = ase.io.read(xyz, index=":")
energies, forces, positions = [], [], []
for atoms in frames:
    atoms.calc = calc
    energies.append(atoms.get_potential_energy())
    forces.append(atoms.get_forces())
    positions.append(atoms.get_positions())
np.savez(out, energies_eV=np.array(energies), forces_eV_per_A=np.array(forces), positions_A=np.array(positions))
"""


class BenchError(ValueError):
    """Bad arguments or a finished cell that does not fit this invocation; one line, naming what."""


# --- arguments ----------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--budgets", type=float, nargs="+", default=None, metavar="MIN",
                   help=f"training budgets in minutes (default {' '.join(f'{b:g}' for b in BUDGETS_MIN)}; "
                        f"--quick: {QUICK_BUDGETS_MIN[0]:g})")
    p.add_argument("--molecule", nargs="+", default=None, help=f"rMD17 molecules (default {' '.join(MOLECULES)})")
    p.add_argument("--data-root", default=None,
                   help="rMD17 folder (default ../shared/data/rmd17 beside the repository if present, else "
                        "$PAIRREG_RMD17_ROOT; --quick: tests/fixtures/rmd17)")
    p.add_argument("--preset", default=None, help=f"our preset (default {PRESET}, or {FALLBACK_PRESET} "
                                                  "while that one is not shipped)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="config overrides of our runs (pairreg's --set keys)")
    p.add_argument("--threads", type=int, default=2, help="torch threads of both models (default 2)")
    p.add_argument("--out", default=None, help="output folder (default runs/time_to_accuracy[-quick])")
    p.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS), help="which models to run")
    p.add_argument("--mace-python", default=None,
                   help=f"python of a venv with mace-torch (default {DEFAULT_MACE_PYTHON} if it exists; "
                        "--quick runs MACE only when this is given)")
    p.add_argument("--mace-extra", default="", help="extra mace_run_train arguments, one string after '=' "
                                                    "(e.g. --mace-extra=\"--lr 0.005\"); part of the cells' settings")
    p.add_argument("--mace-seed", type=int, default=123, help="MACE's --seed (default 123, its own default)")
    p.add_argument("--mace-eval-dtype", choices=("float64", "float32"), default="float64",
                   help="dtype MACE's model is evaluated in (default float64, see above)")
    p.add_argument("--quick", action="store_true",
                   help=f"the same code path at {QUICK_BUDGETS_MIN[0]:g} min on the committed fixture "
                        "(60 train + 20 test frames per molecule); numbers mean nothing")
    p.add_argument("--report", action="store_true", help="only redraw table.md and the plot from finished cells")
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    if args.budgets is None:
        args.budgets = QUICK_BUDGETS_MIN if args.quick else BUDGETS_MIN
    if any(not (b > 0 and math.isfinite(b)) for b in args.budgets):
        raise BenchError(f"--budgets: every budget must be a positive number of minutes, got {args.budgets}")
    args.molecule = args.molecule or list(MOLECULES)
    for m in args.molecule:
        try:
            rmd17.check_molecule(m)
        except rmd17.RMD17Error as err:
            raise BenchError(f"--molecule: {err}") from None
    if args.threads < 1:
        raise BenchError(f"--threads must be >= 1, got {args.threads}")
    args.out = Path(args.out or ("runs/time_to_accuracy-quick" if args.quick else "runs/time_to_accuracy"))
    args.data_root = resolve_data_root(args.data_root, args.quick)
    args.preset = resolve_preset(args.preset)
    overrides = parse_overrides(args.overrides)
    bad = [k for k in overrides if k in CONTROLLED_KEYS]
    if bad:
        raise BenchError(f"--set {bad[0]}: set by the benchmark itself (the data, budget, threads and run folders "
                         "must match for both models); use --molecule, --budgets, --data-root, --threads or --out")
    args.mace_python, args.mace_missing = resolve_mace_python(args.mace_python, args.quick)
    try:
        args.mace_extra = shlex.split(args.mace_extra)
    except ValueError as err:
        raise BenchError(f"--mace-extra: {err}") from None
    return args


def resolve_data_root(given: str | None, quick: bool) -> str | None:
    if given:
        return given
    if quick:
        return str(FIXTURE)
    shared = REPO.parent / "shared" / "data" / "rmd17"
    if shared.is_dir():
        return str(shared)
    return os.environ.get("PAIRREG_RMD17_ROOT") or None  # None: the library's cache / download


def resolve_preset(given: str | None) -> str:
    if given:
        if given not in preset_names():
            raise BenchError(f"--preset: unknown preset {given!r}; shipped: {preset_names()}")
        return given
    if PRESET in preset_names():
        return PRESET
    print(f"[time_to_accuracy] preset {PRESET} is not shipped yet: using {FALLBACK_PRESET}", file=sys.stderr)
    return FALLBACK_PRESET


def resolve_mace_python(given: str | None, quick: bool) -> tuple[str | None, str | None]:
    """(python, None) when MACE can run, else (None, why not)."""
    if given is None:
        if quick:
            return None, "skipped by --quick (give --mace-python to include it)"
        if not DEFAULT_MACE_PYTHON.exists():
            return None, f"no --mace-python and {DEFAULT_MACE_PYTHON} does not exist"
        given = str(DEFAULT_MACE_PYTHON)
    if not Path(given).exists():
        return None, f"--mace-python {given} does not exist"
    probe = subprocess.run([given, "-c", "import mace, torch; print(mace.__version__, torch.__version__)"],
                           capture_output=True, text=True)
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no output"])[-1]
        return None, f"{given} cannot import mace ({last})"
    return given, None


# --- cells ----------------------------------------------------------------------------------------------

def cell_name(molecule: str, budget: float, model: str) -> str:
    return f"{molecule}-{budget:g}min-{model}"


def cell_path(out: Path, molecule: str, budget: float, model: str) -> Path:
    return out / "cells" / f"{cell_name(molecule, budget, model)}.json"


def read_cell(path: Path, settings: dict | None) -> dict | None:
    """The finished cell at ``path``, or None; refused when it ran with other ``settings``."""
    if not path.is_file():
        return None
    try:
        cell = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BenchError(f"{path}: not a readable cell ({type(err).__name__}); delete it to run the cell again") from None
    if settings is not None and cell.get("settings") != settings:
        changed = sorted(k for k in set(settings) | set(cell.get("settings", {}))
                         if settings.get(k) != cell.get("settings", {}).get(k))
        raise BenchError(f"{path}: finished with other settings (differ in {changed[:6]}); use another --out, "
                         "or delete the cell to run it again")
    return cell


def write_cell(path: Path, cell: dict) -> None:
    make_dirs(path.parent)
    write_atomic(path, json.dumps(cell, indent=2))


def finished_cells(out: Path) -> list[dict]:
    folder = out / "cells"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))] if folder.is_dir() else []


# --- ours -----------------------------------------------------------------------------------------------

def our_config(args, molecule: str, budget: float):
    runs = args.out / "runs"
    fixed = ["dataset=rmd17", f"molecule={molecule}", "split=official-1", "targets=energy",
             f"time_budget_min={budget:g}", f"epochs={EPOCH_CAP}", f"threads={args.threads}", "progress=false",
             "eval_test=true", f"out={runs}", f"name={cell_name(molecule, budget, 'ours')}"]
    if args.data_root:
        fixed.append(f"data_root={args.data_root}")
    return load_config(args.preset, [*fixed, *args.overrides])


def our_settings(cfg) -> dict:
    """What a finished cell of ours must share with this invocation (where runs go and the data folder aside)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in ("out", "name", "data_root", "progress")}


def run_ours(args, molecule: str, budget: float) -> dict:
    cfg = our_config(args, molecule, budget)
    settings = our_settings(cfg)
    path = cell_path(args.out, molecule, budget, "ours")
    done = read_cell(path, settings)
    if done is not None:
        print(f"[time_to_accuracy] {path.name}: finished earlier, not run again", file=sys.stderr)
        return done
    run_dir = Path(cfg.out) / cfg.name
    started = (run_dir / "metrics.json").is_file() or (run_dir / CHECKPOINT_DIR / "last.ckpt").is_file()
    if started and our_settings(config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()),
                                                 str(run_dir / "config.yaml"))) != settings:
        raise BenchError(f"{run_dir}: a run with other settings; delete it or use another --out")
    if (run_dir / "metrics.json").is_file():  # finished, but stopped before its cell was written
        summary = json.loads((run_dir / "metrics.json").read_text())
    elif started:
        print(f"[time_to_accuracy] {run_dir}: resuming (its budget continues)", file=sys.stderr)
        summary = run_mod.train(run_mod.resume_config(run_dir, {"progress": False}), resume=True)
    else:
        if run_dir.exists():  # stopped before its first checkpoint: nothing to keep
            shutil.rmtree(run_dir)
        summary = run_mod.train(cfg)
    cell = our_cell(summary, run_dir, molecule, budget, args, settings)
    write_cell(path, cell)
    return cell


def our_cell(summary: dict, run_dir: Path, molecule: str, budget: float, args, settings: dict) -> dict:
    test = summary.get("test", {})
    e = test.get(metric_name("test", "energy", E_UNIT))
    f = test.get(metric_name("test", FORCE_NAME, F_UNIT))
    if e is None or f is None:
        raise BenchError(f"{run_dir}/metrics.json: no test energy/force MAE (keys {sorted(test)})")
    frames = check_same_frames(run_dir / "split.npz", molecule, args.data_root, settings["split_seed"])
    return {"model": "ours", "molecule": molecule, "budget_min": budget, "energy_mae_meV": float(e),
            "forces_mae_meV_per_Angstrom": float(f), "training_time_s": summary.get("training_time_s"),
            "wall_time_s": summary.get("wall_time_s"), "frames": frames, "run_dir": str(run_dir),
            "epochs_run": summary.get("epochs_run"), "best_epoch": summary.get("best_epoch"),
            "stopped_by": summary.get("stopped_by"), "preset": args.preset, "threads": args.threads,
            "settings": settings, "finished": datetime.now().isoformat(timespec="seconds")}


def official_split(molecule: str, root, split_seed: int):
    return rmd17.load_rmd17(molecule, "official-1", root, split_seed=split_seed, download=root is None)


def check_same_frames(split_file: Path, molecule: str, root, split_seed: int) -> dict:
    """The run's train/val/test rows are the ones MACE's XYZ files are written from; returns the counts."""
    _, idx = official_split(molecule, root, split_seed)
    with np.load(split_file) as saved:
        for part, rows in idx.items():
            if not np.array_equal(saved[f"{part}_position"], rows):
                raise BenchError(f"{split_file}: the {part} frames differ from the official-1 split MACE gets")
    return {part: int(len(rows)) for part, rows in idx.items()}


# --- MACE -----------------------------------------------------------------------------------------------

def write_extxyz(ds, rows, path: Path) -> None:
    """Frames ``rows`` of an rMD17 set (meV, meV/Å, Å) as extended XYZ in eV and eV/Å (MACE's units)."""
    import ase.io
    from ase import Atoms

    frames = []
    for i in rows:
        z, pos = ds.atoms(int(i))
        atoms = Atoms(numbers=z, positions=pos, pbc=False)
        atoms.info[MACE_KEYS["energy"]] = float(units.convert(ds.y[i, 0], E_UNIT, "eV"))
        atoms.arrays[MACE_KEYS["forces"]] = units.convert(ds.forces[ds.offsets[i]:ds.offsets[i + 1]], F_UNIT,
                                                          "eV/Angstrom")
        frames.append(atoms)
    buffer = io.StringIO()
    ase.io.write(buffer, frames, format="extxyz")
    write_atomic(path, buffer.getvalue())


def mace_data(args, molecule: str, split_seed: int) -> dict[str, Path]:
    """train/valid/test XYZ files of the official-1 split (written once per molecule and split seed)."""
    folder = make_dirs(args.out / "mace" / "data" / f"{molecule}-official-1-seed{split_seed}")
    files = {part: folder / f"{part}.xyz" for part in ("train", "val", "test")}
    if not all(p.is_file() for p in files.values()):
        ds, idx = official_split(molecule, args.data_root, split_seed)
        for part, path in files.items():
            write_extxyz(ds, idx[part], path)
    return files


def mace_command(python: str, files: dict, work_dir: Path, name: str, epochs: int, seed: int, extra) -> list[str]:
    cmd = [python, "-m", "mace.cli.run_train", "--name", name, "--work_dir", str(work_dir),
           "--train_file", str(files["train"]), "--valid_file", str(files["val"]), "--seed", str(seed),
           *MACE_ARGS, "--max_num_epochs", str(epochs)]
    if epochs >= 2:  # MACE's default start, max(1, epochs // 4 * 3), must lie before the last epoch
        cmd += MACE_STAGE_TWO
    return cmd + list(extra)


def parse_mace_log(text: str) -> dict:
    """Seconds from "Started training" to the end of each epoch's validation, from MACE's log lines."""
    start, ends = None, {}
    for line in text.splitlines():
        m = LOG_LINE.match(line.strip())
        if not m:
            continue
        stamp = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").timestamp()
        message = m.group(2)
        if message.startswith("Started training"):
            start, ends = stamp, {}  # a restarted log: keep the last training only
        elif start is not None and (e := EPOCH_LINE.match(message)):
            ends[int(e.group(1))] = stamp - start  # several heads log one line each: the last counts
    if start is None or not ends:
        raise BenchError("MACE's log has no 'Started training' line or no epoch line: the run failed early")
    order = sorted(ends)
    return {"epochs": len(order), "epoch_end_s": [round(ends[k], 3) for k in order], "training_s": ends[order[-1]]}


def plan_epochs(probe: dict, budget_s: float) -> int:
    """Epochs that fit ``budget_s``: the probe's fixed cost (initial validation, epoch 0's extra) plus
    a steady per-epoch time measured on the epochs after the first."""
    ends = probe["epoch_end_s"]
    per_epoch = (ends[-1] - ends[0]) / (len(ends) - 1) if len(ends) > 1 else ends[0]
    fixed = max(0.0, ends[0] - per_epoch)
    return max(1, int((budget_s - fixed) // per_epoch))


def run_logged(cmd: list[str], log: Path, threads: int, timeout_s: float) -> int:
    """Run ``cmd`` with ``threads`` intra-op threads, stdout+stderr to ``log``; killed (its own process group)
    after ``timeout_s`` or on Ctrl-C."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise BenchError(f"MACE ran past {timeout_s / 60:.0f} min; stopped it (log: {log})") from None
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()


def mace_settings(args, split_seed: int) -> dict:
    return {"mace_args": MACE_ARGS + MACE_STAGE_TWO, "extra": list(args.mace_extra), "seed": args.mace_seed,
            "threads": args.threads, "split": "official-1", "split_seed": split_seed,
            "eval_dtype": args.mace_eval_dtype, "mace_version": args.mace_version}


def mace_probe(args, molecule: str, files: dict, settings: dict) -> dict:
    folder = args.out / "mace" / "probe" / molecule
    path = folder / "probe.json"
    if path.is_file():
        probe = json.loads(path.read_text())
        if probe.get("settings") == settings:
            return probe
    if folder.exists():
        shutil.rmtree(folder)
    make_dirs(folder)
    print(f"[time_to_accuracy] MACE {molecule}: probe of {PROBE_EPOCHS} epochs to plan the budgets", file=sys.stderr)
    log = folder / "mace.log"
    cmd = mace_command(args.mace_python, files, folder / "work", "probe", PROBE_EPOCHS, args.mace_seed,
                       args.mace_extra)
    rc = run_logged(cmd, log, args.threads, timeout_s=3600)
    if rc != 0:
        raise BenchError(f"MACE probe failed (exit {rc}); see {log}")
    probe = {**parse_mace_log(log.read_text()), "settings": settings, "command": cmd}
    write_atomic(path, json.dumps(probe, indent=2))
    return probe


def mace_predict(args, model: Path, xyz: Path, out: Path, log: Path) -> dict:
    rc = run_logged([args.mace_python, "-c", MACE_EVAL, str(model), str(xyz), str(out), args.mace_eval_dtype],
                    log, args.threads, timeout_s=3600)
    if rc != 0:
        raise BenchError(f"MACE evaluation of {model} failed (exit {rc}); see {log}")
    with np.load(out) as pred:
        return {k: pred[k] for k in pred.files}


def mace_test_mae(pred: dict, ds, rows) -> tuple[float, float]:
    """(energy MAE meV, force MAE meV/Å) of MACE's eV predictions against our reference in meV."""
    ref_pos = np.stack([ds.atoms(int(i))[1] for i in rows])
    if pred["positions_A"].shape != ref_pos.shape or np.abs(pred["positions_A"] - ref_pos).max() > 1e-6:
        raise BenchError("MACE's predictions are not in the order of the test frames")
    e_ref = ds.y[rows, 0]
    f_ref = np.stack([ds.forces[ds.offsets[i]:ds.offsets[i + 1]] for i in rows])
    e = units.convert(pred["energies_eV"], "eV", E_UNIT)
    f = units.convert(pred["forces_eV_per_A"], "eV/Angstrom", F_UNIT)
    return float(np.abs(e - e_ref).mean()), float(np.abs(f - f_ref).mean())


def run_mace(args, molecule: str, budget: float, split_seed: int) -> dict:
    settings = mace_settings(args, split_seed)
    path = cell_path(args.out, molecule, budget, "mace")
    done = read_cell(path, settings)
    if done is not None:
        print(f"[time_to_accuracy] {path.name}: finished earlier, not run again", file=sys.stderr)
        return done
    files = mace_data(args, molecule, split_seed)
    probe = mace_probe(args, molecule, files, settings)
    epochs = plan_epochs(probe, 60 * budget)
    folder = args.out / "mace" / "runs" / cell_name(molecule, budget, "mace")
    if folder.exists():  # an interrupted MACE run starts again (its checkpoints hold EMA weights only)
        shutil.rmtree(folder)
    make_dirs(folder)
    name = "mace"
    cmd = mace_command(args.mace_python, files, folder / "work", name, epochs, args.mace_seed, args.mace_extra)
    print(f"[time_to_accuracy] MACE {molecule} {budget:g} min: {epochs} epochs (probe: "
          f"{probe['epoch_end_s']} s at epoch ends); log {folder / 'mace.log'}", file=sys.stderr)
    started = time.perf_counter()
    rc = run_logged(cmd, folder / "mace.log", args.threads, timeout_s=2 * 60 * budget + 1800)
    if rc != 0:
        raise BenchError(f"MACE training failed (exit {rc}); see {folder / 'mace.log'}")
    wall = time.perf_counter() - started
    timing = parse_mace_log((folder / "mace.log").read_text())
    ds, idx = official_split(molecule, args.data_root, split_seed)
    models = {"stage_two": folder / "work" / f"{name}_stagetwo.model", "stage_one": folder / "work" / f"{name}.model"}
    maes = {}
    for which, model in models.items():
        if model.is_file():
            pred = mace_predict(args, model, files["test"], folder / f"test_{which}.npz", folder / f"eval_{which}.log")
            maes[which] = dict(zip(("energy_mae_meV", "forces_mae_meV_per_Angstrom"), mace_test_mae(pred, ds, idx["test"])))
    if not maes:
        raise BenchError(f"MACE saved no model in {folder / 'work'}; see {folder / 'mace.log'}")
    final = "stage_two" if "stage_two" in maes else "stage_one"
    cell = {"model": "mace", "molecule": molecule, "budget_min": budget, **maes[final], "final_model": final,
            "by_model": maes, "training_time_s": round(timing["training_s"], 1), "wall_time_s": round(wall, 1),
            "epochs_planned": epochs, "epochs_run": timing["epochs"], "epoch_end_s": timing["epoch_end_s"],
            "frames": {part: int(len(rows)) for part, rows in idx.items()}, "command": cmd, "run_dir": str(folder),
            "settings": settings, "finished": datetime.now().isoformat(timespec="seconds")}
    write_cell(path, cell)
    return cell


# --- report ---------------------------------------------------------------------------------------------

def machine() -> dict:
    model = ""
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu_count": os.cpu_count(), "cpus_usable": usable, "cpu_model": model or platform.processor(),
            "platform": platform.platform()}


def _num(value, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, (int, float)) and math.isfinite(value) else "–"


def _ratio(a, b) -> str:
    ok = all(isinstance(v, (int, float)) and math.isfinite(v) for v in (a, b)) and b > 0
    return f"{a / b:.2f}" if ok else "–"


def _minutes(cell: dict):
    seconds = cell.get("training_time_s")
    return None if seconds is None else seconds / 60


def render_table(cells: list[dict], header: dict) -> str:
    by = {(c["molecule"], c["budget_min"], c["model"]): c for c in cells}
    rows = sorted({(m, b) for m, b, _ in by}, key=lambda mb: (MOLECULES.index(mb[0]) if mb[0] in MOLECULES
                                                              else len(MOLECULES), mb[0], mb[1]))
    lines = [
        "# Time to accuracy on rMD17 (official-1), ours vs MACE",
        "",
        f"- command: `{header['command']}`",
        f"- machine: {header['machine']['cpu_count']} CPUs ({header['machine']['cpus_usable']} usable), "
        f"{header['machine']['cpu_model']}; torch threads {header['threads']} for both models "
        f"(ours: torch.set_num_threads, MACE: OMP_NUM_THREADS)",
        f"- ours: preset `{header['preset']}`" + (f", --set {' '.join(header['overrides'])}" if header['overrides'] else "")
        + f"; torch {header['torch']}",
        f"- MACE: {header['mace']}",
        f"- data: {header['data_root']}; frames train / val / test per molecule: {header['frames']}",
        "- E: test energy MAE (meV), F: test force MAE (meV/Å), best-validation model, full test file; "
        "time: training minutes as counted (ours: the budget's clock; MACE: its log, first to last epoch); "
        "ratio < 1: ours is better",
        "",
        "| molecule | budget (min) | ours E | ours F | ours time | MACE E | MACE F | MACE time | E ours/MACE | F ours/MACE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for molecule, budget in rows:
        o, m = by.get((molecule, budget, "ours"), {}), by.get((molecule, budget, "mace"), {})
        oe, of_, me, mf = (o.get("energy_mae_meV"), o.get("forces_mae_meV_per_Angstrom"),
                           m.get("energy_mae_meV"), m.get("forces_mae_meV_per_Angstrom"))
        lines.append(f"| {molecule} | {budget:g} | {_num(oe)} | {_num(of_)} | {_num(_minutes(o))} | {_num(me)} | "
                     f"{_num(mf)} | {_num(_minutes(m))} | {_ratio(oe, me)} | {_ratio(of_, mf)} |")
    return "\n".join(lines) + "\n"


def plot(cells: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10.5, 4.0))
    panels = [("energy_mae_meV", "test energy MAE (meV)"), ("forces_mae_meV_per_Angstrom", "test force MAE (meV/Å)")]
    molecules = sorted({c["molecule"] for c in cells}, key=lambda m: MOLECULES.index(m) if m in MOLECULES else 99)
    colours = dict(zip(molecules, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    style = {"ours": ("-", "o", "ours"), "mace": ("--", "s", "MACE")}
    for ax, (key, label) in zip(axes, panels):
        for molecule in molecules:
            for model, (ls, marker, name) in style.items():
                pts = sorted((c["training_time_s"] / 60, c[key]) for c in cells
                             if c["molecule"] == molecule and c["model"] == model and c.get("training_time_s")
                             and isinstance(c.get(key), (int, float)) and math.isfinite(c[key]) and c[key] > 0)
                if pts:
                    ax.plot(*zip(*pts), ls=ls, marker=marker, color=colours[molecule], label=f"{molecule}, {name}")
        ax.set_yscale("log")
        ax.set_xlabel("training wall time (min)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    write_atomic(path, buffer.getvalue())


def report(args, header: dict, with_plot: bool = True) -> str:
    cells = finished_cells(args.out)
    table = render_table(cells, header)
    make_dirs(args.out)
    write_atomic(args.out / "table.md", table)
    if cells and with_plot:
        threads = f"{header['threads']} thread{'s' if header['threads'] != 1 else ''}"
        plot(cells, args.out / "mae_vs_time.png",
             f"rMD17 official-1, {header['machine']['cpus_usable']} CPUs, {threads} per model")
    return table


def header_for(args, frames: dict) -> dict:
    import torch

    mace = (f"mace-torch {args.mace_version} ({args.mace_python}), seed {args.mace_seed}, epochs planned from a "
            f"{PROBE_EPOCHS}-epoch probe, evaluated in {args.mace_eval_dtype}" if args.mace_python
            else f"not run: {args.mace_missing}" if "mace" in args.models else "not run (--models)")
    return {"command": " ".join(["benchmarks/time_to_accuracy.py", *map(shlex.quote, args.argv)]),
            "machine": machine(), "threads": args.threads, "preset": args.preset, "overrides": args.overrides,
            "torch": torch.__version__, "mace": mace, "data_root": args.data_root or "library default (cache)",
            "frames": " / ".join(str(frames[k]) for k in ("train", "val", "test")) if frames else "see cells"}


def main(argv=None) -> int:
    try:
        args = parse_args(argv)
    except (ValueError, OSError) as err:
        print(f"time_to_accuracy: error: {err}", file=sys.stderr)
        return 2
    args.mace_version = None
    if args.mace_python:
        out = subprocess.run([args.mace_python, "-c", "import mace; print(mace.__version__)"], capture_output=True,
                             text=True)
        args.mace_version = out.stdout.strip()
    if "mace" in args.models and args.mace_missing:
        print(f"[time_to_accuracy] MACE not run: {args.mace_missing}", file=sys.stderr)
    frames, failures = {}, []
    try:
        if not args.report:
            for molecule in args.molecule:
                for budget in args.budgets:
                    split_seed = our_config(args, molecule, budget).split_seed
                    for model in args.models:
                        if model == "mace" and not args.mace_python:
                            continue
                        try:
                            cell = (run_ours(args, molecule, budget) if model == "ours"
                                    else run_mace(args, molecule, budget, split_seed))
                        except BenchError as err:
                            if model == "ours":
                                raise
                            failures.append(f"{cell_name(molecule, budget, model)}: {err}")
                            print(f"[time_to_accuracy] {failures[-1]}", file=sys.stderr)
                            continue
                        frames = cell.get("frames", frames)
                        report(args, header_for(args, frames), with_plot=False)  # after every cell: progress
        if not frames:  # --report, or nothing ran now: the counts of a finished cell
            frames = next((c["frames"] for c in finished_cells(args.out) if c.get("frames")), {})
        table = report(args, header_for(args, frames))
    except (ValueError, OSError) as err:  # the project's errors (config, data, run directory, writes) are these
        print(f"time_to_accuracy: error: {err}", file=sys.stderr)
        return 2
    print(table)
    print(f"[time_to_accuracy] table: {args.out / 'table.md'}; plot: {args.out / 'mae_vs_time.png'}", file=sys.stderr)
    for line in failures:
        print(f"[time_to_accuracy] failed: {line}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
