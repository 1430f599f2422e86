"""Read user molecules (XYZ, extended XYZ, SDF/MOL) into (z, pos) arrays, with errors that name file and line.

Why ASE and not RDKit: ASE is one pure-Python reader for all three formats (and many more), with no
compiled dependency to install; the model only needs elements and coordinates, not RDKit's chemistry
perception.

ASE's own errors rarely say where a file is broken, and its SDF reader reads only the first record of a
file. So before handing text to ASE we do a light structural scan ourselves:

* XYZ / extXYZ: an atom-count line (a positive integer), a comment line, then that many atom lines, each
  with an element (symbol or atomic number) and three finite coordinates. Blank lines between molecules
  are skipped. Each molecule is then parsed by ASE on its own.
* SDF / MOL: the file is split on ``$$$$`` lines; in each record the counts line (line 4) must start
  with the number of atoms, followed by that many atom lines ``x y z symbol ...``. V3000 is not supported.

Any other file extension is passed to ASE as a whole (no line numbers). Every failure is an
:class:`InputError` (a ``ValueError``) whose message starts with ``file:line:`` where the line is known.
"""

from __future__ import annotations

import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

XYZ_SUFFIXES = (".xyz", ".extxyz")
SDF_SUFFIXES = (".sdf", ".sd", ".mol")


class InputError(ValueError):
    """A user input file that cannot be used; the message names the file (and line or molecule)."""


@dataclass
class Molecule:
    z: np.ndarray  # (n_atoms,) atomic numbers
    pos: np.ndarray  # (n_atoms, 3) Å
    source: str  # "file.xyz" or "file.xyz#2" for the second molecule of a file
    formula: str
    where: str = ""  # "file.xyz:7" (first line of the molecule) for error messages; source if unknown

    def __post_init__(self):
        self.where = self.where or self.source


def read_molecules(path: str | Path) -> list[Molecule]:
    """All molecules in ``path``; raises :class:`InputError` on unreadable or unusable input."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot open ({err.strerror})") from None
    if not raw.strip():
        raise InputError(f"{path}: the file is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not a text file (byte {raw[err.start]:#04x} is not UTF-8)") from None
    # Same newline handling as Python's text mode (what ASE sees), so line numbers agree.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")

    suffix = path.suffix.lower()
    if suffix in XYZ_SUFFIXES:
        blocks = [(line, body, "extxyz") for line, body in _xyz_blocks(path, lines)]
    elif suffix in SDF_SUFFIXES:
        blocks = [(line, body, "sdf") for line, body in _sdf_blocks(path, lines)]
    else:
        return _read_other(path)
    if not blocks:
        raise InputError(f"{path}: no molecule found")

    out = []
    for k, (line, body, fmt) in enumerate(blocks):
        where = f"{path}:{line}"
        try:
            import ase.io

            atoms = ase.io.read(io.StringIO(body), format=fmt)
        except Exception as err:  # the scan passed but ASE still refused; name the molecule's first line
            raise InputError(f"{where}: cannot read this molecule ({_reason(err)})") from None
        source = str(path) if len(blocks) == 1 else f"{path}#{k + 1}"
        out.append(_molecule(atoms, source, where))
    return out


def _read_other(path: Path) -> list[Molecule]:
    """Formats other than XYZ/SDF: ASE guesses the format; errors cannot name a line."""
    try:
        import ase.io

        frames = ase.io.read(str(path), index=":")
    except Exception as err:  # ASE raises many types for malformed input
        raise InputError(f"{path}: cannot read molecules ({_reason(err)}); "
                         f"supported: {', '.join(XYZ_SUFFIXES + SDF_SUFFIXES)} or another format ASE reads") from None
    if not frames:
        raise InputError(f"{path}: no molecule found")
    return [_molecule(atoms, str(path) if len(frames) == 1 else f"{path}#{k + 1}", "")
            for k, atoms in enumerate(frames)]


def _molecule(atoms, source: str, where: str) -> Molecule:
    """Checks that hold whatever the format: ≥ 2 atoms, real elements, finite coordinates."""
    where = where or source
    try:
        z = np.asarray(atoms.get_atomic_numbers(), dtype=np.int64).reshape(-1)
        pos = np.asarray(atoms.get_positions(), dtype=np.float64).reshape(-1, 3)
        formula = atoms.get_chemical_formula()
    except Exception as err:
        raise InputError(f"{where}: cannot read this molecule ({_reason(err)})") from None
    if len(z) == 0:
        raise InputError(f"{where}: molecule has no atoms")
    if len(z) == 1:
        raise InputError(f"{where}: molecule has a single atom ({formula}); the model needs at least two")
    if (z < 1).any():
        raise InputError(f"{where}: molecule has a dummy atom (X, atomic number 0); only real elements can be used")
    if not np.isfinite(pos).all():
        raise InputError(f"{where}: coordinates contain NaN or infinity")
    return Molecule(z, pos, source, formula, where)


# ---------------------------------------------------------------- structural scans


def _reason(err: Exception) -> str:
    """An exception from ASE as one line (the CLI prints errors on a single line)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"


