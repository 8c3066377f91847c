"""Figures: the right panels, real images on disk in every format, TensorBoard images that
TensorBoard's own reader decodes, and the `ray-grok plot` command."""
from __future__ import annotations

import html
import io

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb

from ray_grok.cli import main
from ray_grok.trial.schema import SETS
from ray_grok.errors import PhaseError
from ray_grok.results.phases import PHASES, Cell, PhaseRule, phase_table
from ray_grok.results.curve_figures import (
    curve_columns, default_cells, kshot_figure, training_figure, transience_figure,
)
from ray_grok.results.figures import PHASE_STYLE, phase_diagram_figure
from ray_grok.results.schema import CURVES_SCHEMA
from ray_grok.results.plots import DPI, IMAGE_DPI, figures, log_phase_diagrams, phase_diagram_images, plot_all
from synthetic import curves_frame, fig1b_depth6_trials, trial, trials_frame

RULE = PhaseRule()


@pytest.fixture(scope="module")
def sweep() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Depth 6 as in Fig. 1b plus a depth-2 copy with a hole: cell (2, 64, 0.5) failed, and a
    not-fitted cell, so every phase style and a missing cell are drawn."""
    d6 = fig1b_depth6_trials(seeds=3)
    d2 = d6.assign(**{"model.depth": 2, "trial_id": "d2_" + d6["trial_id"]})
    hole = (d2["task.n_id"] == 64) & (d2["task.alpha"] == 0.5)
    d2.loc[hole, "status"] = "failed"
    unfit = (d2["task.n_id"] == 8) & (d2["task.alpha"] == 0.2)
    d2.loc[unfit, [f"{t}_id_train_acc_last" for t in ("best", "final")]] = 0.1
    trials = pd.concat([d2, d6], ignore_index=True)
    return trials, curves_frame(trials, n_evals=30)


def visible_axes(fig) -> list:
    return [ax for ax in fig.axes if ax.get_visible()]


def test_synthetic_curves_are_a_valid_curves_table(sweep):
    """The figure tests run on synthetic tables: they must have the real table's columns and types."""
    table = pa.Table.from_pandas(sweep[1], schema=CURVES_SCHEMA, preserve_index=False)
    assert table.schema.names == CURVES_SCHEMA.names and table.num_rows == len(sweep[1])


def test_every_figure_has_its_panels_and_states_the_rule(sweep):
    trials, curves = sweep
    cells = [Cell(6, 256, 0.6), Cell(2, 512, 0.3)]
    figs = figures(trials, curves, RULE, cells)
    assert list(figs) == ["phases", "phases_depth2", "phases_depth6", "accuracy", "transience", "kshot", "training"]
    assert [ax.get_title() for ax in visible_axes(figs["phases"])] == ["depth 2", "depth 6"]  # side by side
    assert len(visible_axes(figs["transience"])) == 2  # one panel per depth
    assert len(visible_axes(figs["phases_depth6"])) == 1
    assert len(visible_axes(figs["accuracy"])) == 2 * len(SETS) + 1  # depth x set panels + colour bar
    assert len(visible_axes(figs["kshot"])) == len(visible_axes(figs["training"])) == len(cells)
    for name, fig in figs.items():  # the subtitle is wrapped to the figure's width
        assert " ".join(RULE.describe().split()) in " ".join(fig.get_suptitle().split()), name


def test_transience_figure_draws_peak_and_final_per_alpha_from_the_trials(sweep):
    trials, _ = sweep
    fig = transience_figure(trials, RULE)
    d6 = next(ax for ax in fig.axes if ax.get_title() == "depth 6")
    lines = [l for l in d6.get_lines() if not l.get_label().startswith(("chance", "threshold"))]
    assert len(lines) == 2 * 7  # peak and final for each of the 7 alphas
    done = trials[(trials["model.depth"] == 6) & (trials["status"] == "done")]
    at = done[np.isclose(done["task.alpha"], 0.6)].groupby("task.n_id")
    peak, final = lines[2 * 4].get_ydata(), lines[2 * 4 + 1].get_ydata()  # alpha 0.6 is the 5th
    assert np.allclose(peak, at["peak_ood_test_acc_last"].mean()) and np.allclose(final, at["final_ood_test_acc_last"].mean())
    assert (peak >= final).all() and (peak > final).any()  # the synthetic depth-6 sweep decays


