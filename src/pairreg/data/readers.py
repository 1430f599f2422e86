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
  After ``M  END`` only SDF data items (``> <name>``, value lines, a blank line) may follow: anything else,
  or a second counts line, is a second molfile with its ``$$$$`` missing, which ASE would drop silently.

Numbers are read strictly: ASCII decimal notation only (``-1.5``, ``2e-3``, ``nan`` and ``inf`` to name
them), because Python's ``float()`` also accepts ``1_0`` (as 10) and non-ASCII digits such as full-width
``１``, which are typos or encoding accidents, not coordinates. A UTF-8 byte-order mark is ignored.
A periodic cell (extended XYZ ``Lattice=`` with periodic ``pbc``, or any format ASE reads as periodic) is
refused: the models predict isolated molecules, and a crystal's atoms are not one.

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


# A plain ASCII decimal number, or nan/inf (refused later with their own message). Not float()'s grammar:
# that also takes "1_0" and non-ASCII digits.
_NUMBER = re.compile(r"[+-]?(?:(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|nan|inf|infinity)", re.IGNORECASE)
# A V2000/V3000 counts line: "aaabbb..." with the version stamp at its end.
_COUNTS_LINE = re.compile(r"[ 0-9]{6}.*V[23]000\s*")


class InputError(ValueError):
    """A user input file that cannot be used; the message names the file (and line or molecule)."""


def too_many_atoms(where: str, n_atoms: int, max_atoms: int) -> InputError:
    """The refusal for molecules above the atom limit, before any graph is built (one line, with the way out)."""
    return InputError(f"{where}: molecule has {n_atoms:,} atoms, more than the limit of {max_atoms:,}: predictions "
                      f"use the complete graph of its {n_atoms * (n_atoms - 1):,} atom pairs, whose memory and time "
                      "grow with the square of the atom count; raise the limit with --max-atoms N")


@dataclass
class Molecule:
    z: np.ndarray  # (n_atoms,) atomic numbers
    pos: np.ndarray  # (n_atoms, 3) Å
    source: str  # "file.xyz" or "file.xyz#2" for the second molecule of a file
    formula: str
    where: str = ""  # "file.xyz:7" (first line of the molecule) for error messages; source if unknown

    def __post_init__(self):
        self.where = self.where or self.source


# Geometry sanity, warnings only. Below 0.5 Å no two atoms are bonded (H2's bond is 0.74 Å); it is what
# coordinates in nm read as Å look like. Above 100 Å (QM9 molecules span under 15 Å) the atoms are not one
# molecule, or the coordinates are in pm: either way far outside anything a model here was trained on.
MIN_DISTANCE_A = 0.5
MAX_DISTANCE_A = 100.0


def read_inputs(paths, max_atoms: int | None = None, warn=None) -> list[Molecule]:
    """The molecules of all ``paths``, in order, each checked by :func:`read_molecules` (``max_atoms`` included);
    geometry warnings (:func:`geometry_warnings`) go to ``warn`` (default: a line on stderr)."""
    import sys

    if warn is None:
        def warn(message):
            print(f"warning: {message}", file=sys.stderr)
    molecules = []
    for path in paths:
        for mol in read_molecules(path, max_atoms=max_atoms):
            for message in geometry_warnings(mol):
                warn(message)
            molecules.append(mol)
    return molecules


def geometry_warnings(mol: Molecule) -> list[str]:
    """Warnings naming the molecule for atoms closer than MIN_DISTANCE_A or farther apart than MAX_DISTANCE_A."""
    (d_min, i, j), d_max = distance_extremes(mol.pos)
    out = []
    if d_min < MIN_DISTANCE_A:
        out.append(f"{mol.where}: {mol.formula}: atoms {i + 1} and {j + 1} are {d_min:.3g} Å apart, closer than "
                   f"{MIN_DISTANCE_A} Å (no chemical bond is that short); are the coordinates in Å?")
    if d_max > MAX_DISTANCE_A:
        out.append(f"{mol.where}: {mol.formula}: atoms up to {d_max:.3g} Å apart, more than {MAX_DISTANCE_A:g} Å; "
                   "is this one molecule, with coordinates in Å? Its prediction is far outside the training data")
    return out


