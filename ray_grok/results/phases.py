"""Phase classification of trials (paper Fig. 1b) and the per-cell phase table of a sweep.

A trial is classified from four accuracies (id_train, id_test, ood_train, ood_test) read with one
metric, at one time point, against one threshold: a `PhaseRule`. The paper states none of the three,
so all three are configurable and every table and figure records the rule.

A cell of the phase diagram is one (model.depth, task.n_id, task.alpha) and one value of every
other setting the trials vary in but the seed (cells.py); its seeds vote and the table keeps the
agreement, so a contested cell is visible instead of silently rounded.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping, Sequence

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from ..errors import MissingResultsError, PhaseError
from ..trial.schema import DONE, SETS
from .cells import (  # noqa: F401  (Cell, CELL_KEYS, in_cell, find_cell: the public names of this module too)
    ALPHA_DECIMALS, CELL_KEYS, Cell, cell_keys, facets_text, find_cell, grid_index, in_cell, table_facets,
)
from .schema import RESULTS_DIR

# Ordered from "learned least" to "learned most": majority-vote ties and the legend follow it.
PHASES = ("not fitted", "id memorization", "id generalization", "ood memorization", "ood generalization")
MISSING = "missing"
ABBREVIATIONS = {
    "not fitted": "NF",
    "id memorization": "IM",
    "id generalization": "IG",
    "ood memorization": "OM",
    "ood generalization": "OG",
    MISSING: "--",
}

METRIC_TEXT = {
    "acc_last": "last-position accuracy",
    "acc": "accuracy averaged over all positions",
}
TIME_TEXT = {
    "auto": "at the early-stopping step if ood_test fits there, else at the end of training",
    "best": "at the early-stopping step (best checkpoint)",
    "final": "at the end of training",
}


@dataclass(frozen=True, kw_only=True)
class PhaseRule:
    """How a trial's four accuracies become a phase.

    Every time point reads all four sets of one evaluation, so a phase describes one model that
    exists as a checkpoint. time="best" reads the early-stopping step (the evaluation where the
    checkpoint monitor, by default ood_test_acc_last, peaked): transient o.o.d. generalization
    (depth 4 and 6 in the paper) is caught at its peak instead of after it has decayed. But for a
    run that never generalizes o.o.d. that peak is noise, the step is a random one, and the i.d.
    sets read there can make a memorizing run "not fitted". time="auto" (the default) reads the
    early-stopping step only when the o.o.d. test set fits there, and the end of training
    otherwise; docs/laptop.md counts the cells each choice changes on a real sweep.
    """

    metric: Literal["acc_last", "acc"] = "acc_last"
    """acc_last: accuracy at the last z position (n_examples - 1 shots); acc: mean over all positions."""
    threshold: float = 0.5
    """A set "fits" when its accuracy >= threshold; chance is 1/p (0.034 for p = 29, 0.091 for p = 11;
    the phase table's `chance` column holds it for the run's p)."""
    time: Literal["auto", "best", "final"] = "auto"
    """best: columns best_* (early-stopping step); final: columns final_* (last evaluation);
    auto: best_* where best_ood_test fits, final_* elsewhere."""

    def __post_init__(self) -> None:
        if self.metric not in METRIC_TEXT:
            raise PhaseError(f"PhaseRule.metric must be one of {list(METRIC_TEXT)}, got {self.metric!r}")
        if self.time not in TIME_TEXT:
            raise PhaseError(f"PhaseRule.time must be one of {list(TIME_TEXT)}, got {self.time!r}")
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, (int, float)) or not 0.0 < t <= 1.0:
            raise PhaseError(f"PhaseRule.threshold must be a number in (0, 1], got {t!r}")
        object.__setattr__(self, "threshold", float(t))  # an int 1 from the CLI or YAML is fine

    def columns_at(self, time: str) -> list[str]:
        """Trials-table columns of the four sets at one time point, e.g. best_ood_test_acc_last."""
        return [f"{time}_{s}_{self.metric}" for s in SETS]

    @property
    def needed_columns(self) -> list[str]:
        """Every trials-table column the rule may read."""
        times = ("best", "final") if self.time == "auto" else (self.time,)
        return [c for t in times for c in self.columns_at(t)]

    def read(self, trials: pd.DataFrame) -> np.ndarray:
        """(N, 4) accuracies of the four sets (SETS order) that the rule classifies, per trial."""
        _require_columns(trials, self.needed_columns, "the trials table")

        def at(time: str) -> np.ndarray:
            return trials[self.columns_at(time)].to_numpy(dtype=float, na_value=np.nan)

        if self.time != "auto":
            return at(self.time)
        best, final = at("best"), at("final")
        peak_fits = best[:, SETS.index("ood_test")] >= self.threshold
        return np.where(peak_fits[:, None], best, final)

    def describe(self) -> str:
        """One line for figure subtitles and table headers."""
        return (f"rule: a set fits if its {METRIC_TEXT[self.metric]} >= {self.threshold:g}, "
                f"read {TIME_TEXT[self.time]}")


# ---------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------

def _require_columns(frame: pd.DataFrame, columns: Sequence[str], what: str) -> None:
    absent = [c for c in columns if c not in frame.columns]
    if absent:
        raise PhaseError(f"{what} lacks columns {absent}; is it a ray-grok results table?")


def classify_trials(trials: pd.DataFrame, rule: PhaseRule = PhaseRule()) -> pd.DataFrame:
    """`trials` with a categorical `phase` column; NaN where the trial is not classified.

    The phase names the hardest set the trial fits, in the order id_train < id_test < ood_train <
    ood_test, once id_train fits (else "not fitted"). For the combinations the paper names this is
    exactly its definition (ood memorization = ood_train but not ood_test, whatever id_test does);
    it also settles the inconsistent ones, where a harder set fits while an easier one does not
    (ood_test without ood_train or id_test is "ood generalization"), by the strongest evidence,
    so every trial gets one phase. A trial is not classified when its status is not "done" (failed
    or still running: its numbers describe an unfinished run), when it is retired (no longer in the
    grid: it must not vote in a cell, even in a table read with include_retired) or one of its four
    accuracies is NaN.
    """
    _require_columns(trials, ["status"], "the trials table")
    acc = rule.read(trials)  # (N, 4) in SETS order
    fits = acc >= rule.threshold  # >=: a run exactly at the threshold fits
    id_train, id_test, ood_train, ood_test = fits.T
    codes = np.select([~id_train, ood_test, ood_train, id_test], [0, 4, 3, 2], default=1)
    usable = (trials["status"] == DONE).to_numpy() & ~np.isnan(acc).any(axis=1)
    if "retired" in trials:  # a table aggregated before ray-grok had retired trials has no column
        usable &= ~trials["retired"].fillna(False).to_numpy(bool)
    phase = pd.Categorical.from_codes(np.where(usable, codes, -1), categories=PHASES, ordered=True)
    return trials.assign(phase=phase)


# ---------------------------------------------------------------------------------------------
# Phase table: one row per cell of the grid
# ---------------------------------------------------------------------------------------------

def phase_slug(phase: str) -> str:
    """Column-friendly phase name: 'ood generalization' -> 'ood_generalization'."""
    return phase.replace(" ", "_")


def _majority(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(phase, agreement, n_seeds) per row of a (cells, phases) count matrix.

    Ties go to the more-learned phase (later in PHASES): a diagram asks what a setting can reach,
    and a seed that falls short is the likelier accident (an unlucky init or task draw). The
    agreement column (here 0.5 or less) keeps such a cell visibly contested.
    """
    n_seeds = counts.sum(axis=1)
    last_max = counts.shape[1] - 1 - np.argmax(counts[:, ::-1], axis=1)
    phase = np.where(n_seeds > 0, np.asarray(PHASES, dtype=object)[last_max], MISSING)
    with np.errstate(invalid="ignore", divide="ignore"):
        agreement = np.where(n_seeds > 0, counts.max(axis=1) / n_seeds, np.nan)
    return phase, agreement, n_seeds


