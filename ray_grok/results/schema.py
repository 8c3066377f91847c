"""The results tables of a sweep, RUN_DIR/results/{trials,curves}: where they are and their columns.

  trials: one row per trial of the plan: `trial_id`, `status` (pending, running, done, failed,
          interrupted, or `skipped: settled` for a trial run.settle did not train because its
          cell's majority phase could not change: not classified, and run by a launch without
          run.settle; sweep/settle.py),
          `retired` (true for a trial that a later grid no longer holds: kept for the record,
          left out of phases and figures by default, see phases.read_results), `steps_done`, `wall_time` (training seconds), `best_step` (-1 before the first
          evaluation), every config field as a column named by its dotted key (`task.n_id`,
          `model.depth`, `task.alpha`, `seed`, ...), then `final_{metric}` (last evaluation) and
          `best_{metric}` (the evaluation where the checkpoint monitor peaked) for every metric of
          metrics.parquet (EVAL_COLUMNS), then for the o.o.d. test accuracies (PEAK_METRICS)
          `peak_{m}` (the highest value of any evaluation), `peak_step_{m}` (its first step) and
          `drop_{m}` (peak minus final: how far a transient o.o.d. generalization has decayed).
  curves: one row per trial per evaluation: `trial_id` and the columns of metrics.parquet.

Both are Parquet dataset directories (pandas, pyarrow, DuckDB with `results/curves/*.parquet`).
"""
from __future__ import annotations

import pyarrow as pa

from ..trial.config import TrialConfig
from ..trial.schema import BY_SHOT_COLUMNS, EVAL_COLUMNS, METRICS_SCHEMA

RESULTS_DIR = "results"  # under RUN_DIR
TRIALS, CURVES = "trials", "curves"  # the two tables, each a directory of Parquet files
CONFIG_DEFAULTS = TrialConfig().flat()  # {dotted key: default}: the config columns, in order


def _config_fields() -> list[pa.Field]:
    """One column per config key, typed from the config dataclasses (int64, float64, string)."""
    kinds = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}
    return [pa.field(key, kinds.get(type(value), pa.string())) for key, value in CONFIG_DEFAULTS.items()]


def _metric_type(name: str) -> pa.DataType:
    return pa.list_(pa.float64()) if name in BY_SHOT_COLUMNS else pa.float64()


# Transience (o.o.d. generalization that rises, then decays; paper: depth 4 and 6): measured per
# trial from its curve, whatever the checkpoint monitor is.
PEAK_METRICS = ("ood_test_acc", "ood_test_acc_last")

TRIALS_SCHEMA = pa.schema(
    [pa.field("trial_id", pa.string()), pa.field("status", pa.string()), pa.field("retired", pa.bool_()),
     pa.field("steps_done", pa.int64()),
     pa.field("wall_time", pa.float64()), pa.field("best_step", pa.int64())]
    + _config_fields()
    + [pa.field(f"final_{m}", _metric_type(m)) for m in EVAL_COLUMNS]
    + [pa.field(f"best_{m}", _metric_type(m)) for m in EVAL_COLUMNS]
    + [f for m in PEAK_METRICS for f in (pa.field(f"peak_{m}", pa.float64()),
                                          pa.field(f"peak_step_{m}", pa.int64()),
                                          pa.field(f"drop_{m}", pa.float64()))]
)
CURVES_SCHEMA = pa.schema([pa.field("trial_id", pa.string())] + list(METRICS_SCHEMA))
