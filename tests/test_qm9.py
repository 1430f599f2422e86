"""QM9 parsing, units, atom references, cache and split, on the committed 120-molecule sample."""

import os
import time

import numpy as np
import pytest

from pairreg.data import qm9
from conftest import QM9_SAMPLE


@pytest.fixture
def sample(qm9_sample_env):
    return qm9.load_qm9(verbose=False)


def test_sample_parses_in_index_order(sample):
    assert len(sample) == 120
    assert np.all(np.diff(sample.mol_ids) > 0)
    z, pos = sample.atoms(0)  # molecule 1 is methane
    assert sorted(z.tolist()) == [1, 1, 1, 1, 6]
    assert pos.shape == (5, 3)


def test_methane_targets_in_reporting_units(sample):
    y = dict(zip(sample.target_names, sample.y[0]))
    # raw: HOMO -0.3877 Ha, U0 -40.47893 Ha, Cv 6.469 cal/mol/K (qm9pack row 1)
    assert y["homo"] == pytest.approx(-0.3877 * 27211.386245988, rel=1e-9)
    atomization_ha = -40.47893 - (-37.846772 + 4 * -0.500273)
    assert y["U0"] == pytest.approx(atomization_ha * 27211.386245988, rel=1e-9)
    assert y["U0"] == pytest.approx(-17172.18, abs=0.05)  # ≈ −17.17 eV, methane's atomisation energy
    assert y["Cv"] == pytest.approx(6.469 - 5 * 2.981)
    assert y["alpha"] == pytest.approx(13.21) and y["r2"] == pytest.approx(35.3641)
    assert y["zpve"] == pytest.approx(0.044749 * 27211.386245988)


def test_every_target_has_egnn_unit():
    expected = {"alpha": "bohr^3", "gap": "meV", "homo": "meV", "lumo": "meV", "mu": "D", "Cv": "cal/mol/K",
                "G": "meV", "H": "meV", "r2": "bohr^2", "U": "meV", "U0": "meV", "zpve": "meV"}
    assert {t.name: t.unit for t in qm9.TARGETS.values()} == expected


def test_select_targets(sample):
    sub = sample.select_targets(["gap", "mu"])
    assert sub.target_names == ["gap", "mu"] and sub.target_units == ["meV", "D"]
    np.testing.assert_array_equal(sub.y[:, 1], sample.y[:, sample.target_names.index("mu")])
    with pytest.raises(KeyError, match="unknown target"):
        sample.select_targets(["homoo"])


def test_shared_dataset_is_narrowed_to_the_run_targets(sample):
    """`pairreg bench qm9-table --preset paper` loads all 12 targets once and trains one model per target."""
    from pairreg.config import load_config
    from pairreg.training.datamodule import build_splits

    ds, _ = build_splits(load_config("qm9-paper", ["targets=gap"]), sample)
    assert ds.target_names == ["gap"] and ds.y.shape == (120, 1)
    np.testing.assert_array_equal(ds.y[:, 0], sample.y[:, sample.target_names.index("gap")])


def test_egnn_split_sizes_disjoint_and_deterministic():
    a = qm9.egnn_split(qm9.N_MOLECULES)
    assert {k: len(v) for k, v in a.items()} == {"train": 100_000, "val": 17_748, "test": 13_083}
    allidx = np.concatenate(list(a.values()))
    assert len(np.unique(allidx)) == qm9.N_MOLECULES
    b = qm9.egnn_split(qm9.N_MOLECULES)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    c = qm9.egnn_split(qm9.N_MOLECULES, seed=1)
    assert not np.array_equal(a["test"], c["test"])


def _sample_cache(env):
    return qm9.cache_path(env / "cache", qm9._fingerprint(qm9._csv_files(QM9_SAMPLE)))


def test_cache_is_reused(qm9_sample_env):
    qm9.load_qm9_arrays(verbose=False)
    cache = _sample_cache(qm9_sample_env)
    mtime = cache.stat().st_mtime_ns
    qm9.load_qm9_arrays(verbose=False)
    assert cache.stat().st_mtime_ns == mtime


