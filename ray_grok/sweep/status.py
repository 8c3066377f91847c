"""`ray-grok status RUN_DIR`: where a sweep stands, from its files alone (no Ray needed).

Works for a sweep running on another machine as long as RUN_DIR is visible: the driver's
heartbeat (sweep.json) says whether it is alive, each trial's status.json where the trial is.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..io import format_duration
from ..results.plan import read_plan
from ..trial.schema import DONE, FAILED, INTERRUPTED, PENDING, RUNNING, SKIPPED, state_label
from .cost import CostEstimate, estimate, remaining_estimate
from .live_cost import LiveCost, cost_lines, grid_resources, live_cost
from .stop import stopped_states
from .rundir import SLURM_DIR, TrialState, driver_alive, read_driver, slurm_jobs, trial_config, trial_states

# status.json says interrupted (Ctrl-C), or running but no driver is alive (a killed driver)
ERRORED = "errored"  # status.json says failed
ORDER = (DONE, RUNNING, INTERRUPTED, PENDING, ERRORED)
# status.json says skipped, for a reason (settle.py: "settled"); counted as "skipped: settled"
SKIPPED_PREFIX = f"{SKIPPED}: "


@dataclass(frozen=True)
class SweepStatus:
    name: str
    run_dir: Path
    counts: dict[str, int]
    steps_done: int
    steps_total: int
    driver: dict
    alive: bool
    eta_s: float | None
    s_per_step: float | None  # training seconds per step of the finished trials
    errored: list[TrialState] = field(default_factory=list)
    retired: int = 0  # trials a later grid no longer holds: kept on disk, not run, not in `counts`
    cost: LiveCost | None = None  # what is left, at the measured speed per depth (live_cost.py)
    saved: CostEstimate | None = None  # what the skipped trials would have cost (None: none skipped)
    stopped: int = 0  # done trials run.stop ended early (stop.py)
    stop_saved: CostEstimate | None = None  # the rest of their schedules (None: none, or unreadable)

    @property
    def skipped(self) -> int:
        return sum(v for k, v in self.counts.items() if k.startswith(SKIPPED_PREFIX))

    @property
    def total(self) -> int:
        """The trials of the current grid (retired ones are not among them)."""
        return sum(self.counts.values())


def sweep_status(run_dir: str | Path, now: float | None = None) -> SweepStatus:
    run_dir = Path(run_dir)
    now = time.time() if now is None else now
    plan = read_plan(run_dir)
    driver = read_driver(run_dir)
    alive = driver_alive(driver, now)
    states = trial_states(run_dir, plan)

    def label(s: TrialState) -> str:
        if s.state == FAILED:
            return ERRORED
        if s.state == INTERRUPTED or (s.state == RUNNING and not alive):
            return INTERRUPTED
        return state_label(s.status) if s.state == SKIPPED else s.state

    counts = Counter(label(s) for s in states)
    skipped = [s for s in states if s.state == SKIPPED]
    states = [s for s in states if s.state != SKIPPED]  # progress and ETA: the trials to train
    steps_total = sum(s.entry.steps for s in states)
    steps_done = sum(s.entry.steps if s.state == DONE else min(s.step, s.entry.steps) for s in states)
    done = [s for s in states if s.state == DONE and s.status.get("wall_time")]
    s_per_step = (sum(s.status["wall_time"] for s in done) / max(1, sum(s.step for s in done))) if done else None
    eta = None
    if alive:
        eta = driver.get("eta_s")
        running = counts[RUNNING]
        if eta is None and s_per_step and running:
            left = sum(s.entry.steps - s.step for s in states if s.state not in (DONE, FAILED))
            eta = left * s_per_step / running
    stopped = stopped_states(states)
    shown = {k: counts[k] for k in ORDER} | {k: v for k, v in sorted(counts.items()) if k.startswith(SKIPPED_PREFIX)}
    return SweepStatus(plan.name, run_dir, shown, steps_done, steps_total, driver, alive,
                       eta, s_per_step, [s for s in states if s.state == FAILED], len(plan.retired),
                       cost=live_cost(run_dir, states), saved=skipped_cost(run_dir, skipped),
                       stopped=len(stopped), stop_saved=stopped_cost(run_dir, stopped))


def skipped_cost(run_dir: Path, skipped: list[TrialState]) -> CostEstimate | None:
    """cost.py's estimate of the skipped trials (on the stored grid's resources): what skipping saved.
    None where nothing was skipped, or where the grid's resources or every skipped trial's config
    cannot be read: status goes on without the figure (as live_cost does)."""
    if not skipped:  # most sweeps: no second read of the grid file
        return None
    resources = grid_resources(run_dir)  # the resources section alone: fast
    configs = [c for c in (trial_config(run_dir / s.entry.dir) for s in skipped) if c is not None]
    if resources is None or not configs:
        return None
    return estimate(configs, resources.gpu)


def stopped_cost(run_dir: Path, stopped: list[TrialState]) -> CostEstimate | None:
    """The rest of the stopped trials' schedules, at cost.py's estimate (as skipped_cost)."""
    if not stopped:
        return None
    resources = grid_resources(run_dir)
    done = [(c, s.step) for c, s in ((trial_config(run_dir / s.entry.dir), s) for s in stopped) if c is not None]
    if resources is None or not done:
        return None
    return remaining_estimate(done, resources.gpu)


def format_status(st: SweepStatus, max_errors: int = 50, now: float | None = None) -> str:
    now = time.time() if now is None else now
    d = st.driver
    if st.alive:
        driver = (f"driver running on {d.get('host')} (pid {d.get('pid')}, heartbeat "
                  f"{now - d.get('updated', now):.0f} s ago)")
    elif d:
        driver = (f"no driver running (last: {d.get('state')} on {d.get('host')}, "
                  f"{format_duration(now - d.get('updated', now))} ago)")
    else:
        driver = "no driver has run yet"
    pct = 100.0 * st.steps_done / st.steps_total if st.steps_total else 100.0
    lines = [
        f"sweep {st.name} in {st.run_dir}: {st.total} trials; {driver}",
        "  " + " | ".join(f"{k} {v}" for k, v in st.counts.items())
        + (f" (and {st.retired} retired: no longer in the grid, kept on disk, not run)" if st.retired else ""),
        *([f"  skipped {st.skipped} trials whose cell was settled (run.settle): saved {st.saved.summary()}; "
           "a launch without run.settle runs them"] if st.saved else []),
        *([f"  stopped {st.stopped} done trials early, o.o.d. at chance (run.stop; the evidence in their "
           "status.json)" + (f": saved {st.stop_saved.summary()}" if st.stop_saved else "")
           + "; a launch without run.stop trains them on"] if st.stopped else []),
        f"  progress {pct:.1f}% of training steps ({st.steps_done:,} / {st.steps_total:,})"
        + (f" | ETA {format_duration(st.eta_s)}" if st.alive else "")
        + (f" | {st.s_per_step * 1000:.1f} ms/step in finished trials" if st.s_per_step else ""),
    ]
    if st.cost:
        lines += cost_lines(st.cost, st.counts[RUNNING] if st.alive else 0)
    left = st.total - st.counts[DONE] - st.counts[ERRORED] - st.skipped
    jobs = slurm_jobs(st.run_dir)
    if jobs:
        last = jobs[-1]
        lines.append(f"  Slurm: {len(jobs)} job(s) submitted, the last {last['job_id']} with {last['profile']}; "
                     f"its logs in {st.run_dir / SLURM_DIR / str(last['job_id'])}")
    if not st.alive and left:
        cluster = f" --cluster {jobs[-1]['profile']}" if jobs else ""
        lines.append(f"  {left} trials unfinished: resume with `ray-grok launch --resume --out {st.run_dir}{cluster}`")
    if st.errored:
        lines.append(f"errored trials ({len(st.errored)}):")
        for s in st.errored[:max_errors]:
            msg = (s.error or "no message").strip().replace("\n", " ")
            lines.append(f"  {s.entry.trial_id} ({s.entry.dir}), {s.attempts} attempts, at step {s.step}: "
                         f"{msg[:400]}")
        if len(st.errored) > max_errors:
            lines.append(f"  ... and {len(st.errored) - max_errors} more")
    return "\n".join(lines)
