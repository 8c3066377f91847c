"""The figures of a sweep (figures.py) to files, and its phase diagrams to TensorBoard.

    plot_run(RUN_DIR)   every figure of RUN_DIR/results into RUN_DIR/plots (`ray-grok plot`)
    log_phase_diagrams  the phase diagrams as TensorBoard images (the sweep's live diagrams)
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Literal, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..errors import PhaseError
from .curve_figures import (
    cell_trials, chosen_cells, curve_columns, kshot_figure, training_figure, transience_figure,
)
from .figures import accuracy_figure, phase_diagram_figure, phases_figure
from .phases import Cell, PhaseRule, diagrams, phase_table, read_results

Format = Literal["png", "svg", "pdf"]
FORMATS = ("png", "svg", "pdf")
DPI = 150  # saved PNGs: labels stay sharp when the figure is scaled into a paper or slide
IMAGE_DPI = 80  # TensorBoard images: small event files, still legible in the browser
# SVG and PDF keep text as text (searchable, editable in a paper), not as outlines.
EDITABLE_TEXT = {"svg.fonttype": "none", "pdf.fonttype": 42}


def figures(
    trials: pd.DataFrame,
    curves: pd.DataFrame,
    rule: PhaseRule = PhaseRule(),
    cells: Sequence[Cell] | None = None,
) -> dict[str, Figure]:
    """{file stem: Figure} of every figure plot_all writes; cells default to `default_cells`."""
    table = phase_table(trials, rule)
    if table.empty:
        raise PhaseError("the trials table has no trials to plot")
    cells = chosen_cells(table, cells)  # first: a bad cell fails before any drawing
    out = {"phases": phases_figure(table, rule)}
    out.update({f"phases_{diagram_name(f, d, '_')}": phase_diagram_figure(table, rule, d, f)
                for f, d, _ in diagrams(table)})
    out["accuracy"] = accuracy_figure(table, rule)
    if trials[f"peak_ood_test_{rule.metric}"].notna().any():
        out["transience"] = transience_figure(trials, rule)
    if cells:
        out["kshot"] = kshot_figure(trials, rule, cells)
        out["training"] = training_figure(trials, curves, rule, cells)
    return out


def plot_all(
    trials: pd.DataFrame,
    curves: pd.DataFrame,
    out_dir: str | Path,
    rule: PhaseRule = PhaseRule(),
    fmt: Format = "png",
    cells: Sequence[Cell] | None = None,
) -> list[Path]:
    """Write every figure to out_dir/{name}.{fmt}: phases (every diagram side by side), phases_depth{d}
    (phases_rule-random_depth{d} where the trials vary in another setting too), accuracy,
    transience, kshot, training."""
    if fmt not in FORMATS:
        raise PhaseError(f"fmt must be one of {list(FORMATS)}, got {fmt!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, fig in figures(trials, curves, rule, cells).items():
        path = out_dir / f"{name}.{fmt}"
        with matplotlib.rc_context(EDITABLE_TEXT):
            fig.savefig(path, dpi=DPI)
        paths.append(path)
    return paths


def plot_run(
    run_dir: str | Path,
    out_dir: str | Path | None = None,
    rule: PhaseRule = PhaseRule(),
    fmt: Format = "png",
    cells: Sequence[Cell] | None = None,
) -> list[Path]:
    """plot_all on RUN_DIR/results (default out_dir: RUN_DIR/plots), reading from the curves table
    only the chosen trials' rows and the columns the figures use.
    """
    trials = read_results(run_dir, "trials")
    cells = chosen_cells(phase_table(trials, rule), cells)
    cell_ids = [tid for cell in cells for tid in cell_trials(trials, cell, rule)["trial_id"]]
    # No cell (every cell missing): no figure reads curves, and Arrow rejects an empty "in" filter.
    curves = (read_results(run_dir, "curves", columns=curve_columns(rule), trial_ids=cell_ids)
              if cell_ids else pd.DataFrame(columns=curve_columns(rule)))
    return plot_all(trials, curves, Path(run_dir) / "plots" if out_dir is None else out_dir, rule, fmt, cells)


def diagram_name(facets: Sequence[tuple[str, object]], depth: int, sep: str) -> str:
    """'depth2' (sep '_') or 'depth=2' (sep '/'), facets first: 'rule-random_depth2', 'rule=random/depth=2'."""
    eq = "=" if sep == "/" else "-"
    parts = [f"{k.rsplit('.', 1)[-1]}{eq}{v:g}" if isinstance(v, float) else f"{k.rsplit('.', 1)[-1]}{eq}{v}"
             for k, v in facets]
    name = sep.join([*parts, f"depth{'=' if sep == '/' else ''}{depth}"])
    return re.sub(r"[^A-Za-z0-9._=/+-]", "_", name)


def _to_rgb(fig: Figure) -> np.ndarray:
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()  # (H, W, 3) uint8


def phase_diagram_images(trials: pd.DataFrame, rule: PhaseRule = PhaseRule()) -> dict[str, np.ndarray]:
    """{"phases/depth=D": (H, W, 3) uint8 image} of every phase diagram ("phases/rule=random/depth=D"
    where the trials vary in another setting too)."""
    table = phase_table(trials, rule)
    images = {}
    for facets, depth, _ in diagrams(table):
        fig = phase_diagram_figure(table, rule, depth, facets)
        fig.set_dpi(IMAGE_DPI)
        images[f"phases/{diagram_name(facets, depth, '/')}"] = _to_rgb(fig)
    return images


def log_phase_diagrams(
    trials: pd.DataFrame, logdir: str | Path, step: int, rule: PhaseRule = PhaseRule()
) -> list[str]:
    """Add the phase diagrams as TensorBoard images at `step` (e.g. finished trials so far), so a
    running sweep's diagram fills in under TensorBoard's Images tab. Returns the tags written.
    """
    # Imported here: torch is heavy, and only this function of the plotting module needs it.
    from torch.utils.tensorboard import SummaryWriter

    images = phase_diagram_images(trials, rule)
    writer = SummaryWriter(log_dir=str(logdir))
    try:
        for tag, image in images.items():
            writer.add_image(tag, image, global_step=step, dataformats="HWC")
    finally:
        writer.close()
    return list(images)
