"""rMD17: reading both layouts, splits, units, the download path (with local files), and forces.

Most tests use the fixture in tests/fixtures/rmd17 (80 frames of aspirin and ethanol, CC0).
Tests marked ``rmd17data`` read the full copy in ../shared/data/rmd17 and are skipped without it.
"""

from __future__ import annotations

import hashlib
import tarfile
import threading
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


def _pin(monkeypatch, archive: Path, url: str | None = None) -> None:
    """Point the download at ``archive`` (a local file) and pin its size and digests, as the real ones are."""
    data = archive.read_bytes()
    monkeypatch.setattr(rmd17, "ARCHIVE_URL", url or archive.as_uri())
    monkeypatch.setattr(rmd17, "ARCHIVE_SIZE", len(data))
    monkeypatch.setattr(rmd17, "ARCHIVE_SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(rmd17, "ARCHIVE_MD5", hashlib.md5(data).hexdigest())
    monkeypatch.delenv("PAIRREG_RMD17_ROOT", raising=False)


def _leftovers(cache: Path) -> list[str]:
    """Files in the cache other than the lock file (which stays, empty, by design)."""
    return sorted(p.name for p in cache.iterdir() if p.name != rmd17.LOCK_NAME)


def test_archive_pins_are_the_full_figshare_digests():
    assert rmd17.ARCHIVE_SHA256 == "cddeea2ec2c4b22a9de16a9a65a3eeedac5b29da9c99c20bbff0153912bf922b"
    assert rmd17.ARCHIVE_SIZE == 1_066_301_513
    assert rmd17.ARCHIVE_MD5 == "cb1a927628d96f2e966025da4fb63d18"


def test_download_verifies_checksum_and_extracts(tmp_path, monkeypatch):
    archive = _tarball(tmp_path)
    cache = tmp_path / "cache"
    _pin(monkeypatch, archive)
    ds, idx = rmd17.load_rmd17("ethanol", "official-1", cache_dir=cache)
    assert len(idx["test"]) == 20 and (cache / "rmd17.tar.bz2").is_file()
    assert not list(cache.rglob("evil.txt"))  # only npz_data/ and splits/ members are extracted
    assert _leftovers(cache) == ["rmd17", "rmd17.tar.bz2"]  # no .part, no staging folder
    # second call: found in the cache, no download (the URL now points nowhere)
    monkeypatch.setattr(rmd17, "ARCHIVE_URL", (tmp_path / "gone.tar.bz2").as_uri())
    ds2, _ = rmd17.load_rmd17("ethanol", "official-1", cache_dir=cache)
    np.testing.assert_array_equal(ds.y, ds2.y)


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, monkeypatch):
    archive = _tarball(tmp_path)
    cache = tmp_path / "cache"
    _pin(monkeypatch, archive)
    monkeypatch.setattr(rmd17, "ARCHIVE_SHA256", "0" * 64)
    with pytest.raises(rmd17.RMD17Error, match="checksum mismatch") as err:
        rmd17.load_rmd17("ethanol", "official-1", cache_dir=cache)
    assert "three ways" in str(err.value)
    assert _leftovers(cache) == []  # no archive, no partial file


def test_the_whole_sha256_is_checked_not_a_prefix(tmp_path, monkeypatch):
    archive = _tarball(tmp_path)
    _pin(monkeypatch, archive)
    real = rmd17.ARCHIVE_SHA256
    # same first 48 bits (what used to be checked), different after
    monkeypatch.setattr(rmd17, "ARCHIVE_SHA256", real[:12] + ("0" if real[12] != "0" else "1") + real[13:])
    with pytest.raises(rmd17.RMD17Error, match=r"checksum mismatch \(sha256"):
        rmd17.load_rmd17("ethanol", "official-1", cache_dir=tmp_path / "cache")


