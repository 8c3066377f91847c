"""What the driver does while Tune runs the trials: one Tune callback per job.

  SweepTally          keeps the counts the others show: trials done on disk, steps trained, the best
                      o.o.d. accuracy so far, the ETA (rebuilt from the run directory at the start)
  FailureRecorder     copies a failure into the trial's status.json (a worker that died could not)
                      and prints one line per failure
  LiveView            prints the progress line at least every 30 s and whenever a trial ends
  Heartbeat           rewrites sweep.json every HEARTBEAT_S: `ray-grok status` and the refusal of a
                      second driver read it
  LivePhaseDiagrams   re-aggregates every few finished trials and adds the phase diagrams to the
                      sweep-level TensorBoard run RUN_DIR/phase-diagrams

Tune calls them in list order (`sweep_callbacks`), the tally first. Memory is one small record
per trial; work per event is O(1) except the counts, O(trials) at most every few seconds.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

from ray.tune import Callback

from ..io import disk_full, disk_full_line, format_duration, read_json, read_json_or
from ..trial.schema import CONFIG_FILE, DONE, FAILED, RUNNING, SKIPPED, STATUS_FILE
from .rundir import HEARTBEAT_S, disk_full_error, read_plan, record_failure, trial_states, write_driver

BEST_METRIC = "ood_test_acc_last"  # what the live view reports as "best o.o.d. accuracy"
LIVE_TB_DIR = "phase-diagrams"  # the sweep-level TensorBoard run under RUN_DIR


class Placeholder(Callback):
    """What a ray-grok callback becomes when Tune unpickles its run config (tuner.pkl): nothing.
    A restored sweep is given the launch's own callbacks (launch._fit), built from the run directory."""


class _Unpickled(Callback):
    # Tune pickles its callbacks with the run config; what they hold (an echo function, the tally)
    # is this launch's, so they pickle as a Placeholder, whose path stays stable.
    def __reduce__(self) -> tuple:
        return Placeholder, ()


class SweepTally(_Unpickled):
    """The numbers of the sweep as the driver sees them; read by the callbacks after it."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)

    def setup(self, **info: Any) -> None:
        plan = read_plan(self.run_dir)
        self.name = plan.name
        # the current grid's trials: retired ones are not run and not counted
        self.steps_total = {e.trial_id: e.steps for e in plan.active}
        self.dirs = {e.trial_id: e.dir for e in plan.active}
        self.step: dict[str, int] = {}
        self.finished: set[str] = set()  # ended in Tune: done, errored, or stopped
        self.done: set[str] = set()  # done on disk: a trial Tune runs again from a stale snapshot stays done
        self.skipped: set[str] = set()  # skipped by this launch as settled (settle.py)
        self.best, self.best_id = -math.inf, ""
        for s in trial_states(self.run_dir, plan):
            tid = s.entry.trial_id
            self.step[tid] = s.step
            if s.state == DONE:
                self.finished.add(tid)
                self.done.add(tid)
                monitor = read_json(self.run_dir / s.entry.dir / CONFIG_FILE)["checkpoint"]["monitor"]
                self._offer(tid, s.status.get("best_value") if monitor == BEST_METRIC else None)
        self.started = time.time()
        self.trained = 0  # steps trained by this driver, for the rate

    def _offer(self, tid: str, value: float | None) -> None:
        if value is not None and value > self.best:
            self.best, self.best_id = value, tid

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        tid = trial.config["trial_id"]
        step = int(result.get("step", 0))
        self.trained += max(0, step - self.step.get(tid, 0))
        self.step[tid] = step
        self._offer(tid, result.get(BEST_METRIC))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.config["trial_id"]
        self.finished.add(tid)
        # Tune also 'completes' trials it stops on Ctrl-C: only the trial's status.json says done
        state = read_json_or(self.trial_dir(tid) / STATUS_FILE, {}).get("state")
        if state == DONE:
            self.done.add(tid)
        elif state == SKIPPED:
            self.skipped.add(tid)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.finished.add(trial.config["trial_id"])

    def trial_dir(self, tid: str) -> Path:
        return self.run_dir / self.dirs[tid]

    def counts(self, trials: list) -> dict[str, int]:
        """done from the files; running and errored from Tune's view of TRIALS; pending the rest."""
        tune_status = {t.config["trial_id"]: t.status for t in trials}
        ended = self.done | self.skipped
        by_state = Counter(tune_status.get(tid, "PENDING") for tid in self.steps_total if tid not in ended)
        running, errored = by_state["RUNNING"], by_state["ERROR"]
        return {"done": len(self.done), "running": running, "errored": errored, "skipped": len(self.skipped),
                "pending": len(self.steps_total) - running - errored - len(ended)}

    def eta(self, now: float) -> float | None:
        """Seconds to train the steps left at this driver's rate so far; None before any step."""
        remaining = sum(n - self.step.get(t, 0) for t, n in self.steps_total.items() if t not in self.finished)
        elapsed = now - self.started
        rate = self.trained / elapsed if elapsed > 0 else 0.0
        return remaining / rate if rate > 0 else (0.0 if remaining == 0 else None)


