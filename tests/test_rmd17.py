"""rMD17: reading both layouts, splits, units, the download path (with local files), and forces.

Most tests use the fixture in tests/fixtures/rmd17 (80 frames of aspirin and ethanol, CC0).
Tests marked ``rmd17data`` read the full copy in ../shared/data/rmd17 and are skipped without it.
"""

from __future__ import annotations

import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from pairreg import units
from pairreg.data import rmd17
from pairreg.models import MoleculeModel
from pairreg.testing.equivariance import random_orthogonal

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17"
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "rmd17"
needs_shared = pytest.mark.skipif(not (SHARED / "rmd17_aspirin_train_01.npz").is_file(),
                                  reason=f"full rMD17 copy not found at {SHARED}")


def raw(molecule, part, n=1, root=FIXTURE):
    with np.load(root / f"rmd17_{molecule}_{part}_{n:02d}.npz") as f:
        return {k: f[k] for k in f.files}


def test_kcal_per_mol_is_43_364_meV():
    assert units.factor("kcal/mol", "meV") == pytest.approx(43.364, abs=5e-4)
    assert units.factor("kcal/mol/Angstrom", "meV/Angstrom") == pytest.approx(43.364, abs=5e-4)


def test_official_split_from_fixture_files():
    ds, idx = rmd17.load_rmd17("aspirin", "official-1", root=FIXTURE)
    train, test = raw("aspirin", "train"), raw("aspirin", "test")
    assert {k: len(v) for k, v in idx.items()} == {"train": 57, "val": 3, "test": 20}
    # train+val are exactly the train file's frames, test exactly the test file's
    assert sorted(ds.mol_ids[np.concatenate([idx["train"], idx["val"]])]) == sorted(train["old_indices"])
    assert list(ds.mol_ids[idx["test"]]) == list(test["old_indices"])
    assert not set(ds.mol_ids[idx["train"]]) & set(ds.mol_ids[idx["test"]])
    # units: energies and forces converted from kcal/mol(/Å) to meV(/Å); coordinates unchanged (Å)
    k = idx["test"][3]
    assert ds.y[k, 0] == pytest.approx(test["energies"][3] * units.factor("kcal/mol", "meV"), rel=1e-12)
    a, b = ds.offsets[k], ds.offsets[k + 1]
    np.testing.assert_allclose(ds.forces[a:b], test["forces"][3] * units.factor("kcal/mol", "meV"), rtol=1e-12)
    np.testing.assert_allclose(ds.pos[a:b], test["coords"][3], atol=1e-5)
    assert ds.target_units == ["meV"] and ds.force_unit == "meV/Angstrom"
    assert rmd17.formula(ds.atoms(0)[0]) == rmd17.MOLECULES["aspirin"][0]


def test_describe_gives_the_floor_from_the_raw_files():
    info = rmd17.describe("aspirin", "official-1", root=FIXTURE)
    ds, idx = rmd17.load_rmd17("aspirin", "official-1", root=FIXTURE)
    test, f = raw("aspirin", "test"), units.factor("kcal/mol", "meV")
    train_mean = ds.y[idx["train"], 0].mean()
    floor = info["floor"]
    assert floor["energy_test_mae_of_training_mean_meV"] == pytest.approx(
        np.abs(test["energies"] * f - train_mean).mean(), rel=1e-9)
    assert floor["forces_test_mae_of_zero_forces_meV_per_Angstrom"] == pytest.approx(
        np.abs(test["forces"] * f).mean(), rel=1e-9)


def test_split_seed_changes_only_train_val():
    _, a = rmd17.load_rmd17("ethanol", "official-1", root=FIXTURE, split_seed=0)
    _, b = rmd17.load_rmd17("ethanol", "official-1", root=FIXTURE, split_seed=1)
    assert not np.array_equal(a["val"], b["val"])
    assert np.array_equal(a["test"], b["test"])


def test_ratio_split_dedupes_frames(tmp_path):
    # a second "split" file repeating 10 frames of the first: they must be counted once
    train = raw("ethanol", "train")
    rep = {k: (v[:10] if v.ndim and len(v) == 60 else v) for k, v in train.items()}
    for name in ("train", "test"):
        (tmp_path / f"rmd17_ethanol_{name}_01.npz").write_bytes((FIXTURE / f"rmd17_ethanol_{name}_01.npz").read_bytes())
    np.savez(tmp_path / "rmd17_ethanol_train_02.npz", **rep)
    ds, idx = rmd17.load_rmd17("ethanol", "ratio", root=tmp_path)
    assert len(ds) == 80 == len(set(ds.mol_ids))
    assert {k: len(v) for k, v in idx.items()} == {"train": 64, "val": 8, "test": 8}
    assert len(np.unique(np.concatenate(list(idx.values())))) == 80