def majority_phase(phases: Sequence[str]) -> str:
    """The majority of one cell's classified seeds, as the phase table counts it (ties: the
    more-learned phase); "missing" for none. sweep/settle.py decides with it."""
    counts = np.array([[sum(p == q for p in phases) for q in PHASES]])
    return str(_majority(counts)[0][0])


def phase_table(
    trials: pd.DataFrame,
    rule: PhaseRule = PhaseRule(),
    grid: Mapping[str, Sequence[float]] | None = None,
) -> pd.DataFrame:
    """One row per cell of the grid, sorted by its keys: the facets (every other setting the trials
    vary in but the seed, cells.facet_keys), then model.depth, task.n_id, task.alpha.

    Columns: the cell keys; `phase` (majority over the classified trials, or "missing" when the cell
    has none); `agreement` (majority share, NaN if missing); `n_seeds` (classified trials, one per
    seed in a normal sweep); `n_unclassified` (failed, unfinished or NaN trials); `n_{phase}` counts;
    `acc_{set}` (mean over classified trials of the accuracy the rule reads); `chance` (1/task.p, the
    accuracy of a guess); the rule itself (`rule.metric`, `rule.threshold`, `rule.time`) so a saved
    table explains itself.

    The grid is the product of the observed values of each key unless `grid` gives some of them
    (e.g. the planned sweep), so cells without any trial are listed as missing, never dropped.
    """
    classified = classify_trials(trials, rule)
    keys = cell_keys(classified)
    by_cell = [keys[k] for k in keys.columns]
    index = grid_index(keys, grid)

    counts = pd.get_dummies(classified["phase"]).astype(int).groupby(by_cell).sum()
    counts = counts.reindex(index=index, columns=list(PHASES), fill_value=0)
    n_trials = classified.groupby(by_cell).size().reindex(index, fill_value=0)
    done = classified["phase"].notna().to_numpy()
    acc = (pd.DataFrame(rule.read(classified)[done], columns=[f"acc_{s}" for s in SETS],
                        index=classified.index[done])
           .groupby([k[done] for k in by_cell]).mean()
           .reindex(index))

    phase, agreement, n_seeds = _majority(counts.to_numpy())
    table = pd.DataFrame({
        "phase": phase,
        "agreement": agreement,
        "n_seeds": n_seeds,
        "n_unclassified": n_trials.to_numpy() - n_seeds,
    }, index=index)
    table = table.join(counts.set_axis([f"n_{phase_slug(p)}" for p in PHASES], axis=1)).join(acc)
    if "task.p" in classified.columns:
        chance = 1.0 / pd.to_numeric(classified["task.p"].astype(object)).astype(float)
        table = table.join(chance.groupby(by_cell).mean().reindex(index).rename("chance"))
    table = table.assign(**{"rule.metric": rule.metric, "rule.threshold": rule.threshold,
                            "rule.time": rule.time})
    return table.reset_index()


