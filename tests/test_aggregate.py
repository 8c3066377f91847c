"""Aggregation of trial directories: the fast paths give the tables the plain reading gives.

The run directories are synthetic (tests/synthetic.py writes config.json, status.json and
metrics.parquet as trials do), small, and read in chunks of 4 trials so that several chunks,
row groups and cache entries exist.
"""
import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ray_grok.results import aggregate as agg
from ray_grok.errors import ConfigError
from ray_grok.trial.config import TrialConfig, load_config
from ray_grok.io import read_json, write_json
from ray_grok.sweep.rundir import read_plan
from synthetic import sweep, write_run_dir

N_TRIALS, N_EVALS, CHUNK = 12, 6, 4


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(agg, "BATCH_TRIALS", CHUNK)
    trials, curves = sweep(N_TRIALS, N_EVALS)
    return write_run_dir(tmp_path / "run", trials, curves)


def tables(run_dir):
    return (pq.read_table(run_dir / "results" / "trials").to_pandas(),
            pq.read_table(run_dir / "results" / "curves").to_pandas())


def cold(run_dir, tmp_path_factory):
    """The tables of a first aggregation of a copy of RUN_DIR (no previous results, no cache)."""
    import shutil

    copy = tmp_path_factory.mktemp("cold") / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("results"))
    summary = agg.aggregate(copy)
    assert summary.reused_trials == 0
    return tables(copy)


def assert_same(a, b):
    for x, y in zip(a, b):
        pd.testing.assert_frame_equal(x, y)


def trial_dir(run_dir, i):
    return run_dir / read_plan(run_dir).entries[i].dir


def test_tables_match_the_trial_files(run_dir):
    summary = agg.aggregate(run_dir)
    assert (summary.trials, summary.curve_rows) == (N_TRIALS, N_TRIALS * N_EVALS)
    trials, curves = tables(run_dir)
    assert sorted(p.name for p in (run_dir / "results" / "curves").iterdir()) == ["part-0000000.parquet", "part-0000004.parquet", "part-0000008.parquet"]
    for i in (0, 5, 11):
        out = trial_dir(run_dir, i)
        row = trials.iloc[i]
        metrics = pq.read_table(out / "metrics.parquet").to_pandas()
        status, config = read_json(out / "status.json"), load_config(out / "config.json", [])
        assert row["trial_id"] == read_plan(run_dir).entries[i].trial_id
        assert row["steps_done"] == status["step"] and row["status"] == status["state"]
        assert row["model.depth"] == config.model.depth and row["task.alpha"] == config.task.alpha
        # status.json's best_step where it was evaluated, else the first peak of the monitor
        steps = metrics["step"].tolist()
        best = (status["best_step"] if status["best_step"] in steps
                else steps[metrics[config.checkpoint.monitor].to_numpy().argmax()])
        assert row["best_step"] == best
        at_best = metrics.set_index("step").loc[best]
        assert row["best_ood_test_acc_last"] == at_best["ood_test_acc_last"]
        assert list(row["final_id_test_acc_by_shot"]) == list(metrics.iloc[-1]["id_test_acc_by_shot"])
        mine = curves[curves["trial_id"] == row["trial_id"]].drop(columns="trial_id").reset_index(drop=True)
        pd.testing.assert_frame_equal(mine, metrics, check_dtype=False)


def test_reaggregation_rereads_only_changed_chunks_and_equals_a_cold_run(run_dir, tmp_path_factory):
    agg.aggregate(run_dir)
    assert agg.aggregate(run_dir).reused_trials == N_TRIALS
    # trial 5 (second chunk) is resumed from step 2: its metrics lose their last rows
    out = trial_dir(run_dir, 5)
    metrics = pq.read_table(out / "metrics.parquet")
    pq.write_table(metrics.slice(0, 3), out / "metrics.parquet")
    write_json(out / "status.json", {"state": "running", "step": 2})
    summary = agg.aggregate(run_dir)
    assert summary.reused_trials == N_TRIALS - CHUNK and summary.curve_rows == N_TRIALS * N_EVALS - 3
    trials, curves = tables(run_dir)
    assert trials.loc[5, "status"] == "running" and (curves["trial_id"] == trials.loc[5, "trial_id"]).sum() == 3
    assert_same((trials, curves), cold(run_dir, tmp_path_factory))


