"""Entry point: ``pairreg {train,evaluate,predict,diagnose,data,bench,export} ...``."""

from __future__ import annotations

import argparse
import os
import sys

from . import bench_cmd, data_cmd, diagnose_cmd, evaluate_cmd, export_cmd, predict_cmd, train_cmd

COMMANDS = {"train": train_cmd, "evaluate": evaluate_cmd, "predict": predict_cmd, "diagnose": diagnose_cmd,
            "data": data_cmd, "bench": bench_cmd, "export": export_cmd}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pairreg", description="Deep equivariant GNNs on 3D molecules, with PairReg.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_parser(sub)
    return parser


def main(argv=None) -> int:
    from ..atomic import WriteError
    from ..config import ConfigError
    from ..data.qm9 import QM9Error
    from ..data.readers import InputError
    from ..training.losses import NonFiniteLossError

    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except (ConfigError, InputError, QM9Error, FileNotFoundError, ValueError, WriteError) as err:
        # Expected user-facing failures: one line, no traceback.
        print(f"pairreg {args.command}: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteLossError as err:
        print(f"pairreg {args.command}: stopped: {err}", file=sys.stderr)
        return 3
    except BrokenPipeError:
        # The reader went away (``pairreg bench ... --list | head``): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