def _show(line: str, width: int = 60) -> str:
    """The offending line, quoted and shortened, for error messages."""
    return repr(line if len(line) <= width else line[:width] + "...")


def _element(token: str) -> str | None:
    """Canonical symbol of an element symbol (any case, as ASE's XYZ reader) or atomic number; None if neither."""
    from ase.data import atomic_numbers, chemical_symbols

    if re.fullmatch(r"[0-9]+", token):
        z = int(token)
        return chemical_symbols[z] if 1 <= z < len(chemical_symbols) else None
    symbol = token.capitalize()
    return symbol if atomic_numbers.get(symbol, 0) >= 1 else None


def _coords(tokens: list[str]) -> list[float] | None:
    try:
        return [float(t) for t in tokens]
    except ValueError:
        return None


def _xyz_columns(comment: str) -> tuple[int, int, int]:
    """(element column, first position column, columns per atom line) from an extXYZ ``Properties=``."""
    default = (0, 1, 4)
    m = re.search(r"(?i)\bproperties=[\"']?([^\s\"']+)", comment)
    if not m:
        return default
    fields = m.group(1).split(":")
    if len(fields) % 3:
        return default
    col, species, pos = 0, None, None
    for name, _, count in zip(fields[::3], fields[1::3], fields[2::3]):
        if not count.isdigit():
            return default
        if name.lower() == "species":
            species = col
        elif name.lower() in ("pos", "positions"):
            pos = col
        col += int(count)
    if species is None or pos is None:
        return default  # unusual layout (e.g. a Z column): leave the details to ASE
    return species, pos, col


