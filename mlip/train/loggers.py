"""Loggers of a training run: a CSV logger that keeps the history of a resumed run.

Lightning's `CSVLogger` deletes an existing ``metrics.csv`` of its version directory when it
starts, so with the fixed directory ``<run dir>/logs/`` every resume or rerun of a run would
throw away the rows logged before. `ResumableCSVLogger` appends to the file instead; when the
resumed run logs a column the file does not have yet, the file is rewritten once with the
union of the columns (earlier rows get empty cells there), as Lightning does within one run.
"""

from __future__ import annotations

import csv

from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment


class _AppendingExperimentWriter(ExperimentWriter):
    """`ExperimentWriter` that continues an existing ``metrics.csv`` (its header included)."""

    def _check_log_dir_exists(self) -> None:
        if not self._fs.isfile(self.metrics_file_path):
            return
        with self._fs.open(self.metrics_file_path, "r", newline="") as handle:
            self.metrics_keys = next(csv.reader(handle), [])  # rows are appended in the file's column order


class ResumableCSVLogger(CSVLogger):
    """`CSVLogger` (same arguments) that appends to an existing ``metrics.csv`` instead of deleting it."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _AppendingExperimentWriter(log_dir=self.log_dir)
        return self._experiment
