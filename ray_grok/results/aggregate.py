"""Trial directories -> the results tables RUN_DIR/results/{trials,curves} (see schema.py).

Both are Parquet dataset directories (pandas, pyarrow, DuckDB with `results/curves/*.parquet`):
`trials` is one file, `part-0.parquet`; `curves` is one file per chunk of BATCH_TRIALS trials in
plan order, `part-0000256.parquet` holding the trials from plan index 256 on. Every file is written
to a hidden temp file and renamed into place only once all of them are complete, so a failed
aggregation leaves the previous tables, and a reader sees each trial's rows from one aggregation
or the next, never twice or in part. Running it again rewrites the same rows (idempotent). It reads
only files, so it works mid-sweep and without Ray. Chunks are read and written one at a time, so
memory stays flat in the number of trials.

A re-aggregation leaves the file of an unchanged chunk alone (cache.py): the sweep driver
re-aggregates every few finished trials for its live phase diagrams, when most chunks are unchanged.

Where the CPU time of a first aggregation goes (10,000 trials x 200 evaluations): per trial,
about 0.6 ms to decode its metrics.parquet (mostly per-file and per-column overhead), 0.3 ms to
build its rows and 0.4 ms to encode its curves. Decoding and encoding run in Arrow's C++ code
without the GIL, so trials are read by a thread pool while another thread writes the previous
chunk, and per-trial Python work is kept to two small JSON files (no TrialConfig is built, no row
becomes a dict). A plain pyarrow.dataset scan of the same files is slower (benchmarks/aggregate.py).
A trial whose metrics.parquet cannot be read (a partial copy, a disk error) is kept with its
status and no curves, and named in a warning: one bad file must not stop a mid-sweep view.
"""
from __future__ import annotations

import os
import warnings
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..io import read_json, read_json_or
from ..trial.config import config_from_dict
from ..trial.schema import (
    BY_SHOT_COLUMNS, CONFIG_FILE, EVAL_COLUMNS, METRICS_FILE, METRICS_SCHEMA, PENDING, SKIPPED, STATUS_FILE,
    state_label,
)
from .cache import PART, Chunk, Previous, chunk_file, chunk_key, file_stamp, save_index
from .plan import PlanEntry, read_plan
from .schema import CONFIG_DEFAULTS, CURVES, CURVES_SCHEMA, PEAK_METRICS, RESULTS_DIR, TRIALS, TRIALS_SCHEMA

BATCH_TRIALS = 256  # trials per chunk = one file of `curves` (51,200 rows at 200 evaluations)
READ_THREADS = min(8, os.cpu_count() or 1)
# Dictionary-encoding the by-shot lists (near-unique doubles) doubles the write time and saves
# nothing; min/max statistics are kept where a filter can use them (trial_id, step, scalars).
CURVES_WRITE_OPTIONS = {
    "use_dictionary": ["trial_id"],
    "write_statistics": [n for n in ("trial_id", *METRICS_SCHEMA.names) if n not in BY_SHOT_COLUMNS],
}


@dataclass(frozen=True)
class AggregateSummary:
    trials: int
    curve_rows: int
    by_status: dict[str, int]
    path: Path
    unreadable: tuple[str, ...] = ()  # trial ids whose metrics.parquet could not be read
    reused_trials: int = 0  # trials taken unchanged from the previous tables (cache.py)


