"""Benchmark scripts: their defaults stay short (CI never times them; this checks the work they plan)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _peer_training_steps(args) -> int:
    """Training steps of egnn-pytorch (±coordinates) the run makes: the timed passes plus the FLOP count."""
    per_depth = 2 * (args.repeats * (args.warmup + args.steps) + args.steps)
    return per_depth * len(args.layers)


def test_speed_defaults_are_the_short_protocol_and_full_is_a_flag():
    speed = _load("speed")
    short, full = speed.parse_args([]), speed.parse_args(["--full"])
    # the peer's training step at batch 96 takes ~10 s on 2 CPU cores: the default must plan at most
    # ~36 of them (about 5 minutes); the long protocol is only behind --full
    assert _peer_training_steps(short) <= 36
    assert _peer_training_steps(full) > 5 * _peer_training_steps(short)
    assert speed.parse_args(["--steps", "7"]).steps == 7 and speed.parse_args(["--full", "--layers", "5"]).layers == [5]
