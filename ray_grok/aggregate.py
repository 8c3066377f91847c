"""Trial directories -> the results tables RUN_DIR/results/{trials,curves} (see schema.py).

Each table is a Parquet dataset directory holding one file, `part-0.parquet`, written to a hidden
temp file beside it and renamed into place: a reader (pandas, pyarrow, DuckDB with
`results/trials/*.parquet`) sees the old table or the new one, never a mix, and running it again
rewrites the same rows (idempotent). It reads only files, so it works mid-sweep and without Ray.
Curves are streamed a batch of trials at a time, so memory stays flat in the number of trials.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from .config import TrialConfig, config_from_dict
from .outputs import METRICS_SCHEMA, read_json
from .rundir import PENDING, RESULTS_DIR, PlanEntry, read_plan, trial_state
from .schema import BY_SHOT_COLUMNS, CONFIG_FILE, EVAL_COLUMNS, METRICS_FILE

PART = "part-0.parquet"
CURVES_BATCH_ROWS = 50_000  # rows per Parquet row group of `curves`


def _config_fields() -> list[pa.Field]:
    """One column per config key, typed from the config dataclasses (int64, float64, string)."""
    kinds = {int: pa.int64(), float: pa.float64(), str: pa.string(), bool: pa.bool_()}
    out = []
    for key, value in TrialConfig().flat().items():
        out.append(pa.field(key, kinds.get(type(value), pa.string())))
    return out


def _metric_type(name: str) -> pa.DataType:
    return pa.list_(pa.float64()) if name in BY_SHOT_COLUMNS else pa.float64()


TRIALS_SCHEMA = pa.schema(
    [pa.field("trial_id", pa.string()), pa.field("status", pa.string()), pa.field("steps_done", pa.int64()),
     pa.field("wall_time", pa.float64()), pa.field("best_step", pa.int64())]
    + _config_fields()
    + [pa.field(f"final_{m}", _metric_type(m)) for m in EVAL_COLUMNS]
    + [pa.field(f"best_{m}", _metric_type(m)) for m in EVAL_COLUMNS]
)
CURVES_SCHEMA = pa.schema([pa.field("trial_id", pa.string())] + list(METRICS_SCHEMA))


@dataclass(frozen=True)
class AggregateSummary:
    trials: int
    curve_rows: int
    by_status: dict[str, int]
    path: Path


def aggregate(run_dir: str | Path) -> AggregateSummary:
    run_dir = Path(run_dir)
    plan = read_plan(run_dir)
    results = run_dir / RESULTS_DIR
    trials_path, curves_path = results / "trials", results / "curves"
    trials_path.mkdir(parents=True, exist_ok=True)
    curves_path.mkdir(parents=True, exist_ok=True)

    rows, by_status, curve_rows = [], {}, 0
    tmp_curves = curves_path / f".{PART}.tmp"
    with pq.ParquetWriter(tmp_curves, CURVES_SCHEMA) as writer:
        pending_tables: list[pa.Table] = []
        pending_rows = 0
        for entry in plan.entries:
            row, metrics = _trial_row(run_dir, entry)
            rows.append(row)
            by_status[row["status"]] = by_status.get(row["status"], 0) + 1
            if metrics is not None and metrics.num_rows:
                ids = pa.array([entry.trial_id] * metrics.num_rows, pa.string())
                pending_tables.append(metrics.select(list(METRICS_SCHEMA.names)).cast(METRICS_SCHEMA)
                                      .add_column(0, pa.field("trial_id", pa.string()), ids))
                pending_rows += metrics.num_rows
                curve_rows += metrics.num_rows
            if pending_rows >= CURVES_BATCH_ROWS:
                writer.write_table(pa.concat_tables(pending_tables))
                pending_tables, pending_rows = [], 0
        if pending_tables:
            writer.write_table(pa.concat_tables(pending_tables))
    tmp_trials = trials_path / f".{PART}.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=TRIALS_SCHEMA), tmp_trials)
    os.replace(tmp_curves, curves_path / PART)
    os.replace(tmp_trials, trials_path / PART)
    return AggregateSummary(len(rows), curve_rows, by_status, results)


def _trial_row(run_dir: Path, entry: PlanEntry) -> tuple[dict, pa.Table | None]:
    out = run_dir / entry.dir
    cfg = config_from_dict(read_json(out / CONFIG_FILE))
    state = trial_state(run_dir, entry)
    metrics_path = out / METRICS_FILE
    metrics = pq.read_table(metrics_path) if metrics_path.exists() else None
    final, best = _final_and_best(metrics, state.status.get("best_step"), cfg.checkpoint.monitor)
    wall = None if state.state == PENDING else state.status.get("wall_time", final["wall_time"] if final else None)
    row = {
        "trial_id": entry.trial_id,
        "status": state.state,
        "steps_done": state.step,
        "wall_time": None if wall is None else float(wall),
        "best_step": int(best["step"]) if best else -1,
        **cfg.flat(),
    }
    for prefix, source in (("final_", final), ("best_", best)):
        for m in EVAL_COLUMNS:
            row[prefix + m] = source[m] if source else None
    return row, metrics


def _final_and_best(metrics: pa.Table | None, best_step: int | None, monitor: str) -> tuple[dict | None, dict | None]:
    """The last evaluation, and the one at status.json's best_step, else the one that maximizes
    the monitor (minimizes it for a loss); None before the first evaluation. Only those two rows
    are converted to Python: a whole table per trial would dominate aggregation time."""
    if metrics is None or not metrics.num_rows:
        return None, None
    row = lambda i: metrics.slice(i, 1).to_pylist()[0]  # noqa: E731
    steps = metrics.column("step").to_pylist()
    final = row(len(steps) - 1)
    if best_step is not None and best_step >= 0 and best_step in steps:
        return final, row(steps.index(best_step))
    values = metrics.column(monitor).to_pylist()
    finite = [i for i, v in enumerate(values) if v is not None and not math.isnan(v)]
    if not finite:
        return final, None
    pick = min if monitor.endswith("_loss") else max
    return final, row(pick(finite, key=lambda i: values[i]))
