"""The Tune trainable: one trial, run by run_trial in its own directory, reporting to Tune.

Tune's search space is one `grid_search` over trial ids; the trainable reads the trial's
config.json (written when the run directory was created) and calls `run_trial` on the trial
directory, with a reporter that forwards every evaluation to `tune.report`, attaching a tiny
marker `tune.Checkpoint` whenever the trial saved its own checkpoint. The trial directory is the
truth: its checkpoints are what a resumed or retried trial continues from (run_trial resumes by
itself; a finished trial returns at once).
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from ..io import read_json, write_json
from ..trial.config import config_from_dict
from ..trial.schema import CHECKPOINT_DIR, CONFIG_FILE, SCALAR_EVAL_COLUMNS
from .rundir import LOG_FILE, record_attempt, record_failure
from .settle import Gate, NoGate
from .stop import StopRule, SweepStopper

TRIAL_LOCK_WAIT_S = 30.0


def make_trainable(run_dir: Path, dirs: dict[str, str], cpus: float, gate: Gate = NoGate(),
                   stop: StopRule | None = None) -> Callable[[dict], None]:
    """A Tune function trainable over configs {"trial_id": ...}. The run directory is bound here,
    not stored in Tune's state, so a moved RUN_DIR still resumes. GATE (settle.py) is asked
    before each trial trains, and may skip it; STOP (stop.py, run.stop) after each evaluation, and
    may end it."""
    run_dir = Path(run_dir)

    def ray_grok_trial(config: dict) -> None:
        trial_id = config["trial_id"]
        # the trial's chance and depth come from its config, read in run_one
        stopper = functools.partial(SweepStopper, stop, run_dir, trial_id) if stop is not None else None
        run_one(run_dir / dirs[trial_id], trial_id, cpus, gate, stopper)

    return ray_grok_trial


def run_one(out: Path, trial_id: str, cpus: float, gate: Gate = NoGate(),
            stopper_for: Callable[[int, int], SweepStopper] | None = None) -> None:
    """One attempt at the trial in OUT, inside a Tune worker; output goes to OUT/train.log. A trial
    the gate skips returns without training (and without counting an attempt): Tune sees it
    complete, its status.json says skipped."""
    from ray import tune

    from ..trial.run import run_trial

    cfg = config_from_dict(read_json(out / CONFIG_FILE))
    stopper = stopper_for(cfg.task.p, cfg.model.depth) if stopper_for is not None else None
    settled = gate.skip(trial_id, out, cfg.train.steps)
    if settled is not None:
        with open(out / LOG_FILE, "a") as logf:
            e = settled.record()
            logf.write(f"== {trial_id}: skipped at {time.strftime('%Y-%m-%d %H:%M:%S')}: settled: {e['agree']} of "
                       f"the cell's {e['seeds']} seeds are {e['phase']} and the other {e['seeds'] - e['decided']} "
                       "cannot change its majority (run.settle); a launch without run.settle runs it\n")
        return
    attempt = record_attempt(out)
    marker = tune.get_checkpoint()
    with open(out / LOG_FILE, "a", buffering=1) as logf:
        def echo(line: str) -> None:
            logf.write(line + "\n")

        # Ray sets CUDA_VISIBLE_DEVICES to the GPUs it gave this trial (the same one for trials
        # that share a GPU through fractional resources)
        echo(f"== {trial_id}: attempt {attempt} at {time.strftime('%Y-%m-%d %H:%M:%S')} on "
             f"{socket.gethostname()} (pid {os.getpid()}, GPUs {os.environ.get('CUDA_VISIBLE_DEVICES') or 'none'})"
             + (f"; Tune restored it from its marker at step {_marker_step(marker)}" if marker else ""))

        def reporter(row: dict, *, checkpointed: bool, step: int) -> None:
            metrics = {k: float(row[k]) for k in SCALAR_EVAL_COLUMNS}
            metrics.update(step=step, steps=cfg.train.steps)
            if not checkpointed:
                tune.report(metrics)
                return
            with tempfile.TemporaryDirectory(prefix="rg-mark-") as tmp:
                # the real checkpoint is in the trial dir; Tune keeps a pointer to it
                write_json(Path(tmp) / "marker.json", {"trial_id": trial_id, "step": step,
                                                       "checkpoints": str(out / CHECKPOINT_DIR)})
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))

        try:
            # a retried attempt may start while the worker of the one before still winds down;
            # runtime.threads 0 (auto): the CPUs Ray gave the trial, not every core of the machine
            run_trial(cfg, out, reporter=reporter, echo=echo, tensorboard=True, lock_wait_s=TRIAL_LOCK_WAIT_S,
                      auto_threads=max(1, int(cpus)), stop=stopper,
                      resume_stopped=stopper is None)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            with contextlib.suppress(OSError):  # a full disk: the driver records it (FailureRecorder)
                echo(f"== attempt {attempt} failed:\n{traceback.format_exc()}")
                record_failure(out, message, cfg.train.steps)
            raise


def _marker_step(marker: Any) -> str:
    try:
        with marker.as_directory() as d:
            return str(read_json(Path(d) / "marker.json")["step"])
    except Exception:  # a marker is informational only
        return "?"
