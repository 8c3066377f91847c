"""Refining a sweep (sweep/refine.py) and the grid's extra cells it writes (sweep/extra.py).

Fast: run directories are made with `prepare` (as a launch makes them), and their results table is
written by an oracle that labels every planned trial from a known boundary, so no model is trained
and Ray is never started. The loop refine -> prepare (the launch's extension) -> oracle -> refine
is the study a user runs; its brackets must close in on the boundary the oracle knows.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable

import pytest
import yaml
from click.testing import CliRunner
from synthetic import trial, trials_frame

from ray_grok.cli import main
from ray_grok.errors import ConfigError, GridError, MissingResultsError, RunDirError
from ray_grok.results.phases import phase_table, read_results
from ray_grok.results.plan import read_plan
from ray_grok.sweep.grid import expand, grid_from_dict, load_grid
from ray_grok.sweep.refine import RefineOptions, plan_refinement, write_grid
from ray_grok.sweep.rundir import check_extension, prepare, resolve
from ray_grok.trial.config import flatten

LOW, HIGH = "id memorization", "ood generalization"  # the phases below and above a boundary
# 40320 = 8!: a batch that many n_id divide (the trial's rule), so bisection has room near any n
BASE = {"task": {"p": 29, "rule": "random", "n_ood": 8, "n_examples": 8},
        "model": {"width": 32, "heads": 2}, "train": {"steps": 100, "batch_size": 40320},
        "runtime": {"device": "cpu"}}

Oracle = Callable[[dict], str]  # a trial's coords (seed included) -> its phase


def make_run(tmp_path: Path, axes: dict, seeds=3, base=BASE, **extra_sections) -> Path:
    """A run directory as `ray-grok launch` leaves it before any trial ran."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "study", "base": base, "axes": axes, "seeds": seeds,
                                    **extra_sections}, sort_keys=False))
    return launch_into(grid, tmp_path / "run")


def launch_into(grid: Path, run_dir: Path) -> Path:
    """What `ray-grok launch GRID --out RUN_DIR` writes before Ray starts (creating or extending)."""
    launch = resolve(grid, run_dir, resume=False)
    prepare(launch.run_dir, launch.spec, launch.grid_text, launch.trials)
    return launch.run_dir


def finish(run_dir: Path, oracle: Oracle) -> None:
    """Results for every active trial of the plan, each labelled by the oracle, as aggregate
    writes them (results/trials)."""
    entries = read_plan(run_dir).active
    configs = [flatten(json.loads((run_dir / e.dir / "config.json").read_text())) for e in entries]
    specs = [trial(c["model.depth"], c["task.n_id"], c["task.alpha"], c["seed"], best=oracle(c)) for c in configs]
    frame = trials_frame(specs)
    for key in {k for e in entries for k in e.coords} - {"model.depth", "task.n_id", "task.alpha", "seed"}:
        frame[key] = [e.coords[key] for e in entries]  # another swept key: its own diagrams
    frame["trial_id"] = [e.trial_id for e in entries]
    out = run_dir / "results" / "trials"
    out.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out / "part-0.parquet", index=False)


def refine(run_dir: Path, **options):
    out = run_dir / "next.yaml"
    return plan_refinement(run_dir, RefineOptions(**options), out), out


def step(run_dir: Path, oracle: Oracle, **options):
    """One round of the study: refine, write the grid, launch it into the run, results come in."""
    ref, out = refine(run_dir, **options)
    if not ref.empty:
        write_grid(ref, out)
        launch_into(out, run_dir)
        finish(run_dir, oracle)
    return ref


def threshold_oracle(axis: str, star: dict[int, float], band: float, log: bool) -> Oracle:
    """HIGH at or above the depth's boundary value along AXIS, LOW below. Within BAND of the
    boundary (a ratio for a log axis, else a difference) every third seed dissents, so those cells
    disagree (2 of 3, 4 of 6) but keep the true majority."""
    def phase(c: dict) -> str:
        x, b = float(c[axis]), star[int(c["model.depth"])]
        truth = HIGH if x >= b else LOW
        near = abs(math.log(x / b)) < math.log(band) if log else abs(x - b) < band
        if near and int(c["seed"]) % 3 == 2:
            return LOW if truth == HIGH else HIGH
        return truth
    return phase