def test_phase_diagram_counts_missing_cells_and_labels_disagreement(sweep):
    table = phase_table(sweep[0], RULE)
    d2 = phase_diagram_figure(table, RULE, 2)
    assert "49 cells, 1 missing" in d2.get_suptitle()
    texts = [t.get_text() for t in d2.axes[0].texts]
    assert len(texts) == 49 and texts.count("--") == 1 and texts.count("NF") == 1
    assert "IG\n2/3" in texts  # the dissenting seed of (128, 0.4)
    with pytest.raises(PhaseError, match="depth 4"):
        phase_diagram_figure(table, RULE, 4)


def test_phase_colours_are_drawn_and_distinct_in_greyscale(sweep):
    image = phase_diagram_images(sweep[0], RULE)["phases/depth=2"]
    for phase in PHASES:  # depth 2 has a cell of every phase: more pixels than its legend patch
        face = np.array([round(255 * c) for c in to_rgb(PHASE_STYLE[phase][0])], dtype=np.uint8)
        assert (image == face).all(axis=-1).sum() > 1500, phase
    grey = [np.dot(to_rgb(PHASE_STYLE[p][0]), [0.2126, 0.7152, 0.0722]) for p in PHASES]
    assert all(a - b > 0.08 for a, b in zip(grey, grey[1:]))  # lightness falls phase by phase


def test_default_cells_pick_the_best_ood_test_cell_per_depth(sweep):
    table = phase_table(sweep[0], RULE)
    cells = default_cells(table)
    assert [c.depth for c in cells] == [2, 6]
    for c in cells:
        at_depth = table[table["model.depth"] == c.depth]
        best = at_depth.loc[at_depth["acc_ood_test"].idxmax()]
        assert (best["task.n_id"], best["task.alpha"]) == (c.n_id, c.alpha)
        assert best["phase"] == "ood generalization"


def test_kshot_curves_are_the_by_shot_means(sweep):
    trials, _ = sweep
    fig = kshot_figure(trials, RULE, [Cell(6, 512, 0.8)])
    lines = [l for l in fig.axes[0].get_lines() if len(l.get_xdata()) > 2]
    assert len(lines) == 2 * len(SETS)  # best and final per set
    chosen = trials[(trials["model.depth"] == 6) & (trials["task.n_id"] == 512) & (trials["task.alpha"] == 0.8)]
    expected = np.mean(np.stack(chosen["best_ood_test_acc_by_shot"].tolist()), axis=0)
    assert any(np.allclose(l.get_ydata(), expected) for l in lines)


def test_training_curves_mark_the_early_stopping_step(sweep):
    trials, curves = sweep
    tid = trials["trial_id"].iloc[-1]
    fig = training_figure(trials, curves[curve_columns(RULE)], RULE, trial_ids=[tid])
    ax = fig.axes[0]
    vertical = [l for l in ax.get_lines() if len(set(l.get_xdata())) == 1]
    assert [l.get_xdata()[0] for l in vertical] == [trials["best_step"].iloc[-1]]
    assert sum(len(l.get_xdata()) == 30 for l in ax.get_lines()) == len(SETS)
    with pytest.raises(PhaseError, match="no trial"):
        training_figure(trials, curves, RULE, trial_ids=["nope"])


def test_plot_all_writes_real_pngs(sweep, tmp_path):
    trials, curves = sweep
    paths = plot_all(trials, curves, tmp_path / "plots", RULE, cells=[Cell(6, 512, 0.8)])
    assert sorted(p.name for p in paths) == sorted(
        ["phases.png", "phases_depth2.png", "phases_depth6.png", "accuracy.png", "transience.png", "kshot.png",
         "training.png"])
    for path in paths:
        image = mpimg.imread(path)
        height, width = image.shape[:2]
        rgb = (image[::2, ::2, :3] * 255).astype(np.uint32)  # every 4th pixel: enough, and fast
        colours = np.unique((rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2])
        assert height >= 600 and width >= 900, path.name
        assert len(colours) > 50, path.name  # not blank, not a single flat colour
        assert (image[..., :3] < 0.5).mean() > 0.01, path.name  # real dark ink: text, lines, cells


