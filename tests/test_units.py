import numpy as np
import pytest

from pairreg import units


def test_hartree_to_mev_codata():
    assert units.factor("Hartree", "meV") == pytest.approx(27211.386245988, rel=1e-12)


def test_kcal_per_mol_to_mev():
    # 1 kcal/mol = 43.364 meV (brief, issue 4); NIST: 0.0433641 eV
    assert units.factor("kcal/mol", "meV") == pytest.approx(43.3641, abs=1e-4)


def test_bohr_to_angstrom_and_back():
    assert units.factor("bohr", "Angstrom") == pytest.approx(0.529177210903)
    assert units.factor("Angstrom", "bohr") * units.factor("bohr", "Angstrom") == pytest.approx(1.0)


def test_force_units():
    assert units.factor("kcal/mol/Angstrom", "meV/Angstrom") == pytest.approx(43.3641, abs=1e-4)
    assert units.factor("Hartree/bohr", "eV/Angstrom") == pytest.approx(51.4220674763, rel=1e-9)  # CODATA atomic unit of force


def test_identity_for_fixed_units_and_arrays():
    assert units.convert(np.array([1.5, 2.0]), "D", "D").tolist() == [1.5, 2.0]
    assert units.convert(2.0, "meV", "eV") == pytest.approx(2e-3)


@pytest.mark.parametrize("src,dst", [("D", "meV"), ("Hartree", "bohr"), ("furlong", "meV")])
def test_incompatible_units_raise(src, dst):
    with pytest.raises(ValueError, match="cannot convert"):
        units.factor(src, dst)
