"""The warning for torch threads on CPUs other processes keep busy (they stall each other: 10x slower)."""

from __future__ import annotations

from pathlib import Path

from pairreg import devices
from pairreg.cli.main import main
from pairreg.devices import shared_cpu_warning

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17"


def test_warns_only_when_threads_would_share_busy_cpus():
    assert shared_cpu_warning(1, cpus=2, load=5.0) is None  # one thread never waits for another
    assert shared_cpu_warning(2, cpus=2, load=0.1) is None  # an idle machine
    assert shared_cpu_warning(2, cpus=4, load=1.9) is None  # enough free cores
    message = shared_cpu_warning(2, cpus=2, load=1.0)
    assert message.startswith("threads=2 on 2 CPU(s) already running ~1.0 busy processes") and "threads=1" in message
    assert shared_cpu_warning(8, cpus=16, load=9.0) is not None


def test_a_process_pinned_to_free_cores_is_not_warned_about_load_on_the_others():
    # bench --jobs on 4 cores: another 2-thread worker keeps cores 0-1 busy, this one is pinned to cores 2-3
    assert shared_cpu_warning(2, cpus=2, machine_cpus=4, load=2.0) is None
    message = shared_cpu_warning(2, cpus=2, machine_cpus=4, load=3.0)  # one more busy process than the other cores
    assert message.startswith("threads=2 on 2 of 4 CPU(s) already running ~3.0 busy processes")
    assert shared_cpu_warning(2, cpus=4, machine_cpus=4, load=3.0) is not None  # unpinned: the load is on our cores


def test_train_prints_the_warning_on_a_busy_machine(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(devices.os, "getloadavg", lambda: (3.0, 3.0, 3.0))
    monkeypatch.setattr(devices.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(devices.os, "cpu_count", lambda: 2)
    args = ["train", "--out", str(tmp_path), "--set", "dataset=rmd17", "molecule=ethanol", f"data_root={FIXTURE}",
            "targets=energy", "hidden=8", "n_layers=1", "epochs=1", "subset_train=8", "subset_val=4", "subset_test=4",
            "progress=false", "threads=2", "name=busy"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "pairreg train: warning: threads=2 on 2 CPU(s) already running ~3.0 busy processes" in err
    monkeypatch.setattr(devices.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert main(args[:-1] + ["name=idle"]) == 0
    assert "busy processes" not in capsys.readouterr().err
