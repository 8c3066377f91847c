"""Benchmark: aggregation, phase classification and every figure for a large synthetic sweep.

10,000 trials x 200 evaluations (2M curves rows, by-shot lists included), written as real trial
directories (config.json, status.json, metrics.parquet as a trial writes them). Times, in seconds:
  aggregate (cold)   `aggregate` with no previous results (every trial file read)
  phases             read results/trials, classify_trials and phase_table
  plots              plot_run: the figures, reading from curves only the cells' rows and columns
  aggregate (warm)   a re-aggregation after --changed trials were rewritten, as the sweep driver's
                     live phase diagrams and a mid-sweep `ray-grok aggregate` do
and three totals against the goal of 10 s on a 2-core CPU machine: phases + plots from the results
tables; a first (cold) aggregation + phases + plots; a re-aggregation + phases + plots.

Then the alternatives to ray-grok's own reader (a thread pool over the trial files plus the results
cache), timed in the same run so that their ratios to it hold on a shared machine:
  plain dataset      the same cold aggregation from one plain pyarrow.dataset scan of every
                     metrics.parquet, each batch attributed to its trial by its file, no cache
  duckdb copy        DuckDB reading every metrics.parquet with its file name and writing the curves
                     (read + write, no trials table), when DuckDB is installed (the test extras)

CPU seconds (all threads) are printed beside wall seconds, since a shared machine slows wall
time. Writing the trial directories is not timed (minutes for 10,000); --run-dir keeps them for the
next run.

Run: python benchmarks/aggregate.py [--trials N] [--evals M] [--run-dir DIR] [--skip-aggregate]
"""
from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic sweep builder

from ray_grok.results.phases import PhaseRule, classify_trials, phase_table
from ray_grok.results.plots import plot_all
from synthetic import sweep, write_run_dir  # noqa: E402

GOAL_S = 10.0


def plain_dataset_aggregate(run_dir: Path, out: Path) -> int:
    """The same tables as `aggregate`, cold, from one plain pyarrow.dataset scan of every
    metrics.parquet (each batch attributed to its trial by its file) instead of ray-grok's reader:
    the trials table and the curves chunk files written to OUT. Returns the curves rows."""
    import pyarrow as pa
    import pyarrow.dataset as ds
    import pyarrow.parquet as pq

    from ray_grok.io import read_json, read_json_or
    from ray_grok.results import aggregate as agg
    from ray_grok.results.plan import read_plan
    from ray_grok.trial.schema import METRICS_SCHEMA

    entries = read_plan(run_dir).entries
    files = [str(run_dir / e.dir / "metrics.parquet") for e in entries]
    owner = {f: i for i, f in enumerate(files)}
    per_trial: list[list] = [[] for _ in entries]
    for tagged in ds.dataset(files, format="parquet", schema=METRICS_SCHEMA).scanner().scan_batches():
        per_trial[owner[tagged.fragment.path]].append(tagged.record_batch)  # a file's batches come in order
    out.mkdir(parents=True)
    trials, rows = [], 0
    for start in range(0, len(entries), agg.BATCH_TRIALS):  # the curves files of `aggregate`, and its rows
        chunk = entries[start:start + agg.BATCH_TRIALS]
        files_ = [agg.TrialFiles(read_json_or(run_dir / e.dir / "status.json", {}),
                                 agg.flat_config(read_json(run_dir / e.dir / "config.json")),
                                 pa.Table.from_batches(per_trial[start + i], schema=METRICS_SCHEMA))
                  for i, e in enumerate(chunk)]
        table, curves = agg.batch_tables(chunk, files_)
        pq.write_table(curves, out / agg.chunk_file(start), row_group_size=curves.num_rows, **agg.CURVES_WRITE_OPTIONS)
        trials.append(table)
        rows += curves.num_rows
    pq.write_table(pa.concat_tables(trials), out / "trials.parquet")
    return rows


def duckdb_copy(run_dir: Path, out: Path) -> int:
    """Every trial's metrics read by DuckDB with its file name and written as one curves dataset."""
    import duckdb

    from ray_grok.results.plan import read_plan

    files = [str(run_dir / e.dir / "metrics.parquet") for e in read_plan(run_dir).entries]
    con = duckdb.connect()
    con.execute(f"copy (select * from read_parquet($files, filename=true)) to '{out}' "
                "(format parquet, per_thread_output true)", {"files": files})
    return con.execute(f"select count(*) from read_parquet('{out}/*.parquet')").fetchone()[0]


