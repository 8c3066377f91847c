"""Names shared by the trial directory, the results tables and the phase tools.

A trial directory holds (see README):
  config.json, tasks.json, metrics.parquet, status.json, events.out.tfevents.*, checkpoints/

RUN_DIR/results/ holds two Parquet tables:
  trials: one row per trial: `trial_id`, `status`, `steps_done`, `wall_time`, `best_step`,
          every config field as a column named by its dotted key (`task.n_id`, `model.depth`,
          `task.alpha`, `seed`, ...), then `final_{metric}` and `best_{metric}` for every
          metric in EVAL_COLUMNS (best = at the evaluation where the checkpoint monitor peaked).
  curves: one row per trial per evaluation: `trial_id` and the columns of metrics.parquet.
"""
from __future__ import annotations

import pyarrow as pa

from .config import SET_METRICS, SETS

# trial directory file names (other tools and the sweep layer rely on them)
CONFIG_FILE = "config.json"
TASKS_FILE = "tasks.json"
METRICS_FILE = "metrics.parquet"
STATUS_FILE = "status.json"
CHECKPOINT_DIR = "checkpoints"

# trial states written to status.json, and the state of a trial without one (it never started)
RUNNING, DONE, FAILED = "running", "done", "failed"
PENDING = "pending"

# metrics.parquet: one row per evaluation
SCALAR_EVAL_COLUMNS = tuple(f"{s}_{m}" for s in SETS for m in SET_METRICS)
BY_SHOT_COLUMNS = tuple(f"{s}_acc_by_shot" for s in SETS)
EVAL_COLUMNS = SCALAR_EVAL_COLUMNS + BY_SHOT_COLUMNS
METRICS_COLUMNS = ("step",) + EVAL_COLUMNS + ("lr", "tokens_seen", "wall_time")
METRICS_SCHEMA = pa.schema(
    [("step", pa.int64())]
    + [(c, pa.float64()) for c in SCALAR_EVAL_COLUMNS]
    + [(c, pa.list_(pa.float64())) for c in BY_SHOT_COLUMNS]
    + [("lr", pa.float64()), ("tokens_seen", pa.int64()), ("wall_time", pa.float64())]
)
assert tuple(METRICS_SCHEMA.names) == METRICS_COLUMNS  # one list of names for the file and the tables