def test_a_rewrite_with_the_same_size_and_mtime_is_seen(run_dir):
    agg.aggregate(run_dir)
    path = trial_dir(run_dir, 0) / "status.json"
    before, st = read_json(path), os.stat(path)
    write_json(path, {**before, "state": "fail"})  # same length as "done"
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size
    summary = agg.aggregate(run_dir)
    assert summary.reused_trials == N_TRIALS - CHUNK and summary.by_status["fail"] == 1


def test_unchanged_chunks_keep_their_curves_files_untouched(run_dir):
    agg.aggregate(run_dir)
    curves = run_dir / "results" / "curves"
    before = {p.name: os.stat(p) for p in curves.iterdir()}
    write_json(trial_dir(run_dir, 9) / "status.json", {"state": "running", "step": 1})  # third chunk
    assert agg.aggregate(run_dir).reused_trials == N_TRIALS - CHUNK
    after = {p.name: os.stat(p) for p in curves.iterdir()}
    assert sorted(after) == sorted(before)
    for name in ("part-0000000.parquet", "part-0000004.parquet"):
        assert (after[name].st_ino, after[name].st_mtime_ns) == (before[name].st_ino, before[name].st_mtime_ns)
    assert after["part-0000008.parquet"].st_ino != before["part-0000008.parquet"].st_ino


def test_cache_that_does_not_describe_the_tables_is_not_used(run_dir, tmp_path_factory):
    agg.aggregate(run_dir)
    index = run_dir / "results" / ".cache" / "index.json"
    index.write_text("{not json")
    assert agg.aggregate(run_dir).reused_trials == 0
    # a curves file replaced behind its back (here: by a copy, a new inode): that chunk is re-read
    curves = run_dir / "results" / "curves" / "part-0000004.parquet"
    curves.with_name("copy").write_bytes(curves.read_bytes())
    os.replace(curves.with_name("copy"), curves)
    assert agg.aggregate(run_dir).reused_trials == N_TRIALS - CHUNK
    curves.unlink()  # or deleted
    assert agg.aggregate(run_dir).reused_trials == N_TRIALS - CHUNK
    # the trials table replaced: nothing is reused
    trials = run_dir / "results" / "trials" / "part-0.parquet"
    trials.with_name("copy").write_bytes(trials.read_bytes())
    os.replace(trials.with_name("copy"), trials)
    assert agg.aggregate(run_dir).reused_trials == 0
    assert_same(tables(run_dir), cold(run_dir, tmp_path_factory))


def test_files_of_an_older_layout_and_of_emptied_chunks_are_removed(run_dir, tmp_path_factory):
    curves = run_dir / "results" / "curves"
    curves.mkdir(parents=True)
    pq.write_table(pq.read_table(trial_dir(run_dir, 0) / "metrics.parquet"), curves / "part-0.parquet")
    agg.aggregate(run_dir)
    assert sorted(p.name for p in curves.iterdir()) == ["part-0000000.parquet", "part-0000004.parquet", "part-0000008.parquet"]
    for i in range(4, 8):  # every trial of the second chunk starts over: no evaluation yet
        (trial_dir(run_dir, i) / "metrics.parquet").unlink()
        write_json(trial_dir(run_dir, i) / "status.json", {"state": "running", "step": 0})
    summary = agg.aggregate(run_dir)
    assert summary.curve_rows == (N_TRIALS - CHUNK) * N_EVALS
    assert sorted(p.name for p in curves.iterdir()) == ["part-0000000.parquet", "part-0000008.parquet"]
    assert_same(tables(run_dir), cold(run_dir, tmp_path_factory))


