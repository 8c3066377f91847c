"""The run directory without Ray: creation, extending it to a changed grid, results tables, status.

Trials are trained in-process with run_trial (the same call the Tune trainable makes), so the
tables are built from real trial directories in a few seconds.
"""
import re
import time
from pathlib import Path

import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from ray_grok.cli import main
from ray_grok.results.aggregate import aggregate
from ray_grok.results.plan import read_plan
from ray_grok.results.schema import TRIALS_SCHEMA
from ray_grok.sweep.grid import expand, grid_from_dict
from ray_grok.sweep.rundir import RunDirError, prepare, record_attempt, record_failure, resolve, write_driver
from ray_grok.sweep.status import format_status, sweep_status
from ray_grok.trial.config import VALID_KEYS, TrialConfig
from ray_grok.trial.run import run_trial
from ray_grok.trial.schema import EVAL_COLUMNS, METRICS_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
GRID = {
    "name": "files",
    "base": {"task": {"p": 7, "rule": "random", "n_ood": 8, "n_examples": 8},
             "model": {"width": 32, "heads": 2, "depth": 1},
             "train": {"steps": 30, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5},
             "eval": {"every": 10, "batches": 1}, "checkpoint": {"every": 10},
             "runtime": {"device": "cpu", "threads": 1, "log_every": 10}},
    "axes": {"task.n_id": [2, 4]},
    "seeds": 2,
    "resources": {"cpu": 1},
    "run": {"max_concurrent": 2, "max_failures": 1},
}


def write_grid(path: Path, data: dict, comment: str = "") -> Path:
    path.write_text(comment + yaml.safe_dump(data, sort_keys=False))
    return path


class Stop(Exception):
    pass


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """4 trials: 2 done, 1 interrupted after its first evaluations, 1 pending."""
    root = tmp_path_factory.mktemp("rundir")
    launch = resolve(write_grid(root / "files.yaml", GRID), root / "run", resume=False)
    assert prepare(launch.run_dir, launch.spec, launch.grid_text, launch.trials) is False
    t = launch.trials
    for trial in t[:2]:
        run_trial(trial.config, launch.run_dir / trial.dir, echo=lambda s: None, tensorboard=False)

    def stop_at_20(row, *, checkpointed, step):
        if step >= 20:
            raise Stop

    with pytest.raises(Stop):
        run_trial(t[2].config, launch.run_dir / t[2].dir, reporter=stop_at_20, echo=lambda s: None,
                  tensorboard=False)
    return launch.run_dir


@pytest.mark.slow
def test_run_dir_holds_grid_plan_and_a_config_per_trial(run_dir):
    plan = read_plan(run_dir)
    assert plan.name == "files" and len(plan.entries) == 4
    assert (run_dir / "grid.yaml").read_text().startswith("name: files")
    for e in plan.entries:
        assert (run_dir / e.dir / "config.json").exists()
    assert plan.entries[0].dir == "trials/n_id=2/seed=0"


@pytest.mark.slow
def test_aggregate_writes_one_row_per_trial_with_the_schema_columns(run_dir):
    summary = aggregate(run_dir)
    assert summary.trials == 4 and summary.by_status == {"done": 2, "running": 1, "pending": 1}
    trials = pd.read_parquet(run_dir / "results" / "trials")
    config_cols = list(TrialConfig().flat())
    expected = (["trial_id", "status", "retired", "steps_done", "wall_time", "best_step"] + config_cols
                + [f"final_{m}" for m in EVAL_COLUMNS] + [f"best_{m}" for m in EVAL_COLUMNS]
                + [f"{kind}_{m}" for m in ("ood_test_acc", "ood_test_acc_last")
                   for kind in ("peak", "peak_step", "drop")])
    assert list(trials.columns) == expected
    assert trials["trial_id"].is_unique and len(trials) == 4 and not trials["retired"].any()
    by_status = trials.set_index("status")
    assert by_status.loc["done", "steps_done"].tolist() == [30, 30]
    assert by_status.loc["running", "steps_done"] == 20
    pending = by_status.loc["pending"]
    assert pending["steps_done"] == 0 and pending["best_step"] == -1 and pd.isna(pending["final_id_train_acc"])
    assert set(trials["task.n_id"]) == {2, 4} and set(trials["seed"]) == {0, 1}

    curves = pd.read_parquet(run_dir / "results" / "curves")
    assert list(curves.columns) == ["trial_id", *METRICS_COLUMNS]
    counts = curves.groupby("trial_id").size()
    done_ids = trials.loc[trials["status"] == "done", "trial_id"]
    assert all(counts[i] == 4 for i in done_ids)  # steps 1, 10, 20, 30
    # best_* is the curves row at best_step, final_* the last row
    row = trials.loc[trials["status"] == "done"].iloc[0]
    c = curves[curves["trial_id"] == row["trial_id"]].set_index("step")
    assert row["best_ood_test_acc_last"] == c.loc[row["best_step"], "ood_test_acc_last"]
    assert row["final_id_train_loss"] == c.iloc[-1]["id_train_loss"]
    assert list(row["final_id_test_acc_by_shot"]) == list(c.iloc[-1]["id_test_acc_by_shot"])
    # transience: the highest o.o.d. test accuracy of the curve, its first step, and peak - final
    for m in ("ood_test_acc", "ood_test_acc_last"):
        assert row[f"peak_{m}"] == c[m].max()
        assert row[f"peak_step_{m}"] == c.index[c[m].to_numpy().argmax()]
        assert row[f"drop_{m}"] == pytest.approx(c[m].max() - c.iloc[-1][m])
        assert row[f"drop_{m}"] >= 0
    assert pd.isna(pending["peak_ood_test_acc_last"]) and pd.isna(pending["drop_ood_test_acc"])


