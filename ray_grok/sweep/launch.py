"""`launch`: run a grid's trials on Ray Tune, locally by default; resume an interrupted sweep.

How the pieces fit:
- Tune's search space is one `grid_search` over trial ids; the trainable (`ray_grok_trial`) reads
  the trial's config.json (written when the run directory was created) and calls `run_trial` on
  the trial directory, with a reporter that forwards every evaluation to `tune.report`, attaching
  a tiny marker `tune.Checkpoint` whenever the trial saved its own checkpoint.
- The trial directory is the truth. Its checkpoints are what a resumed or retried trial continues
  from (run_trial resumes by itself; a finished trial returns at once), so Tune's experiment state
  may lag behind it without harm: Tune restores its view with `Tuner.restore(resume_errored=True)`
  and any trial it thinks unfinished but that is done on disk costs one no-op call.
- Failures: `FailureConfig(max_failures)` retries a failing trial (from its last checkpoint); a
  trial that keeps failing is marked failed in its status.json with the message.
- The live view and the driver heartbeat (sweep.json) are a Tune Callback.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
import shutil
import socket
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from ray.tune import Callback

from ..results.aggregate import AggregateSummary, aggregate
from ..trial.config import config_from_dict
from .grid import GridError, GridSpec
from ..trial.outputs import read_json, write_json
from .rundir import (
    HEARTBEAT_S, LOG_FILE, PENDING, TUNE_DIR, TUNE_EXPERIMENT, Launch, RunDirError, driver_alive, prepare,
    read_driver, read_plan, record_attempt, record_failure, resolve, trial_states, write_driver,
)
from ..trial.schema import CHECKPOINT_DIR, CONFIG_FILE, DONE, FAILED, RUNNING, SCALAR_EVAL_COLUMNS, STATUS_FILE

BEST_METRIC = "ood_test_acc_last"  # what the live view reports as "best o.o.d. accuracy"
FINISHED, STOPPED = "finished", "stopped"  # driver states in sweep.json besides running
# Tune keeps this many marker checkpoints per trial. Tune forces a snapshot of the whole
# experiment state (O(trials)) each time a trial has reported this many checkpoints since the
# last one; 1 would snapshot on every checkpoint of every trial.
TUNE_CHECKPOINTS_KEPT = 4
MAX_TEMP_DIR_CHARS = 40  # Ray appends ~63 characters and AF_UNIX paths stop at 107


# ---------------------------------------------------------------------------------------------
# Ray: safe settings for a local instance, or a connection to a running cluster
# ---------------------------------------------------------------------------------------------

LIVE_TB_DIR = "phase-diagrams"  # the sweep-level TensorBoard run under RUN_DIR


def ray_temp_dir() -> str:
    """Short (AF_UNIX paths stop at 107 bytes and Ray adds ~63) and per user (not /tmp/ray)."""
    path = os.environ.get("RAY_GROK_TEMP_DIR") or f"/tmp/rg-{os.getuid()}"
    if len(path) > MAX_TEMP_DIR_CHARS:
        raise GridError(f"RAY_GROK_TEMP_DIR={path!r} is {len(path)} characters; Ray's socket paths need it "
                        f"at most {MAX_TEMP_DIR_CHARS}")
    return path


@contextlib.contextmanager
def scoped_env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ray_env(spec: GridSpec) -> dict[str, str]:
    """Environment for Ray and Tune, set before ray.init and Tuner.fit (children inherit it)."""
    env = {
        # our trial dirs hold metrics and TensorBoard files; Tune's own JSON/CSV/TensorBoard loggers
        # would copy every report (with the config) into RUN_DIR/tune and double the curves
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
        # experiment-state snapshots cost O(trials); 'auto' starts at 10 s. Trial dirs are the
        # truth, so a snapshot minutes old loses nothing on resume.
        "TUNE_GLOBAL_CHECKPOINT_S": str(spec.run.state_every_s),
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
        # with verbose=0 the classic reporter prints nothing; the new one still prints a header
        "RAY_AIR_NEW_OUTPUT": "0",
        # a failing trial's traceback goes to its train.log and Tune's error.txt; the console gets
        # one line per failure from SweepProgress, not a screen of traceback per attempt
        "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
    }
    if "RAY_AUTH_MODE" not in os.environ:
        if os.environ.get("RAY_ADDRESS"):
            raise GridError("RAY_ADDRESS is set but RAY_AUTH_MODE is not: set it as the cluster was started "
                            "(token, with RAY_AUTH_TOKEN_PATH pointing at its token file, or disabled)")
        # Ray's gRPC ports listen on every interface even for a local instance, so the local Ray
        # gets token auth with a fresh token that lives only in this process tree's environment
        # (nothing written to ~/.ray, which would switch later `ray start`s to token auth).
        env["RAY_AUTH_MODE"] = "token"
        if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
            env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    return env


@contextlib.contextmanager
def ray_session(spec: GridSpec) -> Iterator[bool]:
    """ray.init with safe settings (or connect to RAY_ADDRESS); shut down on exit if we started it.
    Yields True when Ray runs locally, inside this process tree."""
    import ray

    if ray.is_initialized():  # the caller manages Ray (tests, notebooks)
        yield False
        return
    # Ray reads RAY_AUTH_MODE into its C++ config when it is first imported, which may have been
    # before ray_env() applied: re-read it, as Ray itself does when it turns token auth on
    from ray._raylet import Config

    Config.initialize("")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
    else:
        num_cpus = os.environ.get("RAY_GROK_NUM_CPUS")
        ray.init(
            num_cpus=int(num_cpus) if num_cpus else None,
            include_dashboard=False,  # no web server at all (it would listen on a port)
            object_store_memory=spec.run.object_store_mb * 2**20,  # the default is 30% of RAM in /dev/shm
            _temp_dir=ray_temp_dir(),
            log_to_driver=False,  # trial output goes to each trial's train.log, not the console
            logging_level=logging.WARNING,
        )
    try:
        yield not address
    finally:
        ray.shutdown()


def concurrent_slots(spec: GridSpec) -> int:
    """How many trials fit at once on the cluster, at most run.max_concurrent."""
    import ray

    total = ray.cluster_resources()
    slots = math.floor(total.get("CPU", 0) / spec.resources.cpu + 1e-9)
    if spec.resources.gpu:
        slots = min(slots, math.floor(total.get("GPU", 0) / spec.resources.gpu + 1e-9))
    if spec.run.max_concurrent:
        slots = min(slots, spec.run.max_concurrent)
    return slots


# ---------------------------------------------------------------------------------------------
# The trainable: one trial, run by run_trial in its own directory
# ---------------------------------------------------------------------------------------------

def make_trainable(run_dir: Path, dirs: dict[str, str], cpus: float) -> Callable[[dict], None]:
    """A Tune function trainable over configs {"trial_id": ...}. The run directory is bound here,
    not stored in Tune's state, so a moved RUN_DIR still resumes."""
    run_dir = Path(run_dir)

    def ray_grok_trial(config: dict) -> None:
        run_one(run_dir / dirs[config["trial_id"]], config["trial_id"], cpus)

    return ray_grok_trial