def aggregate(run_dir: str | Path) -> AggregateSummary:
    run_dir = Path(run_dir)
    plan = read_plan(run_dir)
    results = run_dir / RESULTS_DIR
    trials_path, curves_path = results / TRIALS, results / CURVES
    trials_path.mkdir(parents=True, exist_ok=True)
    curves_path.mkdir(parents=True, exist_ok=True)

    previous = Previous.open(results, TRIALS_SCHEMA)
    slices, unreadable, reused = [], [], 0
    written: list[tuple[int, list | None, int, Future]] = []  # (start, key, rows, future of the temp file)
    tmp_trials = trials_path / f".{PART}.{os.getpid()}.tmp"
    read = partial(read_trial, str(run_dir))
    try:
        with ThreadPoolExecutor(READ_THREADS) as readers, ThreadPoolExecutor(1) as writing:
            for start in range(0, len(plan.entries), BATCH_TRIALS):
                entries = plan.entries[start:start + BATCH_TRIALS]
                # stat before reading: a trial rewritten meanwhile gets a new key, so it is re-read next time
                key = chunk_key(str(run_dir), entries, readers)
                kept = previous.chunk(start, entries, key, curves_path / chunk_file(start))
                if kept is not None:  # unchanged: its curves file stays as it is
                    slices.append(kept.trials)
                    written.append((start, key, kept.rows, None))
                    reused += len(entries)
                    continue
                files = list(readers.map(read, entries))
                trials, curves = batch_tables(entries, files)
                bad = [e.trial_id for e, f in zip(entries, files) if f.unreadable]
                unreadable += bad
                slices.append(trials)
                if written and written[-1][3] is not None:
                    written[-1][3].result()  # at most one chunk in flight: memory stays flat
                future = writing.submit(_write_temp, curves_path / chunk_file(start), curves)
                written.append((start, None if bad else key, curves.num_rows, future))  # bad: retried next time
            temps = [(start, key, rows, f.result() if f else None) for start, key, rows, f in written]
        table = pa.concat_tables(slices) if slices else TRIALS_SCHEMA.empty_table()
        pq.write_table(table, tmp_trials)
    except BaseException:
        tmp_trials.unlink(missing_ok=True)
        for *_, f in written:
            if f is not None and f.done() and not f.exception() and f.result():
                f.result().unlink(missing_ok=True)
        raise
    # Every file is complete before the first rename: a failure above leaves the previous tables.
    chunks = []
    for start, key, rows, tmp in temps:
        final = curves_path / chunk_file(start)
        if tmp is not None:
            os.replace(tmp, final)
        elif rows == 0:
            final.unlink(missing_ok=True)
        chunks.append(Chunk(start, key, rows, file_stamp(final) if rows else None))
    os.replace(tmp_trials, trials_path / PART)
    keep = {chunk_file(c.start) for c in chunks if c.rows}
    for stale in curves_path.glob("*.parquet"):  # chunks that lost their rows, an older layout's file
        if stale.name not in keep:
            stale.unlink(missing_ok=True)
    save_index(results, chunks, file_stamp(trials_path / PART))
    if unreadable:
        warnings.warn(f"{len(unreadable)} trials have an unreadable {METRICS_FILE} and are aggregated "
                      f"without curves: {', '.join(unreadable[:5])}", stacklevel=2)
    by_status = Counter(table.column("status").to_pylist())
    return AggregateSummary(table.num_rows, sum(c.rows for c in chunks), dict(by_status), results,
                            tuple(unreadable), reused)


def _write_temp(final: Path, curves: pa.Table) -> Path | None:
    """A chunk's curves into a temp file beside FINAL (None when it has no rows); renamed later."""
    if not curves.num_rows:
        return None
    tmp = final.with_name(f".{final.name}.{os.getpid()}.tmp")  # hidden: dataset readers skip it
    try:
        pq.write_table(curves, tmp, row_group_size=curves.num_rows, **CURVES_WRITE_OPTIONS)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


# ---------------------------------------------------------------------------------------------
# One trial's files (read in a worker thread)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialFiles:
    status: dict  # status.json, {} while pending
    config: dict  # {dotted key: value} of config.json, every key of TrialConfig
    metrics: pa.Table | None  # in METRICS_SCHEMA; None before the first evaluation or if unreadable
    unreadable: bool = False


def read_trial(run_dir: str, entry: PlanEntry) -> TrialFiles:
    out = os.path.join(run_dir, entry.dir)
    status = read_json_or(os.path.join(out, STATUS_FILE), {})
    config = flat_config(read_json(os.path.join(out, CONFIG_FILE)))
    try:
        with pq.ParquetFile(os.path.join(out, METRICS_FILE)) as f:
            metrics = f.read(use_threads=False)  # the pool is the parallelism; nested threads only contend
    except FileNotFoundError:
        return TrialFiles(status, config, None)
    except (OSError, pa.ArrowException):
        return TrialFiles(status, config, None, unreadable=True)
    if metrics.schema.equals(METRICS_SCHEMA, check_metadata=False):
        metrics = metrics.replace_schema_metadata(None)  # concat_tables wants identical schemas
    else:  # an older or hand-written file: same names, maybe other types or extra columns
        metrics = metrics.select(list(METRICS_SCHEMA.names)).cast(METRICS_SCHEMA)
    return TrialFiles(status, config, metrics)


def flat_config(data: dict) -> dict:
    """config.json as {dotted key: value}. The trial wrote it from a validated config, so a file
    with every key at its declared type is taken as is: building and validating a TrialConfig
    per trial cost more than reading its metrics. Anything else (a partial or hand-edited file)
    goes through config_from_dict, which fills defaults, coerces and names a bad value."""
    flat = _flatten(data) if isinstance(data, dict) else None
    if flat is not None and flat.keys() == CONFIG_DEFAULTS.keys() and all(
            type(flat[k]) is type(v) for k, v in CONFIG_DEFAULTS.items()):
        return flat
    return config_from_dict(data).flat()


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if type(v) is dict:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


# ---------------------------------------------------------------------------------------------
# Rows of the trials table, and the curves of a batch
# ---------------------------------------------------------------------------------------------

