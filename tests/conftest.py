"""Shared fixtures: a 120-molecule real QM9 sample and an isolated cache folder."""

from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
QM9_SAMPLE = FIXTURES / "qm9_sample"


@pytest.fixture
def qm9_sample_env(tmp_path, monkeypatch):
    """Point pairreg's QM9 loader at the committed sample, with a fresh cache folder."""
    monkeypatch.setenv("PAIRREG_QM9_SOURCE", str(QM9_SAMPLE))
    monkeypatch.setenv("PAIRREG_CACHE", str(tmp_path / "cache"))
    return tmp_path