def documented_names(start: str, end: str) -> list[str]:
    """The `quoted` names of the docs (trial.md: the trial directory; sweeps.md: the results tables)
    from START to END, `{set}` expanded over the sets it lists."""
    text = "\n".join((ROOT / "docs" / name).read_text() for name in ("trial.md", "sweeps.md"))
    text = text[text.index(start):text.index(end, text.index(start))]
    names = re.findall(r"`([^`]+)`", text)[1:]  # the first is the file or table itself
    sets = re.search(r"for each set in ([\w, ]+):", text)
    sets = [s.strip() for s in sets.group(1).split(",")] if sets else []
    return [n.replace("{set}", s) if s else n for n in names for s in (sets if "{set}" in n else [""])]


@pytest.mark.slow
def test_the_tables_have_the_columns_the_docs_document(run_dir):
    aggregate(run_dir)
    metrics = documented_names("| `metrics.parquet` |", "\n")
    real_metrics = pq.read_schema(run_dir / read_plan(run_dir).entries[0].dir / "metrics.parquet").names
    assert sorted(metrics) == sorted(real_metrics)
    documented = documented_names("- `results/trials`:", "\n- `results/curves`")
    FIXED = 6  # trial_id, status, retired, steps_done, wall_time, best_step: then the config columns
    fixed = documented[:FIXED]
    patterns = [n for n in documented[FIXED:] if "{" in n]
    peak_metrics = [n for n in documented[FIXED:] if n.startswith("ood_test_")]  # "for m in `...` and `...`"
    examples = [n for n in documented[FIXED:] if "{" not in n and n not in peak_metrics]
    assert set(examples) <= set(VALID_KEYS), examples  # the config columns it names are config keys
    per_set = [m for m in metrics if m not in ("step", "lr", "tokens_seen", "wall_time")]
    trials = pq.read_schema(run_dir / "results" / "trials" / "part-0.parquet").names
    assert trials[:FIXED] == fixed and trials[FIXED:FIXED + len(VALID_KEYS)] == list(VALID_KEYS)
    assert patterns == ["final_{m}", "best_{m}", "peak_{m}", "peak_step_{m}", "drop_{m}"]
    assert sorted(trials[FIXED + len(VALID_KEYS):]) == sorted(
        [f"{t}_{m}" for t in ("final", "best") for m in per_set]
        + [f"{t}_{m}" for t in ("peak", "peak_step", "drop") for m in peak_metrics])
    assert peak_metrics == ["ood_test_acc", "ood_test_acc_last"]
    curves = pq.read_schema(next((run_dir / "results" / "curves").glob("*.parquet"))).names
    assert documented_names("- `results/curves`:", "\n") == ["trial_id"] and curves == ["trial_id", *real_metrics]


@pytest.mark.slow
def test_aggregate_is_idempotent_and_atomic(run_dir):
    aggregate(run_dir)
    first = pq.read_table(run_dir / "results" / "trials")
    first_curves = pq.read_table(run_dir / "results" / "curves")
    aggregate(run_dir)
    pd.testing.assert_frame_equal(pq.read_table(run_dir / "results" / "trials").to_pandas(), first.to_pandas())
    pd.testing.assert_frame_equal(pq.read_table(run_dir / "results" / "curves").to_pandas(), first_curves.to_pandas())
    assert [p.name for p in (run_dir / "results" / "trials").iterdir()] == ["part-0.parquet"]
    assert [p.name for p in (run_dir / "results" / "curves").iterdir()] == ["part-0000000.parquet"]  # no temp files


