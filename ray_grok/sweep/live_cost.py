"""The live cost of a sweep, for `ray-grok status`: the time and GPU-hours (CPU core-hours on a CPU
grid) its unfinished trials still need at the speed its finished trials measured, beside what the
a-priori FLOP model (cost.py) says, and how far the two differ.

Speed is measured per model depth, as achieved model FLOP/s per GPU (per CPU core): trials of one
depth run alike, trials of different depths do not. A depth with no finished trial yet is scaled by
FLOPs from the nearest depth that has one; with no finished trial at all the FLOP model's assumed
rate stands in. Everything comes from files: the grid's resources, each trial's config.json (its
FLOPs, trial/flops.py) and status.json (its step; wall_time once done).
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from ..errors import ConfigError
from ..io import format_duration
from ..trial.flops import CPU_GFLOPS_PER_CORE, trial_flops
from ..trial.schema import DONE, FAILED, SKIPPED
from .cost import DEFAULT_GPU_TFLOPS
from .grid import Resources, read_grid_yaml
from .rundir import GRID_FILE, TrialState, trial_config

MEASURED = "measured"  # the rate of this depth's finished trials
SCALED = "scaled"  # no trial of this depth finished: the rate of the nearest depth that has one
MODEL = "model"  # no trial finished at all: the FLOP model's assumed rate


@dataclass(frozen=True)
class DepthCost:
    depth: int
    done: int  # finished trials whose speed was measured
    left: int  # trials still to train: pending, running, interrupted (errored ones are not counted)
    flops_left: float  # their model FLOPs from their current steps on
    rate: float  # model FLOP/s per GPU (CPU core) the time left is computed at
    source: str  # MEASURED, SCALED (from depth `scaled_from`) or MODEL
    scaled_from: int | None = None

    @property
    def hours_left(self) -> float:
        """GPU-hours (CPU core-hours) left."""
        return self.flops_left / self.rate / 3600


@dataclass(frozen=True)
class LiveCost:
    unit: str  # "GPU" or "CPU core"
    per_trial: float  # GPUs (CPU cores) per trial, the grid's resources
    assumed: float  # model FLOP/s per GPU (CPU core) that the FLOP model assumes
    measured: float | None  # model FLOP/s per GPU (CPU core) of all finished trials together
    depths: tuple[DepthCost, ...]
    unread: int = 0  # unfinished trials left out: their config.json is missing or unreadable

    @property
    def hours_left(self) -> float:
        return sum(d.hours_left for d in self.depths)

    @property
    def model_hours_left(self) -> float:
        """What the FLOP model says is left (cost.estimate's accounting)."""
        return sum(d.flops_left for d in self.depths) / self.assumed / 3600

    @property
    def trial_seconds_left(self) -> float:
        """Training time left, one trial after another."""
        return self.hours_left * 3600 / self.per_trial


def live_cost(run_dir: Path, states: list[TrialState]) -> LiveCost | None:
    """The cost left of STATES (sweep_status's); None when RUN_DIR's grid is missing or its resources
    do not read (then nothing says what a trial costs)."""
    res = grid_resources(run_dir)
    if res is None:
        return None
    gpu = res.gpu > 0
    per_trial = res.gpu if gpu else res.cpu
    spent: dict[int, float] = defaultdict(float)  # depth -> GPU (core) seconds of its finished trials
    trained: dict[int, float] = defaultdict(float)  # depth -> their model FLOPs
    done: dict[int, int] = defaultdict(int)
    left: dict[int, list[float]] = defaultdict(list)  # depth -> FLOPs left of each unfinished trial
    unread = 0
    for s in states:
        if s.state in (FAILED, SKIPPED):  # a skipped trial (settled) is not left to train
            continue
        cfg = trial_config(run_dir / s.entry.dir)
        if cfg is None:
            unread += s.state != DONE
            continue
        depth, steps, flops = cfg.model.depth, cfg.train.steps, trial_flops(cfg)
        if s.state != DONE:
            left[depth].append(flops * max(0, steps - s.step) / steps)
        elif s.status.get("wall_time") and s.step:
            # an early-stopped trial trained only its steps (evaluations taken as spread evenly)
            spent[depth] += s.status["wall_time"] * per_trial
            trained[depth] += flops * min(s.step, steps) / steps
            done[depth] += 1
    measured = {d: trained[d] / spent[d] for d in spent}
    assumed = DEFAULT_GPU_TFLOPS * 1e12 if gpu else CPU_GFLOPS_PER_CORE * 1e9
    depths = []
    for d in sorted(set(left) | set(measured)):
        if d in measured:
            rate, source, ref = measured[d], MEASURED, None
        elif measured:  # the nearest measured depth; of two as near, the deeper
            ref = min(measured, key=lambda m: (abs(m - d), -m))
            rate, source = measured[ref], SCALED
        else:
            rate, source, ref = assumed, MODEL, None
        depths.append(DepthCost(d, done[d], len(left[d]), sum(left[d]), rate, source, ref))
    pooled = sum(trained.values()) / sum(spent.values()) if spent else None
    return LiveCost("GPU" if gpu else "CPU core", per_trial, assumed, pooled, tuple(depths), unread)


def grid_resources(run_dir: Path) -> Resources | None:
    """The grid's resources section alone: validating the whole grid expands every trial (a second
    for the full grid), and status stays fast."""
    if not (run_dir / GRID_FILE).exists():
        return None
    try:
        data = read_grid_yaml(run_dir / GRID_FILE)
        raw = (data.get("resources") or {}) if isinstance(data, Mapping) else None
        return Resources.from_mapping(raw) if isinstance(raw, Mapping) else None
    except ConfigError:
        return None


# ---------------------------------------------------------------------------------------------
# The lines `ray-grok status` prints
# ---------------------------------------------------------------------------------------------

def cost_lines(cost: LiveCost, at_once: int) -> list[str]:
    """AT_ONCE: trials running now (the time left is divided among them; 0: one after another)."""
    time_left = (f"{format_duration(cost.trial_seconds_left / at_once)} with {at_once} trial"
                 f"{'s' if at_once > 1 else ''} at once"
                 if at_once else f"{format_duration(cost.trial_seconds_left)} of trial time, one after another")
    if not any(d.left for d in cost.depths):
        head = "nothing left to train"
    elif cost.measured is None:
        head = (f"about {amount(cost.hours_left, cost.unit)}, {time_left}, by the FLOP model (no trial has "
                f"finished yet: {rate(cost.assumed, cost.unit)} assumed)")
    else:
        head = f"about {amount(cost.hours_left, cost.unit)}, {time_left}, at the speed measured per depth"
    lines = [f"  cost left: {head}" + (f"; {cost.unread} trials without a readable config.json not counted"
                                       if cost.unread else "")]
    if cost.measured is not None:
        model = (f"; the FLOP model says {amount(cost.model_hours_left, cost.unit)}"
                 if any(d.left for d in cost.depths) else "")
        lines.append(f"  {speed_ratio(cost.measured, cost.assumed)} ({rate(cost.measured, cost.unit)} "
                     f"achieved vs {rate(cost.assumed, cost.unit, per=False)} assumed){model}")
    for d in cost.depths:
        if d.source == MEASURED:
            how = f"{d.done} done at {rate(d.rate, cost.unit)}"
        elif d.source == SCALED:
            how = f"none done: scaled by FLOPs from depth {d.scaled_from}'s {rate(d.rate, cost.unit)}"
        else:
            how = "none done: the FLOP model's rate"
        lines.append(f"    depth {d.depth}: {how}; {d.left} left" + (
            f", {amount(d.hours_left, cost.unit)}" if d.left else ""))
    return lines


def speed_ratio(measured: float, assumed: float) -> str:
    factor = assumed / measured
    if 0.95 <= factor <= 1.05:
        return "measured about as fast as the FLOP model assumed"
    if factor > 1:
        return f"measured {factor:.1f}x slower than the FLOP model assumed"
    return f"measured {1 / factor:.1f}x faster than the FLOP model assumed"


def rate(flops_per_s: float, unit: str, per: bool = True) -> str:
    scale, name = (1e12, "TFLOP/s") if unit == "GPU" else (1e9, "GFLOP/s")
    return f"{flops_per_s / scale:.3g} {name}" + (f" per {unit}" if per else "")


def amount(hours: float, unit: str) -> str:
    if hours >= 1:
        return f"{hours:,.{0 if hours >= 100 else 1}f} {unit}-hours"
    return f"{hours * 60:.1f} {unit}-minutes" if hours >= 1 / 60 else f"{hours * 3600:.1f} {unit}-seconds"