def brackets(run_dir: Path, axis: str) -> dict[tuple, tuple[float, float]]:
    """Per line of cells along AXIS (every other cell key fixed): (the largest LOW cell below the
    smallest HIGH cell, that HIGH cell), read off the phase table."""
    table = phase_table(read_results(run_dir, "trials"))
    table = table[table["phase"] != "missing"]
    others = [k for k in ("model.depth", "task.n_id", "task.alpha") if k != axis]
    out = {}
    for key, line in table.groupby(others):
        hi = line.loc[line["phase"] == HIGH, axis].min()
        lo = line.loc[(line["phase"] == LOW) & (line[axis] < hi), axis].max()
        out[key] = (float(lo), float(hi))
    return out


def divisors_between(n: int, lo: float, hi: float) -> list[int]:
    return [d for d in range(int(lo) + 1, math.ceil(hi)) if n % d == 0]


# ---------------------------------------------------------------------------------------------
# Convergence on a known boundary
# ---------------------------------------------------------------------------------------------

def test_repeated_refine_converges_on_a_known_n_id_boundary(tmp_path):
    star = {1: 45.0, 2: 20.0}  # the true boundary per depth; the grid has 8..128
    oracle = threshold_oracle("task.n_id", star, band=1.25, log=True)
    run = make_run(tmp_path, {"model.depth": [1, 2], "task.n_id": [8, 16, 32, 64, 128], "task.alpha": [0.4, 0.7]})
    finish(run, oracle)
    before = brackets(run, "task.n_id")
    assert set(before.values()) == {(32, 64), (16, 32)}
    for _ in range(8):
        ref = step(run, oracle)
        if ref.empty:
            break
        after = brackets(run, "task.n_id")
        for line, (lo, hi) in after.items():
            old_lo, old_hi = before[line]
            if divisors_between(40320, old_lo, old_hi):  # room for a midpoint: the bracket shrank
                assert old_lo <= lo < hi <= old_hi and hi / lo < old_hi / old_lo, (line, before[line], after[line])
            else:
                assert (lo, hi) == (old_lo, old_hi)
        before = after
    else:
        pytest.fail("refine still adds trials after 8 rounds")
    for (depth, _alpha), (lo, hi) in before.items():
        assert lo < star[depth] <= hi  # the true boundary is inside, and no valid n_id is left between
        assert not divisors_between(40320, lo, hi), (depth, lo, hi)
    # the disagreeing cells near the boundary got seeds up to the default total, twice the grid's 3
    seeds = phase_table(read_results(run, "trials")).query("agreement < 0.75")["n_seeds"]
    assert len(seeds) and set(seeds) == {6}


def test_repeated_refine_halves_the_alpha_bracket_each_round(tmp_path):
    star = {1: 0.53, 2: 0.33}
    oracle = threshold_oracle("task.alpha", star, band=0.05, log=False)
    run = make_run(tmp_path, {"model.depth": [1, 2], "task.n_id": [16, 32], "task.alpha": [0.2, 0.4, 0.6, 0.8]})
    finish(run, oracle)
    width = 0.2
    for _ in range(6):
        ref = step(run, oracle, bisect=("alpha",))
        assert not ref.empty
        width /= 2
        for (depth, _n_id), (lo, hi) in brackets(run, "task.alpha").items():
            assert lo < star[depth] <= hi
            assert hi - lo == pytest.approx(width, abs=2e-6)
    assert width < 0.01


# ---------------------------------------------------------------------------------------------
# What one refine step adds
# ---------------------------------------------------------------------------------------------

def cells_added(ref) -> list[dict]:
    return [dict(a.cell.coords) | {"seeds": list(a.cell.seeds)} for a in ref.midpoints]


def n_id_oracle(boundary: Callable[[dict], float]) -> Oracle:
    return lambda c: HIGH if c["task.n_id"] >= boundary(c) else LOW


