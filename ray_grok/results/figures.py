"""Figures of a sweep: phase diagrams (paper Fig. 1b), accuracy heat maps, k-shot curves (Fig. 1c)
and training curves, from the trials and curves tables of RUN_DIR/results.

Each figure has a function that returns the matplotlib Figure, so tests and notebooks can inspect
it; plots.py saves them (files, TensorBoard images). Figures are built with
`matplotlib.figure.Figure`, not pyplot: no global state, no GUI backend (the Agg renderer draws
them on a headless node), nothing to close.
Every figure states its PhaseRule in the subtitle. Colours step in lightness and phases also differ
by hatching, so the figures survive greyscale printing.
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import FuncFormatter

from ..errors import PhaseError
from ..trial.schema import SETS
from .phases import ABBREVIATIONS, MISSING, Cell, PhaseRule, classify_trials, find_cell, in_cell, missing_cells

# (face colour, hatch, hatch colour, text colour). Lightness falls from "learned least" to "learned
# most" (CIE L* about 95, 87, 69, 47, 28), so the order survives greyscale; hatching tells apart
# the two palest (not fitted, missing) and the neighbours.
PHASE_STYLE = {
    "not fitted": ("#eeeeee", "xx", "#777777", "black"),
    "id memorization": ("#dfe318", "", "black", "black"),
    "id generalization": ("#44bf70", "..", "#1a4d2e", "black"),
    "ood memorization": ("#2a788e", "//", "#9cc9d6", "white"),
    "ood generalization": ("#463480", "", "white", "white"),
    MISSING: ("white", "///", "#bbbbbb", "#555555"),
}
# Line colours from plasma at L* about 15, 36, 58, 75, plus a marker each: distinct without colour.
SET_STYLE = {
    "id_train": ("#fca636", "o"),
    "id_test": ("#e16462", "s"),
    "ood_train": ("#8f0da4", "^"),
    "ood_test": ("#0d0887", "D"),
}
SET_TEXT = {
    "id_train": "id_train (pre-training tasks, train inputs)",
    "id_test": "id_test (pre-training tasks, test inputs)",
    "ood_train": "ood_train (o.o.d. tasks, train inputs)",
    "ood_test": "ood_test (o.o.d. tasks, test inputs)",
}
METRIC_LABEL = {"acc_last": "last-position accuracy", "acc": "accuracy averaged over positions"}
# Above this many cells a side, numbers inside heat-map cells would overlap: colours only.
MAX_ANNOTATED = 12


def _titles(fig: Figure, title: str, rule: PhaseRule) -> None:
    """Every figure's title carries its classification rule (the paper states none: record it)."""
    fig.suptitle(f"{title}\n{rule.describe()}", fontsize=11)


def _grid(table: pd.DataFrame, depth: int) -> tuple[pd.DataFrame, list[int], list[float]]:
    """Cells of one depth and the sorted n_id (columns) and alpha (rows) of the diagram."""
    cells = table[table["model.depth"] == depth]
    return cells, sorted(set(cells["task.n_id"])), sorted(set(cells["task.alpha"]))


def _categorical_axes(ax: Axes, n_ids: Sequence[int], alphas: Sequence[float]) -> None:
    """n_id columns equally spaced (a log2 axis for the paper's powers of two), alpha rows upward."""
    ax.set_xlim(-0.5, len(n_ids) - 0.5)
    ax.set_ylim(-0.5, len(alphas) - 0.5)
    ax.set_xticks(range(len(n_ids)), [str(n) for n in n_ids])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("n_id (pre-training tasks)")
    ax.set_ylabel("alpha (fraction of inputs for pre-training)")
    ax.tick_params(length=0)


# ---------------------------------------------------------------------------------------------
# 1. Phase diagram
# ---------------------------------------------------------------------------------------------

def _cell_label(row: Mapping) -> str:
    text = ABBREVIATIONS[row["phase"]]
    if row["phase"] != MISSING and row["agreement"] < 1:
        text += f"\n{round(row['agreement'] * row['n_seeds'])}/{row['n_seeds']}"
    return text


def _phase_legend() -> list[Patch]:
    return [Patch(facecolor=face, hatch=hatch, edgecolor=hatch_color, label=f"{ABBREVIATIONS[p]}  {p}")
            for p, (face, hatch, hatch_color, _) in PHASE_STYLE.items()]


