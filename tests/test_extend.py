"""Extending a sweep (sweep/extend.py): a changed grid launched into an existing run directory keeps
the trials it still holds, adds the new ones and retires the others; a changed base is refused.

The unit tests build run directories with `prepare` and aggregate pending trials: no training, no
Ray. The one slow test launches on a real local Ray, then extends and launches again.
"""
import json
import shutil
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from test_sweep import RAY_ENV, RAY_TMP, TINY_BASE, write_grid

from ray_grok.cli import main
from ray_grok.errors import RunDirError
from ray_grok.results.aggregate import aggregate
from ray_grok.results.phases import classify_trials, read_results
from ray_grok.results.plan import read_plan
from ray_grok.sweep.rundir import check_extension, prepare, resolve
from ray_grok.sweep.status import format_status, sweep_status


def grid(tmp_path: Path, name: str, n_ids: list[int], **sections) -> Path:
    """A one-seed grid over task.n_id; every grid of a test shares the name (the run directory's)."""
    path = tmp_path / name / "ext.yaml"
    path.parent.mkdir(exist_ok=True)
    return write_grid(path, axes={"task.n_id": n_ids}, **sections)


def prepared(grid_file: Path, out: Path):
    launch = resolve(grid_file, out, resume=False)
    prepare(launch.run_dir, launch.spec, launch.grid_text, launch.trials)
    return launch


def n_ids(entries) -> list[int]:
    return [e.coords["task.n_id"] for e in entries]


# ---------------------------------------------------------------------------------------------
# The plan diff, without Ray
# ---------------------------------------------------------------------------------------------

def test_a_changed_grid_keeps_adds_and_retires_trials(tmp_path):
    out = tmp_path / "run"
    first = prepared(grid(tmp_path, "a", [2, 4]), out)
    tune_state = out / "tune" / "sweep"
    tune_state.mkdir(parents=True)  # as if Tune had run the first grid
    (tune_state / "experiment_state.json").write_text("{}")

    second = resolve(grid(tmp_path, "b", [4, 8, 16]), out, resume=False)
    diff = check_extension(out, second.spec, second.trials)
    assert (n_ids(t for t in diff.kept), n_ids(diff.new), n_ids(diff.retired)) == ([4], [8, 16], [2])
    assert diff.summary() == "1 kept, 2 new, 1 retired"
    prepare(second.run_dir, second.spec, second.grid_text, second.trials)

    plan = read_plan(out)
    # old entries keep their place, the new ones are appended: a trial's place never changes
    assert plan.ids == [first.trials[0].trial_id, first.trials[1].trial_id,
                        second.trials[1].trial_id, second.trials[2].trial_id]
    assert [e.retired for e in plan.entries] == [True, False, False, False]
    assert n_ids(plan.active) == [4, 8, 16]
    assert (out / first.trials[0].dir / "config.json").exists()  # retired, never deleted
    # the previous grid is kept, the Tune experiment of the old trials set aside (never deleted)
    assert (out / "grid.yaml.1").read_text() == (tmp_path / "a" / "ext.yaml").read_text()
    assert (out / "grid.yaml").read_text() == (tmp_path / "b" / "ext.yaml").read_text()
    assert not tune_state.exists() and (out / "tune" / "sweep.1" / "experiment_state.json").exists()

    again = resolve(grid(tmp_path, "b", [4, 8, 16]), out, resume=False)  # the same grid: a plain resume
    assert not check_extension(out, again.spec, again.trials).changed


def test_a_retired_trial_comes_back_when_a_grid_holds_it_again(tmp_path):
    out = tmp_path / "run"
    prepared(grid(tmp_path, "a", [2, 4]), out)
    prepared(grid(tmp_path, "b", [4]), out)
    back = resolve(grid(tmp_path, "c", [2, 4]), out, resume=False)
    diff = check_extension(out, back.spec, back.trials)
    assert diff.revived == (back.trials[0].trial_id,) and not diff.new
    prepare(back.run_dir, back.spec, back.grid_text, back.trials)
    assert not read_plan(out).retired and (out / "grid.yaml.2").exists()


def test_changed_run_settings_extend_without_changing_the_plan(tmp_path):
    out = tmp_path / "run"
    prepared(grid(tmp_path, "a", [2, 4]), out)
    wider = resolve(grid(tmp_path, "b", [2, 4], run={"max_concurrent": 1, "max_failures": 3, "object_store_mb": 200}),
                    out, resume=False)
    diff = check_extension(out, wider.spec, wider.trials)
    assert not diff.plan_changed and diff.changed
    assert diff.settings == ("run.max_concurrent: 2 -> 1", "run.max_failures: 1 -> 3")
    prepare(wider.run_dir, wider.spec, wider.grid_text, wider.trials)
    assert read_plan(out).max_failures == 3 and len(read_plan(out).entries) == 2


def test_a_changed_base_is_refused_listing_the_difference(tmp_path):
    out = tmp_path / "run"
    prepared(grid(tmp_path, "a", [2, 4]), out)
    before = read_plan(out)
    # n_id 4 is a point of both grids, and its config differs there: a different experiment
    other = resolve(grid(tmp_path, "b", [4, 8], base={**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 80}}),
                    out, resume=False)
    with pytest.raises(RunDirError, match=r"base.train.steps: 60 -> 80") as err:
        prepare(other.run_dir, other.spec, other.grid_text, other.trials)
    assert "launch it into a new --out" in str(err.value) and "at 1 of its grid points" in str(err.value)
    assert read_plan(out) == before and not (out / "grid.yaml.1").exists()  # nothing was written

    # grids that share no grid point cannot be compared: they extend (every old trial retired)
    apart = resolve(grid(tmp_path, "c", [8], base={**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 80}}),
                    out, resume=False)
    assert check_extension(out, apart.spec, apart.trials).summary() == "0 kept, 1 new, 2 retired"


