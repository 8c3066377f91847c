"""Replay run.stop: ood_chance on finished trials: whether the rule would have stopped them, where,
what that saves in steps, and whether the phase a stopped trial is classified with (read at its stop
step) differs from the phase it ended with.

For each trial (a directory with metrics.parquet and config.json, found under the PATHS given):
its highest o.o.d. test accuracy against the band (halfway from chance to the threshold), the first
step it reached the threshold (the evidence it would give its depth), and the evaluation from which
its own curve qualifies at every later one (sweep/stop.py StopRule.qualifies). Then the stop itself, per run
directory and depth, with every other trial's first crossing as evidence (as if they had finished
first: the most the rule can stop). `--assume-crossing STEP` adds a trial of every depth that first
generalized at STEP: what the rule would do on these curves in a sweep where one had. A replay of
the finished runs' files with the rule's own functions: nothing is written.

Run: python benchmarks/stop_replay.py PATH [PATH ...] [--threshold 0.5] [--after 2] [--assume-crossing STEP]
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

from ray_grok.results.phases import PhaseRule
from ray_grok.sweep.rundir import trial_config
from ray_grok.sweep.stop import StopRule, chance_band, first_fit, row_phases
from ray_grok.trial.schema import CONFIG_FILE, METRICS_FILE

ASSUMED = "(assumed)"


def trials_under(paths: list[Path]) -> list[Path]:
    found = {m.parent for p in paths for m in ([p / METRICS_FILE] if (p / METRICS_FILE).exists()
                                                else p.rglob(METRICS_FILE))}
    return sorted(d for d in found if (d / CONFIG_FILE).exists())


def sweep_of(trial: Path) -> Path:
    """The run directory of a sweep's trial (…/RUN/trials/…), or the trial itself for a single run."""
    return next((p.parent for p in trial.parents if p.name == "trials"), trial)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", type=Path)
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--metric", default="acc_last", choices=["acc_last", "acc"])
    ap.add_argument("--after", type=float, default=2.0)
    ap.add_argument("--assume-crossing", type=int, default=None)
    args = ap.parse_args()
    rule = PhaseRule(metric=args.metric, threshold=args.threshold, time="final")
    stop = StopRule(rule, args.after)
    column = f"ood_test_{args.metric}"

    curves, info = {}, {}
    for d in trials_under(args.paths):
        cfg = trial_config(d)
        if cfg is None:
            print(f"skipped {d}: its config.json cannot be read")
            continue
        rows = sorted(pq.read_table(d / METRICS_FILE).to_pylist(), key=lambda r: r["step"])
        curves[d] = rows
        p, depth = cfg.task.p, cfg.model.depth
        flags = [stop.qualifies(rows[:k + 1], p) is not None for k in range(len(rows))]
        # the first evaluation from which the own curve qualifies at every later one
        k = len(flags)
        while k and flags[k - 1]:
            k -= 1
        own = int(rows[k]["step"]) if k < len(rows) else None
        info[d] = {"p": p, "depth": depth, "steps": cfg.train.steps, "last": int(rows[-1]["step"]),
                   "max": max(r[column] for r in rows), "band": chance_band(p, args.threshold),
                   "cross": first_fit([r["step"] for r in rows], [r[column] for r in rows], args.threshold),
                   "qualifies": own}

    trials = list(curves)
    print(f"{len(trials)} trials; {rule.describe()}; band: halfway from chance to the threshold; after {args.after:g}"
          + (f"; assuming a trial of every depth first generalized at step {args.assume_crossing}"
             if args.assume_crossing is not None else ""))
    print("| trial | p | depth | steps run | ood_test max | band | reached the threshold at | own curve qualifies from then on |"
          " stopped at | steps saved | phase at stop | phase at its end |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    groups = defaultdict(list)
    for d in trials:
        groups[(sweep_of(d), info[d]["depth"])].append(d)
    saved_total = run_total = stopped_n = changed = 0
    for (sweep, _), members in sorted(groups.items()):
        for d in members:
            i = info[d]
            crossings = {str(o): info[o]["cross"] for o in members if o != d and info[o]["cross"] is not None}
            if args.assume_crossing is not None:
                crossings[ASSUMED] = args.assume_crossing
            rows = curves[d]
            at = next((k for k in range(len(rows)) if rows[k]["step"] < i["steps"]
                       and stop.decide(rows[:k + 1], i["p"], crossings) is not None), None)
            end_phase = row_phases(rows[-1:], rule)[0]
            stop_step = int(rows[at]["step"]) if at is not None else None
            stop_phase = row_phases(rows[at:at + 1], rule)[0] if at is not None else ""
            saved = i["last"] - stop_step if stop_step is not None else 0
            saved_total += saved
            run_total += i["last"]
            stopped_n += stop_step is not None
            changed += stop_step is not None and stop_phase != end_phase
            name = str(d.relative_to(sweep.parent)) if sweep != d else d.name
            print(f"| {name} | {i['p']} | {i['depth']} | {i['last']:,} | {i['max']:.3f} | {i['band']:.3f} | "
                  f"{i['cross'] if i['cross'] is not None else 'never'} | "
                  f"{i['qualifies'] if i['qualifies'] is not None else 'never'} | "
                  f"{stop_step if stop_step is not None else '-'} | {saved:,} | {stop_phase} | {end_phase} |")
    print(f"stopped {stopped_n} of {len(trials)} trials, saving {saved_total:,} of {run_total:,} steps run "
          f"({saved_total / max(run_total, 1):.0%}); a stopped trial's phase differs from its end's in {changed}")


if __name__ == "__main__":
    main()
