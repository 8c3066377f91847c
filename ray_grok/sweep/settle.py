"""Settle: skip the pending seeds of a cell whose majority phase can no longer change.

With `run.settle: majority` in the grid, a trial about to start first looks at the other seeds of
its cell (the plan's trials with the same coordinates but the seed). Those that are done are
classified with the grid's phase rule (run.phase_rule) by the code that classifies the results
tables (results/phases.py classify_trials, on rows built by results/aggregate.py); every other
seed, this one included, is undecided. If no outcome of the undecided seeds can change the
cell's majority (ties go to the more-learned phase, as in the phase table), the trial is not
trained: its status.json says `skipped`, with the reason `settled` and the evidence (each seed's
phase, the rule), and the trainable returns. Since trials run seed-major (grid.expand), with 3
seeds a cell settles once its first two seeds agree.

Why decide in the trainable, from the files, when the trial starts:
- The files are the truth everywhere else (a resumed, moved or Slurm-run sweep sees the same
  evidence), and the decision needs no driver-side state that a killed driver would lose.
- Concurrency: seeds of one cell may run at once (max_concurrent > the number of cells). A seed
  that starts while its siblings still train sees them as undecided and runs: the rule only ever
  skips on finished evidence, so concurrency can cost savings but never a wrong skip.
- Resume: nothing a skip writes makes a trial look done. A launch without settle (a changed run
  setting: a fresh Tune experiment, extend.py) runs the skipped trials like pending ones; a launch
  with settle re-decides each of them from the evidence then on disk.
- A trial that has started (running, interrupted, failed, with checkpoints) is never skipped: only
  a trial with no status, or skipped before, is.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import pandas as pd

from ..io import write_json
from ..results.aggregate import batch_tables, read_trial
from ..results.cells import cell_keys
from ..results.phases import PHASES, PhaseRule, classify_trials, majority_phase
from ..results.plan import Plan, PlanEntry, read_plan
from ..trial.outputs import status_record
from ..trial.schema import CHECKPOINT_DIR, METRICS_FILE, PENDING, SKIPPED, STATUS_FILE
from ..trial.trialdir import read_status, trial_lock
from .grid import PlannedTrial

SETTLED = "settled"  # the reason a skipped trial's status.json gives (`reason`)


# ---------------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------------

def settled_phase(phases: Sequence[str | None]) -> str | None:
    """The majority phase of a cell whose seeds have PHASES (None: not decided yet: pending,
    running, failed or skipped), if no outcome of the undecided seeds can change it; else None.

    The worst case for the leader is every undecided seed going to one other phase (spreading them
    only lowers each rival's count), so each rival is tried with all of them."""
    decided = [p for p in phases if p is not None]
    unknown = [p for p in decided if p not in PHASES]
    if unknown:
        raise ValueError(f"not phases: {unknown}; phases are {list(PHASES)}")
    if not decided:
        return None
    undecided = len(phases) - len(decided)
    leader = majority_phase(decided)
    for rival in PHASES:
        if rival != leader and majority_phase(decided + [rival] * undecided) != leader:
            return None
    return leader


# ---------------------------------------------------------------------------------------------
# The evidence, from the run directory
# ---------------------------------------------------------------------------------------------

def cell_key(coords: Mapping[str, Any]) -> str:
    """The cell of a trial's grid coordinates: all of them but the seed (facets included: another
    rule or lr is another cell, as in results/cells.py)."""
    return json.dumps({k: v for k, v in coords.items() if k != "seed"}, sort_keys=True)


def cell_entries(plan: Plan, trial_id: str) -> list[PlanEntry]:
    """The current grid's trials in the cell of TRIAL_ID (itself included), in plan order."""
    by_id = {e.trial_id: e for e in plan.active}
    key = cell_key(by_id[trial_id].coords)
    return [e for e in plan.active if cell_key(e.coords) == key]


def trial_phases(run_dir: Path, entries: Sequence[PlanEntry], rule: PhaseRule) -> list[str | None]:
    """The phase of each trial (None unless it is done), classified from the rows the results
    table would hold for it: the same code as `ray-grok phases`, not a second rule."""
    files = [read_trial(str(run_dir), e) for e in entries]
    table, _ = batch_tables(tuple(entries), files)
    phase = classify_trials(table.to_pandas(ignore_metadata=True), rule)["phase"]
    return [None if pd.isna(p) else str(p) for p in phase]


@dataclass(frozen=True)
class Settled:
    """Why a trial is skipped: its cell's phase and each seed's vote."""

    phase: str
    votes: dict[str, str | None]  # trial id -> phase; None: not decided
    rule: str  # PhaseRule.describe()

    def record(self) -> dict[str, Any]:
        decided = {t: p for t, p in self.votes.items() if p is not None}
        return {"phase": self.phase, "agree": sum(p == self.phase for p in decided.values()),
                "decided": len(decided), "seeds": len(self.votes), "votes": self.votes, "rule": self.rule}


def settle_evidence(run_dir: Path, plan: Plan, trial_id: str, rule: PhaseRule) -> Settled | None:
    """Settled if TRIAL_ID's cell is settled by its finished seeds, else None."""
    entries = cell_entries(plan, trial_id)
    phases = trial_phases(run_dir, entries, rule)
    phase = settled_phase(phases)
    if phase is None:
        return None
    return Settled(phase, {e.trial_id: p for e, p in zip(entries, phases)}, rule.describe())


def still_settled(run_dir: Path, plan: Plan, trial_ids: Sequence[str], rule: PhaseRule) -> bool:
    """Whether the gate would skip every one of TRIAL_IDS again: their cells in PLAN (the grid
    being launched, not the stored plan: a changed grid may have changed a cell's seeds) are still
    settled by their finished seeds under RULE (which the grid may have changed too)."""
    return all(settle_evidence(run_dir, plan, t, rule) is not None for t in trial_ids)


def skipped_reason(status: Mapping[str, Any]) -> str | None:
    """'settled' for a trial skipped by settle (None for any other status)."""
    return status.get("reason") if status.get("state") == SKIPPED else None


def most_skippable(trials: Sequence[PlannedTrial]) -> list[PlannedTrial]:
    """The trials settle skips at best, for `--dry-run`: in each cell, the seeds after the fewest
    agreeing ones that settle it (seed-major order runs them last). With 3 seeds: 1 per cell."""
    cells: dict[str, list[PlannedTrial]] = {}
    for t in trials:
        cells.setdefault(cell_key(t.coords), []).append(t)
    out = []
    for seeds in cells.values():
        n = len(seeds)
        need = min((k for k in range(1, n + 1) for p in PHASES if settled_phase([p] * k + [None] * (n - k))),
                   default=n)
        out += seeds[need:]
    return out


def replay(trials: pd.DataFrame, order: Sequence[str], rule: PhaseRule, concurrency: int = 1) -> list[str]:
    """The trials settle would have skipped in a finished sweep: TRIALS is its trials table, ORDER
    its trial ids in launch order (the plan's, seed-major). Trials start in ORDER, CONCURRENCY at a
    time, and are taken to last equally long, so when one starts the CONCURRENCY - 1 started last
    are still running (their votes undecided) and a skipped trial takes no slot. A replay of
    finished runs with the same decision, not a rerun: the cells are the phase table's."""
    phase = classify_trials(trials, rule)["phase"]
    keys = cell_keys(trials)
    cell = dict(zip(trials["trial_id"], map(tuple, keys.itertuples(index=False))))
    vote = {t: (None if pd.isna(p) else str(p)) for t, p in zip(trials["trial_id"], phase)}
    siblings: dict[tuple, list[str]] = {}
    for t in order:
        siblings.setdefault(cell[t], []).append(t)
    started: list[str] = []
    skipped: list[str] = []
    for t in order:
        finished = set(started[:max(0, len(started) - (concurrency - 1))])
        if settled_phase([vote[s] if s in finished else None for s in siblings[cell[t]]]) is None:
            started.append(t)
        else:
            skipped.append(t)
    return skipped


# ---------------------------------------------------------------------------------------------
# The gate the trainable asks before training
# ---------------------------------------------------------------------------------------------

class Gate(Protocol):
    def skip(self, trial_id: str, out: Path, steps: int) -> Settled | None:
        """Settled (and the skip recorded in OUT/status.json) if the trial is not to be trained."""


class NoGate:
    """run.settle off: every trial trains."""

    def skip(self, trial_id: str, out: Path, steps: int) -> Settled | None:
        return None


@dataclass(frozen=True)
class SettleGate:
    run_dir: Path
    rule: PhaseRule
    lock_wait_s: float = 30.0

    def skip(self, trial_id: str, out: Path, steps: int) -> Settled | None:
        # the trial's lock: a retried attempt's worker may still wind down in OUT
        with trial_lock(out, wait_s=self.lock_wait_s):
            status = read_status(out) or {}
            # started before: it goes on from its checkpoints (the files say so where a damaged
            # status.json, set aside and read as none, does not)
            started = (out / METRICS_FILE).exists() or any((out / CHECKPOINT_DIR).glob("*"))
            if status.get("state", PENDING) not in (PENDING, SKIPPED) or started:
                return None
            settled = settle_evidence(self.run_dir, read_plan(self.run_dir), trial_id, self.rule)
            if settled is not None:
                write_json(out / STATUS_FILE, status_record(SKIPPED, 0, steps, reason=SETTLED,
                                                            settled=settled.record()))
            elif status.get("state") == SKIPPED:  # no longer settled (a sibling's files changed): pending
                (out / STATUS_FILE).unlink()
            return settled


def gate_for(settle: str, run_dir: Path, rule: PhaseRule) -> Gate:
    return SettleGate(Path(run_dir), rule) if settle == "majority" else NoGate()
