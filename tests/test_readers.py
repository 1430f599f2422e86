"""User molecule files: XYZ / extXYZ / SDF / MOL happy paths, named errors with line numbers, and fuzzing."""

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pairreg.data.readers import InputError, Molecule, read_molecules
from pairreg.evaluation.evaluate import predict_files
from pairreg.models import MoleculeModel

INPUTS = Path(__file__).parent / "fixtures" / "inputs"
WATER_POS = [[0, 0, 0.1173], [0, 0.7572, -0.4692], [0, -0.7572, -0.4692]]


def check_valid(mols):
    assert mols and all(isinstance(m, Molecule) for m in mols)
    for m in mols:
        assert len(m.z) >= 2 and m.pos.shape == (len(m.z), 3)
        assert (m.z >= 1).all() and np.isfinite(m.pos).all()


# ------------------------------------------------------------------ happy paths


def test_xyz_single():
    [m] = read_molecules(INPUTS / "water.xyz")
    assert m.z.tolist() == [8, 1, 1] and m.formula == "H2O"
    np.testing.assert_allclose(m.pos, WATER_POS)
    assert m.source == str(INPUTS / "water.xyz") and m.where == f"{INPUTS / 'water.xyz'}:1"


def test_xyz_multi_frame():
    mols = read_molecules(INPUTS / "three.xyz")
    check_valid(mols)
    assert [m.formula for m in mols] == ["H2O", "CH4", "C2H6O"]
    assert [m.source.rsplit("#", 1)[1] for m in mols] == ["1", "2", "3"]
    assert [m.where.rsplit(":", 1)[1] for m in mols] == ["1", "6", "13"]  # first line of each molecule


def test_extxyz_with_properties_line():
    [m] = read_molecules(INPUTS / "ethanol.extxyz")
    assert m.formula == "C2H6O" and len(m.z) == 9
    np.testing.assert_allclose(m.pos[3], [-1.9237, 0.3850, 0.0])  # forces columns are not mistaken for positions


def test_extxyz_properties_with_positions_first(tmp_path):
    f = tmp_path / "swapped.xyz"
    f.write_text("2\nProperties=pos:R:3:species:S:1\n0 0 0 H\n0 0 0.74 H\n")
    [m] = read_molecules(f)
    assert m.z.tolist() == [1, 1] and m.pos[1, 2] == pytest.approx(0.74)


def test_sdf_single_and_mol():
    [methane] = read_molecules(INPUTS / "methane.sdf")
    assert methane.formula == "CH4" and methane.z.tolist() == [6, 1, 1, 1, 1]
    [water] = read_molecules(INPUTS / "water.mol")
    np.testing.assert_allclose(water.pos, WATER_POS)


def test_sdf_multi_record_matches_xyz():
    """ASE's sdf reader stops after the first record; every record separated by $$$$ must be read."""
    sdf, xyz = read_molecules(INPUTS / "three.sdf"), read_molecules(INPUTS / "three.xyz")
    assert len(sdf) == 3
    assert [m.where.rsplit(":", 1)[1] for m in sdf] == ["1", "15", "33"]
    for a, b in zip(sdf, xyz):
        assert a.z.tolist() == b.z.tolist() and a.formula == b.formula
        np.testing.assert_allclose(a.pos, b.pos)


def test_xyz_lenient_forms(tmp_path):
    """Atomic numbers instead of symbols, lower-case symbols, CRLF, blank lines between molecules."""
    f = tmp_path / "loose.xyz"
    f.write_bytes(b"2\r\nfirst\r\n8 0 0 0\r\n1 0 0 0.96\r\n\r\n\r\n2\r\nsecond\r\nc 0 0 0\r\no 0 0 1.13\r\n\r\n")
    a, b = read_molecules(f)
    assert a.z.tolist() == [8, 1] and b.z.tolist() == [6, 8]
    assert b.where == f"{f}:7"


