"""Benchmark: phase classification, phase table and every figure for a large synthetic sweep.

10,000 trials x 200 evaluations (2M curves rows, by-shot lists included) in memory; times
classify_trials, phase_table and plot_all (3 phase diagrams, accuracy heat maps, k-shot and
training curves of the default cells) and prints seconds per part. Goal: under 10 s in total on
a 2-core CPU machine. Building the tables is not timed (it stands in for reading Parquet).

Run: python benchmarks/aggregate.py [--trials N] [--evals M]
"""
from __future__ import annotations

import argparse
import tempfile
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the synthetic sweep builder

from ray_grok.phases import PhaseRule, classify_trials, phase_table
from ray_grok.plots import plot_all
from synthetic import sweep  # noqa: E402

GOAL_S = 10.0


def build_run_dir(root: Path, trials, curves) -> Path:
    """A sweep directory on disk with one trial directory per synthetic trial (config.json,
    status.json, metrics.parquet), as `ray-grok aggregate` finds it after a sweep."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ray_grok.config import unflatten
    from ray_grok.outputs import METRICS_SCHEMA, write_json

    cfg_cols = [c for c in trials.columns if "." in c or c == "seed"]
    entries = []
    by_trial = curves.groupby("trial_id", sort=False)
    for rec in trials[["trial_id", "best_step", "steps_done", *cfg_cols]].to_dict("records"):
        out = root / "trials" / rec["trial_id"]
        out.mkdir(parents=True)
        write_json(out / "config.json", unflatten({k: rec[k] for k in cfg_cols}))
        write_json(out / "status.json", {"state": "done", "step": int(rec["steps_done"]),
                                         "best_step": int(rec["best_step"]), "wall_time": 1.0})
        rows = by_trial.get_group(rec["trial_id"])
        pq.write_table(pa.Table.from_pandas(rows[list(METRICS_SCHEMA.names)], schema=METRICS_SCHEMA,
                                            preserve_index=False), out / "metrics.parquet")
        entries.append({"trial_id": rec["trial_id"], "dir": f"trials/{rec['trial_id']}", "coords": {},
                        "steps": int(rec["steps_done"])})
    write_json(root / "plan.json", {"name": "bench", "trials": entries})
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=10_000)
    parser.add_argument("--evals", type=int, default=200)
    parser.add_argument("--skip-aggregate", action="store_true",
                        help="time only the phases and plots (no trial directories on disk)")
    args = parser.parse_args()

    start = time.perf_counter()
    trials, curves = sweep(args.trials, args.evals)
    print(f"built {len(trials):,} trials and {len(curves):,} curves rows "
          f"in {time.perf_counter() - start:.1f} s (not timed)")

    rule = PhaseRule()
    timings: dict[str, float] = {}
    tmp = tempfile.TemporaryDirectory()
    if not args.skip_aggregate:
        from ray_grok.aggregate import aggregate
        from ray_grok.phases import read_results

        start = time.perf_counter()
        run_dir = build_run_dir(Path(tmp.name), trials, curves)
        print(f"wrote {len(trials):,} trial directories in {time.perf_counter() - start:.1f} s (not timed)")
        start = time.perf_counter()
        aggregate(run_dir)
        trials = read_results(run_dir, "trials")
        curves = read_results(run_dir, "curves")
        timings["aggregate+read"] = time.perf_counter() - start
    start = time.perf_counter()
    classified = classify_trials(trials, rule)
    timings["classify_trials"] = time.perf_counter() - start

    start = time.perf_counter()
    table = phase_table(trials, rule)
    timings["phase_table"] = time.perf_counter() - start

    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        paths = plot_all(trials, curves, Path(out), rule)
        timings["plot_all"] = time.perf_counter() - start
        names = ", ".join(p.name for p in paths)

    total = sum(timings.values())
    print(f"{classified['phase'].notna().sum():,} trials classified into {len(table)} cells; "
          f"figures: {names}")
    for part, seconds in timings.items():
        print(f"  {part:<16} {seconds:7.3f} s")
    print(f"  {'total':<16} {total:7.3f} s  (goal < {GOAL_S:g} s: {'met' if total < GOAL_S else 'MISSED'})")
    tmp.cleanup()


if __name__ == "__main__":
    main()
