"""Replay run.settle: majority on finished sweeps: the trials it would have skipped, what they cost
(their measured training time, and cost.py's estimate), and whether any cell's majority phase
changes (the phase table with every seed against the one with the skipped seeds unclassified).

A replay of the finished runs' files with settle's own decision (sweep/settle.py replay), in the
plan's order (seed-major), CONCURRENCY trials at a time: not a rerun. Nothing is written into the
run directories: the trials' rows are built from their files by the results tables' own code.

Run: python benchmarks/settle_replay.py RUN_DIR [RUN_DIR ...] [--concurrency 2] [--threshold 0.5]
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ray_grok.results.aggregate import batch_tables, read_trial
from ray_grok.results.phases import PhaseRule, format_phase_table, phase_table
from ray_grok.results.plan import read_plan
from ray_grok.sweep.cost import estimate
from ray_grok.sweep.rundir import stored_grid
from ray_grok.sweep.settle import replay
from ray_grok.trial.config import config_from_dict
from ray_grok.io import read_json
from ray_grok.trial.schema import CONFIG_FILE


def replay_run(run_dir: Path, rule: PhaseRule, concurrency: int) -> None:
    plan = read_plan(run_dir)
    entries = plan.active
    files = [read_trial(str(run_dir), e) for e in entries]
    trials = batch_tables(entries, files)[0].to_pandas(ignore_metadata=True)
    skipped = replay(trials, [e.trial_id for e in entries], rule, concurrency)
    settled = trials.assign(status=trials["status"].where(~trials["trial_id"].isin(skipped), "skipped: settled"))
    before, after = phase_table(trials, rule), phase_table(settled, rule)
    changed = before.loc[before["phase"] != after["phase"]]

    by_id = {e.trial_id: e for e in entries}
    configs = [config_from_dict(read_json(run_dir / by_id[t].dir / CONFIG_FILE)) for t in skipped]
    cost = estimate(configs, stored_grid(run_dir).resources.gpu)
    measured = trials.loc[trials["trial_id"].isin(skipped), "wall_time"].sum()
    total = trials["wall_time"].sum()
    print(f"== {run_dir} (replay of finished trials, {concurrency} at a time; {rule.describe()})")
    print(f"trials: {len(entries)}; settle would skip {len(skipped)} ({len(skipped) / len(entries):.0%}): "
          f"{', '.join(skipped) or 'none'}")
    print(f"their measured training time: {measured / 3600:.2f} of {total / 3600:.2f} CPU core-hours "
          f"({measured / total:.0%}); cost.py's estimate of them: {cost.summary()}")
    print(f"cells whose majority phase changes: {len(changed)} of {len(before)}")
    agree = (before["agreement"] != after["agreement"]) & (before["phase"] == after["phase"])
    print(f"cells whose agreement changes (same phase): {int(agree.sum())}")
    print("phase table with the settled seeds only:")
    print(format_phase_table(after, rule))
    print()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dirs", nargs="+", type=Path)
    ap.add_argument("--concurrency", type=int, default=1, help="trials at once (the laptop grids ran 2)")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--metric", default="acc_last")
    ap.add_argument("--time", default="auto")
    args = ap.parse_args()
    rule = PhaseRule(metric=args.metric, threshold=args.threshold, time=args.time)
    for run_dir in args.run_dirs:
        replay_run(run_dir, rule, args.concurrency)


if __name__ == "__main__":
    main()