def test_utf8_byte_order_mark_is_ignored(tmp_path):
    """Some Windows editors start UTF-8 files with a BOM; it is not part of the first line."""
    for name in ("water.xyz", "three.sdf"):
        f = tmp_path / name
        f.write_bytes(b"\xef\xbb\xbf" + (INPUTS / name).read_bytes())
        got, want = read_molecules(f), read_molecules(INPUTS / name)
        assert [m.formula for m in got] == [m.formula for m in want]
        assert [m.where.rsplit(":", 1)[1] for m in got] == [m.where.rsplit(":", 1)[1] for m in want]
        np.testing.assert_array_equal(got[0].pos, want[0].pos)


def test_sdf_data_items_after_m_end_are_not_a_second_molecule(tmp_path):
    f = tmp_path / "items.sdf"
    f.write_text(sdf(C0, H1, tail="M  END\n>  <name>  (1)\nfirst\nsecond line\n\n> <energy>\n-1.5\n\n$$$$\n")
                 + sdf(C0, H1, tail="M  END\n$$$$\n"))
    assert [m.formula for m in read_molecules(f)] == ["CH", "CH"]


def test_non_periodic_cell_is_accepted(tmp_path):
    """A molecule in a box (Lattice= with pbc all F, as ASE writes molecules) is still an isolated molecule."""
    f = tmp_path / "box.extxyz"
    f.write_text('2\nLattice="9 0 0 0 9 0 0 0 9" pbc="F F F" Properties=species:S:1:pos:R:3\nH 0 0 0\nH 0 0 0.74\n')
    [m] = read_molecules(f)
    assert m.formula == "H2"


# ------------------------------------------------------------------ errors