def test_n_id_midpoint_is_geometric_and_only_where_the_boundary_lies(tmp_path):
    # depth 1: the boundary is between 16 and 64; depth 2: every cell is HIGH
    run = make_run(tmp_path, {"model.depth": [1, 2], "task.n_id": [16, 64], "task.alpha": [0.4, 0.7]}, seeds=2)
    finish(run, n_id_oracle(lambda c: 40 if c["model.depth"] == 1 else 1))
    ref, _ = refine(run)
    assert cells_added(ref) == [{"model.depth": 1, "task.n_id": 32, "task.alpha": a, "seeds": [0, 1]}
                                for a in (0.4, 0.7)]  # sqrt(16 * 64), not the arithmetic 40
    assert not ref.seeds and len(ref.new) == 4
    assert "n_id 16 (IM) | 64 (OG): adds n_id 32 (geometric midpoint)" in ref.midpoints[0].why


def test_midpoints_follow_each_facet_separately(tmp_path):
    axes = {"model.depth": [1], "task.n_id": [16, 64], "task.alpha": [0.5], "train.lr": [0.001, 0.0001]}
    run = make_run(tmp_path, axes, seeds=1)
    finish(run, n_id_oracle(lambda c: 40 if c["train.lr"] == 0.001 else 1))
    ref, _ = refine(run)
    assert [c["train.lr"] for c in cells_added(ref)] == [0.001]
    assert ref.midpoints[0].why.startswith("lr 0.001, depth 1, alpha 0.5:")


def test_a_facet_with_one_value_in_the_results_so_far_still_names_the_cell(tmp_path):
    axes = {"model.depth": [1], "task.n_id": [16, 64], "task.alpha": [0.5], "train.lr": [0.001, 0.0001]}
    run = make_run(tmp_path, axes, seeds=1)
    finish(run, n_id_oracle(lambda c: 40))
    frame = read_results(run, "trials")
    frame = frame[frame["train.lr"] == 0.0001]  # only lr 1e-4 has results yet: lr is no facet of the table
    frame.to_parquet(run / "results" / "trials" / "part-0.parquet", index=False)
    ref, _ = refine(run)
    assert [(c["train.lr"], c["task.n_id"]) for c in cells_added(ref)] == [(0.0001, 32)]


def test_a_refused_geometric_midpoint_gives_the_nearest_valid_n_id(tmp_path):
    base = {**BASE, "train": {"steps": 100, "batch_size": 384}}  # 23 does not divide it, 24 does
    run = make_run(tmp_path, {"model.depth": [1], "task.n_id": [8, 64], "task.alpha": [0.5]}, seeds=1, base=base)
    finish(run, n_id_oracle(lambda c: 30))
    ref, _ = refine(run)
    assert [c["task.n_id"] for c in cells_added(ref)] == [24]
    assert "23 is refused: train.batch_size must be a multiple of task.n_id" in ref.midpoints[0].why


def test_no_midpoint_between_adjacent_integers_nor_where_no_n_id_is_valid(tmp_path):
    # 1 | 2 and 128 | 256 are boundaries; the only n_id between 128 and 256 that divide the batch: none
    run = make_run(tmp_path, {"model.depth": [1], "task.n_id": [1, 2, 128, 256], "task.alpha": [0.5]}, seeds=1,
                   base={**BASE, "train": {"steps": 100, "batch_size": 256}})
    finish(run, lambda c: HIGH if 2 <= c["task.n_id"] <= 128 else LOW)
    ref, _ = refine(run)
    assert ref.empty and not ref.midpoints
    assert any("n_id 1 (IM) | 2 (OG): no midpoint, 1 and 2 are adjacent integers" in s for s in ref.skipped)
    assert any("no n_id between 128 and 256 is valid here" in s for s in ref.skipped)


def test_alpha_midpoint_is_arithmetic(tmp_path):
    run = make_run(tmp_path, {"model.depth": [1], "task.n_id": [16, 32], "task.alpha": [0.4, 0.7]}, seeds=1)
    finish(run, lambda c: HIGH if c["task.alpha"] > 0.5 else LOW)
    ref, _ = refine(run)
    assert cells_added(ref) == [{"model.depth": 1, "task.n_id": n, "task.alpha": 0.55, "seeds": [0]} for n in (16, 32)]
    only_n_id, _ = refine(run, bisect=("n_id",))
    assert only_n_id.empty