def test_the_md5_and_the_size_are_checked(tmp_path, monkeypatch):
    archive = _tarball(tmp_path)
    _pin(monkeypatch, archive)
    monkeypatch.setattr(rmd17, "ARCHIVE_MD5", "f" * 32)
    with pytest.raises(rmd17.RMD17Error, match=r"checksum mismatch \(md5"):
        rmd17.load_rmd17("ethanol", "official-1", cache_dir=tmp_path / "c1")
    _pin(monkeypatch, archive)
    monkeypatch.setattr(rmd17, "ARCHIVE_SIZE", archive.stat().st_size + 1)  # file:// announces the real size
    with pytest.raises(rmd17.RMD17Error, match=r"announces [\d,]+ bytes, but rmd17.tar.bz2 has") as err:
        rmd17.load_rmd17("ethanol", "official-1", cache_dir=tmp_path / "c2")
    assert _leftovers(tmp_path / "c2") == []
    # an archive copied into the cache by hand is checked the same way
    _pin(monkeypatch, archive)
    (tmp_path / "c3").mkdir()
    (tmp_path / "c3" / "rmd17.tar.bz2").write_bytes(archive.read_bytes()[:-1])
    with pytest.raises(rmd17.RMD17Error, match=r"bytes, but rmd17.tar.bz2 has"):
        rmd17.load_rmd17("ethanol", "official-1", cache_dir=tmp_path / "c3", download=False)


class _Response:
    """A stand-in for urlopen's response: serves ``data``, counts what was read, and can fail part-way."""

    def __init__(self, data: bytes, fail_after: int | None = None, error: BaseException | None = None):
        self.data, self.served, self.fail_after, self.error = data, 0, fail_after, error
        self.headers = {}  # no Content-Length: a server that does not announce the size

    def read(self, n: int) -> bytes:
        if self.fail_after is not None and self.served >= self.fail_after:
            raise self.error
        block = self.data[self.served: self.served + n]
        self.served += len(block)
        return block

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _serve(monkeypatch, response: _Response) -> None:
    monkeypatch.setattr(rmd17.urllib.request, "urlopen", lambda url, timeout=None: response)


def test_a_server_sending_too_much_is_cut_off_at_the_size(tmp_path, monkeypatch):
    archive = _tarball(tmp_path)
    _pin(monkeypatch, archive, url="http://example.invalid/rmd17.tar.bz2")
    monkeypatch.setattr(rmd17, "CHUNK", 1024)
    response = _Response(archive.read_bytes() + b"\0" * (8 << 20))
    _serve(monkeypatch, response)
    cache = tmp_path / "cache"
    with pytest.raises(rmd17.RMD17Error, match="sent more than the [\\d,]+ bytes of rmd17.tar.bz2; stopped reading"):
        rmd17.load_rmd17("ethanol", "official-1", cache_dir=cache)
    assert response.served == rmd17.ARCHIVE_SIZE + 1  # one byte past the size, not the 8 MB that follow
    assert _leftovers(cache) == []


def test_a_truncated_download_is_refused(tmp_path, monkeypatch):
    archive = _tarball(tmp_path)
    _pin(monkeypatch, archive, url="http://example.invalid/rmd17.tar.bz2")
    _serve(monkeypatch, _Response(archive.read_bytes()[:-100]))
    with pytest.raises(rmd17.RMD17Error, match=r"bytes, but rmd17.tar.bz2 has"):
        rmd17.load_rmd17("ethanol", "official-1", cache_dir=tmp_path / "cache")
    assert _leftovers(tmp_path / "cache") == []


@pytest.mark.parametrize("error,expected", [(KeyboardInterrupt(), KeyboardInterrupt),
                                            (ConnectionResetError("reset by peer"), rmd17.RMD17Error)])
def test_an_interrupted_download_removes_its_part_file(tmp_path, monkeypatch, error, expected):
    archive = _tarball(tmp_path)
    _pin(monkeypatch, archive, url="http://example.invalid/rmd17.tar.bz2")
    monkeypatch.setattr(rmd17, "CHUNK", 256)
    _serve(monkeypatch, _Response(archive.read_bytes(), fail_after=512, error=error))
    cache = tmp_path / "cache"
    with pytest.raises(expected):  # Ctrl-C stays a KeyboardInterrupt, not an RMD17Error
        rmd17.load_rmd17("ethanol", "official-1", cache_dir=cache)
    assert _leftovers(cache) == []


