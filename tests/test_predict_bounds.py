"""`pairreg predict` stays bounded: an atom limit checked before any graph is built, no NaN in any output,
warnings for implausible geometry. CLI tests use the shipped pretrained model (no training needed)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pairreg.cli.main import build_parser, main
from pairreg.data.readers import (MAX_DISTANCE_A, MIN_DISTANCE_A, InputError, Molecule, distance_extremes,
                                  geometry_warnings, read_inputs)
from pairreg.evaluation import evaluate
from pairreg.models import MoleculeModel

INPUTS = Path(__file__).parent / "fixtures" / "inputs"


def grid_xyz(path, n_atoms, spacing=1.5):
    """An n-atom C/H cluster on a cubic grid (spacing Å), as XYZ."""
    side = int(np.ceil(n_atoms ** (1 / 3)))
    grid = np.stack(np.meshgrid(*[np.arange(side)] * 3, indexing="ij"), -1).reshape(-1, 3)[:n_atoms] * spacing
    lines = [str(n_atoms), "grid"] + [f"{'CH'[k % 2]} {x} {y} {z}" for k, (x, y, z) in enumerate(grid)]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def no_model(monkeypatch):
    """Fail the test if predict loads a model or builds a graph: refusals must come before both."""
    from pairreg.training import checkpoint

    def fail(*args, **kwargs):
        raise AssertionError("predict went on to load the model or build a graph")

    monkeypatch.setattr(checkpoint, "load_model", fail)
    monkeypatch.setattr(evaluate, "make_batch", fail)


def run_predict(capsys, *argv):
    capsys.readouterr()
    code = main(["predict", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------- atom limit


def test_default_atom_limit_is_the_same_everywhere():
    from pairreg.cli import predict_cmd

    args = build_parser().parse_args(["predict", "x.xyz"])
    assert args.max_atoms == predict_cmd.DEFAULT_MAX_ATOMS == evaluate.DEFAULT_MAX_ATOMS == 500


def test_molecule_above_default_limit_is_refused_before_the_model_loads(tmp_path, capsys, no_model):
    f = grid_xyz(tmp_path / "big.xyz", 501)
    code, out, err = run_predict(capsys, f, "--json")
    assert code == 2 and out == ""
    assert err == (f"pairreg predict: error: {f}:1: molecule has 501 atoms, more than the limit of 500: predictions "
                   "use the complete graph of its 250,500 atom pairs, whose memory and time grow with the square "
                   "of the atom count; raise the limit with --max-atoms N\n")


@pytest.mark.parametrize("name, line", [("three.xyz", 6), ("three.sdf", 15)])
def test_max_atoms_option_names_the_molecule(capsys, no_model, name, line):
    """CH4 (5 atoms) is the second molecule of both files; XYZ and SDF are refused at its first line."""
    code, out, err = run_predict(capsys, INPUTS / name, "--max-atoms", 4)
    assert code == 2 and out == ""
    [message] = err.splitlines()
    assert message.startswith(f"pairreg predict: error: {INPUTS / name}:{line}: molecule has 5 atoms, more than "
                              "the limit of 4: ") and message.endswith("raise the limit with --max-atoms N")


def test_max_atoms_option_raises_the_limit(capsys):
    code, out, err = run_predict(capsys, INPUTS / "three.xyz", "--max-atoms", 9, "--json")
    assert code == 0, err
    assert [r["n_atoms"] for r in json.loads(out)["predictions"]] == [3, 5, 9]


@pytest.mark.parametrize("value", ["1", "0", "-5", "many"])
def test_max_atoms_option_must_be_a_count_of_two_or_more(capsys, value):
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args(["predict", "x.xyz", "--max-atoms", value])
    assert info.value.code == 2
    assert "argument --max-atoms:" in capsys.readouterr().err


def test_library_predict_files_is_bounded_too(tmp_path, monkeypatch):
    model = MoleculeModel(n_targets=1, hidden=8, n_layers=1).eval()
    monkeypatch.setattr(evaluate, "make_batch", lambda *a, **k: pytest.fail("graph built"))
    f = grid_xyz(tmp_path / "big.xyz", evaluate.DEFAULT_MAX_ATOMS + 1)
    with pytest.raises(InputError, match=r"big.xyz:1: molecule has 501 atoms, more than the limit of 500"):
        evaluate.predict_files(model, [f], ["homo"], ["meV"])


# ---------------------------------------------------------------- non-finite outputs and odd geometry


def test_atoms_1e200_angstrom_apart_are_an_error_not_nan(tmp_path, capsys):
    """float32 turns 1e200 Å into inf and the model returns NaN: exit 2, naming the molecule, and no output at all
    (before: `nan` with exit 0, and --json printed a bare NaN, which is not JSON)."""
    f = tmp_path / "far.xyz"
    f.write_text((INPUTS / "water.xyz").read_text() + "2\nfar apart\nH 0 0 0\nH 0 0 1e200\n")
    for fmt in ("--json", "--csv"):
        code, out, err = run_predict(capsys, f, fmt)
        assert code == 2 and out == ""
        lines = err.splitlines()
        assert lines[0] == (f"pairreg predict: warning: {f}:6: H2: atoms up to 1e+200 Å apart, more than 100 Å; "
                            "is this one molecule, with coordinates in Å? Its prediction is far outside the training "
                            "data")
        assert lines[-1].startswith(f"pairreg predict: error: {f}:6: H2: the prediction is not finite (homo=nan")


def test_any_non_finite_prediction_is_an_error_naming_the_molecule(monkeypatch):
    model = MoleculeModel(n_targets=2, hidden=8, n_layers=1).eval()
    monkeypatch.setattr(model, "predict", lambda *a, **k: torch.tensor([[1.0, float("inf")]], dtype=torch.float64))
    with pytest.raises(InputError) as info:
        evaluate.predict_files(model, [INPUTS / "three.xyz"], ["homo", "mu"], ["meV", "D"])
    assert str(info.value).startswith(f"{INPUTS / 'three.xyz'}:1: H2O: the prediction is not finite (homo=1.0, mu=inf)")


def test_json_output_refuses_nan_even_if_a_value_slipped_through(monkeypatch, capsys):
    """Defence in depth: were a NaN to reach the JSON writer, it must fail, not print invalid JSON."""
    from pairreg.cli import predict_cmd

    monkeypatch.setattr(evaluate, "predict_molecules", lambda *a, **k: [{"source": "x", "homo_meV": float("nan")}])
    with pytest.raises(ValueError, match="Out of range float values are not JSON compliant"):
        predict_cmd.run(build_parser().parse_args(["predict", str(INPUTS / "water.xyz"), "--json"]))


@pytest.mark.parametrize("pos, expected", [
    ([[0, 0, 0], [0, 0, 0.05]], ["H2: atoms 1 and 2 are 0.05 Å apart, closer than 0.5 Å"]),  # e.g. nm read as Å
    ([[0, 0, 0], [0, 0, 0.74]], []),  # H2's bond, the shortest there is
    ([[0, 0, 0], [0, 0, 99]], []),
    ([[0, 0, 0], [0, 0, 101]], ["H2: atoms up to 101 Å apart, more than 100 Å"]),
    ([[0, 0, 0], [0, 0, 1e300], [0, 0, -1e300]], ["H3: atoms up to 2e+300 Å apart"]),  # no overflow to inf
])
def test_geometry_warnings(pos, expected):
    mol = Molecule(np.ones(len(pos), dtype=np.int64), np.array(pos, dtype=float), "f.xyz", f"H{len(pos)}", "f.xyz:3")
    got = geometry_warnings(mol)
    assert len(got) == len(expected)
    for message, start in zip(got, expected):
        assert message.startswith(f"f.xyz:3: {start}"), message
    assert (MIN_DISTANCE_A, MAX_DISTANCE_A) == (0.5, 100.0)  # the documented thresholds


def test_distance_extremes_match_brute_force_across_chunks():
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(23, 3)) * 5
    d = np.linalg.norm(pos[:, None] - pos[None], axis=-1) + np.diag(np.full(23, np.inf))
    i, j = np.unravel_index(np.argmin(d), d.shape)
    (d_min, a, b), d_max = distance_extremes(pos, chunk=4)
    assert d_min == pytest.approx(d.min()) and {a, b} == {i, j}
    assert d_max == pytest.approx(np.where(np.isfinite(d), d, 0).max())


def test_geometry_warnings_reach_the_cli_and_prediction_goes_on(tmp_path, capsys):
    f = tmp_path / "close.xyz"
    f.write_text("3\nduplicated atom\nO 0 0 0\nH 0 0 0.96\nH 0 0 0.96\n")
    code, out, err = run_predict(capsys, f, "--json")
    assert code == 0 and len(json.loads(out)["predictions"]) == 1
    assert (f"pairreg predict: warning: {f}:1: H2O: atoms 2 and 3 are 0 Å apart, closer than 0.5 Å (no chemical bond "
            "is that short); are the coordinates in Å?") in err.splitlines()


def test_read_inputs_warns_through_the_callback(tmp_path):
    f = tmp_path / "two.xyz"
    f.write_text("2\nfine\nH 0 0 0\nH 0 0 0.74\n2\nfar\nH 0 0 0\nH 0 0 500\n")
    warnings = []
    assert len(read_inputs([f], warn=warnings.append)) == 2
    assert len(warnings) == 1 and warnings[0].startswith(f"{f}:5: H2: atoms up to 500 Å apart")
