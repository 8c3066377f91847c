"""Stop: end a trial early once its sweep shows it will not generalize o.o.d. (`run.stop: ood_chance`).

A trial is asked after each of its evaluations (trial/run.py's Stopper). It ends there, as done,
with the rule and the evidence in its status.json (`stopped`), when all of these hold:

1. Evidence from the sweep: another trial of the same model depth in the current grid has reached
   the threshold on ood_test (the grid's run.phase_rule: metric and threshold) at some evaluation;
   the *horizon* is `run.stop_after` (default 2) times the latest step at which such a trial first
   did. Without such a trial nothing is ever stopped: how long o.o.d. generalization takes at a
   depth is only known once it has happened there (and a deep model's transient peak, depth 4 and
   6 in the paper, is a first crossing like any other, so its step sets the horizon too).
2. The trial has reached the horizon.
3. Its ood_test has stayed at chance: under halfway from chance (1/p) to the threshold at every
   evaluation so far (the whole curve: from step 1). Checked on real curves (docs/sweeps.md,
   Stop): in 64 of the 65 runs this project has, none of which generalized, ood_test stayed under
   it (at most 0.16 above chance at p = 7 with 2 evaluation batches; the band is 0.18 above); the
   one above it is the one run that showed a faint sign of computing on unseen inputs.
4. Its phase under the rule, read at each evaluation, has not changed over the second half of its
   run so far: the phase it is classified with (at the step it stops) is not one it is just
   passing through.
5. It has fitted its pre-training tasks (id_train at the threshold: its phase is not "not fitted").
   A trial still fitting them is still learning, and its phase will change: on the laptop grid's
   curves, a rule without this condition and a crossing assumed at step 500 stopped two n_id = 32
   trials at step 1,000 as not fitted, which end as id memorization (benchmarks/stop_replay.py).

Why in the trial, from the files: as with settle (settle.py), the files are the truth everywhere
(a resumed, moved or Slurm-run sweep sees the same evidence) and no driver state is needed. The
evidence is read only when the trial's own curve already qualifies (3 to 5), and the other trials'
metrics at most every REFRESH_S seconds, a file only when it changed; a crossing once seen is kept.

A stopped trial is done: its status says so (`stopped`), its last checkpoint is the stop step, and
its results row and phase are read there. A later launch with run.stop leaves it done; one without
(run.stop off) trains it on from that checkpoint to the end of its schedule, as a launch without
run.settle runs settle's skipped trials. Trials that still train when a sibling generalizes later
may have been stopped on a shorter horizon: the record keeps the evidence the decision had.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd
import pyarrow.parquet as pq

from ..results.phases import PHASES, PhaseRule, classify_trials
from ..results.plan import read_plan
from ..trial.schema import DONE, METRICS_FILE, SETS
from .rundir import TrialState, trial_config

STOP_REASON = "ood at chance"  # status.json's stopped.reason
REFRESH_S = 30.0  # how often a trial re-reads the other trials' metrics while it qualifies


def chance_band(p: int, threshold: float) -> float:
    """The o.o.d. accuracy a trial must stay under to count as "at chance": halfway from 1/p to the
    threshold."""
    chance = 1.0 / p
    return chance + (threshold - chance) / 2


def first_fit(steps: Sequence[int], values: Sequence[float], threshold: float) -> int | None:
    """The first step whose value reaches the threshold (None: none does)."""
    return next((int(s) for s, v in zip(steps, values) if v >= threshold), None)


def row_phases(rows: Sequence[Mapping[str, Any]], rule: PhaseRule) -> list[str]:
    """The phase of each evaluation row under RULE's metric and threshold, by the phase table's own
    classification (classify_trials), each row read as if the trial ended there."""
    at_row = PhaseRule(metric=rule.metric, threshold=rule.threshold, time="final")
    table = pd.DataFrame({f"final_{s}_{rule.metric}": [float(r[f"{s}_{rule.metric}"]) for r in rows] for s in SETS})
    table["status"] = DONE
    return [str(p) for p in classify_trials(table, at_row)["phase"]]


@dataclass(frozen=True)
class StopRule:
    rule: PhaseRule  # the grid's run.phase_rule: its metric and threshold
    after: float = 2.0  # run.stop_after: the horizon, in multiples of the latest first crossing

    def decide(self, rows: Sequence[Mapping[str, Any]], p: int, crossings: Mapping[str, int],
               own: dict | None = None) -> dict | None:
        """The stop record for a trial with evaluation ROWS (ascending steps) at chance 1/P, given
        CROSSINGS: the first step at which each other trial of its depth reached the threshold on
        ood_test. OWN: qualifies(ROWS, P) where the caller has it. None: it trains on."""
        own = own if own is not None else self.qualifies(rows, p)
        if own is None or not crossings:
            return None
        step = int(rows[-1]["step"])
        latest = max(crossings.values())
        horizon = self.after * latest
        if step < horizon:
            return None
        return {
            "reason": STOP_REASON, "step": step, **own,
            "why": (f"ood_test {self.rule.metric} stayed under {own['band']:.3f} (halfway from chance to "
                    f"{self.rule.threshold:g}; at most {own['ood_test_max']:.3f}) and the phase stayed "
                    f"{own['phase']} since step {own['phase_since']}, past {horizon:g} steps = {self.after:g} x "
                    f"step {latest}, the latest at which a trial of its depth first reached the threshold "
                    f"({len(crossings)} did)"),
            "generalized": dict(sorted(crossings.items())), "horizon": horizon, "after": self.after,
            "rule": self.rule.describe(),
        }

    def qualifies(self, rows: Sequence[Mapping[str, Any]], p: int) -> dict | None:
        """Conditions 3 to 5 on the trial's own curve: the facts for its record, or None. The whole
        curve must be there: one whose metrics restarted after a damaged file (trial/outputs.py)
        may have lost the evaluations where it left chance."""
        if not rows or int(rows[0]["step"]) != 1:
            return None
        band = chance_band(p, self.rule.threshold)
        ood = [float(r[f"ood_test_{self.rule.metric}"]) for r in rows]
        if any(math.isnan(v) for v in ood) or max(ood) >= band:
            return None
        phases = row_phases(rows, self.rule)
        half = int(rows[-1]["step"]) / 2
        recent = [ph for r, ph in zip(rows, phases) if int(r["step"]) >= half]
        if len(set(recent)) != 1 or recent[0] == PHASES[0]:  # changed lately, or not fitted
            return None
        since = next(int(r["step"]) for r in rows if int(r["step"]) >= half)
        return {"band": band, "ood_test_max": max(ood), "phase": phases[-1], "phase_since": since}


@dataclass
class SweepStopper:
    """trial/run.py's Stopper for one trial of a sweep: its rule, its own chance (1/P) and depth,
    and the evidence read from the other trials of its depth in the run directory."""

    stop: StopRule
    run_dir: Path
    trial_id: str
    p: int
    depth: int
    refresh_s: float = REFRESH_S
    _siblings: dict[str, Path] | None = field(default=None, init=False)  # read once the curve qualifies
    _crossings: dict[str, int] = field(default_factory=dict, init=False)  # trial id -> first crossing
    _seen: dict[str, tuple[int, int]] = field(default_factory=dict, init=False)  # metrics file mtime, size
    _read_at: float = field(default=float("-inf"), init=False)

    def __call__(self, rows: list[dict]) -> dict | None:
        own = self.stop.qualifies(rows, self.p)
        if own is None:  # the common case: nothing else to read
            return None
        if self._siblings is None:
            self._siblings = self._same_depth()
        if time.monotonic() - self._read_at >= self.refresh_s:
            self._read_crossings()
        return self.stop.decide(rows, self.p, self._crossings, own)

    def _same_depth(self) -> dict[str, Path]:
        """The current grid's other trials of this trial's depth (read once: the plan is fixed for
        the length of a launch). A trial whose config cannot be read gives no evidence."""
        out = {}
        for e in read_plan(self.run_dir).active:
            cfg = trial_config(self.run_dir / e.dir) if e.trial_id != self.trial_id else None
            if cfg is not None and cfg.model.depth == self.depth:
                out[e.trial_id] = self.run_dir / e.dir
        return out

    def _read_crossings(self) -> None:
        assert self._siblings is not None
        column = f"ood_test_{self.stop.rule.metric}"
        for trial_id, d in self._siblings.items():
            path = d / METRICS_FILE
            try:
                st = path.stat()
            except OSError:  # not started yet: no evidence
                continue
            if trial_id in self._crossings or self._seen.get(trial_id) == (st.st_mtime_ns, st.st_size):
                continue  # a crossing once seen is kept; an unchanged file has none
            try:
                table = pq.read_table(path, columns=["step", column])
            except (OSError, ValueError):  # set aside as unreadable, or not a metrics file: no evidence
                continue
            self._seen[trial_id] = (st.st_mtime_ns, st.st_size)
            step = first_fit(table["step"].to_pylist(), table[column].to_pylist(), self.stop.rule.threshold)
            if step is not None:
                self._crossings[trial_id] = step
        self._read_at = time.monotonic()


def stopped_states(states: Iterable[TrialState]) -> list[TrialState]:
    """The done trials that run.stop ended early (status.json's `stopped`)."""
    return [s for s in states if s.state == DONE and s.status.get("stopped")]


def left_to_train(state: TrialState, stop: str) -> bool:
    """Whether a launch with run.stop STOP has training left for the trial: one not done, or one
    run.stop ended when the launch runs without it (it trains on to its schedule's end)."""
    return state.state != DONE or (stop == "off" and bool(state.status.get("stopped")))
