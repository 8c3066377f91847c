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
from matplotlib.colors import to_rgb

from ray_grok.cli import main
from ray_grok.trial.schema import SETS
from ray_grok.errors import PhaseError
from ray_grok.results.phases import PHASES, Cell, PhaseRule, phase_table
from ray_grok.results.figures import (
    PHASE_STYLE, curve_columns, default_cells, kshot_figure, phase_diagram_figure, training_figure,
    transience_figure,
)
from ray_grok.results.schema import CURVES_SCHEMA
from ray_grok.results.plots import figures, log_phase_diagrams, phase_diagram_images, plot_all
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
    assert list(figs) == ["phases_depth2", "phases_depth6", "accuracy", "transience", "kshot", "training"]
    assert len(visible_axes(figs["transience"])) == 2  # one panel per depth
    assert len(visible_axes(figs["phases_depth6"])) == 1
    assert len(visible_axes(figs["accuracy"])) == 2 * len(SETS) + 1  # depth x set panels + colour bar
    assert len(visible_axes(figs["kshot"])) == len(visible_axes(figs["training"])) == len(cells)
    for name, fig in figs.items():
        assert RULE.describe() in fig.get_suptitle(), name


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
        ["phases_depth2.png", "phases_depth6.png", "accuracy.png", "transience.png", "kshot.png", "training.png"])
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
    assert [p.suffix for p in paths] == [f".{fmt}"] * 3  # phases_depth6, accuracy, transience; no cells
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
    assert len(printed) == 6 and all(p.startswith(str(run_dir / "plots")) for p in printed)
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
