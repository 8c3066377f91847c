"""Figures of a sweep's grid: phase diagrams (paper Fig. 1b), one per file and all side by side,
and accuracy heat maps, from the phase table of RUN_DIR/results; the styles every figure shares.
The line figures (k-shot curves, Fig. 1c, training curves, transience) are in curve_figures.py.

Each figure has a function that returns the matplotlib Figure, so tests and notebooks can inspect
it; plots.py saves them (files, TensorBoard images). Figures are built with
`matplotlib.figure.Figure`, not pyplot: no global state, no GUI backend (the Agg renderer draws
them on a headless node), nothing to close.
Every figure states its PhaseRule in the subtitle. Colours step in lightness and phases also differ
by hatching, so the figures survive greyscale printing.
"""
from __future__ import annotations

import textwrap
from typing import Mapping, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from ..errors import PhaseError
from ..trial.schema import SETS
from .cells import cell_keys, matches, table_facets
from .phases import ABBREVIATIONS, MISSING, PhaseRule, chance_text, diagram_title, diagrams, missing_cells

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


TITLE_PT = 11


def titles(fig: Figure, title: str, rule: PhaseRule, chance: str = "") -> None:
    """Every figure's title carries its classification rule (the paper states none: record it) and
    the chance level of the run's p, wrapped to the figure's width."""
    chars = int(fig.get_figwidth() * 72 / (0.55 * TITLE_PT))  # a DejaVu Sans character is ~0.55 em
    lines = [line for text in (title, rule.describe(), chance) if text
             for line in textwrap.wrap(text, chars, break_on_hyphens=False)]
    fig.suptitle("\n".join(lines), fontsize=TITLE_PT)


def _axes_values(cells: pd.DataFrame) -> tuple[list[int], list[float]]:
    """The sorted n_id (columns) and alpha (rows) of one diagram's cells."""
    return sorted(set(cells["task.n_id"])), sorted(set(cells["task.alpha"]))


def _categorical_axes(ax: Axes, n_ids: Sequence[int], alphas: Sequence[float], short: bool = False) -> None:
    """n_id columns equally spaced (a log2 axis for the paper's powers of two), alpha rows upward."""
    ax.set_xlim(-0.5, len(n_ids) - 0.5)
    ax.set_ylim(-0.5, len(alphas) - 0.5)
    ax.set_xticks(range(len(n_ids)), [str(n) for n in n_ids])
    ax.set_yticks(range(len(alphas)), [f"{a:g}" for a in alphas])
    ax.set_xlabel("n_id" if short else "n_id (pre-training tasks)")
    ax.set_ylabel("alpha" if short else "alpha (fraction of inputs\nfor pre-training)")
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


def diagram_cells(table: pd.DataFrame, depth: int, facets: Sequence[tuple[str, object]] = ()) -> pd.DataFrame:
    """The cells of one diagram of a phase table; PhaseError naming the diagrams there are if none."""
    unknown = [k for k, _ in facets if k not in table_facets(table)]
    if unknown:
        raise PhaseError(f"{unknown} are not facets of this table; its facets: {table_facets(table)}")
    keys = cell_keys(table, [k for k, _ in facets])
    hit = keys["model.depth"] == depth
    for key, value in facets:
        hit &= matches(keys[key], value)
    if not hit.any():
        there = "; ".join(diagram_title(f, d) for f, d, _ in diagrams(table))
        raise PhaseError(f"no cells at {diagram_title(facets, depth)}; diagrams: {there}")
    return table[hit]


def _draw_diagram(ax: Axes, cells: pd.DataFrame, short: bool = False) -> None:
    """One diagram's cells on AX: a coloured, labelled patch per (n_id, alpha), white borders."""
    n_ids, alphas = _axes_values(cells)
    col, row = {n: i for i, n in enumerate(n_ids)}, {a: i for i, a in enumerate(alphas)}
    # One patch per cell (49 per depth in the paper's grid): cheap, and a per-cell hatch needs it.
    for cell in cells.to_dict("records"):
        face, hatch, hatch_color, text_color = PHASE_STYLE[cell["phase"]]
        x, y = col[cell["task.n_id"]], row[cell["task.alpha"]]
        ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor=face, hatch=hatch,
                               edgecolor=hatch_color, linewidth=0))
        # The label sits on a patch of the plain face colour so hatching never runs through it.
        ax.text(x, y, _cell_label(cell), ha="center", va="center", fontsize=8 if short else 9, color=text_color,
                fontweight="bold", linespacing=1.1,
                bbox={"boxstyle": "round,pad=0.2", "facecolor": face, "linewidth": 0})
    _categorical_axes(ax, n_ids, alphas, short)
    for edge in np.arange(0.5, max(len(n_ids), len(alphas)) - 0.5):  # white cell borders
        ax.axvline(edge, color="white", linewidth=1.5)
        ax.axhline(edge, color="white", linewidth=1.5)


