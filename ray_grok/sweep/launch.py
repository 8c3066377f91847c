"""`launch`: run a grid's trials on Ray Tune, locally by default; resume an interrupted sweep, or
extend one whose grid changed (extend.py).

How the pieces fit:
- The Ray (session.py): a local instance with safe settings, or RAY_ADDRESS's cluster.
- The trainable (trainable.py) runs one trial with run_trial in its own directory and reports
  every evaluation to Tune.
- The trial directory is the truth. Its checkpoints are what a resumed or retried trial continues
  from, so Tune's experiment state may lag behind it without harm: Tune restores its view with
  `Tuner.restore(resume_errored=True)` and any trial it thinks unfinished but that is done on disk
  costs one no-op call.
- Failures: `FailureConfig(max_failures)` retries a failing trial (from its last checkpoint); a
  trial that keeps failing is marked failed in its status.json with the message.
- While Tune runs, the driver's callbacks (callbacks.py) print the live view, write the heartbeat,
  record failures and draw the live phase diagrams.
"""
from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .. import __version__, compat
from ..errors import DiskFullError, RunDirError, StateVersionError
from ..io import disk_full, disk_full_line, format_duration
from ..results.aggregate import AggregateSummary, aggregate
from ..trial.schema import DONE, FAILED, INTERRUPTED, PENDING, RUNNING, SKIPPED
from .callbacks import sweep_callbacks
from .extend import set_aside
from ..results.plan import PLAN_FILE, Plan
from .grid import GridSpec
from .rundir import (
    LOCK_FILE, TUNE_DIR, TUNE_EXPERIMENT, Launch, TrialState, check_extension, disk_full_error, driver_alive,
    grid_states, prepare, read_driver, read_plan, run_lock, trial_states, write_driver,
)
from .session import concurrent_slots, ray_session, scoped_env
from .settle import gate_for, still_settled
from .stop import StopRule, left_to_train
from .trainable import make_trainable

FINISHED, STOPPED = "finished", "stopped"  # driver states in sweep.json besides running
# Tune keeps this many marker checkpoints per trial. Tune forces a snapshot of the whole
# experiment state (O(trials)) each time a trial has reported this many checkpoints since the
# last one; 1 would snapshot on every checkpoint of every trial.
TUNE_CHECKPOINTS_KEPT = 4


@dataclass(frozen=True)
class SweepOutcome:
    run_dir: Path
    counts: dict[str, int]
    results: AggregateSummary
    wall_time: float
    resumed: bool
    ray_start_s: float = 0.0  # ray.init (0 when nothing was left to run)
    fit_s: float = 0.0  # Tuner.fit

    @property
    def errored(self) -> int:
        return self.counts.get(FAILED, 0)

    @property
    def skipped(self) -> int:
        """Trials not trained because their cell is settled (run.settle, settle.py)."""
        return self.counts.get(SKIPPED, 0)

    @property
    def complete(self) -> bool:
        """Every trial is done or skipped (none errored, none left)."""
        return self.counts.get(DONE, 0) + self.skipped == sum(self.counts.values())

    @property
    def unfinished(self) -> int:
        return sum(self.counts.values()) - self.counts.get(DONE, 0) - self.errored - self.skipped


def launch(launch: Launch, echo: Callable[[str], None] = print, wait_s: float = 0.0) -> SweepOutcome:
    """Run (or continue) the sweep: every trial not yet done, then the results tables. Refused at
    once (or after wait_s) while another process drives RUN_DIR (rundir.run_lock)."""
    fresh = not launch.run_dir.exists()
    with run_lock(launch.run_dir, "launch", wait_s=wait_s) as locked:
        try:
            if not locked:
                check_no_other_driver(launch.run_dir)
            return _launch(launch, echo)
        except BaseException:
            if fresh:  # refused before anything was written: leave no directory holding only the lock
                _remove_if_only_lock(launch.run_dir)
            raise


