"""The run directory of a sweep: its layout, its plan, and the state of its trials from files alone.

    RUN_DIR/
      grid.yaml          verbatim copy of the grid it was last launched with; a changed grid
                         extends the sweep (extend.py) and its predecessor is kept as grid.yaml.N
      plan.json          every trial: trial_id, dir, coordinates, steps, retired (written at
                         creation, rewritten when the sweep is extended; its format: results/plan.py)
      sweep.json         the driver: state, host, pid, heartbeat, the ray-grok version that ran Tune
      trials/depth=4/n_id=256/alpha=0.6/seed=1/
                         the trial directory of `run_trial` (config.json, metrics.parquet,
                         status.json, TensorBoard events, checkpoints/), plus attempts.json and
                         train.log written by the sweep layer
      tune/sweep/        Ray Tune's experiment (its state, per-trial marker checkpoints, errors);
                         tune/sweep.N: an earlier one, set aside when the sweep was extended
      results/trials/part-0.parquet, results/curves/part-*.parquet   (`ray-grok aggregate`)
      slurm/jobs.jsonl   the Slurm jobs `launch --cluster` submitted; slurm/JOB/ their logs and Ray files
      .lock              flock'ed by the one process that drives the sweep (or submits its job); it
                         holds that process's host, pid and Slurm job

The run directory is private (0700): Tune's state and submitit's job in it are pickles that are
loaded. One process at a time drives it: `run_lock` is taken before anything else is written.

Nothing here imports Ray: `status` and `aggregate` work from the files, anywhere they are visible.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator


from ..errors import ConfigError, DiskFullError, GridError, RunDirError
from ..io import atomic_write_text, describe_holder, hold_lock, private_dir, read_json_or, system_dir, write_json
from ..results.plan import PLAN_FILE, Plan, PlanEntry, read_plan
from ..trial.config import TrialConfig, config_from_dict
from ..trial.outputs import status_record
from ..trial.schema import CONFIG_FILE, FAILED, PENDING, RUNNING, STATUS_FILE
from .extend import PlanDiff, extended_plan, history_name, plan_diff, set_aside
from .grid import GridSpec, PlannedTrial, expand, grid_from_dict, load_grid, read_grid_yaml

GRID_FILE = "grid.yaml"
SWEEP_FILE = "sweep.json"
TUNE_DIR = "tune"
TUNE_EXPERIMENT = "sweep"
ATTEMPTS_FILE = "attempts.json"
LOG_FILE = "train.log"
SLURM_DIR = "slurm"  # SLURM_DIR/JOB: one Slurm job's logs and Ray files (cluster/task_env.py)
SLURM_JOBS_FILE = f"{SLURM_DIR}/jobs.jsonl"  # one line per Slurm job submitted for the sweep
LOCK_FILE = ".lock"  # flock'ed by the process driving the sweep (run_lock)
HEARTBEAT_S = 10.0  # the driver rewrites sweep.json this often


# ---------------------------------------------------------------------------------------------
# Resolving a launch: the grid and the run directory
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Launch:
    spec: GridSpec
    grid_text: str
    trials: list[PlannedTrial]
    run_dir: Path


def resolve(grid: Path | None, out: Path | None, resume: bool, root: Path = Path("runs")) -> Launch:
    """The grid (the file given, or RUN_DIR's stored copy with --resume) and the run directory:
    OUT, else ROOT/<grid name>."""
    if grid is None:
        if not (resume and out is not None):
            raise GridError("give a GRID file, or --resume --out RUN_DIR to continue a sweep")
        if not (out / GRID_FILE).exists():
            raise RunDirError(f"nothing to resume: {out} holds no {GRID_FILE}")
        spec, text = stored_grid(out), (out / GRID_FILE).read_text()
    else:
        spec, text = load_grid(grid), Path(grid).read_text()
    run_dir = (out if out is not None else Path(root) / spec.name).resolve()
    if resume and not (run_dir / GRID_FILE).exists():
        raise RunDirError(f"nothing to resume: {run_dir} holds no sweep (no {GRID_FILE})")
    return Launch(spec, text, expand(spec), run_dir)


# ---------------------------------------------------------------------------------------------
# Creating a run directory, or extending the sweep an existing one holds
# ---------------------------------------------------------------------------------------------

def prepare(run_dir: Path, spec: GridSpec, grid_text: str, trials: list[PlannedTrial]) -> bool:
    """Create RUN_DIR for this grid, or extend the sweep it holds to this grid (extend.py: kept,
    new and retired trials; a changed base is refused). Returns True if it existed.

    Each trial directory is created now with its resolved config.json, so pending trials are
    visible to `status` and `aggregate`, and the trainable needs nothing but the trial id.
    """
    plan_path = run_dir / PLAN_FILE
    if plan_path.exists():
        diff = check_extension(run_dir, spec, trials)
        if diff.changed:
            extend_files(run_dir, spec, grid_text, diff)
        for t in trials:  # a trial directory removed by hand starts over
            if not (run_dir / t.dir / CONFIG_FILE).exists():
                _write_trial_dir(run_dir, t)
        return True
    check_not_foreign(run_dir)
    private_dir(run_dir, "run directory")
    atomic_write_text(run_dir / GRID_FILE, grid_text)
    for t in trials:
        _write_trial_dir(run_dir, t)
    # the plan is written last: its presence marks a complete run directory
    entries = tuple(PlanEntry(t.trial_id, t.dir, t.coords, t.config.train.steps) for t in trials)
    write_json(plan_path, Plan(spec.name, entries, spec.run.max_failures).to_json())
    return False


def _write_trial_dir(run_dir: Path, t: PlannedTrial) -> None:
    (run_dir / t.dir).mkdir(parents=True, exist_ok=True)
    write_json(run_dir / t.dir / CONFIG_FILE, t.config.to_dict())


def existing_plan(run_dir: Path) -> bool:
    """RUN_DIR holds a complete sweep (its plan is written last)."""
    return (run_dir / PLAN_FILE).exists()


def check_extension(run_dir: Path, spec: GridSpec, trials: list[PlannedTrial]) -> PlanDiff:
    """What launching SPEC into the existing RUN_DIR changes; RunDirError if its base changed."""
    try:
        return plan_diff(read_plan(run_dir), stored_grid(run_dir), spec, trials)
    except RunDirError as exc:
        raise RunDirError(f"{run_dir} ({run_dir / GRID_FILE}): {exc}") from None


def extend_files(run_dir: Path, spec: GridSpec, grid_text: str, diff: PlanDiff) -> None:
    """Write the extended sweep, in an order that a crash at any point leaves resumable: the new
    trial directories; the old Tune experiment set aside (a later launch must never restore it,
    since it holds the old trials and settings); grid.yaml's previous text kept as grid.yaml.N
    before the new one replaces it; plan.json last (until then the same launch extends again)."""
    for t in diff.new:
        _write_trial_dir(run_dir, t)
    set_aside(run_dir / TUNE_DIR / TUNE_EXPERIMENT)
    grid = run_dir / GRID_FILE
    atomic_write_text(history_name(grid), grid.read_text())
    atomic_write_text(grid, grid_text)
    write_json(run_dir / PLAN_FILE, extended_plan(read_plan(run_dir), spec, diff).to_json())


def check_not_foreign(run_dir: Path) -> None:
    """Refuse a directory that holds files but no sweep (a typo in --out must not turn a home
    directory into a run directory, nor tighten its mode)."""
    if system_dir(run_dir):
        raise RunDirError(f"a run directory must be a directory of yours, not / or a system directory "
                          f"(/etc, /usr, ...), got {str(run_dir)!r}")
    if (run_dir / PLAN_FILE).exists() or not run_dir.is_dir():
        return
    if any(p.name != LOCK_FILE for p in run_dir.iterdir()):
        raise RunDirError(f"{run_dir} exists and is not a ray-grok sweep directory (no {PLAN_FILE}); "
                          "choose another --out")


def stored_grid(run_dir: Path) -> GridSpec:
    path = run_dir / GRID_FILE
    return grid_from_dict(read_grid_yaml(path), source=str(path), default_name=run_dir.name)


# ---------------------------------------------------------------------------------------------
# The state of a trial, from its files
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrialState:
    entry: PlanEntry
    state: str  # pending | running | done | failed
    step: int
    error: str | None
    attempts: int
    status: dict  # status.json, {} when pending


def trial_state(run_dir: Path, entry: PlanEntry) -> TrialState:
    out = run_dir / entry.dir
    status = read_json_or(out / STATUS_FILE, {})
    attempts = read_json_or(out / ATTEMPTS_FILE, {})
    state = status.get("state", PENDING)
    return TrialState(entry, state, int(status.get("step", 0)), status.get("error") or attempts.get("last_error"),
                      int(attempts.get("attempts", 0)), status)


def trial_config(trial_dir: Path) -> TrialConfig | None:
    """The trial's stored config; None where it is missing or unreadable (status and run.stop go on
    without it)."""
    data = read_json_or(trial_dir / CONFIG_FILE, None)
    try:
        return None if data is None else config_from_dict(data)
    except ConfigError:
        return None


def trial_states(run_dir: Path, plan: Plan | None = None) -> list[TrialState]:
    """The states of the current grid's trials (retired ones are left out: they are not run)."""
    plan = plan or read_plan(run_dir)
    return [trial_state(run_dir, e) for e in plan.active]


