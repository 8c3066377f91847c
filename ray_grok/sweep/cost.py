"""What a grid costs before it runs: model FLOPs per trial, and hours at a stated throughput.

The FLOP count is trial/flops.py's (the MFU accounting of `benchmarks/throughput.py`), for the
training steps plus the evaluations. Hours follow from an achieved model FLOP rate, which is an
assumption and is printed with every estimate.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from ..trial.config import TrialConfig
from ..trial.flops import CPU_GFLOPS_PER_CORE, CPU_RATE_SOURCE, trial_flops
from ..trial.schema import SKIPPED
from .grid import describe_axes
from ..results.plan import Plan
from .rundir import Launch, check_extension, existing_plan, grid_states, trial_states
from .settle import most_skippable, still_settled
from .stop import stopped_states

# Achieved model FLOP/s per GPU. No GPU measurement of benchmarks/throughput.py is recorded yet;
# this is the rate the authors' own runs imply: a depth-6 trial (2.2e18 FLOPs, trial_flops)
# fit their 6-hour limit on one A100, so they reached at least 2.2e18 / 21,600 s = 1.0e14 FLOP/s.
DEFAULT_GPU_TFLOPS = 100.0
GPU_RATE_SOURCE = ("the rate the paper's runs imply (a depth-6 trial, 2.2e18 FLOPs, fit the authors' "
                   "6 h limit on one A100)")


@dataclass(frozen=True)
class CostEstimate:
    trials: int
    flops: float
    gpu_hours: float  # 0 for CPU-only grids
    cpu_core_hours: float  # 0 for GPU grids
    assumption: str

    def summary(self) -> str:
        if self.gpu_hours >= 1:
            head = f"about {self.gpu_hours:,.0f} GPU-hours"
        elif self.gpu_hours:
            head = f"about {self.gpu_hours * 60:,.2f} GPU-minutes"
        elif self.cpu_core_hours >= 1:
            head = f"about {self.cpu_core_hours:,.1f} CPU core-hours (a lower bound)"
        else:
            head = f"about {self.cpu_core_hours * 60:,.1f} CPU core-minutes (a lower bound)"
        return f"{head} for {self.flops:.2e} model FLOPs; assumes {self.assumption}"


def estimate(configs: Iterable[TrialConfig], gpus_per_trial: float, gpu_tflops: float = DEFAULT_GPU_TFLOPS
             ) -> CostEstimate:
    """GPU-hours when trials run on GPUs (a trial with a fraction of a GPU is assumed to get no
    more than a whole one's rate, so sharing saves nothing here), else CPU core-hours."""
    configs = list(configs)
    flops = sum(trial_flops(c) for c in configs)
    if gpus_per_trial > 0:
        seconds = flops / (gpu_tflops * 1e12)
        rate = (f"{gpu_tflops:g} TFLOP/s of model FLOPs per GPU, one trial at a time per GPU: "
                + (GPU_RATE_SOURCE if gpu_tflops == DEFAULT_GPU_TFLOPS else "the rate given with --gpu-tflops")
                + "; measure yours with `python benchmarks/throughput.py` (model GFLOP/s) and pass "
                  "--gpu-tflops")
        return CostEstimate(len(configs), flops, seconds / 3600, 0.0, rate)
    seconds = flops / (CPU_GFLOPS_PER_CORE * 1e9)
    rate = f"{CPU_RATE_SOURCE}; small models run slower, plus about a second of start-up per trial"
    return CostEstimate(len(configs), flops, 0.0, seconds / 3600, rate)


def remaining_estimate(trials: Iterable[tuple[TrialConfig, int]], gpus_per_trial: float,
                       gpu_tflops: float = DEFAULT_GPU_TFLOPS) -> CostEstimate:
    """The estimate of what TRIALS (config, the step each ended at) would still have cost to the end
    of their schedules: what stopping them early saved (run.stop, stop.py). Each trial's cost is
    taken as even over its steps, as trial_flops spreads its evaluations."""
    trials = list(trials)
    parts = [(estimate([cfg], gpus_per_trial, gpu_tflops), max(0.0, 1.0 - step / cfg.train.steps))
             for cfg, step in trials]
    if not parts:
        return estimate([], gpus_per_trial, gpu_tflops)
    return CostEstimate(len(parts), sum(e.flops * f for e, f in parts), sum(e.gpu_hours * f for e, f in parts),
                        sum(e.cpu_core_hours * f for e, f in parts), parts[0][0].assumption)


def dry_run_text(launch: Launch, gpu_tflops: float | None = None) -> str:
    """The grid, its trials' resources and cost; for a run directory that holds a sweep already,
    what the launch would change (extend.py) and the cost of the new trials only (a kept trial
    that is not done yet still costs the rest of its steps, which is not counted)."""
    spec, trials = launch.spec, launch.trials
    res = spec.resources
    rate = {"gpu_tflops": gpu_tflops} if gpu_tflops else {}
    cost = estimate((t.config for t in trials), res.gpu, **rate)
    steps = sorted({t.config.train.steps for t in trials})
    concurrency = spec.run.max_concurrent or "as many as the resources allow"
    lines = [
        f"grid {spec.name} ({spec.source}): {len(trials):,} trials",
        f"  axes: {describe_axes(spec)}",
        f"  each trial: {res.cpu:g} CPU, {res.gpu:g} GPU, {', '.join(f'{s:,}' for s in steps)} steps",
        f"  at once: {concurrency}; retries per trial: {spec.run.max_failures}",
        f"  cost: {cost.summary()}",
        f"  run directory: {launch.run_dir}",
        f"  first trial: {trials[0].trial_id} in {trials[0].dir}",
    ]
    if existing_plan(launch.run_dir):
        diff = check_extension(launch.run_dir, spec, trials)
        new_cost = estimate((t.config for t in diff.new), res.gpu, **rate)
        lines += [f"  the run directory holds this sweep already: {diff.summary() if diff.changed else 'unchanged'}",
                  f"  cost of the {len(diff.new)} new trials: {new_cost.summary() if diff.new else 'nothing'}"]
        lines += skipped_lines(launch, rate)
        lines += stopped_lines(launch, rate)
    if spec.run.settle != "off":
        best = most_skippable(trials)
        most = estimate((t.config for t in best), res.gpu, **rate)
        lines.append(f"  settle: {spec.run.settle} ({spec.run.phase_rule.rule().describe()}): at most {len(best)} "
                     f"trials skipped (the last seeds of cells whose first seeds agree), saving at most "
                     f"{most.summary() if best else 'nothing'}")
    if spec.run.stop != "off":
        lines.append(f"  stop: {spec.run.stop} ({spec.run.phase_rule.rule().describe()}): a trial ends once its "
                     f"ood_test stayed at chance past {spec.run.stop_after:g} x the step where another trial of its "
                     "depth first generalized o.o.d.; what that saves is known only as trials generalize")
    lines.append("nothing was started (--dry-run)")
    return "\n".join(lines)


def skipped_lines(launch: Launch, rate: dict) -> list[str]:
    """The dry run's account of the trials settle skipped so far, judged on the grid being launched
    (not the stored one): how many of its trials are skipped, what they save, which of them this
    launch would train because their cells in this grid are no longer settled, and how many skipped
    trials the grid no longer holds."""
    spec = launch.spec
    grid = grid_states(launch.run_dir, launch.trials)
    skipped = [s for s in grid if s.state == SKIPPED]
    in_grid = {s.entry.trial_id for s in grid}
    dropped = sum(1 for s in trial_states(launch.run_dir) if s.state == SKIPPED and s.entry.trial_id not in in_grid)
    if not skipped and not dropped:
        return []
    gone = f"{dropped} skipped trials are no longer in the grid (retired)" if dropped else ""
    if not skipped:
        return [f"  skipped so far as settled: none of this grid's trials; {gone}"]
    by_id = {t.trial_id: t for t in launch.trials}
    saved = estimate((by_id[s.entry.trial_id].config for s in skipped), spec.resources.gpu, **rate)
    if spec.run.settle == "off":
        then = "this launch runs them (run.settle is off)"
    else:
        plan = Plan(spec.name, tuple(s.entry for s in grid), spec.run.max_failures)
        rule = spec.run.phase_rule.rule()
        stay = sum(still_settled(launch.run_dir, plan, [s.entry.trial_id], rule) for s in skipped)
        then = ("they stay skipped while their cells stay settled" if stay == len(skipped) else
                f"{stay} stay skipped, {len(skipped) - stay} train in this launch (their cells in this grid are "
                "no longer settled)")
    return [f"  skipped so far as settled: {len(skipped)} of this grid's trials, saving {saved.summary()}; {then}"
            + (f"; {gone}" if gone else "")]


def stopped_lines(launch: Launch, rate: dict) -> list[str]:
    """The dry run's account of the grid's trials that run.stop ended early so far, and the rest of
    their schedules they did not train."""
    by_id = {t.trial_id: t for t in launch.trials}
    stopped = stopped_states(grid_states(launch.run_dir, launch.trials))
    if not stopped:
        return []
    saved = remaining_estimate(((by_id[s.entry.trial_id].config, s.step) for s in stopped),
                               launch.spec.resources.gpu, **rate)
    then = ("this launch trains them on to their schedules' end (run.stop is off)" if launch.spec.run.stop == "off"
            else "they stay done")
    return [f"  stopped early so far (run.stop, o.o.d. at chance): {len(stopped)} of this grid's trials, saving "
            f"{saved.summary()}; {then}"]