def phase_diagram_figure(table: pd.DataFrame, rule: PhaseRule, depth: int) -> Figure:
    """The phase diagram of one depth from a `phase_table`: one coloured, labelled cell per
    (n_id, alpha); "k/n" under the label where only k of n seeds agree; missing cells hatched white.
    """
    cells, n_ids, alphas = _grid(table, depth)
    if cells.empty:
        raise PhaseError(f"no cells at depth {depth}; depths: {sorted(set(table['model.depth']))}")
    # At least as wide as the rule subtitle; the legend goes below, where its width is never tight.
    fig = Figure(figsize=(max(8.5, 1.5 + 0.9 * len(n_ids)), 2.8 + 0.6 * len(alphas)), layout="constrained")
    ax = fig.add_subplot()
    col, row = {n: i for i, n in enumerate(n_ids)}, {a: i for i, a in enumerate(alphas)}
    # One patch per cell (49 per depth in the paper's grid): cheap, and a per-cell hatch needs it.
    for cell in cells.to_dict("records"):
        face, hatch, hatch_color, text_color = PHASE_STYLE[cell["phase"]]
        x, y = col[cell["task.n_id"]], row[cell["task.alpha"]]
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor=face, hatch=hatch,
                               edgecolor=hatch_color, linewidth=0))
        # The label sits on a patch of the plain face colour so hatching never runs through it.
        ax.text(x, y, _cell_label(cell), ha="center", va="center", fontsize=9, color=text_color,
                fontweight="bold", linespacing=1.1,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": face, "linewidth": 0})
    _categorical_axes(ax, n_ids, alphas)
    for edge in np.arange(0.5, max(len(n_ids), len(alphas)) - 0.5):  # white cell borders
        ax.axvline(edge, color="white", linewidth=1.5)
        ax.axhline(edge, color="white", linewidth=1.5)
    fig.legend(handles=_phase_legend(), loc="outside lower center", ncols=3,
               title="majority phase over seeds (k/n: k of n seeds agree)",
               fontsize=9, title_fontsize=9, frameon=False, handleheight=1.8, handlelength=2.4)
    title = f"Phase diagram, depth {depth}: {len(cells)} cells, {missing_cells(cells)} missing"
    unclassified = int(cells["n_unclassified"].sum())
    if unclassified:
        title += f", {unclassified} failed or unfinished trials left out"
    _titles(fig, title, rule)
    return fig


# ---------------------------------------------------------------------------------------------
# 2. Accuracy heat maps
# ---------------------------------------------------------------------------------------------

def accuracy_figure(table: pd.DataFrame, rule: PhaseRule) -> Figure:
    """Mean accuracy (the rule's metric and time point) of each set over the grid: rows = depths,
    columns = the four sets. Missing cells are hatched; numbers inside cells on grids up to
    MAX_ANNOTATED a side.
    """
    depths = sorted(set(table["model.depth"]))
    _, n_ids, alphas = _grid(table, depths[0])
    fig = Figure(figsize=(2.0 + 3.3 * len(SETS) * max(len(n_ids), 5) / 7,
                          1.6 + 2.9 * len(depths) * max(len(alphas), 5) / 7), layout="constrained")
    axes = fig.subplots(len(depths), len(SETS), squeeze=False, sharex=True, sharey=True)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=(0, 0, 0, 0))  # NaN: see-through
    for r, depth in enumerate(depths):
        cells, n_ids, alphas = _grid(table, depth)
        for c, set_name in enumerate(SETS):
            values = (cells.pivot(index="task.alpha", columns="task.n_id", values=f"acc_{set_name}")
                      .reindex(index=alphas, columns=n_ids).to_numpy())
            image = _heat_map(axes[r, c], values, cmap)
            _categorical_axes(axes[r, c], n_ids, alphas)
            axes[r, c].label_outer()
            axes[r, c].set_title(f"depth {depth}: {SET_TEXT[set_name]}", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label=f"{METRIC_LABEL[rule.metric]} (mean over seeds)")
    _titles(fig, f"Accuracy per set (threshold {rule.threshold:g} decides the phase)", rule)
    return fig


def _heat_map(ax: Axes, values: np.ndarray, cmap: matplotlib.colors.Colormap) -> matplotlib.image.AxesImage:
    """One accuracy grid; the hatched axes background shows through missing (NaN) cells."""
    ax.patch.set_hatch("///")
    ax.patch.set_edgecolor("#bbbbbb")
    image = ax.imshow(values, origin="lower", cmap=cmap, vmin=0.0, vmax=1.0, aspect="auto")
    if max(values.shape) <= MAX_ANNOTATED:
        for (y, x), v in np.ndenumerate(values):
            if not np.isnan(v):
                ax.text(x, y, f"{v:.2f}", ha="center", va="center", fontsize=7,
                        color="black" if v > 0.55 else "white")
    return image


# ---------------------------------------------------------------------------------------------
# 3. k-shot curves and 4. training curves, for chosen cells
# ---------------------------------------------------------------------------------------------

