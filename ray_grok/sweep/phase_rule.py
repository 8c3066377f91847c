"""A grid's phase rule, `run.phase_rule` (results/phases.py PhaseRule as grid settings): the rule
`run.settle` classifies a cell's finished seeds by (sweep/settle.py)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from ..errors import GridError
from ..trial.fields import Checked, doc

if TYPE_CHECKING:
    from ..results.phases import PhaseRule


@dataclass(frozen=True, kw_only=True)
class PhaseRuleSettings(Checked):
    """The grid's phase rule (results/phases.py PhaseRule): what `run.settle` classifies the
    finished trials of a cell by. `ray-grok phases` takes its own options and does not read it."""
    SECTION = "run.phase_rule"
    ERROR = GridError
    metric: Literal["acc_last", "acc"] = doc("acc_last: accuracy at the last z position; acc: mean over positions",
                                             "acc_last")
    threshold: float = doc("a set fits when its accuracy >= threshold", 0.5)
    time: Literal["auto", "best", "final"] = doc("auto: the early-stopping step where ood_test fits there, else the "
                                                 "end; best: the early-stopping step; final: the end", "auto")

    def check(self) -> None:
        self.need(0.0 < self.threshold <= 1.0, "threshold", "in (0, 1]")

    def rule(self) -> PhaseRule:
        from ..results.phases import PhaseRule  # pandas: only where trials are classified

        return PhaseRule(metric=self.metric, threshold=self.threshold, time=self.time)