def _legend_and_titles(fig: Figure, title: str, cells: pd.DataFrame, rule: PhaseRule) -> None:
    fig.legend(handles=_phase_legend(), loc="outside lower center", ncols=3,
               title="majority phase over seeds (k/n: k of n seeds agree)",
               fontsize=9, title_fontsize=9, frameon=False, handleheight=1.8, handlelength=2.4)
    title += f": {len(cells)} cells, {missing_cells(cells)} missing"
    unclassified = int(cells["n_unclassified"].sum())
    if unclassified:
        title += f", {unclassified} failed or unfinished trials left out"
    titles(fig, title, rule, chance_text(cells))


def phase_diagram_figure(table: pd.DataFrame, rule: PhaseRule, depth: int,
                         facets: Sequence[tuple[str, object]] = ()) -> Figure:
    """The phase diagram of one depth (and facet values) from a `phase_table`: one coloured,
    labelled cell per (n_id, alpha); "k/n" under the label where only k of n seeds agree; missing
    cells hatched white.
    """
    cells = diagram_cells(table, depth, facets)
    n_ids, alphas = _axes_values(cells)
    # At least as wide as the rule subtitle; the legend goes below, where its width is never tight.
    # Rows at least 4 high: the two-line alpha label needs about 2.2 inches.
    fig = Figure(figsize=(max(8.5, 1.5 + 0.9 * len(n_ids)), 3.4 + 0.6 * max(len(alphas), 4)), layout="constrained")
    _draw_diagram(fig.add_subplot(), cells)
    _legend_and_titles(fig, f"Phase diagram, {diagram_title(facets, depth)}", cells, rule)
    return fig


def phases_figure(table: pd.DataFrame, rule: PhaseRule) -> Figure:
    """Every diagram of a phase table side by side, as the paper's Fig. 1b: a column per depth,
    a row per value of any other swept setting."""
    blocks = diagrams(table)
    rows = list(dict.fromkeys(facets for facets, _, _ in blocks))
    depths = sorted({depth for _, depth, _ in blocks})
    n_ids, alphas = _axes_values(table)
    panel_w, panel_h = max(2.8, 1.0 + 0.55 * len(n_ids)), max(2.4, 0.9 + 0.42 * len(alphas))
    fig = Figure(figsize=(max(8.5, 0.8 + panel_w * len(depths)), 2.6 + panel_h * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), len(depths), squeeze=False)
    for ax in axes.ravel():
        ax.set_visible(False)  # a facet value without some depth leaves its panel empty
    for facets, depth, cells in blocks:
        r, c = rows.index(facets), depths.index(depth)
        ax = axes[r, c]
        ax.set_visible(True)
        _draw_diagram(ax, cells, short=True)
        ax.set_title(diagram_title(facets, depth), fontsize=10)
        if c:
            ax.set_ylabel("")
        if r < len(rows) - 1:
            ax.set_xlabel("")
    _legend_and_titles(fig, "Phase diagrams", table, rule)
    return fig


# ---------------------------------------------------------------------------------------------
# 2. Accuracy heat maps
# ---------------------------------------------------------------------------------------------

def accuracy_figure(table: pd.DataFrame, rule: PhaseRule) -> Figure:
    """Mean accuracy (the rule's metric and time point) of each set over the grid: one row per
    diagram (depth, and facet values), one column per set. Missing cells are hatched; numbers
    inside cells on grids up to MAX_ANNOTATED a side.
    """
    blocks = diagrams(table)
    n_ids, alphas = _axes_values(table)
    panel_w, panel_h = 0.42 * max(len(n_ids), 5), 0.36 * max(len(alphas), 5)  # inches
    fig = Figure(figsize=(1.8 + (panel_w + 0.25) * len(SETS), 2.0 + (panel_h + 0.35) * len(blocks)),
                 layout="constrained")
    axes = fig.subplots(len(blocks), len(SETS), squeeze=False, sharex=True, sharey=True)
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=(0, 0, 0, 0))  # NaN: see-through
    for r, (facets, depth, cells) in enumerate(blocks):
        for c, set_name in enumerate(SETS):
            ax = axes[r, c]
            values = (cells.pivot(index="task.alpha", columns="task.n_id", values=f"acc_{set_name}")
                      .reindex(index=alphas, columns=n_ids).to_numpy())
            image = _heat_map(ax, values, cmap)
            _categorical_axes(ax, n_ids, alphas, short=True)
            ax.label_outer()
            if r == 0:  # the set names head the columns, the diagrams name the rows
                ax.set_title(SET_TEXT[set_name].replace(" (", "\n("), fontsize=9)
            if c == 0:
                ax.set_ylabel(f"{diagram_title(facets, depth)}\nalpha", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.6, label=f"{METRIC_LABEL[rule.metric]} (mean over seeds)")
    titles(fig, f"Accuracy per set (threshold {rule.threshold:g} decides the phase)", rule, chance_text(table))
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
