"""The run's metric loggers: Lightning's CSV logger (``logs/metrics.csv``, always; `pairreg plot` and the
summaries read it) and, with ``logger=tensorboard``, TensorBoard event files of the same metrics in
``logs/tensorboard/`` (``tensorboard --logdir RUN_DIR/logs/tensorboard``).

TensorBoard files are written through ``tensorboardX`` (a dependency: numpy and protobuf only), which
Lightning uses when the full ``tensorboard`` package is absent; either works.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L

from ..config import ConfigError


def run_loggers(cfg, run_dir: Path) -> list:
    loggers = [L.pytorch.loggers.CSVLogger(str(run_dir), name="", version="logs")]
    if cfg.logger == "tensorboard":
        from lightning.fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE, _TENSORBOARDX_AVAILABLE

        if not (_TENSORBOARD_AVAILABLE or _TENSORBOARDX_AVAILABLE):
            raise ConfigError("logger=tensorboard needs the tensorboardX (or tensorboard) package: "
                              "pip install tensorboardX")
        # default_hp_metric=False: no placeholder "hp_metric" scalar of -1 beside the real metrics
        loggers.append(StageTensorBoardLogger(str(run_dir / "logs"), name="", version="tensorboard",
                                              default_hp_metric=False))
    return loggers


class StageTensorBoardLogger(L.pytorch.loggers.TensorBoardLogger):
    """Lightning's TensorBoard logger, each stage (fit, the final validation, test) in an events file of its own.

    Lightning closes the writer after every stage and the writer reopens itself on the next metric, naming
    the new file by the current second: a stage ending within the same second as the one before (the final
    validation and the test always can) overwrote that stage's file and its metrics were lost. A fresh writer
    per stage, with a numbered file name, keeps every file.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.stages_done = 0

    def finalize(self, status: str) -> None:
        super().finalize(status)  # flushes and closes the writer
        self.stages_done += 1
        self._experiment = None  # the next stage opens a new writer, with this suffix
        self._kwargs["filename_suffix"] = f".{self.stages_done}"
