"""What a trial writes besides checkpoints: metrics.parquet, status.json, TensorBoard events.

Every file is rewritten atomically (ray_grok.io), so a crash never leaves it unreadable.
A NullBoard stands in for TensorBoard where none is wanted, so the trainer has no `if`s.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_path
from .schema import BY_SHOT_COLUMNS, METRICS_SCHEMA, UNREADABLE

# The by-shot lists are near-unique doubles: dictionary-encoding them (Arrow's default) saves no
# space and makes every rewrite and every read by the aggregation slower (about 40% and 20%), and
# nothing filters on their statistics.
METRICS_WRITE_OPTIONS = {
    "use_dictionary": [n for n in METRICS_SCHEMA.names if n not in BY_SHOT_COLUMNS],
    "write_statistics": [n for n in METRICS_SCHEMA.names if n not in BY_SHOT_COLUMNS],
}


class MetricsLog:
    """The rows of metrics.parquet (one per evaluation); the whole file is rewritten on each append."""

    def __init__(self, path: Path, echo: Callable[[str], None] = print):
        self.path = path
        self.rows: list[dict] = []
        try:
            self.rows = pq.read_table(path).to_pylist()
        except FileNotFoundError:
            pass
        except (OSError, pa.ArrowException) as exc:
            # damaged outside ray-grok (its writes are atomic), e.g. zero-length after a disk
            # fault: the evaluations in it cannot be rebuilt without their models, and failing
            # here would fail every retry, so the file restarts from the checkpoint's step
            aside = path.with_name(path.name + UNREADABLE)
            os.replace(path, aside)
            echo(f"{path} is unreadable ({type(exc).__name__}: {' '.join(str(exc).split())}); moved it to "
                 f"{aside.name}: the metrics restart at the step the trial resumes from, without the "
                 "evaluations before it")

    def truncate_after(self, step: int) -> None:
        """Drop evaluations after `step` (a resume from a checkpoint at `step` redoes them)."""
        kept = [r for r in self.rows if r["step"] <= step]
        if len(kept) != len(self.rows):
            self.rows = kept
            self._write()

    def append(self, row: dict) -> None:
        self.rows.append(row)
        self._write()

    def _write(self) -> None:
        with atomic_path(self.path) as tmp:
            pq.write_table(pa.Table.from_pylist(self.rows, schema=METRICS_SCHEMA), tmp, **METRICS_WRITE_OPTIONS)


class TensorBoard:
    """Scalars grouped by set (id_train/acc, ...), train/*, best/*, and the trial's hparams."""

    def __init__(self, logdir: Path, purge_step: int | None = None):
        from torch.utils.tensorboard import SummaryWriter  # imports tensorboard: only when used

        self.writer = SummaryWriter(log_dir=str(logdir), purge_step=purge_step)

    def hparams(self, hparams: dict[str, Any], metric_tags: list[str]) -> None:
        """The hparams plugin's experiment/session summaries, in this run (not a sub-run)."""
        from torch.utils.tensorboard.summary import hparams as hp_summary

        clean = {k: v for k, v in hparams.items() if isinstance(v, (int, float, str, bool))}
        exp, ssi, sei = hp_summary(clean, {tag: float("nan") for tag in metric_tags})
        for summary in (exp, ssi, sei):
            self.writer.file_writer.add_summary(summary)

    def scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            self.writer.add_scalar(tag, value, step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class NullBoard:
    """TensorBoard's interface, doing nothing."""

    def hparams(self, hparams: dict[str, Any], metric_tags: list[str]) -> None: ...
    def scalars(self, values: dict[str, float], step: int) -> None: ...
    def flush(self) -> None: ...
    def close(self) -> None: ...


def status_record(state: str, step: int, steps: int, **extra: Any) -> dict:
    return {"state": state, "step": step, "steps": steps, "updated": time.time(), **extra}