@pytest.mark.parametrize("fmt, magic", [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_plot_all_other_formats(sweep, tmp_path, fmt, magic):
    trials, curves = sweep
    d6 = trials["model.depth"] == 6
    paths = plot_all(trials[d6], curves, tmp_path, RULE, fmt=fmt, cells=[])
    assert [p.suffix for p in paths] == [f".{fmt}"] * 4  # phases, phases_depth6, accuracy, transience; no cells
    for path in paths:
        assert path.read_bytes().startswith(magic) and path.stat().st_size > 10_000


def test_plot_all_rejects_bad_format_and_cells(sweep, tmp_path):
    trials, curves = sweep
    with pytest.raises(PhaseError, match="fmt"):
        plot_all(trials, curves, tmp_path, RULE, fmt="jpg")
    with pytest.raises(PhaseError, match=r"task.n_id in \[8, 16"):
        plot_all(trials, curves, tmp_path, RULE, cells=[Cell(6, 100, 0.5)])
    with pytest.raises(PhaseError, match="no finished trials"):
        plot_all(trials, curves, tmp_path, RULE, cells=[Cell(2, 64, 0.5)])  # the failed cell


def test_log_phase_diagrams_is_readable_by_tensorboard(sweep, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trials, _ = sweep
    images = phase_diagram_images(trials, RULE)
    tags = log_phase_diagrams(trials, tmp_path, step=7, rule=RULE)
    assert tags == ["phases/depth=2", "phases/depth=6"]
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    assert sorted(events.Tags()["images"]) == sorted(tags)
    for tag in tags:
        (event,) = events.Images(tag)
        decoded = mpimg.imread(io.BytesIO(event.encoded_image_string), format="png")
        assert event.step == 7
        assert decoded.shape[:2] == (event.height, event.width) == images[tag].shape[:2]
        assert np.array_equal((decoded[..., :3] * 255).round().astype(np.uint8), images[tag])


def test_images_accumulate_over_steps(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    for step, n_done in ((1, 1), (2, 3)):
        log_phase_diagrams(trials_frame([trial(seed=s) for s in range(n_done)]), tmp_path, step)
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0}).Reload()
    assert [e.step for e in events.Images("phases/depth=6")] == [1, 2]


@pytest.fixture
def run_dir(sweep, tmp_path):
    """RUN_DIR/results with trials as one file and curves as a dataset directory."""
    trials, curves = sweep
    (tmp_path / "results").mkdir()
    trials.to_parquet(tmp_path / "results" / "trials")
    pq.write_to_dataset(pa.Table.from_pandas(curves, preserve_index=False), tmp_path / "results" / "curves")
    return tmp_path


def test_plot_command_writes_figures(run_dir):
    result = CliRunner().invoke(main, ["plot", str(run_dir), "--format", "svg", "--cell", "6,512,0.8",
                                           "--time", "final"])
    assert result.exit_code == 0, result.output
    printed = result.output.split()
    assert len(printed) == 7 and all(p.startswith(str(run_dir / "plots")) for p in printed)
    assert all(p.endswith(".svg") for p in printed)
    svg = (run_dir / "plots" / "phases_depth6.svg").read_text()
    assert html.escape(PhaseRule(time="final").describe(), quote=False) in svg  # text kept as text


def test_plot_command_errors(run_dir, tmp_path_factory):
    bad_cell = CliRunner().invoke(main, ["plot", str(run_dir), "--cell", "6,512"])
    assert bad_cell.exit_code == 2 and "DEPTH,N_ID,ALPHA" in bad_cell.output
    unknown = CliRunner().invoke(main, ["plot", str(run_dir), "--cell", "6,100,0.5"])
    assert unknown.exit_code == 1 and "not in the grid" in unknown.output
    empty = CliRunner().invoke(main, ["plot", str(tmp_path_factory.mktemp("empty"))])
    assert empty.exit_code == 1 and "ray-grok aggregate" in empty.output


# ---- layout: every figure at its real size, no text on another, none outside ----

def drawn_texts(fig, dpi: float) -> list:
    """(label, window extent) of every text the renderer draws: titles, axis and tick labels
    (ticks in view only), annotations, legends, colour-bar labels."""
    fig.set_dpi(dpi)
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    texts = [fig._suptitle, fig._supxlabel, fig._supylabel, *fig.texts]
    for legend in fig.legends:
        texts += [legend.get_title(), *legend.get_texts()]
    for ax in fig.axes:
        if not ax.get_visible():
            continue
        texts += [ax.title, ax._left_title, ax._right_title, ax.xaxis.label, ax.yaxis.label, *ax.texts]
        if ax.get_legend():
            texts += [ax.get_legend().get_title(), *ax.get_legend().get_texts()]
        for axis in (ax.xaxis, ax.yaxis):
            lo, hi = sorted(axis.get_view_interval())
            slack = 1e-9 * max(1.0, abs(hi - lo))
            for tick in axis.get_major_ticks():
                if lo - slack <= tick.get_loc() <= hi + slack:
                    texts += [tick.label1, tick.label2]
    unique = list({id(t): t for t in texts if t is not None}.values())  # fig.texts holds the suptitle too
    shown = [t for t in unique if t.get_visible() and t.get_text().strip()]
    return [(t.get_text().replace("\n", " ")[:40], t.get_window_extent(renderer)) for t in shown]


def layout_problems(fig, dpi: float) -> list[str]:
    texts = drawn_texts(fig, dpi)
    width, height = fig.get_size_inches() * dpi
    problems = [f"{name!r} leaves the figure" for name, box in texts
                if box.x0 < -1 or box.y0 < -1 or box.x1 > width + 1 or box.y1 > height + 1]
    for i, (a, box_a) in enumerate(texts):
        for b, box_b in texts[i + 1:]:
            inner = box_b.padded(-1)  # texts that merely touch are fine
            if inner.width > 0 and inner.height > 0 and box_a.overlaps(inner):
                problems.append(f"{a!r} overlaps {b!r}")
    return problems


def smoke_shaped_sweep() -> tuple[pd.DataFrame, pd.DataFrame]:
    """The smoke grid's shape: depth {1, 2} x n_id {4, 16} x alpha {0.4, 0.7} x 2 rules x 2 seeds,
    p = 7: two diagrams per depth."""
    specs = [trial(depth=d, n_id=n, alpha=a, seed=s, best="id memorization" if n == 4 else "not fitted")
             for d in (1, 2) for n in (4, 16) for a in (0.4, 0.7) for s in (0, 1)]
    rect = trials_frame(specs, p=7, n_examples=8, steps=400)
    rand = rect.assign(**{"task.rule": "random", "trial_id": "rand_" + rect["trial_id"]})
    trials = pd.concat([rect, rand], ignore_index=True)
    return trials, curves_frame(trials, n_evals=9)


@pytest.mark.parametrize("shape", ["paper", "smoke"])
def test_every_figure_lays_out_its_texts_without_overlap_at_its_real_size(sweep, shape):
    """The figures as `ray-grok plot` saves them (DPI) and as TensorBoard shows the diagrams
    (IMAGE_DPI): in accuracy.png the panel titles of neighbouring heat maps once ran into each
    other and the rows' y-labels overlapped."""
    trials, curves = sweep if shape == "paper" else smoke_shaped_sweep()
    figs = figures(trials, curves, RULE)
    assert len(figs) >= 6
    for name, fig in figs.items():
        for dpi in (DPI, IMAGE_DPI) if name.startswith("phases") else (DPI,):
            assert not layout_problems(fig, dpi), f"{shape} {name}.png at {dpi} dpi: {layout_problems(fig, dpi)}"


def test_the_layout_check_sees_overlapping_titles():
    """The check itself can fail: two long titles on narrow neighbouring panels overlap."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4, 2))
    for ax in fig.subplots(1, 2):
        ax.set_title("a panel title far longer than its panel is wide")
    assert any("overlaps" in p for p in layout_problems(fig, DPI))


def test_a_sweep_with_another_axis_gets_a_diagram_per_value_everywhere(tmp_path):
    trials, curves = smoke_shaped_sweep()
    figs = figures(trials, curves, RULE)
    diagrams = [f"phases_rule-{r}_depth{d}" for r in ("random", "rectangular") for d in (1, 2)]
    assert list(figs)[:5] == ["phases", *diagrams]
    assert [ax.get_title() for ax in visible_axes(figs["phases"])] == [
        f"rule {r}, depth {d}" for r in ("random", "rectangular") for d in (1, 2)]
    assert len(visible_axes(figs["accuracy"])) == 4 * len(SETS) + 1  # a row per (rule, depth)
    assert len(visible_axes(figs["transience"])) == 4
    assert len(visible_axes(figs["kshot"])) == 4  # per diagram its best cell, never pooled
    assert all("rule " in ax.get_title() and "(2 seeds)" in ax.get_title() for ax in visible_axes(figs["kshot"]))
    assert "rule random, depth 1" in figs["phases_rule-random_depth1"].get_suptitle()
    assert "chance (1/p) is 0.143 for p = 7" in figs["phases_rule-random_depth1"].get_suptitle()
    tags = log_phase_diagrams(trials, tmp_path, step=1, rule=RULE)
    assert tags == [f"phases/rule={r}/depth={d}" for r in ("random", "rectangular") for d in (1, 2)]
    one = figures(trials, curves, RULE, cells=[Cell(2, 4, 0.7)])  # a cell without its rule: one per rule
    assert [ax.get_title().split(" (")[0] for ax in visible_axes(one["kshot"])] == [
        "rule random, depth 2, n_id 4, alpha 0.7", "rule rectangular, depth 2, n_id 4, alpha 0.7"]
    with pytest.raises(PhaseError, match=r"vary in \['task.rule'\] too"):
        kshot_figure(trials, RULE, [Cell(2, 4, 0.7)])