def grid_states(run_dir: Path, trials: list[PlannedTrial]) -> list[TrialState]:
    """The states on disk of the grid's trials, before the plan holds them (a new one is pending)."""
    return [trial_state(run_dir, PlanEntry(t.trial_id, t.dir, t.coords, t.config.train.steps)) for t in trials]


def record_attempt(out: Path) -> int:
    """Count one more attempt at the trial in OUT (called by the trainable as it starts)."""
    path = out / ATTEMPTS_FILE
    data = read_json_or(path, {"attempts": 0})
    data["attempts"] = int(data.get("attempts", 0)) + 1
    data["last_start"] = time.time()
    data["host"] = socket.gethostname()
    write_json(path, data, durable=False)  # a count for `status`: not worth an fsync per trial
    return data["attempts"]


def disk_full_error(run_dir: Path, what: str) -> DiskFullError:
    """The one line a sweep stops with when RUN_DIR's file system is full."""
    try:
        free = f"{shutil.disk_usage(run_dir).free / 2**20:,.1f} MiB free now"
    except OSError:
        free = "free space unknown"
    return DiskFullError(f"the file system of {run_dir} is full ({what}; {free}): the sweep stopped, and every "
                         "file it wrote is whole; free space, then run the same command to resume: finished trials "
                         "are kept, the others go on from their last checkpoints")