def _archive_folder(base: Path, molecule="ethanol") -> Path:
    """The figshare archive's layout built from the fixture: npz_data/ + splits/ index CSVs."""
    tr, te = raw(molecule, "train"), raw(molecule, "test")
    whole = {k: np.concatenate([te[k], tr[k]]) if tr[k].ndim and len(tr[k]) == 60 else tr[k] for k in tr}
    (base / "rmd17" / "npz_data").mkdir(parents=True)
    (base / "rmd17" / "splits").mkdir()
    np.savez(base / "rmd17" / "npz_data" / f"rmd17_{molecule}.npz", **whole)
    (base / "rmd17" / "splits" / "index_train_01.csv").write_text("\n".join(str(i) for i in range(20, 80)) + "\n")
    (base / "rmd17" / "splits" / "index_test_01.csv").write_text("\n".join(str(i) for i in range(20)) + "\n")
    return base / "rmd17"


def test_archive_layout_gives_the_same_frames(tmp_path):
    root = _archive_folder(tmp_path)
    a, ia = rmd17.load_rmd17("ethanol", "official-1", root=root)
    b, ib = rmd17.load_rmd17("ethanol", "official-1", root=FIXTURE)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(a.y[ia[part]], b.y[ib[part]])


def _tarball(tmp_path: Path) -> Path:
    folder = _archive_folder(tmp_path / "src")
    archive = tmp_path / "rmd17.tar.bz2"
    with tarfile.open(archive, "w:bz2") as tar:
        tar.add(folder, arcname="rmd17")
        evil = tmp_path / "evil.txt"
        evil.write_text("x")
        tar.add(evil, arcname="../evil.txt")  # must never be extracted
    return archive


def test_download_verifies_checksum_and_extracts(tmp_path, monkeypatch):
    archive = _tarball(tmp_path)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    cache = tmp_path / "cache"
    monkeypatch.setattr(rmd17, "ARCHIVE_URL", archive.as_uri())
    monkeypatch.setattr(rmd17, "ARCHIVE_SHA256_PREFIX", digest[:12])
    monkeypatch.delenv("PAIRREG_RMD17_ROOT", raising=False)
    ds, idx = rmd17.load_rmd17("ethanol", "official-1", cache_dir=cache)
    assert len(idx["test"]) == 20 and (cache / "rmd17.tar.bz2").is_file()
    assert not list(cache.rglob("evil.txt"))  # only npz_data/ and splits/ members are extracted
    # second call: found in the cache, no download (the URL now points nowhere)
    monkeypatch.setattr(rmd17, "ARCHIVE_URL", (tmp_path / "gone.tar.bz2").as_uri())
    ds2, _ = rmd17.load_rmd17("ethanol", "official-1", cache_dir=cache)
    np.testing.assert_array_equal(ds.y, ds2.y)


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
    archive = _tarball(tmp_path)
    cache = tmp_path / "cache"
    monkeypatch.setattr(rmd17, "ARCHIVE_URL", archive.as_uri())
    monkeypatch.delenv("PAIRREG_RMD17_ROOT", raising=False)
    with pytest.raises(rmd17.RMD17Error, match="checksum mismatch") as err:
        rmd17.load_rmd17("ethanol", "official-1", cache_dir=cache)
    assert "three ways" in str(err.value)
    assert not [p for p in cache.iterdir()]  # no archive, no partial file


def test_failed_download_names_the_three_ways(tmp_path, monkeypatch):
    monkeypatch.setattr(rmd17, "ARCHIVE_URL", (tmp_path / "missing.tar.bz2").as_uri())
    monkeypatch.delenv("PAIRREG_RMD17_ROOT", raising=False)
    with pytest.raises(rmd17.RMD17Error) as err:
        rmd17.load_rmd17("uracil", "official-1", cache_dir=tmp_path / "cache")
    msg = str(err.value)
    assert "download" in msg and "data_root" in msg and "rmd17_uracil_train_01.npz" in msg


