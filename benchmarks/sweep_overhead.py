"""Per-trial overhead of the sweep path: N trivially short trials through the real Tune path.

    python benchmarks/sweep_overhead.py                    # N = 100, 200, 400
    python benchmarks/sweep_overhead.py --n 50 --json out.json

Each N runs in a fresh driver process (`ray-grok launch` in-process: local Ray, Tuner, the
trainable, run_trial, the live view, the results tables). A trial is one optimizer step of a
tiny model, one evaluation and one checkpoint, so nearly all of its time is overhead: Ray/Tune
scheduling, the trainable's setup, run_trial building the model and data and writing its files.

    overhead per trial = (fit wall time - training time / concurrency) * concurrency / N

where the fit wall time is Tuner.fit alone (Ray's start, ~3 s, and the results tables are
reported apart) and training time is the sum of the trials' own `wall_time` (status.json).
The driver's peak RSS is its ru_maxrss; RSS growth is sampled across the fit.
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


def grid(n: int) -> dict:
    return {
        "name": f"overhead-{n}",
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


def one(n: int) -> dict:
    """Run the sweep of N trials in this process; return the measurements."""
    from ray_grok.sweep.launch import launch as run_sweep
    from ray_grok.sweep.rundir import resolve, trial_states

    tmp = Path(tempfile.mkdtemp(prefix="rg-overhead-"))
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

    states = trial_states(launch.run_dir)
    training = sum(s.status.get("wall_time", 0.0) for s in states)
    fit = outcome.fit_s
    return {
        "n": n, "concurrency": CONCURRENCY, "done": outcome.counts.get("done", 0),
        "launch_wall_s": total, "ray_start_s": outcome.ray_start_s, "fit_wall_s": fit, "training_s": training,
        "overhead_per_trial_s": (fit - training / CONCURRENCY) * CONCURRENCY / n,
        "driver_peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "driver_rss_first_mb": samples[0] if samples else None, "driver_rss_last_mb": samples[-1] if samples else None,
        "run_dir": str(launch.run_dir),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, nargs="*", default=[100, 200, 400], help="trial counts")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # internal: run one N in this process
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one(args.one)))
        return
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private benchmark box
    results = []
    for n in args.n:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True, text=True)
        if out.returncode:
            sys.exit(f"N={n} failed:\n{out.stderr[-3000:]}")
        r = json.loads(out.stdout.strip().splitlines()[-1])
        results.append(r)
        print(f"N={n}: Tuner.fit {r['fit_wall_s']:.1f} s (ray.init {r['ray_start_s']:.1f} s, whole launch "
              f"{r['launch_wall_s']:.1f} s), training "
              f"{r['training_s']:.2f} s, overhead {r['overhead_per_trial_s']:.3f} s/trial at concurrency "
              f"{r['concurrency']}; driver peak RSS {r['driver_peak_rss_mb']:.0f} MB "
              f"(during the fit {r['driver_rss_first_mb']:.0f} -> {r['driver_rss_last_mb']:.0f} MB)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