def test_dry_run_shows_kept_new_retired_and_the_cost_of_the_new_trials(tmp_path):
    out = tmp_path / "run"
    prepared(grid(tmp_path, "a", [2, 4]), out)
    before = (out / "plan.json").read_text()
    res = CliRunner().invoke(main, ["launch", str(grid(tmp_path, "b", [4, 8, 16])), "--out", str(out), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "holds this sweep already: 1 kept, 2 new, 1 retired" in res.output
    assert "cost of the 2 new trials: about" in res.output and "nothing was started" in res.output
    assert (out / "plan.json").read_text() == before and not (out / "grid.yaml.1").exists()

    wider = {**TINY_BASE, "model": {"width": 64, "heads": 2}}
    refused = CliRunner().invoke(main, ["launch", str(grid(tmp_path, "c", [4], base=wider)), "--out", str(out),
                                        "--dry-run"])
    assert refused.exit_code != 0 and "base.model.width: 32 -> 64" in refused.output


def test_retired_trials_are_flagged_in_the_tables_counted_by_status_and_left_out_of_phases(tmp_path):
    out = tmp_path / "run"
    first = prepared(grid(tmp_path, "a", [2, 4]), out)
    prepared(grid(tmp_path, "b", [4, 8]), out)
    aggregate(out)
    table = pq.read_table(out / "results" / "trials").to_pydict()
    flags = dict(zip(table["trial_id"], table["retired"]))
    assert flags[first.trials[0].trial_id] is True and sum(flags.values()) == 1 and len(flags) == 3

    assert first.trials[0].trial_id not in set(read_results(out, "trials")["trial_id"])
    everything = read_results(out, "trials", include_retired=True)
    assert len(everything) == 3
    # even in a table read with them, a retired trial gets no phase (it must not vote in a cell)
    done = everything.assign(status="done", **{c: 1.0 for c in everything if c.startswith("best_") and
                                                 everything[c].dtype == float})
    phases = classify_trials(done).set_index("trial_id")["phase"]
    assert phases.isna()[first.trials[0].trial_id] and phases.notna().sum() == 2

    st = sweep_status(out)
    assert st.total == 2 and st.retired == 1
    assert "(and 1 retired: no longer in the grid" in format_status(st)


# ---------------------------------------------------------------------------------------------
# On a real local Ray
# ---------------------------------------------------------------------------------------------

@pytest.fixture()
def ray_env(monkeypatch):
    for k, v in RAY_ENV.items():
        monkeypatch.setenv(k, v)
    yield
    shutil.rmtree(RAY_TMP, ignore_errors=True)


def stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns


@pytest.mark.slow
def test_launch_extends_a_finished_sweep_and_runs_only_the_new_trials(tmp_path, ray_env):
    out = tmp_path / "run"
    first = CliRunner().invoke(main, ["launch", str(grid(tmp_path, "a", [2, 4])), "--out", str(out)])
    assert first.exit_code == 0, first.output
    removed, kept = read_plan(out).entries
    files = ("status.json", "metrics.parquet", "attempts.json")
    before = {name: stamp(out / kept.dir / name) for name in files}
    kept_status = json.loads((out / kept.dir / "status.json").read_text())

    second = CliRunner().invoke(main, ["launch", str(grid(tmp_path, "b", [4, 8, 16])), "--out", str(out)])
    assert second.exit_code == 0, second.output
    assert "extending the sweep: 1 kept, 2 new, 1 retired" in second.output

    # the kept trial was not run again: its files are the very same
    assert {name: stamp(out / kept.dir / name) for name in files} == before
    assert json.loads((out / kept.dir / "status.json").read_text()) == kept_status
    plan = read_plan(out)
    for e in plan.active:
        assert json.loads((out / e.dir / "status.json").read_text())["state"] == "done", e.trial_id
    assert (out / removed.dir / "metrics.parquet").exists()  # retired, kept on disk
    assert (out / "tune" / "sweep.1").is_dir() and (out / "tune" / "sweep").is_dir()

    table = pq.read_table(out / "results" / "trials", columns=["trial_id", "retired", "status"]).to_pydict()
    rows = {tid: (retired, status) for tid, retired, status in zip(table["trial_id"], table["retired"],
                                                                     table["status"])}
    assert rows[removed.trial_id] == (True, "done") and len(rows) == 4
    assert sorted(r for r, _ in rows.values()) == [False, False, False, True]

    csv = tmp_path / "phases.csv"
    phases = CliRunner().invoke(main, ["phases", str(out), "--csv", str(csv)])
    assert phases.exit_code == 0, phases.output
    assert sorted(set(pd.read_csv(csv)["task.n_id"])) == [4, 8, 16]  # no cell of n_id 2

    status = CliRunner().invoke(main, ["status", str(out)])
    assert "done 3" in status.output and "and 1 retired" in status.output