def _xyz_blocks(path: Path, lines: list[str]) -> list[tuple[int, str]]:
    """(first line number, text) of each molecule of an XYZ/extXYZ file, after the structural scan."""
    blocks = []
    last = max((k for k, line in enumerate(lines) if line.strip()), default=-1)  # last non-blank line
    i = 0
    while i < len(lines):
        if not lines[i].strip():  # blank lines between molecules and at the end
            i += 1
            continue
        start = i + 1
        tokens = lines[i].split()
        if len(tokens) != 1 or not re.fullmatch(r"[0-9]+", tokens[0]) or int(tokens[0]) < 1:
            raise InputError(f"{path}:{start}: cannot read: expected the number of atoms (a positive integer) "
                             f"starting a molecule, got {_show(lines[i])}")
        n = int(tokens[0])
        if i + 1 > last:
            raise InputError(f"{path}:{start}: cannot read: the file ends after the atom count; "
                             "expected a comment line and the atom lines")
        comment = lines[i + 1]
        species_col, pos_col, n_cols = _xyz_columns(comment)
        body = [lines[i], comment]
        for k in range(n):
            j = i + 2 + k
            if j > last:
                raise InputError(f"{path}:{last + 1}: cannot read: the file ends after {k} of the "
                                 f"{n} atom lines announced on line {start}")
            tokens = lines[j].split()
            if len(tokens) < n_cols:
                raise InputError(f"{path}:{j + 1}: cannot read atom {k + 1} of {n}: expected an element and "
                                 f"x y z, got {_show(lines[j])}")
            symbol = _element(tokens[species_col])
            if symbol is None:
                raise InputError(f"{path}:{j + 1}: cannot read atom {k + 1} of {n}: unknown element "
                                 f"{tokens[species_col]!r}")
            xyz = _coords(tokens[pos_col: pos_col + 3])
            if xyz is None:
                raise InputError(f"{path}:{j + 1}: cannot read atom {k + 1} of {n}: coordinates must be "
                                 f"numbers, got {_show(lines[j])}")
            if not all(math.isfinite(v) for v in xyz):
                raise InputError(f"{path}:{j + 1}: coordinates contain NaN or infinity: {_show(lines[j])}")
            if symbol != tokens[species_col]:  # ASE's reader wants symbols; atomic numbers are rewritten
                tokens[species_col] = symbol
                body.append(" ".join(tokens))
            else:
                body.append(lines[j])
        blocks.append((start, "\n".join(body) + "\n"))
        i += 2 + n
    return blocks


def _sdf_blocks(path: Path, lines: list[str]) -> list[tuple[int, str]]:
    """(first line number, text) of each record of an SDF/MOL file, split on ``$$$$``, after a scan."""
    blocks = []
    start = 0
    for i, line in enumerate(lines + ["$$$$"]):  # the sentinel closes the last record
        if line.strip() != "$$$$":
            continue
        record = lines[start:i]
        if any(r.strip() for r in record):
            _check_sdf_record(path, start + 1, record)
            blocks.append((start + 1, "\n".join(record) + "\n"))
        start = i + 1
    return blocks


def _check_sdf_record(path: Path, first: int, record: list[str]) -> None:
    """Counts line (line 4 of the record) and atom block of one V2000 molfile record."""
    from ase.data import atomic_numbers

    last = max(k for k, line in enumerate(record) if line.strip())  # trailing blank lines are not content
    if last < 3:
        raise InputError(f"{path}:{first + last}: cannot read: the record starting on line {first} "
                         "ends before its counts line (line 4 of a record)")
    counts, at = record[3], first + 3
    if "V3000" in counts.upper():
        raise InputError(f"{path}:{at}: V3000 molfiles are not supported; save the file as V2000")
    if not re.fullmatch(r" *[0-9]+", counts[:3]):
        raise InputError(f"{path}:{at}: cannot read the counts line: its first 3 characters must be the number "
                         f"of atoms, got {_show(counts)}")
    n = int(counts[:3])
    if n == 0:
        raise InputError(f"{path}:{at}: the counts line says the molecule has no atoms")
    for k in range(n):
        j = 4 + k
        if j > last:
            raise InputError(f"{path}:{first + last}: cannot read: the record ends after {k} of the "
                             f"{n} atom lines announced on line {at}")
        tokens = record[j].split()
        xyz = _coords(tokens[:3]) if len(tokens) >= 4 else None
        if xyz is None:
            raise InputError(f"{path}:{first + j}: cannot read atom {k + 1} of {n}: expected x y z and an "
                             f"element symbol, got {_show(record[j])}")
        if not all(math.isfinite(v) for v in xyz):
            raise InputError(f"{path}:{first + j}: coordinates contain NaN or infinity: {_show(record[j])}")
        if atomic_numbers.get(tokens[3], 0) < 1:  # SDF symbols are case-sensitive ("Cl", not "CL")
            raise InputError(f"{path}:{first + j}: cannot read atom {k + 1} of {n}: unknown element symbol "
                             f"{tokens[3]!r}")
