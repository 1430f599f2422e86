"""logger=tensorboard: TensorBoard event files beside the CSV log, with the same validation metrics."""

import struct
from pathlib import Path

import pytest

from pairreg.config import ConfigError, load_config
from pairreg.training.run import train

FIXTURE = Path(__file__).parent / "fixtures" / "rmd17"
TINY = ["dataset=rmd17", "molecule=ethanol", f"data_root={FIXTURE}", "targets=energy", "hidden=8", "n_layers=1",
        "n_rbf=4", "force_weight=1", "batch_size=16", "epochs=2", "progress=false", "threads=1", "seed=0"]


def read_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """tag → [(step, value)] of every scalar in the TFRecord event files under ``folder`` (read without tensorboard:
    each record is a uint64 length, its crc, the serialised Event, the Event's crc)."""
    from tensorboardX.proto.event_pb2 import Event

    scalars = {}
    for file in sorted(folder.rglob("events.out.tfevents.*")):
        data = file.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at:at + 8])
            event = Event.FromString(data[at + 12:at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                number = value.simple_value if value.HasField("simple_value") else value.tensor.float_val[0]
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars


def test_tensorboard_events_hold_the_validation_mae_of_the_csv_log(tmp_path):
    import csv

    summary = train(load_config(None, [*TINY, f"out={tmp_path}", "name=tb", "logger=tensorboard"]))
    run = tmp_path / "tb"
    assert (run / "logs" / "metrics.csv").is_file()  # the CSV log is still written
    scalars = read_scalars(run / "logs" / "tensorboard")
    with open(run / "logs" / "metrics.csv") as f:
        csv_values = [float(r["val/energy_mae_meV"]) for r in csv.DictReader(f) if r["val/energy_mae_meV"]]
    tb_values = [v for _, v in scalars["val/energy_mae_meV"]]
    assert tb_values == pytest.approx(csv_values, rel=1e-6)  # 2 epochs + the final validation of the best weights
    assert len(tb_values) == 3
    assert "val/forces_mae_meV_per_Angstrom" in scalars and any(t.startswith("lr-") for t in scalars)
    assert tb_values[-1] == pytest.approx(summary["val"]["val/energy_mae_meV"], rel=1e-6)


def test_csv_only_by_default_and_unknown_loggers_are_refused_naming_the_key(tmp_path):
    assert load_config(None, TINY).logger == "csv"
    with pytest.raises(ConfigError, match=r"logger='wandb' is not valid; choose one of \['csv', 'tensorboard'\]"):
        load_config(None, [*TINY, "logger=wandb"])
