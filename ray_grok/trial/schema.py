"""Names and types of a trial directory's files, shared by the trial, the sweep layer and the
results tables (results/schema.py):

  config.json, tasks.json, metrics.parquet, status.json, events.out.tfevents.*, checkpoints/, .lock

metrics.parquet holds one row per evaluation: `step`; for each set, its loss, accuracy (mean over
the z positions), last-position accuracy and accuracy by shot; `lr`, `tokens_seen`, `wall_time`.
"""
from __future__ import annotations

import pyarrow as pa

# trial directory file names (other tools and the sweep layer rely on them)
CONFIG_FILE = "config.json"
TASKS_FILE = "tasks.json"
METRICS_FILE = "metrics.parquet"
STATUS_FILE = "status.json"
CHECKPOINT_DIR = "checkpoints"
LOCK_FILE = ".lock"  # flock'ed by the one process training in the directory (run_trial)
UNREADABLE = ".unreadable"  # suffix of a file set aside because it could not be read (a disk fault)

# trial states written to status.json (interrupted: stopped by Ctrl-C, resumable; skipped: not
# trained, with a `reason`, e.g. settled (sweep/settle.py), and run like a pending trial by a
# launch that does not skip it), and the state of a trial without one (it never started)
RUNNING, DONE, FAILED, INTERRUPTED, SKIPPED = "running", "done", "failed", "interrupted", "skipped"
PENDING = "pending"


def state_label(status: dict) -> str:
    """A trial's state as the results tables and `ray-grok status` show it: the state of its
    status.json, a skipped trial's with its reason ('skipped: settled'); 'pending' without one."""
    state = status.get("state", PENDING)
    return f"{state}: {status.get('reason', 'unknown')}" if state == SKIPPED else state

# the four evaluation sets: pre-training (id) or held-out (ood) tasks, on train or test inputs
SETS = ("id_train", "id_test", "ood_train", "ood_test")
SET_METRICS = ("loss", "acc", "acc_last")

# metrics.parquet: one row per evaluation
SCALAR_EVAL_COLUMNS = tuple(f"{s}_{m}" for s in SETS for m in SET_METRICS)  # also the monitor's choices
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