def touch_trials(run_dir: Path, n: int) -> int:
    """Rewrite status.json of N trials in the middle of the plan, as N trials finishing mid-sweep do
    (Tune starts trials in plan order, so those running at once are near each other in it)."""
    from ray_grok.io import read_json, write_json
    from ray_grok.results.plan import read_plan

    plan = read_plan(run_dir).entries
    entries = plan[len(plan) // 2:len(plan) // 2 + n]
    for e in entries:
        path = run_dir / e.dir / "status.json"
        write_json(path, {**read_json(path), "updated": time.time()})
    return len(entries)


class Timer:
    """Wall and CPU seconds (all threads) of each named part."""

    def __init__(self):
        self.parts: dict[str, tuple[float, float]] = {}

    @contextlib.contextmanager
    def __call__(self, name: str):
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        self.parts[name] = (time.perf_counter() - wall, time.process_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--evals", type=int, default=200)
    parser.add_argument("--changed", type=int, default=20, help="trials rewritten before the warm re-aggregation")
    parser.add_argument("--run-dir", type=Path, help="keep the trial directories here (reused if present)")
    parser.add_argument("--skip-aggregate", action="store_true",
                        help="time only classify_trials, phase_table and plot_all on in-memory tables")
    args = parser.parse_args()

    start = time.perf_counter()
    trials, curves = sweep(args.trials, args.evals)
    print(f"built {len(trials):,} trials and {len(curves):,} curves rows "
          f"in {time.perf_counter() - start:.1f} s (not timed)")
    rule = PhaseRule()
    timed = Timer()
    with tempfile.TemporaryDirectory() as tmp:
        if args.skip_aggregate:
            with timed("phases"):
                classified = classify_trials(trials, rule)
                table = phase_table(trials, rule)
            with timed("plots"):
                paths = plot_all(trials, curves, Path(tmp) / "plots", rule)
        else:
            from ray_grok.results.aggregate import aggregate
            from ray_grok.results.phases import read_results
            from ray_grok.results.plots import plot_run

            run_dir = args.run_dir or Path(tmp) / "run"
            if not (run_dir / "plan.json").exists():
                start = time.perf_counter()
                write_run_dir(run_dir, trials, curves)
                print(f"wrote {len(trials):,} trial directories in {time.perf_counter() - start:.1f} s (not timed)")
            del trials, curves  # measure from the files alone
            shutil.rmtree(run_dir / "results", ignore_errors=True)
            with timed("aggregate (cold)"):
                summary = aggregate(run_dir)
            assert summary.reused_trials == 0 and summary.trials == args.trials, summary
            with timed("phases"):
                trials = read_results(run_dir, "trials")
                classified = classify_trials(trials, rule)
                table = phase_table(trials, rule)
            with timed("plots"):
                paths = plot_run(run_dir, Path(tmp) / "plots", rule)
            changed = touch_trials(run_dir, args.changed)
            with timed("aggregate (warm)"):
                warm = aggregate(run_dir)
            print(f"warm re-aggregation: {changed} trials changed, {warm.reused_trials:,} of {warm.trials:,} "
                  f"taken from the previous tables")
            with timed("plain dataset"):
                assert plain_dataset_aggregate(run_dir, Path(tmp) / "plain") == summary.curve_rows
            with contextlib.suppress(ImportError):
                with timed("duckdb copy"):
                    assert duckdb_copy(run_dir, Path(tmp) / "duck") == summary.curve_rows
    names = ", ".join(p.name for p in paths)
    print(f"{classified['phase'].notna().sum():,} trials classified into {len(table)} cells; figures: {names}")
    print(f"  {'part':<18} {'wall s':>8} {'cpu s':>8}")
    for name, (wall, cpu) in timed.parts.items():
        print(f"  {name:<18} {wall:8.3f} {cpu:8.3f}")
    shown = timed.parts.get("phases", (0, 0))[0] + timed.parts.get("plots", (0, 0))[0]
    totals = [("phases + plots, from the results tables", shown)]
    if "aggregate (cold)" in timed.parts:
        # mid-sweep (the live diagrams, `ray-grok aggregate` again) a few trials changed: the warm case
        totals += [("first aggregation of the trial dirs + phases + plots", timed.parts["aggregate (cold)"][0] + shown),
                   ("re-aggregation + phases + plots", timed.parts["aggregate (warm)"][0] + shown)]
    for label, total in totals:
        print(f"  {label:<55} {total:7.3f} s  (goal < {GOAL_S:g} s: {'met' if total < GOAL_S else 'MISSED'})")
    cold = timed.parts.get("aggregate (cold)", (0, 0))[0]
    for name in ("plain dataset", "duckdb copy"):
        if name in timed.parts and cold:
            print(f"  {name} / ray-grok's cold aggregation: {timed.parts[name][0] / cold:.2f}x wall "
                  f"({timed.parts[name][0]:.1f} s / {cold:.1f} s)")


if __name__ == "__main__":
    main()