class FailureRecorder(_Unpickled):
    """One line per failed attempt; the failure's message in the trial's status.json."""

    def __init__(self, tally: SweepTally, echo: Callable[[str], None]):
        self.tally, self.echo = tally, echo

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.config["trial_id"]
        self.echo(f"trial {tid} failed (attempt {trial.num_failures}), retrying: {self._error(tid, trial)}")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        tid = trial.config["trial_id"]
        self.echo(f"trial {tid} errored after {trial.num_failures} attempts: {self._error(tid, trial)}")

    def _error(self, tid: str, trial: Any) -> str:
        """The failure's message from status.json; a worker that died (out of memory, killed)
        could not write it, so Tune's error file is copied there. A full disk stops the sweep
        here: every other trial would fail the same way, each retry included."""
        out = self.tally.trial_dir(tid)
        error = _tune_error(trial)
        if disk_full(error):
            raise disk_full_error(self.tally.run_dir, f"trial {tid}: {disk_full_line(error)}")
        status = read_json_or(out / STATUS_FILE, {})
        if status.get("state") != FAILED:
            record_failure(out, error, self.tally.steps_total[tid])
            status = read_json(out / STATUS_FILE)
        return status.get("error", "?")


def _tune_error(trial: Any) -> str:
    """The last failure Tune recorded for a trial (its error.txt), as one short message."""
    try:
        text = Path(trial.error_file).read_text().strip()
    except Exception:
        return "the trial's worker failed (no message was recorded)"
    last = text.split("Failure # ")[-1]
    lines = [ln for ln in last.splitlines() if ln.strip()]
    return (lines[-1] if lines else text)[-500:]


class LiveView(_Unpickled):
    """`[smoke 0m26s] done 12/32 | running 2 | pending 18 | errored 0 | best ... | ETA 0m31s`"""

    PRINT_EVERY_S = 30.0
    MIN_GAP_S = 2.0  # between lines printed because trials ended

    def __init__(self, tally: SweepTally, echo: Callable[[str], None]):
        self.tally, self.echo = tally, echo
        self.last_print = 0.0

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        self._show(trials, event=False)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._show(trials, event=True)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._show(trials, event=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._show(trials, event=True, force=True)

    def _show(self, trials: list, event: bool, force: bool = False) -> None:
        now = time.time()
        gap = now - self.last_print
        if force or (event and gap >= self.MIN_GAP_S) or gap >= self.PRINT_EVERY_S:
            self.echo(self.line(trials, now))
            self.last_print = now

    def line(self, trials: list, now: float) -> str:
        t, c = self.tally, self.tally.counts(trials)
        best = f"{t.best:.3f} ({t.best_id})" if t.best_id else "-"
        return (f"[{t.name} {format_duration(now - t.started)}] done {c['done']}/{len(t.steps_total)} | "
                f"running {c['running']} | pending {c['pending']} | errored {c['errored']} | "
                + (f"skipped (settled) {c['skipped']} | " if c["skipped"] else "")
                + f"best {BEST_METRIC} {best} | ETA {format_duration(t.eta(now))}")


class Heartbeat(_Unpickled):
    """sweep.json: the driver's host, pid, state, counts and ETA, rewritten every HEARTBEAT_S."""

    def __init__(self, tally: SweepTally):
        self.tally = tally
        self.last_beat = 0.0

    def setup(self, **info: Any) -> None:
        self._beat()

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if time.time() - self.last_beat >= HEARTBEAT_S:
            self._beat(trials)

    def _beat(self, trials: list | None = None) -> None:
        from .. import __version__

        now = time.time()
        counts = {} if trials is None else {"counts": self.tally.counts(trials), "eta_s": self.tally.eta(now)}
        # version: of the driver that runs Tune, i.e. that writes its state under RUN_DIR/tune
        try:
            write_driver(self.tally.run_dir, RUNNING, self.tally.started, version=__version__, **counts)
        except OSError as exc:
            if disk_full(exc):
                raise disk_full_error(self.tally.run_dir, f"the driver's heartbeat: {disk_full_line(exc)}") from None
            raise
        self.last_beat = now


class LivePhaseDiagrams(_Unpickled):
    """The current phase diagrams as TensorBoard images, after every EVERY_TRIALS finished trials.
    It runs in Tune's event loop, so it takes at most a tenth of the driver's time: the gap
    between two updates is at least ten times what the last one cost."""

    EVERY_TRIALS = 4
    MIN_GAP_S = 20.0

    def __init__(self, tally: SweepTally, echo: Callable[[str], None]):
        self.tally, self.echo = tally, echo
        self.shown, self.at, self.cost = 0, 0.0, 0.0

    def setup(self, **info: Any) -> None:
        self.shown = len(self.tally.done)  # a resumed sweep: what it starts with was shown before

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._update()

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._update(force=True)

    def _update(self, force: bool = False) -> None:
        done, now = len(self.tally.done), time.time()
        due = done - self.shown >= self.EVERY_TRIALS and now - self.at >= max(self.MIN_GAP_S, 10 * self.cost)
        if not done or done == self.shown or not (force or due):
            return
        self.shown, self.at = done, now
        try:
            from ..results.aggregate import aggregate
            from ..results.phases import read_results
            from ..results.plots import log_phase_diagrams

            run_dir = self.tally.run_dir
            aggregate(run_dir)
            log_phase_diagrams(read_results(run_dir, "trials"), run_dir / LIVE_TB_DIR, step=done)
        except Exception as exc:  # a picture must never stop the sweep
            self.echo(f"live phase diagrams skipped: {type(exc).__name__}: {exc}")
        self.cost = time.time() - now


def sweep_callbacks(run_dir: Path, echo: Callable[[str], None]) -> list[Callback]:
    """The driver's callbacks, in the order Tune must call them (the tally first)."""
    tally = SweepTally(run_dir)
    return [tally, FailureRecorder(tally, echo), LiveView(tally, echo), Heartbeat(tally),
            LivePhaseDiagrams(tally, echo)]