def test_unreadable_metrics_keep_the_trial_without_curves_and_are_retried(run_dir, tmp_path_factory):
    agg.aggregate(run_dir)
    out = trial_dir(run_dir, 2)
    good = (out / "metrics.parquet").read_bytes()
    (out / "metrics.parquet").write_bytes(good[: len(good) // 2])  # a partial copy
    with pytest.warns(UserWarning, match="unreadable metrics.parquet"):
        summary = agg.aggregate(run_dir)
    tid = read_plan(run_dir).entries[2].trial_id
    assert summary.unreadable == (tid,) and summary.trials == N_TRIALS
    trials, curves = tables(run_dir)
    assert trials.loc[2, "status"] == "done" and trials.loc[2, "best_step"] == -1
    assert pd.isna(trials.loc[2, "final_id_train_acc"]) and tid not in set(curves["trial_id"])
    (out / "metrics.parquet").write_bytes(good)
    os.utime(out / "metrics.parquet")
    summary = agg.aggregate(run_dir)
    assert summary.unreadable == () and summary.reused_trials == N_TRIALS - CHUNK
    assert_same(tables(run_dir), cold(run_dir, tmp_path_factory))


def test_a_failed_aggregation_leaves_the_previous_tables_and_no_temp_files(run_dir, monkeypatch):
    agg.aggregate(run_dir)
    before = tables(run_dir)
    (trial_dir(run_dir, 7) / "config.json").write_text(json.dumps({"model": {"depth": "six"}}))
    with pytest.raises(ConfigError, match="model.depth"):
        agg.aggregate(run_dir)
    assert_same(tables(run_dir), before)
    assert [p.name for p in (run_dir / "results" / "trials").iterdir()] == ["part-0.parquet"]
    assert sorted(p.name for p in (run_dir / "results" / "curves").iterdir()) == ["part-0000000.parquet", "part-0000004.parquet", "part-0000008.parquet"]


def test_flat_config_takes_a_resolved_config_as_is_and_validates_anything_else():
    cfg = load_config(None, ["task.n_id=64", "task.alpha=0.3", "model.depth=4", "seed=3"])
    assert agg.flat_config(json.loads(json.dumps(cfg.to_dict()))) == cfg.flat()
    partial = {"task": {"n_id": 64}, "train": {"lr": 1}}  # defaults filled, an int for a float coerced
    flat = agg.flat_config(partial)
    assert flat == {**TrialConfig().flat(), "task.n_id": 64, "train.lr": 1.0}
    assert type(flat["train.lr"]) is float
    with pytest.raises(ConfigError, match="task.p"):
        agg.flat_config({**cfg.to_dict(), "task": {**cfg.to_dict()["task"], "p": "29"}})


def files(status, monitor="ood_test_acc_last"):
    return agg.TrialFiles(status, {"checkpoint.monitor": monitor}, None)


def test_best_is_at_best_step_else_the_monitor_peak_skipping_nan():
    acc = [0.1, np.nan, 0.5, 0.5, 0.2]
    loss = [3.0, 1.0, np.nan, 1.0, 2.0]
    one = {"step": [1, 10, 20, 30, 40], "ood_test_acc_last": acc, "ood_test_loss": loss}
    metrics = pa.table({**one, **{k: v * 2 for k, v in one.items()}})
    counts = np.array([5, 0, 5])
    final, best = agg.final_and_best(metrics, counts, [
        files({"best_step": 10}), files({}), files({}, monitor="ood_test_loss")])
    assert final == [4, None, 9]
    assert best == [1, None, 6]  # best_step 10; none before an evaluation; the first lowest loss
    _, best = agg.final_and_best(metrics, counts, [files({"best_step": 15}), files({}), files({"best_step": -1})])
    assert best == [2, None, 7]  # best_step not evaluated or -1: the first highest accuracy
    nan = pa.table({"step": [1, 2], "ood_test_acc_last": pa.array([None, np.nan], pa.float64())})
    assert agg.final_and_best(nan, np.array([2]), [files({})]) == ([1], [None])