def distance_extremes(pos: np.ndarray, chunk: int = 256) -> tuple[tuple[float, int, int], float]:
    """((shortest interatomic distance Å, atom i, atom j), longest distance Å) of (n, 3) positions, n ≥ 2.

    Blocks of ``chunk`` rows keep memory at chunk × n; hypot does not overflow to inf for huge coordinates.
    """
    pos = np.asarray(pos, dtype=np.float64)
    n = len(pos)
    shortest, longest = (math.inf, 0, 1), 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        for start in range(0, n, chunk):
            diff = pos[start:start + chunk, None, :] - pos[None, :, :]  # (rows, n, 3)
            d = np.hypot(np.hypot(diff[..., 0], diff[..., 1]), diff[..., 2])
            rows = np.arange(start, min(start + chunk, n))
            d[rows - start, rows] = np.nan  # an atom and itself
            longest = max(longest, float(np.nanmax(d)))
            k = int(np.nanargmin(d))
            if d.flat[k] < shortest[0]:
                shortest = (float(d.flat[k]), start + k // n, k % n)
    return shortest, longest


def read_molecules(path: str | Path, max_atoms: int | None = None) -> list[Molecule]:
    """All molecules in ``path``; raises :class:`InputError` on unreadable or unusable input.

    ``max_atoms`` (None: no limit) refuses a molecule with more atoms, as soon as its atom count is read.
    """
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
    text = text.removeprefix("\ufeff")  # byte-order mark some Windows editors write
    # Same newline handling as Python's text mode (what ASE sees), so line numbers agree.
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")

    suffix = path.suffix.lower()
    if suffix in XYZ_SUFFIXES:
        blocks = [(line, body, "extxyz") for line, body in _xyz_blocks(path, lines, max_atoms)]
    elif suffix in SDF_SUFFIXES:
        blocks = [(line, body, "sdf") for line, body in _sdf_blocks(path, lines, max_atoms)]
    else:
        return _read_other(path, max_atoms)
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
        out.append(_molecule(atoms, source, where, max_atoms))
    return out


def _read_other(path: Path, max_atoms: int | None) -> list[Molecule]:
    """Formats other than XYZ/SDF: ASE guesses the format; errors cannot name a line."""
    try:
        import ase.io

        frames = ase.io.read(str(path), index=":")
    except Exception as err:  # ASE raises many types for malformed input
        raise InputError(f"{path}: cannot read molecules ({_reason(err)}); "
                         f"supported: {', '.join(XYZ_SUFFIXES + SDF_SUFFIXES)} or another format ASE reads") from None
    if not frames:
        raise InputError(f"{path}: no molecule found")
    return [_molecule(atoms, str(path) if len(frames) == 1 else f"{path}#{k + 1}", "", max_atoms)
            for k, atoms in enumerate(frames)]


def _molecule(atoms, source: str, where: str, max_atoms: int | None = None) -> Molecule:
    """Checks that hold whatever the format: ≥ 2 atoms, real elements, finite coordinates, not periodic."""
    where = where or source
    if max_atoms and len(atoms) > max_atoms:
        raise too_many_atoms(where, len(atoms), max_atoms)
    try:
        periodic = [bool(p) for p in atoms.pbc]
    except Exception:  # not an ASE Atoms with a pbc flag: nothing says it is periodic
        periodic = []
    if any(periodic):
        flags = " ".join("T" if p else "F" for p in periodic)
        raise InputError(f"{where}: the structure is periodic (pbc {flags}, e.g. extended XYZ Lattice= or pbc=): "
                         "these models predict isolated molecules, not crystals or slabs; remove Lattice= and pbc= "
                         "(or set pbc=\"F F F\") to predict its atoms as one isolated molecule")
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
    """Three coordinates in strict ASCII decimal notation (see _NUMBER), or None."""
    if len(tokens) != 3 or not all(_NUMBER.fullmatch(t) for t in tokens):
        return None
    return [float(t) for t in tokens]


def _not_a_number(tokens: list[str]) -> str:
    """Why coordinates did not parse, naming the first offending token (for "1_0" or "１.０" that matters)."""
    bad = next((t for t in tokens if not _NUMBER.fullmatch(t)), None)
    return "" if bad is None else f" ({bad!r} is not a plain decimal number)"


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


def _xyz_blocks(path: Path, lines: list[str], max_atoms: int | None = None) -> list[tuple[int, str]]:
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
        if max_atoms and n > max_atoms:  # before reading (or ASE parsing) its atom lines
            raise too_many_atoms(f"{path}:{start}", n, max_atoms)
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
                                 f"numbers, got {_show(lines[j])}{_not_a_number(tokens[pos_col: pos_col + 3])}")
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


