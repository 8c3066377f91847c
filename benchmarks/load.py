"""Load: a grid of N tiny trials through the real path on a local Ray, for N up to 1,000.

    python benchmarks/load.py                      # N = 250, 500, 1000
    python benchmarks/load.py --n 1000 --json load.json

Each N runs in a fresh driver process (`ray-grok launch` in-process: local Ray, Tuner, the
trainable, run_trial with its durable writes, the live view, the heartbeat, the results tables).
A trial is one optimizer step of a tiny model, one evaluation and one checkpoint, so nearly all
of its time is overhead. Checked for every N: the trials table has all N rows, each trial once,
every one done. Reported:

    overhead per trial = (Tuner.fit wall time - training time / concurrency) * concurrency / N
    launch per trial   = whole launch wall time (Ray's start and the results tables too) / N

and the driver's peak RSS (ru_maxrss) with its growth across the fit, sampled every 0.5 s.
Goal: under 0.1 s per trial and under 1 GB, both flat in N.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

CONCURRENCY = 2
GOAL_S, GOAL_MB = 0.1, 1024


def grid(n: int) -> dict:
    return {
        "name": f"load-{n}",
        "base": {
            "task": {"p": 7, "rule": "random", "n_id": 4, "n_ood": 8, "n_examples": 4},
            "model": {"width": 8, "heads": 2, "depth": 1},
            "train": {"steps": 1, "batch_size": 4, "warmup_steps": 0},
            "eval": {"every": 1, "batches": 1},
            "checkpoint": {"every": 1},
            "runtime": {"device": "cpu", "threads": 1, "log_every": 1},
        },
        "seeds": n,
        "resources": {"cpu": 1},
        "run": {"max_concurrent": CONCURRENCY, "max_failures": 0, "object_store_mb": 200},
    }


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one(n: int, root: Path) -> dict:
    """Run the sweep of N trials in this process; check its table; return the measurements."""
    import pyarrow.parquet as pq

    from ray_grok.sweep.launch import launch as run_sweep
    from ray_grok.sweep.rundir import resolve, trial_states

    tmp = Path(tempfile.mkdtemp(prefix="rg-load-", dir=root))
    path = tmp / "grid.yaml"
    path.write_text(yaml.safe_dump(grid(n), sort_keys=False))
    launch = resolve(path, tmp / "run", resume=False)

    samples: list[float] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss_mb())
            stop.wait(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    t0 = time.perf_counter()
    outcome = run_sweep(launch, echo=lambda line: print(line, file=sys.stderr, flush=True))
    total = time.perf_counter() - t0
    stop.set()
    sampler.join()

    table = pq.read_table(launch.run_dir / "results" / "trials").to_pylist()
    ids = [r["trial_id"] for r in table]
    expected = {t.trial_id for t in launch.trials}
    all_once = len(ids) == n and set(ids) == expected and all(r["status"] == "done" for r in table)
    states = trial_states(launch.run_dir)
    training = sum(s.status.get("wall_time", 0.0) for s in states)
    fit = outcome.fit_s
    return {
        "n": n, "concurrency": CONCURRENCY, "done": outcome.counts.get("done", 0), "rows": len(ids),
        "every_trial_once": all_once, "launch_wall_s": total, "ray_start_s": outcome.ray_start_s, "fit_wall_s": fit,
        "training_s": training, "overhead_per_trial_s": (fit - training / CONCURRENCY) * CONCURRENCY / n,
        "launch_per_trial_s": total / n,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "driver_rss_first_mb": samples[0] if samples else None, "driver_rss_last_mb": samples[-1] if samples else None,
        "run_dir": str(launch.run_dir),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="*", default=[250, 500, 1000], help="trial counts")
    ap.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()),
                    help="where the run directories go (on the file system to measure: fsyncs count)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one N in this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one, args.root)))
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private benchmark box
    results = []
    for n in args.n:
        out = subprocess.run([sys.executable, __file__, "--one", str(n), "--root", str(args.root)],
                             capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"N={n} failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"N={n}: {r['rows']} rows, every trial once: {r['every_trial_once']}; Tuner.fit {r['fit_wall_s']:.1f} s "
              f"(ray.init {r['ray_start_s']:.1f} s, whole launch {r['launch_wall_s']:.1f} s), training "
              f"{r['training_s']:.2f} s; overhead {r['overhead_per_trial_s']:.3f} s/trial at concurrency "
              f"{r['concurrency']} ({r['launch_per_trial_s']:.3f} s/trial for the whole launch); driver peak RSS "
              f"{r['driver_peak_rss_mb']:.0f} MB (during the fit {r['driver_rss_first_mb']:.0f} -> "
              f"{r['driver_rss_last_mb']:.0f} MB)", flush=True)
    worst_s = max(r["overhead_per_trial_s"] for r in results)
    worst_mb = max(r["driver_peak_rss_mb"] for r in results)
    print(f"goal: < {GOAL_S} s/trial and < {GOAL_MB} MB, flat in N: worst {worst_s:.3f} s/trial, {worst_mb:.0f} MB; "
          f"{'met' if worst_s < GOAL_S and worst_mb < GOAL_MB and all(r['every_trial_once'] for r in results) else 'NOT met'}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