def cell_trials(trials: pd.DataFrame, cell: Cell, rule: PhaseRule) -> pd.DataFrame:
    """The classified trials of one cell (the ones its phase was voted from)."""
    chosen = classify_trials(trials[in_cell(trials, cell)], rule)
    chosen = chosen[chosen["phase"].notna()]
    if chosen.empty:
        raise PhaseError(f"no finished trials in the cell {cell.label()}")
    return chosen


def default_cells(table: pd.DataFrame) -> list[Cell]:
    """Per depth, the cell with the highest mean ood_test accuracy: where o.o.d. generalization,
    the paper's subject, is strongest. Depths without any classified cell are skipped.
    """
    present = table[table["phase"] != MISSING].dropna(subset=["acc_ood_test"])
    best = present.loc[present.groupby("model.depth")["acc_ood_test"].idxmax()]
    return [Cell(int(r["model.depth"]), int(r["task.n_id"]), float(r["task.alpha"]))
            for r in best.to_dict("records")]


def chosen_cells(table: pd.DataFrame, cells: Sequence[Sequence] | None) -> list[Cell]:
    """The requested cells, checked against the grid (a typo fails naming the valid values),
    or `default_cells` when none are requested.
    """
    if cells is None:
        return default_cells(table)
    cells = [Cell(int(d), int(n), float(a)) for d, n, a in cells]
    for cell in cells:
        find_cell(table, cell)
    return cells


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
    _titles(fig, "k-shot accuracy (mean over seeds)", rule)
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
    _titles(fig, f"Training curves: {METRIC_LABEL[rule.metric]} (mean over seeds)", rule)
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
    """Per depth, the o.o.d. test accuracy (the rule's metric) at its peak over training (solid,
    `peak_*`) and at the end (dashed, `final_*`) against n_id, one colour per alpha, mean over the
    finished seeds. The gap between the two lines is the decay that early stopping recovers (the
    paper: deeper models generalize o.o.d. only transiently).
    """
    metric = f"ood_test_{rule.metric}"
    done = classify_trials(trials, rule)
    done = done[done["phase"].notna()].dropna(subset=[f"peak_{metric}"])
    if done.empty:
        raise PhaseError("no finished trial with an o.o.d. test curve: nothing to plot")
    keys = done.assign(**{"model.depth": pd.to_numeric(done["model.depth"]).astype(int),
                          "task.n_id": pd.to_numeric(done["task.n_id"]).astype(int),
                          "task.alpha": pd.to_numeric(done["task.alpha"]).astype(float).round(6)})
    means = keys.groupby(["model.depth", "task.alpha", "task.n_id"])[[f"peak_{metric}", f"final_{metric}"]].mean()
    depths = sorted(set(keys["model.depth"]))
    alphas = sorted(set(keys["task.alpha"]))
    colors = matplotlib.colormaps["viridis"](np.linspace(0.0, 0.85, len(alphas)))
    fig = _panel_figure(len(depths))
    for ax, depth in zip(_panels(fig, len(depths)), depths):
        for alpha, color in zip(alphas, colors):
            if (depth, alpha) not in means.index.droplevel("task.n_id"):
                continue
            line = means.loc[(depth, alpha)]
            x = np.log2(line.index.to_numpy(dtype=float))
            ax.plot(x, line[f"peak_{metric}"], color=color, marker="o", linewidth=1.6)
            ax.plot(x, line[f"final_{metric}"], color=color, marker="o", markerfacecolor="none",
                    linestyle="--", linewidth=1.2)
        n_ids = sorted(set(keys.loc[keys["model.depth"] == depth, "task.n_id"]))
        ax.set_xticks(np.log2(n_ids), [str(n) for n in n_ids])
        _reference_lines(ax, rule, 1.0 / float(keys["task.p"].iloc[0]))
        ax.set_title(f"depth {depth}", fontsize=10)
        ax.set_xlabel("n_id (pre-training tasks)")
        if ax.get_subplotspec().is_first_col():
            ax.set_ylabel(f"ood_test {METRIC_LABEL[rule.metric]}")
    handles = [Line2D([], [], color=c, marker="o", label=f"alpha {a:g}") for a, c in zip(alphas, colors)] + [
        Line2D([], [], color="black", linestyle="-", label="peak over training (peak_*)"),
        Line2D([], [], color="black", linestyle="--", markerfacecolor="none", label="end of training (final_*)"),
    ] + _reference_handles(rule)
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=9, frameon=False)
    _titles(fig, "Transience: o.o.d. test accuracy at its peak and at the end (mean over seeds)", rule)
    return fig
