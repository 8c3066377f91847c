"""How many torch threads a CPU trial should use: one trial, timed at several thread counts, on a
quiet machine and on a busy one.

    python benchmarks/threads.py                      # the machine as it is
    python benchmarks/threads.py --busy 2             # plus 2 busy-looping processes (a busy machine)
    python benchmarks/threads.py --configs smoke A --threads 1 2 4 --repeat 2 --json out.json

Each measurement is a fresh `ray-grok train` process (torch's thread pools are set once per
process) with `runtime.threads=T`; torch's own default would be T = every core. The time is the
trial's training wall time from its status.json (no process start, no imports).
--busy N starts N processes that spin on a core each for the whole run, as other users' jobs do;
the load average before the run is printed, because a shared machine is never fully quiet.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = {
    # one trial of grids/smoke.yaml: width 32, depth 2, batch 32, 400 steps
    "smoke": ["task.p=11", "task.n_ood=16", "task.n_examples=8", "task.n_id=16", "task.alpha=0.7",
              "model.width=32", "model.heads=2", "model.depth=2", "train.steps=400", "train.batch_size=32",
              "train.lr=3e-3", "train.warmup_steps=30", "train.weight_decay=0.1", "eval.every=50",
              "eval.batches=2", "checkpoint.every=100"],
    # benchmarks/throughput.py's config A (width 128, depth 2, batch 64), 60 steps
    "A": ["model.width=128", "model.depth=2", "model.heads=4", "train.batch_size=64", "task.n_id=64",
          "train.steps=60", "eval.every=1000", "eval.batches=1", "checkpoint.every=1000"],
}
SPIN = "while True: pass"


def run_once(overrides: list[str], threads: int) -> float:
    with tempfile.TemporaryDirectory(prefix="rg-threads-") as tmp:
        out = Path(tmp) / "trial"
        cmd = [sys.executable, "-m", "ray_grok.cli", "train", "--out", str(out), "--no-tensorboard",
               *(a for o in [*overrides, "runtime.device=cpu", "runtime.log_every=100000",
                             f"runtime.threads={threads}"] for a in ("--set", o))]
        subprocess.run(cmd, check=True, capture_output=True, text=True)
        return float(json.loads((out / "status.json").read_text())["wall_time"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--threads", nargs="*", type=int, default=sorted({1, 2, os.cpu_count() or 1}),
                    help="thread counts to time (default: 1, 2 and every core)")
    ap.add_argument("--busy", type=int, default=0, help="busy-looping processes to run meanwhile")
    ap.add_argument("--repeat", type=int, default=1, help="runs per measurement (the median is shown)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    spinners = [subprocess.Popen([sys.executable, "-c", SPIN]) for _ in range(args.busy)]
    try:
        time.sleep(1.0 if spinners else 0.0)
        load = os.getloadavg()
        print(f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, "
              f"{args.busy} busy-looping processes of this benchmark", flush=True)
        results = []
        for name in args.configs:
            for threads in args.threads:
                times = sorted(run_once(CONFIGS[name], threads) for _ in range(args.repeat))
                median = times[len(times) // 2]
                results.append({"config": name, "threads": threads, "busy": args.busy, "load1": load[0],
                                "seconds": median, "all": times})
                label = f"{threads} thread{'s' * (threads > 1)}"
                print(f"{name}: {label}: {median:.1f} s ({', '.join(f'{t:.1f}' for t in times)})", flush=True)
    finally:
        for p in spinners:
            p.kill()
            p.wait()
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
