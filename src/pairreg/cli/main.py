"""Entry point: ``pairreg {train,evaluate,predict,diagnose,data,bench,export,md,plot} ...``."""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys

from . import bench_cmd, data_cmd, diagnose_cmd, evaluate_cmd, export_cmd, md_cmd, plot_cmd, predict_cmd, train_cmd

COMMANDS = {"train": train_cmd, "evaluate": evaluate_cmd, "predict": predict_cmd, "diagnose": diagnose_cmd,
            "data": data_cmd, "bench": bench_cmd, "export": export_cmd, "plot": plot_cmd, "md": md_cmd}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pairreg", description="Deep equivariant GNNs on 3D molecules, with PairReg.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, module in COMMANDS.items():
        module.add_parser(sub)
    return parser


# Messages of torch.load / np.load that advise turning safe loading off; never shown to users.
_UNSAFE_LOAD = re.compile(r"weights_only\s*=\s*False|allow_pickle\s*=\s*(True|False)|Weights only load failed|"
                          r"Unsupported global")


def _chain(err: BaseException):
    """``err`` and the exceptions it was raised from or while handling (also those hidden by ``from None``)."""
    seen = []
    while err is not None and err not in seen:
        seen.append(err)
        err = err.__cause__ or err.__context__
    return seen


def _loaded_file(err: BaseException) -> str | None:
    """The file torch.load / np.load was reading when ``err`` arose, from their frames, else from the message."""
    found = None
    for e in reversed(_chain(err)):
        tb = e.__traceback__
        while tb is not None:
            frame = tb.tb_frame
            if frame.f_code.co_name == "load":
                value = frame.f_locals.get("f", frame.f_locals.get("file"))
                if isinstance(value, (str, os.PathLike)):
                    found = os.fspath(value)
            tb = tb.tb_next
    if found is None:  # our wrappers start with "PATH: ..."
        head = str(err).split(": ", 1)[0]
        found = head if head and os.path.exists(head) else None
    return found


def _first_line(err: BaseException) -> str:
    text = next((line.strip() for line in str(err).splitlines() if line.strip()), "")
    return text[:300] + ("..." if len(text) > 300 else "")


def describe_error(err: Exception) -> tuple[int, str]:
    """(exit status, the one line after ``pairreg CMD: ``) for an exception that ended a command."""
    from ..atomic import WriteError
    from ..bench.parallel import CellsFailedError
    from ..config import ConfigError
    from ..data.qm9 import QM9Error
    from ..data.readers import InputError
    from ..training.losses import DivergenceError, NonFiniteLossError  # not callbacks: that imports Lightning

    debug = "set PAIRREG_DEBUG=1 to see the traceback"
    if isinstance(err, pickle.UnpicklingError) or _UNSAFE_LOAD.search(str(err)):  # what would be shown
        name = _loaded_file(err) or "a file this command read"
        return 2, (f"error: {name} is not a pairreg checkpoint or npz file, or it contains objects that are not "
                   "allowed (pickled Python objects); refusing to load it")
    if isinstance(err, CellsFailedError):
        return 1, f"error: {err}"  # each worker's own log says why
    if isinstance(err, (NonFiniteLossError, DivergenceError)):
        return 3, f"stopped: {err}"
    if isinstance(err, (ConfigError, InputError, QM9Error, FileNotFoundError, ValueError, WriteError)):
        return 2, f"error: {err}"  # expected user-facing failures, worded by us
    if isinstance(err, OSError):  # permissions, full disk, ...: name the file and the reason
        where = ": ".join(str(f) for f in (err.filename, err.filename2) if f is not None)
        reason = err.strerror or _first_line(err) or type(err).__name__
        return 2, f"error: {where + ': ' if where else ''}{reason}"
    if isinstance(err, KeyError):
        key = err.args[0] if err.args else "?"
        return 1, f"error: missing key {key!r} in the data or checkpoint read (KeyError); {debug}"
    return 1, f"error: unexpected {type(err).__name__}: {_first_line(err) or 'no message'}; {debug}"


def main(argv=None) -> int:
    """Run a command; failures end in one line ``pairreg CMD: error: ...`` on stderr and a non-zero status
    (2: bad input or environment, 3: training stopped, 1: unexpected, 130: Ctrl-C, 141: closed pipe).
    With ``PAIRREG_DEBUG=1`` in the environment, errors are raised with their traceback instead."""
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args) or 0
    except BrokenPipeError:
        # The reader went away (``pairreg bench ... --list | head``): stop quietly, as Unix tools do.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print(f"pairreg {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        if os.environ.get("PAIRREG_DEBUG", "") not in ("", "0"):
            raise
        status, line = describe_error(err)
        print(f"pairreg {args.command}: {line}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