@pytest.mark.slow
def test_results_are_readable_by_pyarrow_pandas_duckdb_and_the_phase_tools(run_dir):
    aggregate(run_dir)
    assert ds.dataset(run_dir / "results" / "trials").to_table().schema.equals(TRIALS_SCHEMA)
    assert len(pd.read_parquet(run_dir / "results" / "curves")) > 0
    from ray_grok.results.phases import read_results

    assert len(read_results(run_dir, "trials")) == 4
    import duckdb
    con = duckdb.connect()
    n = con.execute(f"select count(*) from '{run_dir}/results/trials/*.parquet'").fetchall()[0][0]
    rows = con.execute(f"select count(*) from '{run_dir}/results/curves/*.parquet'").fetchall()[0][0]
    assert n == 4 and rows == len(pd.read_parquet(run_dir / "results" / "curves"))


@pytest.mark.slow
def test_status_from_files_counts_states_and_shows_errors(run_dir, tmp_path):
    plan = read_plan(run_dir)
    failed = run_dir / plan.entries[3].dir
    # a copy of the run dir, with the pending trial failed and a driver that died an hour ago
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    failed = copy / plan.entries[3].dir
    record_attempt(failed)
    record_attempt(failed)
    record_failure(failed, "NonFiniteLossError: training loss became non-finite", 30)
    write_driver(copy, "running", time.time() - 7200)
    (copy / "sweep.json").write_text((copy / "sweep.json").read_text().replace(
        '"updated": ', '"updated": 1000000, "old": '))
    st = sweep_status(copy)
    assert not st.alive
    assert st.counts == {"done": 2, "running": 0, "interrupted": 1, "pending": 0, "errored": 1}
    assert st.steps_done == 30 + 30 + 20 + 0 and st.steps_total == 120
    text = format_status(st)
    assert "errored 1" in text and "non-finite" in text and "2 attempts" in text
    assert "resume with `ray-grok launch --resume" in text
    # the live cost from real trials' files: 2 done and measured, 1 interrupted left, the errored one not counted
    assert st.cost.measured and [d.left for d in st.cost.depths] == [1] and "the FLOP model assumed (" in text

    write_driver(copy, "running", time.time(), eta_s=95.0)  # a live driver elsewhere
    st = sweep_status(copy)
    assert st.alive and st.counts["running"] == 1 and st.counts["interrupted"] == 0
    assert "ETA 1m35s" in format_status(st)

    result = CliRunner().invoke(main, ["status", str(copy)])
    assert result.exit_code == 0 and "errored 1" in result.output and "non-finite" in result.output


def test_a_changed_grid_extends_a_changed_base_is_refused_and_a_comment_is_not_a_change(tmp_path):
    out = tmp_path / "run"
    a = resolve(write_grid(tmp_path / "a.yaml", GRID), out, resume=False)
    prepare(a.run_dir, a.spec, a.grid_text, a.trials)

    same = resolve(write_grid(tmp_path / "b.yaml", GRID, comment="# reworded\n"), out, resume=False)
    assert prepare(same.run_dir, same.spec, same.grid_text, same.trials) is True
    assert not (out / "grid.yaml.1").exists()  # nothing changed: no history

    # a changed base is a different experiment: refused, naming the difference
    lr = dict(GRID, base={**GRID["base"], "train": {**GRID["base"]["train"], "lr": 1e-3}})
    other = resolve(write_grid(tmp_path / "c.yaml", lr), out, resume=False)
    with pytest.raises(RunDirError, match=r"base.train.lr: 0.003 -> 0.001") as err:
        prepare(other.run_dir, other.spec, other.grid_text, other.trials)
    assert "launch it into a new --out" in str(err.value)
    assert len(read_plan(out).entries) == 4 and not (out / "grid.yaml.1").exists()

    # more values on an axis and changed run settings: the sweep is extended (tests/test_extend.py)
    more = dict(GRID, axes={"task.n_id": [2, 4, 8]}, run={"max_concurrent": 2, "max_failures": 3})
    extended = resolve(write_grid(tmp_path / "d.yaml", more), out, resume=False)
    assert prepare(extended.run_dir, extended.spec, extended.grid_text, extended.trials) is True
    assert len(read_plan(out).entries) == 6 and read_plan(out).max_failures == 3
    assert (out / "grid.yaml.1").read_text() == (tmp_path / "a.yaml").read_text()

    stored = resolve(None, out, resume=True)  # --resume without a grid: the stored copy, now the extended one
    assert [t.trial_id for t in stored.trials] == [t.trial_id for t in extended.trials]


def test_a_directory_that_is_not_a_sweep_is_refused(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("mine")
    launch = resolve(write_grid(tmp_path / "a.yaml", GRID), tmp_path / "x", resume=False)
    with pytest.raises(RunDirError, match="not a ray-grok sweep directory"):
        prepare(launch.run_dir, launch.spec, launch.grid_text, launch.trials)
    with pytest.raises(RunDirError, match="nothing to resume"):
        resolve(None, tmp_path / "nothing", resume=True)


@pytest.mark.slow
def test_expansion_of_the_test_grid_matches_the_plan(run_dir):
    plan = read_plan(run_dir)
    assert plan.ids == [t.trial_id for t in expand(grid_from_dict(GRID))]