def batch_tables(entries: tuple[PlanEntry, ...], trials: list[TrialFiles]) -> tuple[pa.Table, pa.Table]:
    """A batch of trials' rows of the trials table and of the curves table, built as columns."""
    counts = np.array([0 if t.metrics is None else t.metrics.num_rows for t in trials], np.int64)
    tables = [t.metrics for t in trials if t.metrics is not None and t.metrics.num_rows]
    metrics = pa.concat_tables(tables) if tables else METRICS_SCHEMA.empty_table()
    final_at, best_at = final_and_best(metrics, counts, trials)
    # take() copies the rows out (null rows where None), so the batch's buffers are freed once written
    picked = metrics.select(list(EVAL_COLUMNS) + ["step", "wall_time"])
    final, best = picked.take(pa.array(final_at, pa.int64())), picked.take(pa.array(best_at, pa.int64()))
    final_wall, best_step = final.column("wall_time").to_pylist(), best.column("step").to_pylist()
    states, walls = [], []
    for t, wall_at_final in zip(trials, final_wall):
        state = t.status.get("state", PENDING)
        wall = None if state in (PENDING, SKIPPED) else t.status.get("wall_time", wall_at_final)
        states.append(state_label(t.status))
        walls.append(None if wall is None else float(wall))
    columns = {
        "trial_id": [e.trial_id for e in entries],
        "status": states,
        "retired": [e.retired for e in entries],
        "steps_done": [int(t.status.get("step", 0)) for t in trials],
        "wall_time": walls,
        "best_step": [-1 if at is None else int(s) for at, s in zip(best_at, best_step)],
        **peak_columns(metrics, counts),
    }
    arrays = []
    for f in TRIALS_SCHEMA:
        if f.name in columns:
            arrays.append(pa.array(columns[f.name], f.type))
        elif f.name in CONFIG_DEFAULTS:
            arrays.append(pa.array([t.config[f.name] for t in trials], f.type))
        elif f.name.startswith("final_"):
            arrays.append(final.column(f.name.removeprefix("final_")))
        else:
            arrays.append(best.column(f.name.removeprefix("best_")))
    # trial_id as dictionary indices: one string per trial, not per row, is built in Python
    ids = pa.DictionaryArray.from_arrays(pa.array(np.repeat(np.arange(len(entries)), counts), pa.int32()),
                                         arrays[0])
    curves = metrics.add_column(0, CURVES_SCHEMA.field("trial_id"), ids.cast(pa.string()))
    return pa.Table.from_arrays(arrays, schema=TRIALS_SCHEMA), curves


def peak_columns(metrics: pa.Table, counts: np.ndarray) -> dict[str, list]:
    """peak_{m}, peak_step_{m} and drop_{m} (peak - final) per trial for every m of PEAK_METRICS;
    None for a trial without evaluations or whose values are all NaN. The first step wins a tie."""
    steps = metrics.column("step").to_numpy()
    ends = np.cumsum(counts)
    out: dict[str, list] = {}
    for m in PEAK_METRICS:
        values = metrics.column(m).to_numpy(zero_copy_only=False).astype(np.float64)
        peak, at, drop = [], [], []
        for lo, hi in zip((ends - counts).tolist(), ends.tolist()):
            v = values[lo:hi]
            if hi == lo or np.isnan(v).all():
                peak.append(None), at.append(None), drop.append(None)
                continue
            i = int(np.nanargmax(v))
            peak.append(float(v[i]))
            at.append(int(steps[lo + i]))
            drop.append(float(v[i] - v[-1]) if not np.isnan(v[-1]) else None)
        out.update({f"peak_{m}": peak, f"peak_step_{m}": at, f"drop_{m}": drop})
    return out


def final_and_best(metrics: pa.Table, counts: np.ndarray, trials: list[TrialFiles]) -> tuple[list, list]:
    """Row indices into METRICS (the batch's metrics, trial after trial, COUNTS rows each) of each
    trial's last evaluation, and of the one at status.json's best_step, else of the one that
    maximizes the monitor (minimizes it for a loss); None before the first evaluation."""
    steps = metrics.column("step").to_numpy()
    monitors: dict[str, np.ndarray] = {}  # nulls become NaN, skipped like NaN
    final_at, best_at = [], []
    start = 0
    for n, t in zip(counts.tolist(), trials):
        lo, start = start, start + n
        if not n:
            final_at.append(None)
            best_at.append(None)
            continue
        final_at.append(start - 1)
        best_step = t.status.get("best_step")
        if best_step is not None and best_step >= 0:
            hits = np.flatnonzero(steps[lo:start] == best_step)
            if hits.size:
                best_at.append(lo + int(hits[0]))
                continue
        monitor = t.config["checkpoint.monitor"]
        if monitor not in monitors:
            monitors[monitor] = metrics.column(monitor).to_numpy().astype(np.float64)
        values = monitors[monitor][lo:start]
        if np.isnan(values).all():
            best_at.append(None)
        else:  # ties: the first of equal values
            best_at.append(lo + int(np.nanargmin(values) if monitor.endswith("_loss") else np.nanargmax(values)))
    return final_at, best_at