def _remove_if_only_lock(run_dir: Path) -> None:
    with contextlib.suppress(OSError):
        if [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
            (run_dir / LOCK_FILE).unlink()
            run_dir.rmdir()


def check_no_other_driver(run_dir: Path) -> None:
    """Where the file system has no locks, the heartbeat in sweep.json decides: a driver that
    wrote it recently is taken as alive, unless it was an earlier start of this same Slurm job
    (a requeued job takes over from itself; its old start is gone)."""
    driver = read_driver(run_dir)
    same_job = bool(driver.get("job_id")) and driver.get("job_id") == os.environ.get("SLURM_JOB_ID")
    if driver_alive(driver) and not same_job:
        raise RunDirError(f"{run_dir} is being run by a driver on {driver.get('host')} (pid {driver.get('pid')}, "
                          f"heartbeat {time.time() - driver.get('updated', 0):.0f} s ago; this file system has no "
                          "locks, so the heartbeat decides); stop it first")


def _launch(launch: Launch, echo: Callable[[str], None]) -> SweepOutcome:
    """Nothing is written into RUN_DIR (but its lock) before the grid is known to be the stored one
    or an extension of it (extend.py: a changed base is refused) and its trials are known to fit
    on the Ray it runs on."""
    t0 = time.time()
    spec, run_dir = launch.spec, launch.run_dir
    driver = read_driver(run_dir)
    check_tune_state(run_dir, driver)
    existing = (run_dir / PLAN_FILE).exists()
    diff = check_extension(run_dir, spec, launch.trials) if existing else None
    grid = grid_states(run_dir, launch.trials) if existing else []
    states = Counter(s.state for s in grid)
    echo(f"{'resuming' if existing else 'launching'} {spec.name}: {len(launch.trials)} trials in {run_dir}"
         + (f" ({states[DONE]} done, {states[FAILED]} errored, {states[RUNNING] + states[INTERRUPTED]} "
            f"interrupted, {states[PENDING]} pending{_skipped_note(states[SKIPPED], spec)})" if existing else ""))
    if diff is not None and diff.changed:
        echo(f"the grid changed: extending the sweep: {diff.summary()}")
    work = not existing or _work_left(run_dir, spec, grid)
    try:
        with _ray(spec) if work else contextlib.nullcontext({}) as timing:  # checks that a trial fits
            prepare(run_dir, spec, launch.grid_text, launch.trials)
            try:
                if work:
                    timing.update(_fit(launch, echo))
            finally:  # also when Ray or Tune fails: `status` must not report a live driver
                counts = Counter(s.state for s in trial_states(run_dir))
                unfinished = len(launch.trials) - counts[DONE] - counts[FAILED] - counts[SKIPPED]
                # the version of the driver that last ran Tune (its heartbeat wrote it) stays on record
                version = read_driver(run_dir).get("version")
                try:
                    write_driver(run_dir, FINISHED if not unfinished else STOPPED, t0, counts=dict(counts),
                                 **({"version": version} if version else {}))
                except OSError as exc:  # a full disk must not hide what stopped the sweep
                    if not disk_full(exc):
                        raise
    except Exception as exc:
        if disk_full(exc) and not isinstance(exc, DiskFullError):  # Tune's own state, say
            raise disk_full_error(run_dir, disk_full_line(exc)) from None
        raise
    try:
        summary = aggregate(run_dir)
    except OSError as exc:
        if disk_full(exc):
            raise disk_full_error(run_dir, f"the results tables: {disk_full_line(exc)}") from None
        raise
    wall = time.time() - t0
    echo(f"{spec.name}: {counts[DONE]} done, {counts[FAILED]} errored, {unfinished} unfinished"
         + (f", {counts[SKIPPED]} skipped (settled: see `ray-grok status`)" if counts[SKIPPED] else "") + " in "
         f"{format_duration(wall)}; results: {summary.path}/{{trials,curves}} ({summary.trials} trials, "
         f"{summary.curve_rows} curve rows)")
    return SweepOutcome(run_dir, dict(counts), summary, wall, existing, **timing)


def _work_left(run_dir: Path, spec: GridSpec, grid: list[TrialState]) -> bool:
    """Whether this launch needs Ray and Tune: a trial is not done, unless it is skipped as settled
    and settle would skip it again (then there is nothing to train)."""
    left = [s for s in grid if left_to_train(s, spec.run.stop)]
    if any(s.state != SKIPPED for s in left):
        return True
    if not left:
        return False
    plan = Plan(spec.name, tuple(s.entry for s in grid), spec.run.max_failures)
    return spec.run.settle == "off" or not still_settled(run_dir, plan, [s.entry.trial_id for s in left],
                                                          spec.run.phase_rule.rule())


def _skipped_note(skipped: int, spec: GridSpec) -> str:
    """', 2 skipped as settled (run now: run.settle is off)' for the launch's first line."""
    if not skipped:
        return ""
    then = "kept while their cells stay settled" if spec.run.settle != "off" else "run now: run.settle is off"
    return f", {skipped} skipped as settled ({then})"


@contextlib.contextmanager
def _ray(spec: GridSpec) -> Iterator[dict[str, float]]:
    """The Ray the sweep runs on, with Tune's environment; GridError if not one trial fits on it.
    Yields the timing dict that launch() reports (ray_start_s here, fit_s by _fit)."""
    t0 = time.perf_counter()
    with ray_session(spec):
        timing = {"ray_start_s": time.perf_counter() - t0}
        concurrent_slots(spec)
        yield timing


def _held_finished(run_dir: Path, spec: GridSpec, plan: Plan, experiment: Path) -> list[str]:
    """The trials with work left on disk that Tune's saved EXPERIMENT holds as finished: a done or
    skipped trial whose files were removed by hand (pending again), or a skipped one whose cell is
    no longer settled. The trial directories are the truth; Tune's state would leave them unrun."""
    states = trial_states(run_dir, plan)
    rule = spec.run.phase_rule.rule()
    left = [s.entry.trial_id for s in states
            if s.state != FAILED and left_to_train(s, spec.run.stop)  # Tune retries failed ones itself
            and (s.state != SKIPPED or spec.run.settle == "off"
                 or not still_settled(run_dir, plan, [s.entry.trial_id], rule))]
    if not left:
        return []
    try:
        with _quiet_result_grid():
            finished = compat.tune_terminated(experiment)
    except Exception:  # noqa: BLE001 - a guard only: Tuner.restore reads the same state and says what is wrong
        return []
    return [t for t in left if t in finished]


def check_tune_state(run_dir: Path, driver: dict) -> None:
    """Refuse, saying what to do, a Tune state that this version cannot unpickle (one written by a
    ray-grok whose objects it pickled no longer exist), instead of Tune's unpickling traceback."""
    tune_dir = run_dir / TUNE_DIR
    problem = compat.unreadable_tune_state(tune_dir / TUNE_EXPERIMENT)
    if problem is None:
        return
    written_by = driver.get("version") or compat.LEGACY_VERSION
    raise StateVersionError(
        f"{tune_dir} holds Ray Tune's state as ray-grok {written_by} wrote it, which ray-grok {__version__} "
        f"cannot read ({problem}). The trial directories hold the sweep and are not affected: move Tune's "
        f"state aside and launch again, and the sweep goes on from them (finished trials are kept, "
        f"unfinished ones continue from their checkpoints, errored ones are retried): "
        f"mv {tune_dir} {tune_dir}-{written_by} && ray-grok launch --resume --out {run_dir} "
        f"(with --cluster PROFILE if it ran on Slurm)")


def tune_dirname(trial: Any) -> str:
    """Tune's folder of a trial (marker checkpoints, error.txt): RUN_DIR/tune/sweep/<trial id>."""
    return trial.config["trial_id"]


def _fit(launch: Launch, echo: Callable[[str], None]) -> dict[str, float]:
    """Tuner.fit (or Tuner.restore, then fit) over the plan's trials, on the Ray of _ray().

    Tune's experiment holds the trials it was created with, and Tuner.restore cannot add any (Ray's
    docs: "Changing the hyperparameter search space then resuming is NOT supported"); its tuner.pkl
    also brings back the old max_concurrent and max_failures. So when a launch extends the sweep,
    rundir.extend_files has set the old experiment aside, and a fresh Tuner runs the current
    grid's trials that are not done (the trial directories are the truth: a kept trial that was
    cut short continues from its own checkpoints)."""
    from ray import tune

    spec, run_dir = launch.spec, launch.run_dir
    plan = read_plan(run_dir)
    slots = concurrent_slots(spec)
    rule = spec.run.phase_rule.rule()
    gate = gate_for(spec.run.settle, run_dir, rule)
    stop = StopRule(rule, spec.run.stop_after) if spec.run.stop != "off" else None
    trainable = tune.with_resources(make_trainable(run_dir, {e.trial_id: e.dir for e in plan.entries},
                                                   spec.resources.cpu, gate, stop), spec.resources.as_ray())
    callbacks = sweep_callbacks(run_dir, echo)
    experiment = run_dir / TUNE_DIR / TUNE_EXPERIMENT
    restore = tune.Tuner.can_restore(experiment)
    held = _held_finished(run_dir, spec, plan, experiment) if restore else []
    if held:
        aside = set_aside(experiment)
        echo(f"Tune's experiment holds {len(held)} trials as finished that have work left on disk ({', '.join(held[:3])}"
             f"{', ...' if len(held) > 3 else ''}: emptied by hand, or skipped and no longer settled); Tune would not "
             f"run them again, so it is set aside as {aside.name if aside else '?'} and a fresh one runs every trial "
             "not done")
        restore = False
    if restore:
        with _quiet_result_grid():
            tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
        compat.set_callbacks(tuner, callbacks)  # not the ones pickled at the first launch
    else:
        if experiment.exists():  # killed before Tune's first snapshot: nothing in it to keep
            shutil.rmtree(experiment)
        todo = [s.entry.trial_id for s in trial_states(run_dir, plan) if left_to_train(s, spec.run.stop)]
        if not todo:
            return {"fit_s": 0.0}
        tuner = tune.Tuner(
            trainable,
            param_space={"trial_id": tune.grid_search(todo)},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=spec.run.max_concurrent or None,
                reuse_actors=True,  # a trial starts in a warm worker: no new process, no torch import
                trial_dirname_creator=tune_dirname,
            ),
            run_config=tune.RunConfig(
                name=TUNE_EXPERIMENT,
                storage_path=str(run_dir / TUNE_DIR),
                failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=TUNE_CHECKPOINTS_KEPT),
                sync_config=tune.SyncConfig(sync_artifacts=False),
                verbose=0,  # the live view is ours (callbacks.LiveView)
                callbacks=callbacks,
            ),
        )
    # Tune stages a placement group for every pending trial (200 by default): stage only
    # what can start soon
    t1 = time.perf_counter()
    with (scoped_env({"TUNE_MAX_PENDING_TRIALS_PG": str(max(1, slots))}), _quiet_result_grid(),
          _no_tune_resume_advice()):
        tuner.fit()
    return {"fit_s": time.perf_counter() - t1}


class _NoTuneResumeAdvice(logging.Filter):
    """Drops Tune's own resume advice (Tuner.restore) after Ctrl-C: ray-grok's is the same launch
    command, which the CLI prints."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(advice in record.getMessage() for advice in compat.TUNE_RESUME_ADVICE)


@contextlib.contextmanager
def _no_tune_resume_advice() -> Iterator[None]:
    logger, quiet = logging.getLogger(compat.TUNE_RUN_LOGGER), _NoTuneResumeAdvice()
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


@contextlib.contextmanager
def _quiet_result_grid() -> Iterator[None]:
    """Tuner.restore and the end of Tuner.fit read result.json files that the disabled loggers
    never wrote, and warn per trial; the results tables are ours (ray_grok.results): noise."""
    logger = logging.getLogger(compat.TUNE_RESULTS_LOGGER)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)