def time_point_changes(trials: pd.DataFrame, rule: PhaseRule = PhaseRule()) -> pd.DataFrame:
    """The cells whose majority phase under `rule` differs from the same rule at another time point.

    One row per (changed cell, other time point): the cell's key columns, `time` (the other time
    point), `phase` (under `rule`) and `other_phase`. This is how a time point is judged on a real
    sweep: the number of cells it moves, and which.
    """
    base = phase_table(trials, rule)
    keys = list(base.columns[:base.columns.get_loc("phase")])  # the cell's key columns come first
    changed = []
    for time in TIME_TEXT:
        if time == rule.time:
            continue
        other = phase_table(trials, PhaseRule(metric=rule.metric, threshold=rule.threshold, time=time))
        moved = base["phase"].to_numpy() != other["phase"].to_numpy()  # same trials: same rows
        changed.append(base.loc[moved, keys].assign(time=time, phase=base.loc[moved, "phase"],
                                                    other_phase=other.loc[moved, "phase"]))
    return pd.concat(changed, ignore_index=True)


def format_time_point_changes(changes: pd.DataFrame, rule: PhaseRule, n_cells: int) -> str:
    """Per other time point: how many of the n_cells cells change phase, and each change."""
    lines = []
    for time in TIME_TEXT:
        if time == rule.time:
            continue
        rows = changes[changes["time"] == time]
        lines.append(f"--time {time} instead of {rule.time}: {len(rows)} of {n_cells} cells change phase")
        for r in rows.to_dict("records"):
            where = ", ".join(f"{k} {r[k]:g}" if isinstance(r[k], float) else f"{k} {r[k]}"
                              for k in changes.columns[:changes.columns.get_loc("time")])
            lines.append(f"  {where}: {ABBREVIATIONS[r['phase']]} -> {ABBREVIATIONS[r['other_phase']]}")
    return "\n".join(lines)


def missing_cells(table: pd.DataFrame) -> int:
    """Cells of a phase table with no classified trial."""
    return int((table["phase"] == MISSING).sum())


# ---------------------------------------------------------------------------------------------
# Text output for the terminal
# ---------------------------------------------------------------------------------------------

def _cell_text(row: Mapping) -> str:
    text = ABBREVIATIONS[row["phase"]]
    if row["phase"] != MISSING and row["agreement"] < 1:
        majority = int(round(row["agreement"] * row["n_seeds"]))
        text += f" {majority}/{row['n_seeds']}"
    return text