def test_cells_whose_seeds_disagree_get_seeds_up_to_the_total(tmp_path):
    run = make_run(tmp_path, {"model.depth": [1], "task.n_id": [16, 32], "task.alpha": [0.5]}, seeds=3)
    finish(run, lambda c: HIGH if c["task.n_id"] == 32 and c["seed"] != 1 else LOW)  # n_id 32: 2 of 3
    ref, _ = refine(run, bisect=("alpha",))
    assert [(dict(a.cell.coords)["task.n_id"], a.cell.seeds) for a in ref.seeds] == [(32, (3, 4, 5))]
    assert ref.seeds[0].why == "depth 1, n_id 32, alpha 0.5: OG 2/3 (agreement 0.67 < 0.75): 3 -> 6 seeds, adds seeds 3, 4, 5"
    assert [a.cell.seeds for a in refine(run, bisect=("alpha",), seeds=4)[0].seeds] == [(3,)]
    assert refine(run, bisect=("alpha",), seeds=3)[0].empty  # it has 3 already
    assert refine(run, bisect=("alpha",), agreement=0.6)[0].empty  # 0.67 is agreement enough


def test_a_grid_with_seed_as_an_axis_is_refined_too(tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"name": "s", "base": BASE, "axes": {
        "model.depth": [1], "seed": [0, 1, 2], "task.n_id": [16, 64], "task.alpha": [0.5]}}, sort_keys=False))
    run = launch_into(grid, tmp_path / "run")
    finish(run, lambda c: HIGH if c["task.n_id"] == 64 and c["seed"] != 1 else LOW)
    ref, out = refine(run)
    assert [(dict(a.cell.coords)["task.n_id"], a.cell.seeds) for a in ref.seeds + ref.midpoints] == [
        (64, (3, 4, 5)), (32, (0, 1, 2))]  # a midpoint gets the seed axis's values
    write_grid(ref, out)
    assert [t.trial_id for t in expand(load_grid(out))] == [t.trial_id for t in expand(ref.spec)]
    assert [t.trial_id for t in check_extension(run, load_grid(out), expand(ref.spec)).new] == [
        t.trial_id for t in ref.new]


def test_trials_without_a_phase_yet_are_counted_in_the_summary(tmp_path):
    run = make_run(tmp_path, {"model.depth": [1], "task.n_id": [16, 64], "task.alpha": [0.5]}, seeds=2)
    finish(run, n_id_oracle(lambda c: 40))
    assert "have no phase yet" not in refine(run)[0].summary
    frame = read_results(run, "trials")
    frame.loc[frame["seed"] == 1, "status"] = "running"
    frame.to_parquet(run / "results" / "trials" / "part-0.parquet", index=False)
    assert refine(run)[0].summary.endswith("; 2 of the grid's 4 trials have no phase yet (not done, or done since "
                                           "the last `ray-grok aggregate`)")
    # skipped as settled: never to have a phase, so not waiting for one
    frame.loc[(frame["seed"] == 1) & (frame["task.n_id"] == 16), "status"] = "skipped: settled"
    frame.to_parquet(run / "results" / "trials" / "part-0.parquet", index=False)
    assert refine(run)[0].summary.endswith("; 1 of the grid's 4 trials have no phase yet (not done, or done since "
                                           "the last `ray-grok aggregate`)")


# ---------------------------------------------------------------------------------------------
# The written grid: it loads, it extends the run, nothing else changes
# ---------------------------------------------------------------------------------------------

def test_the_written_grid_round_trips_and_extends_the_run(tmp_path):
    run = make_run(tmp_path, {"model.depth": [1, 2], "task.n_id": {"pow2": {"from": 16, "to": 64}},
                              "task.alpha": {"range": {"from": 0.4, "to": 0.7, "step": 0.3}}}, seeds=3)
    finish(run, lambda c: HIGH if c["task.n_id"] >= 40 and c["seed"] != 2 * (c["model.depth"] == 2) else LOW)
    ref, out = refine(run)
    assert ref.seeds and ref.midpoints
    write_grid(ref, out)
    loaded = load_grid(out)
    assert loaded.canonical() == ref.spec.canonical() and loaded.name == "study"
    trials = expand(loaded)
    assert [t.trial_id for t in trials] == [t.trial_id for t in expand(ref.spec)]
    diff = check_extension(run, loaded, trials)
    old = read_plan(run).ids
    assert [t.trial_id for t in diff.kept] == old and not diff.retired  # every trial keeps its id
    assert [t.trial_id for t in diff.new] == [t.trial_id for t in ref.new]
    text = out.read_text()
    assert text.startswith("# the next grid of")
    assert "}  # depth 1, alpha 0.4: n_id 32 (IM) | 64 (OG" in text.split("extra:")[1]  # each cell says why
    launch_into(out, run)
    assert read_plan(run).ids == old + [t.trial_id for t in ref.new]
    again, _ = refine(run)  # the new trials have no results yet: nothing more to ask for
    assert again.empty and any("planned already" in s for s in again.skipped)