def test_a_part_file_left_by_a_killed_process_is_deleted(tmp_path, monkeypatch):
    archive = _tarball(tmp_path)
    _pin(monkeypatch, archive)
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "rmd17.tar.bz2.part").write_bytes(b"x" * 1000)  # killed by SIGKILL: no cleanup ran
    (cache / "rmd17.tar.bz2k3j_x9.part").write_bytes(b"x" * 1000)  # the name older versions used
    (cache / ".extractq1w2").mkdir()  # an extraction killed half-way
    rmd17.load_rmd17("ethanol", "official-1", cache_dir=cache)
    assert _leftovers(cache) == ["rmd17", "rmd17.tar.bz2"]


def test_processes_sharing_a_cache_download_and_extract_once(tmp_path, monkeypatch):
    """Three loaders start on an empty cache: the first downloads; the others wait for the lock, then find
    the extracted files (before, each downloaded and extracted, and they collided)."""
    archive = _tarball(tmp_path)
    _pin(monkeypatch, archive)
    cache = tmp_path / "cache"
    real_urlopen = rmd17.urllib.request.urlopen
    state = threading.Condition()
    calls, waiting, results, release = [], [], {}, threading.Event()

    def changed(update):
        with state:
            update()
            state.notify_all()

    def urlopen(url, timeout=None):
        changed(lambda: calls.append(url))
        if len(calls) == 1:  # hold the first download until the others are queued on the lock
            release.wait()
        return real_urlopen(url, timeout=timeout)

    def say(message):
        if "waiting" in message:
            changed(lambda: waiting.append(message))

    def load(name):
        try:
            y = rmd17.load_rmd17("ethanol", "official-1", cache_dir=cache)[0].y
        except BaseException as err:  # reported by the assertions below
            y = err
        changed(lambda: results.__setitem__(name, y))

    monkeypatch.setattr(rmd17.urllib.request, "urlopen", urlopen)
    monkeypatch.setattr(rmd17, "_say", say)
    threads = {name: threading.Thread(target=load, args=(name,)) for name in ("first", "second", "third")}
    threads["first"].start()
    with state:
        state.wait_for(lambda: calls or results)
    threads["second"].start()
    threads["third"].start()
    with state:  # until both announce they wait (or, without a lock, finish on their own)
        state.wait_for(lambda: len(waiting) + len(set(results) - {"first"}) >= 2)
    release.set()
    for t in threads.values():
        t.join()
    assert len(waiting) == 2 and len(calls) == 1
    for name in ("first", "second", "third"):
        assert isinstance(results[name], np.ndarray), results[name]
        np.testing.assert_array_equal(results[name], results["first"])
    assert _leftovers(cache) == ["rmd17", "rmd17.tar.bz2"]


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


def test_bundled_ethanol_split_is_the_official_one_and_other_molecules_are_refused_by_name():
    root = rmd17.bundled_root()
    digests = {"train": "096946747b8d9dcfa042b44f8debbd3da387dfe1586b659e3be789cc4927316a",
               "test": "c3594a0f93d5992e02f9eb671392fb2e5021b3fa4f902417886966d1e4f64e1e"}
    for part, digest in digests.items():  # byte-identical to the upstream files (rmd17_bundled/README.md)
        assert hashlib.sha256((root / f"rmd17_ethanol_{part}_01.npz").read_bytes()).hexdigest() == digest
    ds, split = rmd17.load_rmd17("ethanol", "official-1", "bundled")
    assert [len(split[k]) for k in ("train", "val", "test")] == [950, 50, 1000]
    with pytest.raises(rmd17.RMD17Error, match="bundled holds only ethanol"):
        rmd17.locate("aspirin", "bundled")