def _text_grid(block: pd.DataFrame) -> list[str]:
    """One depth's cells as aligned text: a header of n_id, one line per alpha from high to low."""
    texts = {(r["task.alpha"], r["task.n_id"]): _cell_text(r) for r in block.to_dict("records")}
    n_ids = sorted(set(block["task.n_id"]))
    alphas = sorted(set(block["task.alpha"]), reverse=True)
    width = max(len(str(n)) for n in n_ids)
    width = max([width, *(len(t) for t in texts.values())]) + 2
    lines = ["alpha \\ n_id".ljust(14) + "".join(str(n).rjust(width) for n in n_ids)]
    for a in alphas:
        lines.append(f"{a:g}".ljust(14) + "".join(texts[(a, n)].rjust(width) for n in n_ids))
    return lines


def chance_text(table: pd.DataFrame) -> str:
    """'chance (1/p) is 0.091 for p = 11' from a phase table's `chance` column ('' without one)."""
    if "chance" not in table.columns:
        return ""
    chances = sorted({round(float(c), 9) for c in table["chance"].dropna()})
    return ("chance (1/p) is " + ", ".join(f"{c:.3f} for p = {round(1 / c)}" for c in chances)) if chances else ""


def diagrams(table: pd.DataFrame) -> list[tuple[tuple[tuple[str, object], ...], int, pd.DataFrame]]:
    """The separate diagrams of a phase table: (facets as ((key, value), ...), depth, its cells),
    sorted by facet values, then depth."""
    facets = table_facets(table)
    out = []
    for key, block in table.groupby([*facets, "model.depth"], sort=True):
        *values, depth = key if isinstance(key, tuple) else (key,)
        out.append((tuple(zip(facets, values)), int(depth), block))
    return out


def diagram_title(facets: Sequence[tuple[str, object]], depth: int) -> str:
    """'depth 2' or 'rule random, depth 2'."""
    return ", ".join(filter(None, [facets_text(facets), f"depth {depth}"]))


def format_phase_table(table: pd.DataFrame, rule: PhaseRule) -> str:
    """Per diagram (depth, and every facet value): rows alpha (high to low, as in the figure),
    columns n_id, abbreviated phases.

    A cell reads e.g. "OG" or, when seeds disagree, "OG 2/3" (seeds agreeing / classified seeds).
    """
    lines = [rule.describe() + (f"; {chance_text(table)}" if chance_text(table) else ""),
             "phases: " + ", ".join(f"{ABBREVIATIONS[p]} = {p}" for p in (*PHASES, MISSING))]
    for facets, depth, block in diagrams(table):
        lines += ["", f"{diagram_title(facets, depth)}: {len(block)} cells, {missing_cells(block)} missing",
                  *_text_grid(block)]
    lines += ["", f"missing cells: {missing_cells(table)} of {len(table)}; "
                  f"unclassified trials (failed, unfinished or NaN): {int(table['n_unclassified'].sum())}"]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Reading RUN_DIR/results
# ---------------------------------------------------------------------------------------------

def read_results(
    run_dir: str | Path,
    name: Literal["trials", "curves"],
    columns: Sequence[str] | None = None,
    trial_ids: Sequence[str] | None = None,
    include_retired: bool = False,
) -> pd.DataFrame:
    """RUN_DIR/results/{name}: a Parquet dataset directory or a single file.

    `columns` and `trial_ids` are pushed down to the reader so a large curves table is never
    loaded whole (its by-shot list columns dominate its size and no figure needs them). The trials
    table leaves out retired trials (no longer in the sweep's grid) unless `include_retired`.
    """
    path = Path(run_dir) / RESULTS_DIR / name
    if not path.exists():
        raise MissingResultsError(f"no results in {path}: run `ray-grok aggregate {run_dir}` first")
    filters = [] if trial_ids is None else [("trial_id", "in", list(trial_ids))]
    if name == "trials" and not include_retired and "retired" in pq.ParquetDataset(path).schema.names:
        filters.append(("retired", "=", False))
    filters = filters or None
    table = pq.read_table(path, columns=None if columns is None else list(columns), filters=filters)
    # The columns are Arrow-native; a writer's pandas metadata (e.g. Arrow-backed list dtypes,
    # which pandas cannot read back) is not needed to rebuild them.
    frame = table.to_pandas(ignore_metadata=True)
    if name == "trials" and frame.empty:
        raise MissingResultsError(f"{path} holds no trials: run `ray-grok aggregate {run_dir}` first")
    return frame
