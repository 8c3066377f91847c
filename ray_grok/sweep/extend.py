"""Extending a sweep: a grid launched into a run directory that holds an earlier grid.

A trial is its resolved config (its id is derived from it, grid._trial_id), so the ids of the
stored plan and of the new grid say what the launch does:

  kept     in both: its directory, checkpoints and results stay; once done it is never run again
  new      only in the new grid: added to the plan (appended, in the grid's order) and run
  retired  only in the plan: stays on disk, in plan.json and in the results tables, flagged
           `retired`; it is not run, not counted by `status` as part of the grid, and left out of
           phases and figures. A later grid that holds it again brings it back as it was.

The rule that refuses (check_base): a grid point (the swept keys with their values, seed
included) that both grids hold must keep its trial id. A trial's config is the base plus its
point, so another id at the same point means the base changed (or a default of ray-grok did):
every existing trial would mean something else, which is a different experiment, and the
differences are listed. Grids that share no point (a new axis, say) cannot be compared this way,
so they extend: every old trial is retired, none is lost.

`resources` and `run` change how trials run, not what they compute: a change is allowed and
reported. It starts a fresh Tune experiment, like a changed plan does (launch._fit): Tuner.restore
brings back the old trials and settings and cannot take new ones.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

from ..errors import RunDirError
from ..results.plan import Plan, PlanEntry
from .grid import GridSpec, PlannedTrial, RunSettings

UNSET = "(unset)"  # a base key one of the grids does not set


@dataclass(frozen=True)
class PlanDiff:
    """What a launch of a grid does to the plan of an existing run directory."""
    kept: tuple[PlannedTrial, ...]  # in the plan and in the grid
    new: tuple[PlannedTrial, ...]  # in the grid only
    retired: tuple[PlanEntry, ...]  # in the plan only (retired before, or now)
    revived: tuple[str, ...]  # ids retired by an earlier launch that this grid holds again
    settings: tuple[str, ...]  # changed resources/run settings, 'run.max_concurrent: 2 -> 4'

    @property
    def newly_retired(self) -> tuple[PlanEntry, ...]:
        return tuple(e for e in self.retired if not e.retired)

    @property
    def plan_changed(self) -> bool:
        return bool(self.new or self.revived or self.newly_retired)

    @property
    def changed(self) -> bool:
        """The plan or how trials run changed: the run directory is extended (extend_files)."""
        return self.plan_changed or bool(self.settings)

    def summary(self) -> str:
        """'2 kept, 2 new, 1 retired (1 now); run.max_concurrent: 2 -> 4'"""
        now = len(self.newly_retired)
        text = (f"{len(self.kept)} kept, {len(self.new)} new, {len(self.retired)} retired"
                + (f" ({now} now)" if now != len(self.retired) else ""))
        if self.revived:
            text += f", {len(self.revived)} brought back from retired"
        return text + "".join(f"; {s}" for s in self.settings)


def plan_diff(plan: Plan, stored: GridSpec, spec: GridSpec, trials: list[PlannedTrial]) -> PlanDiff:
    """Compare the stored PLAN (and its grid STORED) with the grid SPEC and its TRIALS; RunDirError
    when the base changed (check_base)."""
    check_base(plan, stored, spec, trials)
    old = {e.trial_id: e for e in plan.entries}
    ids = {t.trial_id for t in trials}
    return PlanDiff(
        kept=tuple(t for t in trials if t.trial_id in old),
        new=tuple(t for t in trials if t.trial_id not in old),
        retired=tuple(e for e in plan.entries if e.trial_id not in ids),
        revived=tuple(t.trial_id for t in trials if t.trial_id in old and old[t.trial_id].retired),
        settings=tuple(settings_changes(stored, spec)),
    )


def check_base(plan: Plan, stored: GridSpec, spec: GridSpec, trials: list[PlannedTrial]) -> None:
    """Refuse a grid that gives another trial id at a grid point the plan already holds (see the
    module's docstring), listing how the base differs and one trial that would change."""
    by_point = {_point(e.coords): e for e in plan.entries}
    changed = [(by_point[p], t) for t in trials
               if (p := _point(t.coords)) in by_point and by_point[p].trial_id != t.trial_id]
    if not changed:
        return
    old, new = changed[0]
    diffs = base_changes(stored, spec) or ["the same base gives other configs (did a default of ray-grok change?)"]
    raise RunDirError(
        f"this grid changes the trials the run directory already holds: at {len(changed)} of its grid points "
        f"the config differs ({'; '.join(diffs)}), e.g. trial {old.trial_id} would become {new.trial_id}. "
        f"A changed base is a different experiment: launch it into a new --out. (Adding axis values or "
        f"seeds, removing some, or changing resources/run settings extends the sweep.)")


def _point(coords: dict[str, Any]) -> str:
    """A grid point as a key: the same swept keys with the same values (as JSON stores them)."""
    return json.dumps(coords, sort_keys=True)


def base_changes(old: GridSpec, new: GridSpec) -> list[str]:
    """'base.train.lr: 0.001 -> 0.002' for every base key set differently (or set in one only)."""
    keys = sorted(set(old.base) | set(new.base))
    return [f"base.{k}: {old.base.get(k, UNSET)!r} -> {new.base.get(k, UNSET)!r}"
            for k in keys if old.base.get(k, UNSET) != new.base.get(k, UNSET)]


def settings_changes(old: GridSpec, new: GridSpec) -> list[str]:
    """'run.max_concurrent: 2 -> 4' for every resources/run setting that differs; max_trials is a
    guard, not how the sweep runs, and is not compared."""
    pairs = [(f"resources.{k}", v, new.resources.as_ray()[k]) for k, v in old.resources.as_ray().items()]
    pairs += [(f"run.{f.name}", getattr(old.run, f.name), getattr(new.run, f.name))
              for f in fields(RunSettings) if f.name != "max_trials"]
    return [f"{key}: {a!r} -> {b!r}" for key, a, b in pairs if a != b]


def extended_plan(plan: Plan, spec: GridSpec, diff: PlanDiff) -> Plan:
    """The plan after the launch: every old entry in its place, flagged retired or not; the new
    trials appended in the grid's order (so a trial's place in the plan never changes)."""
    gone = {e.trial_id for e in diff.retired}
    entries = [replace(e, retired=e.trial_id in gone) for e in plan.entries]
    entries += [PlanEntry(t.trial_id, t.dir, t.coords, t.config.train.steps) for t in diff.new]
    return Plan(spec.name, tuple(entries), spec.run.max_failures)


def history_name(path: Path) -> Path:
    """PATH.1, or .2, ...: the first free name for an earlier version of PATH."""
    n = 1
    while path.with_name(f"{path.name}.{n}").exists():
        n += 1
    return path.with_name(f"{path.name}.{n}")


def set_aside(path: Path) -> Path | None:
    """Rename PATH to its history_name and return that; None if PATH does not exist. Never
    deletes: an earlier Tune experiment stays for the record."""
    if not path.exists():
        return None
    target = history_name(path)
    os.rename(path, target)
    return target
