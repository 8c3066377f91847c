"""The plan of a sweep, RUN_DIR/plan.json: every trial of its grid in launch order, with its
directory, coordinates and steps. The sweep layer writes it once, when it creates the run
directory (its presence marks a complete one) and again when a changed grid extends the sweep
(sweep/extend.py): entries are only ever added, or flagged `retired` when the grid no longer holds
them, so a trial keeps its place and its directory for good. Everything that looks at a run directory from its
files (the results tables, `ray-grok status`, the driver's callbacks) reads it here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import RunDirError
from ..io import read_json

PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class PlanEntry:
    trial_id: str
    dir: str  # relative to the run directory, e.g. trials/depth=4/n_id=256/alpha=0.6/seed=1
    coords: dict[str, Any]  # swept key -> value, seed last
    steps: int
    # no longer in the grid: kept on disk and in the results tables, never run, left out of phases
    retired: bool = False


@dataclass(frozen=True)
class Plan:
    name: str
    entries: tuple[PlanEntry, ...]
    max_failures: int

    @property
    def ids(self) -> list[str]:
        return [e.trial_id for e in self.entries]

    @property
    def active(self) -> tuple[PlanEntry, ...]:
        """The trials of the current grid: the ones a launch runs and `status` counts."""
        return tuple(e for e in self.entries if not e.retired)

    @property
    def retired(self) -> tuple[PlanEntry, ...]:
        return tuple(e for e in self.entries if e.retired)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "max_failures": self.max_failures,
                "trials": [_entry_json(e) for e in self.entries]}


def _entry_json(e: PlanEntry) -> dict[str, Any]:
    data = {"trial_id": e.trial_id, "dir": e.dir, "coords": e.coords, "steps": e.steps}
    if e.retired:  # only then: a plan that was never extended reads as it always did
        data["retired"] = True
    return data


def read_plan(run_dir: str | Path) -> Plan:
    path = Path(run_dir) / PLAN_FILE
    if not path.exists():
        raise RunDirError(f"{run_dir} is not a ray-grok sweep directory: it has no {PLAN_FILE}")
    data = read_json(path)
    entries = tuple(PlanEntry(e["trial_id"], e["dir"], e["coords"], e["steps"], bool(e.get("retired", False)))
                    for e in data["trials"])
    return Plan(data["name"], entries, data.get("max_failures", 0))