def record_failure(out: Path, error: str, steps: int) -> None:
    """Mark the trial failed with ERROR (unless run_trial already did) and keep the message."""
    status = read_json_or(out / STATUS_FILE, {})
    if status.get("state") != FAILED:
        write_json(out / STATUS_FILE, status_record(FAILED, int(status.get("step", 0)), steps, error=error))
    path = out / ATTEMPTS_FILE
    data = read_json_or(path, {"attempts": 0})
    data["last_error"] = error
    write_json(path, data)


# ---------------------------------------------------------------------------------------------
# One driver per run directory
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def run_lock(run_dir: Path, role: str, wait_s: float = 0.0) -> Iterator[bool]:
    """Hold RUN_DIR's lock while the block runs: refused at once (or after wait_s) while another
    process holds it, naming that process. The kernel drops the lock when its holder dies, so a
    requeued Slurm job, or a launch after a crash, takes over at once, with no heartbeat to wait
    out. Creates RUN_DIR (0700) first. Yields False where the file system has no locks (see
    launch.check_no_other_driver for what is checked then)."""
    check_not_foreign(run_dir)
    private_dir(run_dir, "run directory")

    def busy(holder: dict) -> RunDirError:
        stop = (f"scancel {holder['job_id']}" if holder.get("job_id") else
                f"stop pid {holder.get('pid', '?')} on {holder.get('host', '?')}")
        return RunDirError(f"{run_dir} is in use by {describe_holder(holder)}: one driver per run directory; "
                           f"wait for it to end, or {stop} and run this again")

    with hold_lock(run_dir / LOCK_FILE, role, busy, wait_s=wait_s) as locked:
        yield locked


# ---------------------------------------------------------------------------------------------
# The driver's heartbeat
# ---------------------------------------------------------------------------------------------

def write_driver(run_dir: Path, state: str, started: float, **extra: Any) -> None:
    write_json(run_dir / SWEEP_FILE, {"state": state, "host": socket.gethostname(), "pid": os.getpid(),
                                      "job_id": os.environ.get("SLURM_JOB_ID"), "started": started,
                                      "updated": time.time(), "heartbeat_s": HEARTBEAT_S, **extra})


def read_driver(run_dir: Path) -> dict:
    return read_json_or(run_dir / SWEEP_FILE, {})


def driver_alive(driver: dict, now: float | None = None) -> bool:
    """The driver said 'running' recently (a killed driver stops updating; works across hosts),
    and, when it ran on this host, its process still exists."""
    if driver.get("state") != RUNNING:
        return False
    if driver.get("host") == socket.gethostname() and driver.get("pid"):
        try:
            os.kill(int(driver["pid"]), 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by someone else
            pass
    now = time.time() if now is None else now
    return now - driver.get("updated", 0) < max(60.0, 6 * driver.get("heartbeat_s", HEARTBEAT_S))


def slurm_jobs(run_dir: Path) -> list[dict]:
    """The Slurm jobs `ray-grok launch --cluster` submitted for this sweep: job_id, profile, submitted."""
    path = Path(run_dir) / SLURM_JOBS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