def test_a_dry_run_prints_the_additions_and_cost_and_writes_nothing(tmp_path):
    run = make_run(tmp_path, {"model.depth": [1], "task.n_id": [16, 64], "task.alpha": [0.5]}, seeds=2)
    finish(run, n_id_oracle(lambda c: 40))
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    result = CliRunner().invoke(main, ["refine", str(run), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "adds n_id 32 (geometric midpoint)" in result.output
    assert "next grid: 2 new trials; cost: about" in result.output and "nothing was written" in result.output
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    result = CliRunner().invoke(main, ["refine", str(run), "--out", str(tmp_path / "next.yaml")])
    assert result.exit_code == 0, result.output
    assert f"wrote {tmp_path / 'next.yaml'}" in result.output and (tmp_path / "next.yaml").exists()


@pytest.mark.parametrize("args, message", [
    (["--seeds", "0"], "refine --seeds must be a whole number >= 1 (seeds per contested cell in total), got 0"),
    (["--bisect", "depth"], "refine --bisect must be one of n_id, alpha, got 'depth'"),
    (["--agreement", "1.5"], "refine --agreement must be a number in (0, 1], got 1.5"),
])
def test_bad_options_fail_in_one_line_before_any_work(tmp_path, args, message):
    not_a_run = tmp_path / "nothing-here"  # the option is checked before RUN_DIR is even looked at
    result = CliRunner().invoke(main, ["refine", str(not_a_run), *args])
    assert result.exit_code == 1 and result.output.strip() == f"Error: {message}"
    assert not not_a_run.exists()


def test_bad_run_directories_fail_in_one_line(tmp_path):
    def error(run: Path, *args: str) -> str:
        result = CliRunner().invoke(main, ["refine", str(run), *args])
        assert result.exit_code == 1, result.output
        assert len(result.output.strip().splitlines()) == 1
        return result.output

    assert "is not a ray-grok run directory (no plan.json" in error(tmp_path / "missing")
    assert f"refine --out {tmp_path / 'no' / 'n.yaml'}: its directory {tmp_path / 'no'} does not exist" in error(
        tmp_path / "missing", "--out", str(tmp_path / "no" / "n.yaml"))
    (tmp_path / "empty").mkdir()
    assert "is not a ray-grok run directory" in error(tmp_path / "empty")
    run = make_run(tmp_path, {"model.depth": [1], "task.n_id": [16, 64]}, seeds=1)
    assert "no results in" in error(run)
    assert "--bisect alpha: task.alpha is not an axis of the run's grid" in error(run, "--bisect", "alpha")
    finish(run, lambda c: LOW)
    frame = read_results(run, "trials").assign(status="running")
    frame.to_parquet(run / "results" / "trials" / "part-0.parquet", index=False)
    assert "no trial has finished yet" in error(run)
    assert not (run / "next.yaml").exists()


def test_library_errors_are_ray_grok_errors(tmp_path):
    with pytest.raises(ConfigError, match="seeds"):
        RefineOptions(seeds=True)
    with pytest.raises(RunDirError):
        plan_refinement(tmp_path, RefineOptions(), tmp_path / "n.yaml")
    run = make_run(tmp_path, {"task.n_id": [16, 64]}, seeds=1)
    with pytest.raises(MissingResultsError):
        plan_refinement(run, RefineOptions(), tmp_path / "n.yaml")


# ---------------------------------------------------------------------------------------------
# The grid's extra cells
# ---------------------------------------------------------------------------------------------

GRID = {"name": "g", "base": BASE, "axes": {"model.depth": [1, 2], "task.n_id": [16, 32], "task.alpha": [0.5]},
        "seeds": 2}


def test_extra_cells_add_trials_named_as_the_products_and_merge_with_it():
    product = expand(grid_from_dict(GRID))
    extra = [{"model.depth": 2, "task.n_id": 24, "task.alpha": 0.5},  # the grid's seeds
             {"model.depth": 1, "task.n_id": 16, "task.alpha": 0.5, "seeds": [1, 2, 3]}]  # seed 1: in the product
    trials = expand(grid_from_dict({**GRID, "extra": extra}))
    assert trials[:len(product)] == product
    added = [(t.coords["model.depth"], t.coords["task.n_id"], t.coords["seed"]) for t in trials[len(product):]]
    assert added == [(2, 24, 0), (2, 24, 1), (1, 16, 2), (1, 16, 3)]
    assert trials[-1].dir == "trials/depth=1/n_id=16/alpha=0.5/seed=3"
    # a point the product holds is the product's trial: the same id whichever part lists it
    seed3 = expand(grid_from_dict({**GRID, "seeds": [0, 1, 2, 3]}))
    assert trials[-1].trial_id in {t.trial_id for t in seed3}


@pytest.mark.parametrize("extra, message", [
    ({"model.depth": 1}, "extra must be a list of cells {model.depth: VALUE, task.n_id: VALUE, task.alpha: VALUE"),
    ([3], "extra[0] must be a mapping"),
    ([{"model.depth": 1, "task.n_id": 24}], "extra[0] lacks task.alpha: a cell names a value for every axis"),
    ([{"model.depth": 1, "task.n_id": 24, "task.alpha": 0.5, "task.p": 31}],
     "extra[0].task.p is not an axis of this grid"),
    ([{"model.depth": 1, "task.n_id": 24, "task.alfa": 0.5}],
     "extra[0].task.alfa is not an axis of this grid (did you mean task.alpha?)"),
    ([{"model.depth": 1, "task.n_id": [24], "task.alpha": 0.5}], "extra[0].task.n_id must be a single value, got [24]"),
    ([{"model.depth": 1, "task.n_id": 24, "task.alpha": 0.5, "seeds": 0}], "extra[0].seeds must be a count from 1"),
    ([{"model.depth": 1, "task.n_id": 24, "task.alpha": 0.5, "seed": 3}],
     "extra[0].seed: a cell gives its seeds as seeds (a count or a list, e.g. seeds: [3]), got seed: 3"),
    ([{"model.depth": 1, "task.n_id": 24, "task.alpha": 1.5}],
     "trial depth=1 n_id=24 alpha=1.5 seed=0 (extra): task.alpha must be in (0, 1), got 1.5"),
    ([{"model.depth": 1, "task.n_id": 23, "task.alpha": 0.5}], "(extra): train.batch_size must be a multiple of"),
])
def test_bad_extra_cells_are_refused_naming_the_file_key_and_value(tmp_path, extra, message):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**GRID, "extra": extra}, sort_keys=False))
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_extra_cells_count_toward_max_trials():
    extra = [{"model.depth": 1, "task.n_id": 24, "task.alpha": 0.5, "seeds": 5}]
    with pytest.raises(GridError, match=r"the grid has 13 trials \(2 x 2 x 1 x 2 seeds \+ 5 extra\)"):
        grid_from_dict({**GRID, "extra": extra, "run": {"max_trials": 12}})


def test_a_refinement_over_the_grids_max_trials_is_refused_before_a_file_is_written(tmp_path):
    run = make_run(tmp_path, {"model.depth": [1], "task.n_id": [8, 64], "task.alpha": [0.4]}, seeds=3,
                   run={"max_trials": 6})
    finish(run, lambda c: HIGH if c["task.n_id"] >= 32 else LOW)
    with pytest.raises(ConfigError, match=r"refine would add 3 trials to the grid's 6, 9 in all, over its "
                                          r"run.max_trials = 6"):
        refine(run)
    result = CliRunner().invoke(main, ["refine", str(run)])
    assert result.exit_code == 1 and "run.max_trials = 6" in result.output, result.output
    assert not (run / "next.yaml").exists()