def expect_error(path, pattern):
    with pytest.raises(InputError) as info:
        read_molecules(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert re.search(pattern, message), message
    assert "\n" not in message  # the CLI prints it as one line
    return message


def sdf(*atom_lines, n=None, tail=""):
    """A V2000 record: 3 header lines, the counts line (line 4), atom lines."""
    n = len(atom_lines) if n is None else n
    return f"m\n  x\n\n{n:3d}  0  0  0  0  0  0  0  0  0999 V2000\n" + "".join(a + "\n" for a in atom_lines) + tail


C0, H1 = "    0.0000    0.0000    0.0000 C   0", "    1.0000    0.0000    0.0000 H   0"

BAD_FILES = {
    # name: (content, regex the message must match; ":N:" is the line number)
    "count-not-int.xyz": ("three\nc\nH 0 0 0\n", r":1: cannot read: expected the number of atoms .*'three'"),
    "count-zero.xyz": ("0\nc\n", r":1: .*positive integer"),
    "short-atom-line.xyz": ("3\ncomment\nC 0 0 0\nH 1 1\nH 0 0 1\n",
                            r":4: cannot read atom 2 of 3: expected an element and x y z, got 'H 1 1'"),
    "bad-element.xyz": ("2\nc\nQq 0 0 0\nH 0 0 1\n", r":3: cannot read atom 1 of 2: unknown element 'Qq'"),
    "dummy-atom.xyz": ("2\nc\nX 0 0 0\nH 0 0 1\n", r":3: .*unknown element 'X'"),
    "z-too-large.xyz": ("2\nc\n200 0 0 0\nH 0 0 1\n", r":3: .*unknown element '200'"),
    "words-as-coords.xyz": ("2\nc\nH 0 0 zero\nH 0 0 1\n", r":3: .*coordinates must be numbers"),
    "truncated.xyz": ("3\nc\nO 0 0 0\nH 0 0 1\n",
                      r":4: cannot read: the file ends after 2 of the 3 atom lines announced on line 1"),
    "count-only.xyz": ("3\n", r":1: cannot read: the file ends after the atom count"),
    "second-frame.xyz": ("2\na\nH 0 0 0\nH 0 0 1\n2\nb\nH 0 0 0\nH 0 0\n", r":8: cannot read atom 2 of 2"),
    "extra-lines.xyz": ("2\na\nH 0 0 0\nH 0 0 1\nH 0 0 2\n", r":5: cannot read: expected the number of atoms"),
    "nan.xyz": ("2\nc\nH 0 0 0\nH 0 nan 1\n", r":4: coordinates contain NaN or infinity"),
    "inf.extxyz": ("2\nProperties=species:S:1:pos:R:3\nH 0 0 0\nH 0 0 1e999\n", r":4: coordinates contain NaN or infinity"),
    "one-atom.xyz": ("1\nc\nC 0 0 0\n", r":1: molecule has a single atom \(C\); the model needs at least two"),
    "one-atom-second.xyz": ("2\na\nH 0 0 0\nH 0 0 1\n1\nb\nC 0 0 0\n", r":5: molecule has a single atom"),
    "no-counts.sdf": ("water\n  x\n", r":2: cannot read: the record starting on line 1 ends before its counts line"),
    "bad-counts.sdf": ("water\n  x\n\nabc  0  0  0  0  0  0  0  0  0999 V2000\n", r":4: cannot read the counts line"),
    "v3000.sdf": ("water\n  x\n\n  0  0  0     0  0            999 V3000\n", r":4: V3000 molfiles are not supported"),
    "zero-atoms.mol": (sdf(tail="M  END\n"), r":4: the counts line says the molecule has no atoms"),
    "bad-atom.sdf": (sdf(C0, "    0.0000 H   0"), r":6: cannot read atom 2 of 2: expected x y z and an element symbol"),
    "upper-case.sdf": (sdf(C0, H1.replace("H ", "CL")), r":6: .*unknown element symbol 'CL'"),
    "short-record.sdf": (sdf(C0, H1, n=3), r":6: cannot read: the record ends after 2 of the 3 atom lines announced on line 4"),
    "nan.sdf": (sdf(C0.replace("    0.0000 ", "       nan ", 1), H1), r":5: coordinates contain NaN or infinity"),
    "one-atom.sdf": (sdf(C0, tail="M  END\n$$$$\n"), r":1: molecule has a single atom"),
    "empty.xyz": ("", r": the file is empty"),
    "blank.sdf": ("\n  \n\n", r": the file is empty"),
    # float() reads "1_0" as 10 and non-ASCII digits as digits: typos, not coordinates
    "underscore.xyz": ("2\nc\nH 0 0 0\nH 0 0 1_0\n",
                       r":4: cannot read atom 2 of 2: coordinates must be numbers, "
                       r".*\('1_0' is not a plain decimal number\)"),
    "full-width.xyz": ("2\nc\nH 0 0 0\nH \uff10 0 \uff11.\uff10\n", r":4: .*'\uff10' is not a plain decimal number"),
    "arabic-indic.extxyz": ("2\nProperties=species:S:1:pos:R:3\nH 0 0 0\nH 0 0 \u0661\n",
                            r":4: .*'\u0661' is not a plain decimal number"),
    "underscore.sdf": (sdf(C0, H1.replace("1.0000", "1_0000")),
                       r":6: cannot read atom 2 of 2: .*'1_0000' is not a plain"),
    "full-width.sdf": (sdf(C0.replace("0.0000", "\uff10.0000", 1), H1), r":5: .*'\uff10.0000' is not a plain"),
    # periodic cells: the models are for isolated molecules
    "lattice.extxyz": ('2\nLattice="5 0 0 0 5 0 0 0 5" Properties=species:S:1:pos:R:3\nH 0 0 0\nH 0 0 0.74\n',
                       r":1: the structure is periodic \(pbc T T T.*isolated molecules"),
    "pbc-second.xyz": ('2\na\nH 0 0 0\nH 0 0 0.74\n2\npbc="T T F"\nH 0 0 0\nH 0 0 0.74\n',
                       r":5: the structure is periodic \(pbc T T F"),
    # two molfiles without "$$$$" between them: ASE reads the first and silently drops the second
    "two-molfiles.mol": (sdf(C0, H1, tail="M  END\n") + sdf(C0, H1, tail="M  END\n"),
                         r":8: text after 'M  END' that is not an SDF data item .*'m'.*separated by a '\$\$\$\$' line"),
    "two-molfiles-no-end.sdf": (sdf(C0, H1) + sdf(C0, H1, tail="M  END\n"),
                                r":10: a second counts line in one record: .*V2000.*'\$\$\$\$'"),
    "mend-in-data.sdf": (sdf(C0, H1, tail="M  END\n> <note>\nx\nM  END\n$$$$\n"),
                         r":10: a second 'M  END' in one record"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_names_file_and_line(tmp_path, name):
    content, pattern = BAD_FILES[name]
    f = tmp_path / name
    f.write_text(content)
    expect_error(f, pattern)


def test_bad_second_sdf_record_names_its_line(tmp_path):
    good = (INPUTS / "methane.sdf").read_text()
    f = tmp_path / "two.sdf"
    f.write_text(good + good.replace("  5  4  0", "  x  4  0"))
    expect_error(f, r":19: cannot read the counts line")  # methane.sdf has 15 lines; line 4 of record 2


def test_missing_file_directory_and_binary(tmp_path):
    expect_error(tmp_path / "missing.xyz", r": no such file")
    expect_error(tmp_path, r": not a file")
    f = tmp_path / "binary.xyz"
    f.write_bytes(b"2\ncomment\n\xff\xfe\x00garbage\n")
    expect_error(f, r":3: not a text file \(byte 0xff is not UTF-8\)")


def test_other_extension_goes_to_ase(tmp_path):
    f = tmp_path / "water.txt"
    f.write_text("not a molecule\n")
    expect_error(f, r": cannot read molecules .*supported: .xyz")


# ------------------------------------------------------------------ checks that need the model


@pytest.fixture(scope="module")
def tiny_model():
    """Untrained, but with the default H, C, N, O, F embedding: enough to test input checks."""
    return MoleculeModel(n_targets=1, hidden=8, n_layers=1).eval()


def test_unknown_element_is_named_before_the_model_runs(tiny_model, tmp_path, monkeypatch):
    f = tmp_path / "ccl4.xyz"
    f.write_text("5\nCCl4\nC 0 0 0\nCl 1 1 1\nCl -1 -1 1\nCl -1 1 -1\nCl 1 -1 -1\n")
    monkeypatch.setattr(tiny_model, "predict", lambda *a, **k: pytest.fail("model called"))
    with pytest.raises(InputError) as info:
        predict_files(tiny_model, [INPUTS / "water.xyz", f], ["homo"], ["meV"])
    assert str(info.value) == (f"{f}:1: element Cl (Z=17) cannot be predicted: atomic number(s) [17] not known "
                               "to this model, which was trained on H, C, N, O, F")


def test_large_molecule_warns_but_predicts(tiny_model):
    warnings = []
    rows = predict_files(tiny_model, [INPUTS / "three.xyz"], ["homo"], ["meV"], max_atoms_train=2, warn=warnings.append)
    assert [r["n_atoms"] for r in rows] == [3, 5, 9] and all(np.isfinite(r["homo_meV"]) for r in rows)
    assert len(warnings) == 2  # CH4 (5 > 4) and ethanol (9 > 4), not water (3)
    assert warnings[1].startswith(f"{INPUTS / 'three.xyz'}:13: C2H6O has 9 atoms, more than twice the largest "
                                  "training molecule (2 atoms)")
    for unknown in (None, 0):  # older checkpoints: no size known, no warning
        predict_files(tiny_model, [INPUTS / "three.xyz"], ["homo"], ["meV"], max_atoms_train=unknown,
                      warn=warnings.append)
    assert len(warnings) == 2


# ------------------------------------------------------------------ fuzzing: InputError or valid molecules


@pytest.fixture(scope="module")
def fuzz_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def read_or_input_error(folder, name, data: bytes):
    """The property: parse into valid molecules, or raise InputError naming the file; nothing else."""
    f = folder / name
    f.write_bytes(data)
    try:
        mols = read_molecules(f)
    except InputError as err:
        assert str(err).startswith(str(f)) and "\n" not in str(err), str(err)
        return None
    check_valid(mols)
    return mols


SUFFIXES = st.sampled_from([".xyz", ".extxyz", ".sdf", ".mol"])
SEEDS = [(p.read_text(), p.suffix) for p in sorted(INPUTS.iterdir())]  # valid files and their formats
# characters that matter to the formats: digits, signs, exponents, separators, symbols, nan/inf letters
CHARS = st.sampled_from(list("0123456789 -+.eE\t\n$XxHCNOFClnaif#=:\"") + ["\r", "\x00", "é"])


@st.composite
def mutated(draw):
    """(bytes, suffix): a valid fixture with a few line deletions/duplications/insertions/edits."""
    text, suffix = draw(st.sampled_from(SEEDS))
    lines = text.split("\n")
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["delete", "duplicate", "substitute", "insert", "truncate"]))
        i = draw(st.integers(0, len(lines) - 1))
        if op == "delete" and len(lines) > 1:
            del lines[i]
        elif op == "duplicate":
            lines.insert(i, lines[i])
        elif op == "substitute" and lines[i]:
            j = draw(st.integers(0, len(lines[i]) - 1))
            lines[i] = lines[i][:j] + draw(CHARS) + lines[i][j + 1:]
        elif op == "insert":
            lines.insert(i, draw(st.text(CHARS, max_size=20)))
        elif op == "truncate":
            lines = lines[: i + 1]
    return "\n".join(lines).encode(), suffix


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(data=st.binary(max_size=300), suffix=SUFFIXES)
def test_fuzz_random_bytes(fuzz_dir, data, suffix):
    read_or_input_error(fuzz_dir, "bytes" + suffix, data)


@FUZZ
@given(data=st.text(CHARS, max_size=200).map(str.encode), suffix=SUFFIXES)
def test_fuzz_random_text(fuzz_dir, data, suffix):
    read_or_input_error(fuzz_dir, "text" + suffix, data)


@FUZZ
@given(case=mutated())
def test_fuzz_mutated_valid_files(fuzz_dir, case):
    data, suffix = case
    read_or_input_error(fuzz_dir, "mutated" + suffix, data)


@FUZZ
@given(case=st.sampled_from(SEEDS).flatmap(lambda seed: st.integers(0, len(seed[0])).map(
    lambda n: (seed[0][:n].encode(), seed[1]))))
def test_fuzz_truncated_files(fuzz_dir, case):
    data, suffix = case
    read_or_input_error(fuzz_dir, "truncated" + suffix, data)


MOLECULES = st.lists(st.tuples(st.sampled_from(["H", "C", "N", "O", "F", "Cl", "S"]),
                               st.tuples(*[st.floats(-99, 99, allow_nan=False)] * 3)), min_size=2, max_size=12)


@FUZZ
@given(mols=st.lists(MOLECULES, min_size=1, max_size=3), sdf=st.booleans())
def test_fuzz_written_files_read_back(fuzz_dir, mols, sdf):
    """Well-formed files with random molecules always read back, one Molecule per molecule, in order."""
    if sdf:
        text = "".join(f"m{k}\n  fuzz\n\n{len(m):3d}  0  0  0  0  0  0  0  0  0999 V2000\n"
                       + "".join(f"{x:10.4f}{y:10.4f}{z:10.4f} {s:<3} 0  0  0\n" for s, (x, y, z) in m) + "M  END\n$$$$\n"
                       for k, m in enumerate(mols))
    else:
        text = "".join(f"{len(m)}\nm{k}\n" + "".join(f"{s} {x:.6f} {y:.6f} {z:.6f}\n" for s, (x, y, z) in m)
                       for k, m in enumerate(mols))
    out = read_or_input_error(fuzz_dir, "written.sdf" if sdf else "written.xyz", text.encode())
    assert out is not None and len(out) == len(mols)
    for got, m in zip(out, mols):
        np.testing.assert_allclose(got.pos, [p for _, p in m], atol=1e-4)
