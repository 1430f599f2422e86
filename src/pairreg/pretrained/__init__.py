"""Pretrained checkpoints shipped with pairreg (``<name>.ckpt``, each with a card in README.md here).

Anywhere a checkpoint is accepted (``--checkpoint``, ``PairregCalculator``, ``init_from``), ``pretrained:NAME``
names one of them; ``pairreg predict`` without ``--checkpoint`` uses :data:`DEFAULT`.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

PREFIX = "pretrained:"
DEFAULT = "qm9-homo-lumo-gap-pairreg"  # what `pairreg predict FILE` uses: molecules in, QM9 properties out


class PretrainedError(ValueError):
    """An unknown pretrained model name (the message lists the shipped ones)."""


def folder():
    """Where shipped checkpoints live (a Traversable: a folder, or a place inside a zip)."""
    return resources.files(__name__)


def names() -> list[str]:
    """Names of the shipped checkpoints, sorted."""
    try:
        return sorted(f.name[: -len(".ckpt")] for f in folder().iterdir() if f.name.endswith(".ckpt"))
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        return []


def checkpoint(name: str | None = None):
    """The shipped checkpoint ``name`` (default :data:`DEFAULT`) as a Traversable; PretrainedError if absent."""
    name = DEFAULT if name is None else name
    found = folder() / f"{name}.ckpt"
    if not found.is_file():
        shipped = ", ".join(names()) or "none"
        raise PretrainedError(f"no pretrained model named {name!r} is shipped with this version (shipped: {shipped})")
    return found


def is_pretrained(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(PREFIX)


def resolve(spec: str) -> Path:
    """``pretrained:NAME`` → the shipped file's path. Installed packages (wheels, editable installs) keep
    their data files on disk; a zipped install, where there is no such path, is named as the reason."""
    found = checkpoint(spec[len(PREFIX):] or None)
    if not isinstance(found, Path):
        raise PretrainedError(f"{spec}: pairreg is installed as a zip archive, so the shipped checkpoint has no file "
                              "path; install it unzipped (pip install pairreg) or extract the file")
    return found