def run_one(out: Path, trial_id: str, cpus: float) -> None:
    import torch
    from ray import tune

    from ..trial.run import run_trial

    cfg = config_from_dict(read_json(out / CONFIG_FILE))
    if cfg.runtime.threads == 0:  # torch would take every core of the machine, not Ray's share
        torch.set_num_threads(max(1, int(cpus)))
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
            run_trial(cfg, out, reporter=reporter, echo=echo, tensorboard=True)
        except Exception as exc:
            message = f"{type(exc).__name__}: {exc}"
            echo(f"== attempt {attempt} failed:\n{traceback.format_exc()}")
            record_failure(out, message, cfg.train.steps)
            raise


def _marker_step(marker: Any) -> str:
    try:
        with marker.as_directory() as d:
            return str(read_json(Path(d) / "marker.json")["step"])
    except Exception:  # a marker is informational only
        return "?"


# ---------------------------------------------------------------------------------------------
# The live view
# ---------------------------------------------------------------------------------------------

def _fmt_s(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class SweepProgress(Callback):
    """Counts (running / pending / done / errored), the best o.o.d. accuracy so far and an ETA,
    printed at least every PRINT_EVERY_S and as trials end; the driver heartbeat in sweep.json.

    Its state is rebuilt from the run directory (Tune pickles callbacks with its run config), and
    it holds one small record per trial: memory linear in the number of trials, work per event O(1)
    except the periodic count, which is O(trials) every PRINT_EVERY_S at most.
    """

    PRINT_EVERY_S = 30.0
    MIN_GAP_S = 2.0
    # live phase diagrams: re-aggregate after this many newly finished trials, at most this often
    LIVE_EVERY_TRIALS = 4
    LIVE_MIN_GAP_S = 20.0

    def __init__(self, run_dir: str | Path, echo: Callable[[str], None] = print):
        self.run_dir = Path(run_dir)
        self.echo = echo
        self._ready = False

    def __getstate__(self) -> dict:
        return {"run_dir": str(self.run_dir)}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["run_dir"])

    def _init(self) -> None:
        plan = read_plan(self.run_dir)
        self.name, self.total = plan.name, len(plan.entries)
        self.steps_total = {e.trial_id: e.steps for e in plan.entries}
        self.dirs = {e.trial_id: e.dir for e in plan.entries}
        self.step: dict[str, int] = {}
        self.finished: set[str] = set()
        self.done_on_disk: set[str] = set()
        self.best, self.best_id = -math.inf, ""
        for s in trial_states(self.run_dir, plan):
            tid = s.entry.trial_id
            self.step[tid] = s.step
            if s.state == DONE:
                self.finished.add(tid)
                self.done_on_disk.add(tid)
                monitor = read_json(self.run_dir / s.entry.dir / CONFIG_FILE)["checkpoint"]["monitor"]
                value = s.status.get("best_value")
                if monitor == BEST_METRIC and value is not None and value > self.best:
                    self.best, self.best_id = value, tid
        self.started = time.time()
        self.trained = 0  # steps trained by this driver, for the rate
        self.last_print = self.last_beat = 0.0
        self.counts: dict[str, int] = {}
        self.eta: float | None = None
        self.live_done, self.live_at, self.live_cost = len(self.done_on_disk), 0.0, 0.0
        self._ready = True
        write_driver(self.run_dir, RUNNING, self.started)

    # ---- Tune hooks ----
    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if not self._ready:
            self._init()
        self._tick(trials, event=False)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        if not self._ready:
            self._init()
        tid = trial.config["trial_id"]
        step = int(result.get("step", 0))
        self.trained += max(0, step - self.step.get(tid, 0))
        self.step[tid] = step
        value = result.get(BEST_METRIC)
        if value is not None and value > self.best:
            self.best, self.best_id = value, tid

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self._ready:
            self._init()
        tid = trial.config["trial_id"]
        self.finished.add(tid)
        # Tune also 'completes' trials it stops on Ctrl-C: only the trial's status.json says done
        status = self.run_dir / self.dirs[tid] / STATUS_FILE
        if status.exists() and read_json(status).get("state") == DONE:
            self.done_on_disk.add(tid)
        self._tick(trials, event=True)
        self._live_phases()

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self._ready:
            self._init()
        tid = trial.config["trial_id"]
        self.finished.add(tid)
        # a worker that died (out of memory, killed) could not write its own failure
        self.echo(f"trial {tid} errored after {trial.num_failures} attempts: {self._error(tid, trial)}")
        self._tick(trials, event=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if not self._ready:
            self._init()
        tid = trial.config["trial_id"]
        self.echo(f"trial {tid} failed (attempt {trial.num_failures}), retrying: {self._error(tid, trial)}")

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        if self._ready:
            self._tick(trials, event=True, force=True)
            self._live_phases(force=True)

    def _live_phases(self, force: bool = False) -> None:
        """Re-aggregate and add the current phase diagrams to the sweep-level TensorBoard run
        (RUN_DIR/LIVE_TB_DIR), so `tensorboard --logdir RUN_DIR` shows the diagram filling in."""
        done, now = len(self.done_on_disk), time.time()
        # it runs in Tune's event loop: keep it to a tenth of the driver's time however large the sweep
        gap = max(self.LIVE_MIN_GAP_S, 10 * self.live_cost)
        due = done - self.live_done >= self.LIVE_EVERY_TRIALS and now - self.live_at >= gap
        if not done or done == self.live_done or not (force or due):
            return
        self.live_done, self.live_at = done, now
        try:
            from ..results.phases import read_results
            from ..results.plots import log_phase_diagrams

            aggregate(self.run_dir)
            log_phase_diagrams(read_results(self.run_dir, "trials"), self.run_dir / LIVE_TB_DIR, step=done)
        except Exception as exc:  # a picture must never stop the sweep
            self.echo(f"live phase diagrams skipped: {type(exc).__name__}: {exc}")
        self.live_cost = time.time() - now

    def _error(self, tid: str, trial: Any) -> str:
        """The failure's message from status.json; a worker that died (out of memory, killed)
        could not write it, so Tune's error file is copied there."""
        out = self.run_dir / self.dirs[tid]
        status = read_json(out / STATUS_FILE) if (out / STATUS_FILE).exists() else {}
        if status.get("state") != FAILED:
            record_failure(out, _tune_error(trial), self.steps_total[tid])
            status = read_json(out / STATUS_FILE)
        return status.get("error", "?")

    # ---- the view ----
    def _tick(self, trials: list, event: bool, force: bool = False) -> None:
        now = time.time()
        gap = now - self.last_print
        if force or (event and gap >= self.MIN_GAP_S) or gap >= self.PRINT_EVERY_S:
            self.echo(self.line(trials, now))
            self.last_print = now
        if now - self.last_beat >= HEARTBEAT_S:
            write_driver(self.run_dir, RUNNING, self.started, counts=self.counts, eta_s=self.eta)
            self.last_beat = now

    def line(self, trials: list, now: float) -> str:
        # done: from the files (a trial Tune runs again from a stale snapshot is still done);
        # running, errored: Tune's view
        tune_status = {t.config["trial_id"]: t.status for t in trials}
        done = len(self.done_on_disk)
        by_state = Counter(tune_status.get(tid, "PENDING") for tid in self.steps_total if tid not in self.done_on_disk)
        running, errored = by_state["RUNNING"], by_state["ERROR"]
        pending = self.total - running - errored - done
        self.counts = {"done": done, "running": running, "pending": pending, "errored": errored}
        remaining = sum(self.steps_total[t] - self.step.get(t, 0) for t in self.steps_total if t not in self.finished)
        elapsed = now - self.started
        rate = self.trained / elapsed if elapsed > 0 else 0.0
        self.eta = remaining / rate if rate > 0 else (0.0 if remaining == 0 else None)
        best = f"{self.best:.3f} ({self.best_id})" if self.best_id else "-"
        return (f"[{self.name} {_fmt_s(elapsed)}] done {done}/{self.total} | running {running} | "
                f"pending {pending} | errored {errored} | best {BEST_METRIC} {best} | ETA {_fmt_s(self.eta)}")


def _tune_error(trial: Any) -> str:
    """The last failure Tune recorded for a trial (its error.txt), as one short message."""
    try:
        text = Path(trial.error_file).read_text().strip()
    except Exception:
        return "the trial's worker failed (no message was recorded)"
    last = text.split("Failure # ")[-1]
    lines = [ln for ln in last.splitlines() if ln.strip()]
    return (lines[-1] if lines else text)[-500:]


# ---------------------------------------------------------------------------------------------
# launch
# ---------------------------------------------------------------------------------------------

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
    def complete(self) -> bool:
        """Every trial is done (none errored, none left)."""
        return self.counts.get(DONE, 0) == sum(self.counts.values())

    @property
    def unfinished(self) -> int:
        return sum(self.counts.values()) - self.counts.get(DONE, 0) - self.errored


def launch(launch: Launch, echo: Callable[[str], None] = print) -> SweepOutcome:
    """Run (or continue) the sweep: every trial not yet done, then the results tables."""
    t0 = time.time()
    spec, run_dir = launch.spec, launch.run_dir
    driver = read_driver(run_dir)
    if driver_alive(driver):
        raise RunDirError(f"{run_dir} is being run by a driver on {driver.get('host')} (pid {driver.get('pid')}, "
                          f"heartbeat {time.time() - driver.get('updated', 0):.0f} s ago); stop it first")
    resumed = prepare(run_dir, spec, launch.grid_text, launch.trials)
    states = Counter(s.state for s in trial_states(run_dir))
    echo(f"{'resuming' if resumed else 'launching'} {spec.name}: {len(launch.trials)} trials in {run_dir}"
         + (f" ({states[DONE]} done, {states[FAILED]} errored, {states[RUNNING]} interrupted, "
            f"{states[PENDING]} pending)" if resumed else ""))
    try:
        timing = _fit(launch, echo) if states[DONE] < len(launch.trials) else {}
    finally:  # also when Ray or Tune fails: `status` must not report a live driver
        counts = Counter(s.state for s in trial_states(run_dir))
        unfinished = len(launch.trials) - counts[DONE] - counts[FAILED]
        write_driver(run_dir, FINISHED if not unfinished else STOPPED, t0, counts=dict(counts))
    summary = aggregate(run_dir)
    wall = time.time() - t0
    echo(f"{spec.name}: {counts[DONE]} done, {counts[FAILED]} errored, {unfinished} unfinished in {_fmt_s(wall)}; "
         f"results: {summary.path}/{{trials,curves}} ({summary.trials} trials, {summary.curve_rows} curve rows)")
    return SweepOutcome(run_dir, dict(counts), summary, wall, resumed, **timing)


def _fit(launch: Launch, echo: Callable[[str], None]) -> dict[str, float]:
    from ray import tune

    spec, run_dir = launch.spec, launch.run_dir
    plan = read_plan(run_dir)
    t0 = time.perf_counter()
    with scoped_env(ray_env(spec)), ray_session(spec) as local:
        ray_start = time.perf_counter() - t0
        slots = concurrent_slots(spec)
        if slots < 1:
            raise GridError(f"{spec.source}: each trial asks for {spec.resources.cpu:g} CPU and "
                            f"{spec.resources.gpu:g} GPU, more than this Ray cluster has "
                            f"({'local machine' if local else os.environ.get('RAY_ADDRESS')})")
        trainable = tune.with_resources(make_trainable(run_dir, {e.trial_id: e.dir for e in plan.entries},
                                                       spec.resources.cpu), spec.resources.as_ray())
        progress = SweepProgress(run_dir, echo)
        experiment = run_dir / TUNE_DIR / TUNE_EXPERIMENT
        if tune.Tuner.can_restore(experiment):
            with _quiet_result_grid():
                tuner = tune.Tuner.restore(str(experiment), trainable, resume_unfinished=True, resume_errored=True)
            # Tune pickled the first launch's run config; give it this launch's callback
            tuner._local_tuner.get_run_config().callbacks = [progress]
        else:
            if experiment.exists():  # killed before Tune's first snapshot: nothing in it to keep
                shutil.rmtree(experiment)
            tuner = tune.Tuner(
                trainable,
                param_space={"trial_id": tune.grid_search(plan.ids)},
                tune_config=tune.TuneConfig(
                    max_concurrent_trials=spec.run.max_concurrent or None,
                    reuse_actors=True,  # a trial starts in a warm worker: no new process, no torch import
                    trial_dirname_creator=_tune_dirname,
                ),
                run_config=tune.RunConfig(
                    name=TUNE_EXPERIMENT,
                    storage_path=str(run_dir / TUNE_DIR),
                    failure_config=tune.FailureConfig(max_failures=spec.run.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=TUNE_CHECKPOINTS_KEPT),
                    sync_config=tune.SyncConfig(sync_artifacts=False),
                    verbose=0,  # the live view is SweepProgress
                    callbacks=[progress],
                ),
            )
        # Tune stages a placement group for every pending trial (200 by default): stage only
        # what can start soon
        t1 = time.perf_counter()
        with scoped_env({"TUNE_MAX_PENDING_TRIALS_PG": str(max(1, slots))}), _quiet_result_grid():
            tuner.fit()
        return {"ray_start_s": ray_start, "fit_s": time.perf_counter() - t1}


@contextlib.contextmanager
def _quiet_result_grid() -> Iterator[None]:
    """Tuner.restore and the end of Tuner.fit read result.json files that the disabled loggers
    never wrote, and warn per trial; the results tables are ours (aggregate.py): noise."""
    logger = logging.getLogger("ray.tune.analysis.experiment_analysis")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _tune_dirname(trial: Any) -> str:
    return trial.config["trial_id"]



__all__ = ["Launch", "SweepOutcome", "SweepProgress", "launch", "make_trainable", "ray_env", "ray_session",
           "resolve"]  # resolve is rundir's, re-exported for callers that drive sweeps (ray_cluster)