def test_bad_files_are_named(tmp_path):
    with pytest.raises(rmd17.RMD17Error, match="aspirn.*Did you mean 'aspirin'"):
        rmd17.load_rmd17("aspirn", root=FIXTURE)
    with pytest.raises(rmd17.RMD17Error, match="official-7"):
        rmd17.load_rmd17("aspirin", "official-7", root=FIXTURE)
    (tmp_path / "rmd17_ethanol_train_01.npz").write_bytes((FIXTURE / "rmd17_ethanol_train_01.npz").read_bytes())
    with pytest.raises(rmd17.RMD17Error, match="rmd17_ethanol_test_01.npz is missing"):
        rmd17.load_rmd17("ethanol", "official-1", root=tmp_path)
    bad = raw("ethanol", "test")
    bad["forces"][2, 1, 0] = np.nan
    np.savez(tmp_path / "rmd17_ethanol_test_01.npz", **bad)
    with pytest.raises(rmd17.RMD17Error, match="rmd17_ethanol_test_01.npz: forces contains NaN"):
        rmd17.load_rmd17("ethanol", "official-1", root=tmp_path)
    (tmp_path / "rmd17_ethanol_test_01.npz").write_text("not an npz")
    with pytest.raises(rmd17.RMD17Error, match="not a readable npz"):
        rmd17.load_rmd17("ethanol", "official-1", root=tmp_path)


@pytest.mark.rmd17data
@needs_shared
@pytest.mark.parametrize("molecule", sorted(rmd17.MOLECULES))
def test_full_copy_every_molecule(molecule):
    ds, idx = rmd17.load_rmd17(molecule, "official-3", root=SHARED)
    assert {k: len(v) for k, v in idx.items()} == {"train": 950, "val": 50, "test": 1000}
    assert rmd17.formula(ds.atoms(0)[0]) == rmd17.MOLECULES[molecule][0]


@pytest.mark.rmd17data
@needs_shared
def test_full_copy_ratio_split_sizes():
    ds, idx = rmd17.load_rmd17("aspirin", "ratio", root=SHARED)
    assert len(ds) == 9633  # distinct frames across the 10 files (data README)
    assert {k: len(v) for k, v in idx.items()} == {"train": 7706, "val": 963, "test": 964}


# --- forces from the energy model --------------------------------------------------------------------

def _model(mitigation="pairreg", n_rbf=0):
    torch.manual_seed(0)
    return MoleculeModel(n_targets=1, hidden=16, n_layers=3, mitigation=mitigation, target_mean=[-1e5],
                         target_scale=[250.0], n_rbf=n_rbf, rbf_max_A=6.0).double()


@pytest.mark.parametrize("n_rbf", [0, 16])
@pytest.mark.parametrize("mitigation", ["none", "pairreg"])
def test_forces_are_minus_the_energy_gradient(mitigation, n_rbf):
    ds, _ = rmd17.load_rmd17("ethanol", "official-1", root=FIXTURE)
    b = ds.collate([0, 5])
    m = _model(mitigation, n_rbf)
    pos = b.pos.double()
    _, f_std, _ = m.energy_and_forces(b.z, pos, b.batch, b.edge_index, 2)
    d = torch.randn_like(pos, generator=torch.Generator().manual_seed(1))
    eps = 1e-5
    e_plus, _ = m(b.z, pos + eps * d, b.batch, b.edge_index, 2)
    e_minus, _ = m(b.z, pos - eps * d, b.batch, b.edge_index, 2)
    directional = (e_plus - e_minus).sum() / (2 * eps)
    assert float(directional) == pytest.approx(float(-(f_std * d).sum().detach()), rel=1e-5)
    energy, forces = m.predict_energy_forces(b.z, pos, b.batch, b.edge_index, 2)
    torch.testing.assert_close(forces, 250.0 * f_std)  # reporting units = scale × standardised


@pytest.mark.parametrize("n_rbf", [0, 16])
@pytest.mark.parametrize("mitigation", ["none", "pairreg"])
def test_forces_rotate_with_the_molecule(mitigation, n_rbf):
    ds, _ = rmd17.load_rmd17("aspirin", "official-1", root=FIXTURE)
    b = ds.collate([0, 1, 2])
    m = _model(mitigation, n_rbf)
    pos = b.pos.double()
    e, f = m.predict_energy_forces(b.z, pos, b.batch, b.edge_index, 3)
    gen = torch.Generator().manual_seed(3)
    rng = np.random.default_rng(3)
    for det in (1, -1):
        rot = random_orthogonal(det, rng).to(torch.float64)
        shift = torch.randn(3, dtype=torch.float64, generator=gen)
        perm = torch.cat([torch.randperm(21, generator=gen) + 21 * k for k in range(3)])
        e2, f2 = m.predict_energy_forces(b.z[perm], (pos @ rot.T + shift)[perm], b.batch, None, 3)
        torch.testing.assert_close(e2, e, rtol=0, atol=1e-6)
        torch.testing.assert_close(f2, (f @ rot.T)[perm], rtol=0, atol=1e-6)