def test_corrupt_cache_is_rebuilt(qm9_sample_env):
    first = qm9.load_qm9_arrays(verbose=False)
    cache = _sample_cache(qm9_sample_env)
    cache.write_bytes(cache.read_bytes()[:1000])  # truncated file
    again = qm9.load_qm9_arrays(verbose=False)
    np.testing.assert_array_equal(first["pos"], again["pos"])
    assert qm9._read_cache(cache, again["fingerprint"].item()) is not None


def test_stale_cache_is_rebuilt(qm9_sample_env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in QM9_SAMPLE.glob("*.csv"):
        (src / f.name).write_text(f.read_text())
    a = qm9.load_qm9_arrays(source_dir=src, verbose=False)
    # change the source: drop the last molecule of part 3
    p3 = src / "qm9_part3.csv"
    lines = p3.read_text().splitlines(keepends=True)
    p3.write_text("".join(lines[:-1]))
    os.utime(p3, (time.time() + 10, time.time() + 10))
    b = qm9.load_qm9_arrays(source_dir=src, verbose=False)
    assert len(b["n_atoms"]) == len(a["n_atoms"]) - 1


def test_two_installs_keep_a_cache_each(qm9_sample_env, tmp_path):
    """Two copies of the source files (two venvs' qm9pack) must not re-parse over each other's cache."""
    copy = tmp_path / "other_install"
    copy.mkdir()
    for f in QM9_SAMPLE.glob("*.csv"):
        (copy / f.name).write_text(f.read_text())
        os.utime(copy / f.name, (time.time() + 100, time.time() + 100))  # installed later
    qm9.load_qm9_arrays(verbose=False)
    qm9.load_qm9_arrays(source_dir=copy, verbose=False)
    caches = sorted((qm9_sample_env / "cache").glob("qm9-*.npz"))
    assert len(caches) == 2
    stamps = {c: c.stat().st_mtime_ns for c in caches}
    qm9.load_qm9_arrays(verbose=False)  # back to the first install: its cache is still there
    qm9.load_qm9_arrays(source_dir=copy, verbose=False)
    assert {c: c.stat().st_mtime_ns for c in caches} == stamps


def test_old_format_version_is_rebuilt(qm9_sample_env):
    data = qm9.load_qm9_arrays(verbose=False)
    cache = _sample_cache(qm9_sample_env)
    data = dict(data)
    data["format_version"] = np.array(qm9.CACHE_FORMAT_VERSION - 1)
    qm9._write_npz_atomic(cache, data)
    assert qm9._read_cache(cache, str(data["fingerprint"])) is None
    qm9.load_qm9_arrays(verbose=False)
    assert qm9._read_cache(cache, str(data["fingerprint"])) is not None


def test_malformed_row_names_file_and_line(tmp_path):
    bad = tmp_path / "qm9_part1.csv"
    lines = (QM9_SAMPLE / "qm9_part1.csv").read_text().splitlines(keepends=True)
    lines[3] = lines[3].replace('"[[', '"[[oops,', 1)  # a non-number inside XYZ_Ang
    bad.write_text("".join(lines))
    with pytest.raises(qm9.QM9Error, match=r"qm9_part1.csv, line 4"):
        qm9.parse_csv([bad])


@pytest.mark.dataset
def test_full_qm9_counts_units_and_cache(tmp_path, monkeypatch):
    """Needs the full QM9 of the installed qm9pack (parsed once into the user cache)."""
    monkeypatch.delenv("PAIRREG_QM9_SOURCE", raising=False)
    qm9.load_qm9_arrays(verbose=False)  # build the cache if needed
    monkeypatch.setattr(qm9, "parse_csv", lambda *a, **k: pytest.fail("the valid cache was not used"))
    ds = qm9.load_qm9(verbose=False)
    assert len(ds) == qm9.N_MOLECULES == 130_831
    assert set(np.unique(ds.z).tolist()) == {1, 6, 7, 8, 9}
    info = qm9.describe()
    assert info["split"] == {"train": 100_000, "val": 17_748, "test": 13_083}
    homo = ds.y[:, ds.target_names.index("homo")]
    assert -12_000 < homo.mean() < -5_000  # HOMO ≈ −6.5 eV on average
    u0 = ds.y[:, ds.target_names.index("U0")]
    assert np.all(u0 < 0) and -80_000 < u0.mean() < -60_000  # atomisation energies ≈ −76 eV
