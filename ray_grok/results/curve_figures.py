"""Line figures of a sweep: k-shot curves (paper Fig. 1c) and training curves of chosen cells, and
the transience of o.o.d. generalization per diagram; and how the cells they show are chosen.

Like figures.py: each function returns a matplotlib Figure, built without pyplot.
"""
from __future__ import annotations

import math
from typing import Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter

from ..errors import PhaseError
from ..trial.schema import SETS
from .cells import Cell, cell_keys, cell_of, expand_cell, facet_keys, table_facets
from .figures import METRIC_LABEL, SET_STYLE, titles
from .phases import MISSING, PhaseRule, classify_trials, diagram_title, in_cell


# ---------------------------------------------------------------------------------------------
# 3. k-shot curves and 4. training curves, for chosen cells
# ---------------------------------------------------------------------------------------------

def cell_trials(trials: pd.DataFrame, cell: Cell, rule: PhaseRule) -> pd.DataFrame:
    """The classified trials of one cell (the ones its phase was voted from)."""
    pooled = [k for k in facet_keys(trials) if k not in dict(cell.facets)]
    if pooled:
        raise PhaseError(f"the trials vary in {pooled} too: the cell {cell.label()} must name their values "
                         "(chosen_cells gives one cell per value)")
    chosen = classify_trials(trials[in_cell(trials, cell)], rule)
    chosen = chosen[chosen["phase"].notna()]
    if chosen.empty:
        raise PhaseError(f"no finished trials in the cell {cell.label()}")
    return chosen


def default_cells(table: pd.DataFrame) -> list[Cell]:
    """Per diagram (depth and facet values), the cell with the highest mean ood_test accuracy:
    where o.o.d. generalization, the paper's subject, is strongest. Diagrams without any
    classified cell are skipped.
    """
    facets = table_facets(table)
    present = table[table["phase"] != MISSING].dropna(subset=["acc_ood_test"])
    best = present.loc[present.groupby([*facets, "model.depth"])["acc_ood_test"].idxmax()]
    return [cell_of(r, facets) for r in best.to_dict("records")]


def chosen_cells(table: pd.DataFrame, cells: Sequence[Sequence] | None) -> list[Cell]:
    """The requested cells, checked against the grid (a typo fails naming the valid values), a
    cell without facet values standing for that point in every diagram (`expand_cell`); or
    `default_cells` when none are requested.
    """
    if cells is None:
        return default_cells(table)
    cells = [c if isinstance(c, Cell) else Cell(int(c[0]), int(c[1]), float(c[2])) for c in cells]
    return [one for cell in cells for one in expand_cell(table, cell)]


def _panels(fig: Figure, n: int) -> list[Axes]:
    """n panels, at most 3 a row, sharing the y axis (accuracies are all in [0, 1])."""
    ncols = min(3, n)
    axes = fig.subplots(math.ceil(n / ncols), ncols, squeeze=False, sharey=True).ravel()
    for ax in axes[n:]:
        ax.set_visible(False)
    return list(axes[:n])


def _panel_figure(n: int) -> Figure:
    """Room for n panels, and at least the width of the rule subtitle and the legend below."""
    ncols, nrows = min(3, n), math.ceil(n / 3)
    return Figure(figsize=(max(10.0, 1.0 + 4.4 * ncols), 2.2 + 3.3 * nrows), layout="constrained")


def _reference_lines(ax: Axes, rule: PhaseRule, chance: float) -> None:
    ax.axhline(chance, color="#888888", linestyle=":", linewidth=1, label=f"chance (1/p = {chance:.3f})")
    ax.axhline(rule.threshold, color="#888888", linestyle="-.", linewidth=1,
               label=f"threshold {rule.threshold:g}")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)


def _by_shot_mean(values: pd.Series) -> np.ndarray:
    """Mean over seeds of by-shot lists (Python lists, numpy or Arrow-backed), NaN-free rows only."""
    rows = [np.asarray(v, dtype=float) for v in values.tolist() if v is not None]
    rows = [r for r in rows if r.size and not np.isnan(r).any()]
    return np.mean(rows, axis=0) if rows else np.array([])