def _sdf_blocks(path: Path, lines: list[str], max_atoms: int | None = None) -> list[tuple[int, str]]:
    """(first line number, text) of each record of an SDF/MOL file, split on ``$$$$``, after a scan."""
    blocks = []
    start = 0
    for i, line in enumerate(lines + ["$$$$"]):  # the sentinel closes the last record
        if line.strip() != "$$$$":
            continue
        record = lines[start:i]
        if any(r.strip() for r in record):
            _check_sdf_record(path, start + 1, record, max_atoms)
            blocks.append((start + 1, "\n".join(record) + "\n"))
        start = i + 1
    return blocks


def _check_sdf_record(path: Path, first: int, record: list[str], max_atoms: int | None = None) -> None:
    """Counts line (line 4 of the record), atom block, and what follows, of one V2000 molfile record."""
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
    if max_atoms and n > max_atoms:
        raise too_many_atoms(f"{path}:{first}", n, max_atoms)
    for k in range(n):
        j = 4 + k
        if j > last:
            raise InputError(f"{path}:{first + last}: cannot read: the record ends after {k} of the "
                             f"{n} atom lines announced on line {at}")
        tokens = record[j].split()
        xyz = _coords(tokens[:3]) if len(tokens) >= 4 else None
        if xyz is None:
            raise InputError(f"{path}:{first + j}: cannot read atom {k + 1} of {n}: expected x y z and an "
                             f"element symbol, got {_show(record[j])}{_not_a_number(tokens[:3])}")
        if not all(math.isfinite(v) for v in xyz):
            raise InputError(f"{path}:{first + j}: coordinates contain NaN or infinity: {_show(record[j])}")
        if atomic_numbers.get(tokens[3], 0) < 1:  # SDF symbols are case-sensitive ("Cl", not "CL")
            raise InputError(f"{path}:{first + j}: cannot read atom {k + 1} of {n}: unknown element symbol "
                             f"{tokens[3]!r}")
    _check_sdf_tail(path, first, record, 4 + n, last)


def _check_sdf_tail(path: Path, first: int, record: list[str], start: int, last: int) -> None:
    """After the atom block: bonds and properties up to ``M  END``, then only data items (``> <name>``,
    value lines, a blank line). A second counts line or ``M  END``, or other text after ``M  END``, means
    two molfiles were concatenated without ``$$$$``; ASE would read the first and drop the rest silently."""
    missing = f"; molfiles in one file must be separated by a '$$$$' line (the record starts on line {first})"
    state = "block"  # "block" up to M  END, then "item" (expecting "> <name>") or "value" (inside an item)
    for j in range(start, last + 1):
        line, at = record[j], first + j
        if line.startswith("M  END"):
            if state != "block":
                raise InputError(f"{path}:{at}: a second 'M  END' in one record{missing}")
            state = "item"
        elif state == "block" and _COUNTS_LINE.fullmatch(line):
            raise InputError(f"{path}:{at}: a second counts line in one record: {_show(line)}{missing}")
        elif state == "item" and line.strip() and not line.startswith(">"):
            raise InputError(f"{path}:{at}: text after 'M  END' that is not an SDF data item ('> <name>'): "
                             f"{_show(line)}; is this a second molecule? {missing[2:]}")
        elif state == "item" and line.strip():
            state = "value"
        elif state == "value" and not line.strip():
            state = "item"