def kshot_figure(trials: pd.DataFrame, rule: PhaseRule, cells: Sequence[Cell]) -> Figure:
    """Accuracy at each position k = 0..n-1 (k in-context examples before the query), per set,
    mean over the cell's seeds, at the early-stopping step (solid) and at the end (dashed).
    """
    fig = _panel_figure(len(cells))
    for ax, cell in zip(_panels(fig, len(cells)), cells):
        chosen = cell_trials(trials, cell, rule)
        for set_name, (color, marker) in SET_STYLE.items():
            for time, style in (("best", "-"), ("final", "--")):
                curve = _by_shot_mean(chosen[f"{time}_{set_name}_acc_by_shot"])
                ax.plot(np.arange(curve.size), curve, color=color, linestyle=style, marker=marker,
                        markersize=4, markevery=max(1, curve.size // 8), linewidth=1.6)
        _reference_lines(ax, rule, 1.0 / float(chosen["task.p"].iloc[0]))
        ax.set_title(f"{cell.label()} ({len(chosen)} seeds)", fontsize=10)
        ax.set_xlabel("k (examples in context before the query)")
        if ax.get_subplotspec().is_first_col():  # the y axis is shared along a row
            ax.set_ylabel("accuracy at position k")
    handles = _set_handles() + [
        Line2D([], [], color="black", linestyle="-", label="early-stopping step (best_*)"),
        Line2D([], [], color="black", linestyle="--", label="end of training (final_*)"),
    ] + _reference_handles(rule)
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    titles(fig, "k-shot accuracy (mean over seeds)", rule)
    return fig


def _set_handles() -> list[Line2D]:
    return [Line2D([], [], color=color, marker=marker, label=set_name)
            for set_name, (color, marker) in SET_STYLE.items()]


def _reference_handles(rule: PhaseRule) -> list[Line2D]:
    return [Line2D([], [], color="#888888", linestyle=":", label="chance (1/p)"),
            Line2D([], [], color="#888888", linestyle="-.", label=f"threshold {rule.threshold:g}")]


def curve_columns(rule: PhaseRule) -> list[str]:
    """The curves-table columns the training figure reads (the rest is never loaded)."""
    return ["trial_id", "step", *(f"{s}_{rule.metric}" for s in SETS)]


def training_figure(
    trials: pd.DataFrame,
    curves: pd.DataFrame,
    rule: PhaseRule,
    cells: Sequence[Cell] = (),
    trial_ids: Sequence[str] = (),
) -> Figure:
    """The rule's accuracy of the four sets against step: one panel per cell (mean over its
    classified seeds) and per trial id, with the early-stopping step marked (for a cell: the
    median best_step, and the span of all its seeds' best steps).
    """
    groups = [(cell.label(), cell_trials(trials, cell, rule)) for cell in cells]
    for tid in trial_ids:
        one = trials[trials["trial_id"] == tid]
        if one.empty:
            raise PhaseError(f"no trial {tid!r} in the trials table")
        groups.append((f"trial {tid}", one))
    if not groups:
        raise PhaseError("training_figure needs at least one cell or trial id")
    wanted = np.unique(np.concatenate([g["trial_id"].to_numpy() for _, g in groups]))
    # One filter over the (possibly millions of rows) curves table, then small per-panel groupbys.
    curves = curves.loc[curves["trial_id"].isin(wanted), curve_columns(rule)]
    fig = _panel_figure(len(groups))
    for ax, (title, group) in zip(_panels(fig, len(groups)), groups):
        _training_panel(ax, curves[curves["trial_id"].isin(group["trial_id"])], group, rule)
        ax.set_title(f"{title} ({len(group)} seed{'s' if len(group) > 1 else ''})", fontsize=10)
    handles = _set_handles() + _reference_handles(rule)[1:] + [
        Line2D([], [], color="#444444", linestyle="--", label="early-stopping step (median)"),
        Patch(facecolor="#444444", alpha=0.12, label="early-stopping steps of the seeds"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    titles(fig, f"Training curves: {METRIC_LABEL[rule.metric]} (mean over seeds)", rule)
    return fig


def _training_panel(ax: Axes, curves: pd.DataFrame, group: pd.DataFrame, rule: PhaseRule) -> None:
    mean = curves.drop(columns="trial_id").groupby("step").mean().sort_index()
    for set_name, (color, marker) in SET_STYLE.items():
        ax.plot(mean.index, mean[f"{set_name}_{rule.metric}"], color=color, marker=marker,
                markersize=4, markevery=max(1, len(mean) // 10), linewidth=1.4)
    best = group["best_step"].astype(float).dropna()
    if len(best):
        ax.axvline(best.median(), color="#444444", linestyle="--", linewidth=1.2)
        if best.min() < best.max():
            ax.axvspan(best.min(), best.max(), color="#444444", alpha=0.12, linewidth=0)
    _reference_lines(ax, rule, 1.0 / float(group["task.p"].iloc[0]))
    ax.set_xlabel("step")
    if ax.get_subplotspec().is_first_col():  # the y axis is shared along a row
        ax.set_ylabel(METRIC_LABEL[rule.metric])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x / 1000:g}k" if x else "0"))


# ---------------------------------------------------------------------------------------------
# 5. Transience: the o.o.d. test accuracy at its peak and at the end, per depth
# ---------------------------------------------------------------------------------------------

def transience_figure(trials: pd.DataFrame, rule: PhaseRule) -> Figure:
    """Per diagram (depth, and facet values), the o.o.d. test accuracy (the rule's metric) at its
    peak over training (solid, `peak_*`) and at the end (dashed, `final_*`) against n_id, one
    colour per alpha, mean over the finished seeds. The gap between the two lines is the decay that
    early stopping recovers (the paper: deeper models generalize o.o.d. only transiently).
    """
    metric = f"ood_test_{rule.metric}"
    facets = facet_keys(trials)
    done = classify_trials(trials, rule)
    done = done[done["phase"].notna()].dropna(subset=[f"peak_{metric}"])
    if done.empty:
        raise PhaseError("no finished trial with an o.o.d. test curve: nothing to plot")
    keys = cell_keys(done, facets)
    values = done[[f"peak_{metric}", f"final_{metric}"]].join(keys).assign(chance=1.0 / done["task.p"].astype(float))
    panels = list(values.groupby([*facets, "model.depth"], sort=True))
    alphas = sorted(set(keys["task.alpha"]))
    colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, len(alphas)))
    fig = _panel_figure(len(panels))
    for ax, (key, panel) in zip(_panels(fig, len(panels)), panels):
        *facet_values, depth = key if isinstance(key, tuple) else (key,)
        means = panel.groupby(["task.alpha", "task.n_id"])[[f"peak_{metric}", f"final_{metric}"]].mean()
        for alpha, color in zip(alphas, colors):
            if alpha not in means.index.get_level_values("task.alpha"):
                continue
            line = means.loc[alpha]
            x = np.log2(line.index.to_numpy(dtype=float))
            ax.plot(x, line[f"peak_{metric}"], color=color, marker="o", linewidth=1.6)
            ax.plot(x, line[f"final_{metric}"], color=color, marker="o", markerfacecolor="none",
                    linestyle="--", linewidth=1.2)
        n_ids = sorted(set(panel["task.n_id"]))
        ax.set_xticks(np.log2(n_ids), [str(n) for n in n_ids])
        _reference_lines(ax, rule, float(panel["chance"].iloc[0]))
        ax.set_title(diagram_title(tuple(zip(facets, facet_values)), int(depth)), fontsize=10)
        ax.set_xlabel("n_id (pre-training tasks)")
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(f"ood_test {METRIC_LABEL[rule.metric]}")
    handles = [Line2D([], [], color=c, marker="o", label=f"alpha {a:g}") for a, c in zip(alphas, colors)] + [
        Line2D([], [], color="black", linestyle="-", label="peak over training (peak_*)"),
        Line2D([], [], color="black", linestyle="--", markerfacecolor="none", label="end of training (final_*)"),
    ] + _reference_handles(rule)
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    titles(fig, "Transience: o.o.d. test accuracy at its peak and at the end (mean over seeds)", rule)
    return fig
