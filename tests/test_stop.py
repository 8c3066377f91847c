"""Per-trial stop (run.stop: ood_chance): the decision on a trial's curve and its sweep's evidence,
the evidence a run directory gives it, how a stopped trial shows in status and the dry run, the
trial loop ending at a Stopper's record, and (slow) a real local Ray sweep that stops a trial.

The fast tests write the files other trials leave (metrics.parquet rows with chosen accuracies):
the stopper reads them as it reads a running sweep's, without training.
"""
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from conftest import tiny_config
from ray_grok.cli import main
from ray_grok.errors import GridError
from ray_grok.results.phases import PHASES, PhaseRule
from ray_grok.results.plan import PLAN_FILE, Plan, read_plan
from ray_grok.sweep.cost import dry_run_text, estimate
from ray_grok.sweep.grid import grid_from_dict
from ray_grok.sweep.rundir import prepare, resolve
from ray_grok.sweep.status import format_status, sweep_status
from ray_grok.sweep.stop import STOP_REASON, StopRule, SweepStopper, chance_band, row_phases
from ray_grok.trial import checkpoint as ckpt
from ray_grok.trial.outputs import status_record
from ray_grok.trial.run import run_trial
from ray_grok.trial.schema import (
    BY_SHOT_COLUMNS, CHECKPOINT_DIR, DONE, METRICS_FILE, METRICS_SCHEMA, SET_METRICS, SETS, STATUS_FILE,
)

from test_sweep import TINY_BASE

NF, IM, IG, OM, OG = PHASES
RULE = PhaseRule()  # acc_last, threshold 0.5
P = 7  # chance 0.143; the band is halfway to 0.5: 0.321


def row(step: int, id_train: float = 0.95, id_test: float = 0.2, ood_train: float = 0.2, ood_test: float = 0.15
        ) -> dict:
    """One evaluation: every metric of a set at its accuracy (no rule reads the loss)."""
    accs = dict(zip(SETS, (id_train, id_test, ood_train, ood_test)))
    r = {f"{s}_{m}": accs[s] for s in SETS for m in SET_METRICS}
    r.update({c: [0.1] * 8 for c in BY_SHOT_COLUMNS}, step=step, lr=1e-3, tokens_seen=1, wall_time=1.0)
    return r


def curve(steps, **accs) -> list[dict]:
    """Evaluations at STEPS with ACCS, from step 1 on (a trial evaluates at step 1 first)."""
    steps = list(steps)
    return [row(s, **accs) for s in ([1] if steps[0] != 1 else []) + steps]


# ---------------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------------

def test_the_band_is_halfway_from_chance_to_the_threshold():
    assert chance_band(7, 0.5) == pytest.approx(1 / 7 + (0.5 - 1 / 7) / 2)
    assert chance_band(29, 0.5) == pytest.approx(0.2672, abs=1e-4)
    assert chance_band(2, 0.5) == pytest.approx(0.5)  # a threshold at chance leaves no band


def test_each_evaluation_is_classified_by_the_phase_tables_rule():
    rows = [row(1, 0.1, 0.1, 0.1, 0.1), row(2, 0.9), row(3, 0.9, 0.6), row(4, 0.9, 0.1, 0.6), row(5, 0.9, 0.9, 0.9, 0.9)]
    assert row_phases(rows, RULE) == [NF, IM, IG, OM, OG]
    # the rule's metric is read: the same rows under "acc" with a higher threshold
    assert row_phases(rows, PhaseRule(metric="acc", threshold=0.95)) == [NF] * 5


def test_a_trial_at_chance_stops_once_past_the_horizon_with_the_evidence():
    stop = StopRule(RULE, after=2.0)
    rows = curve(range(100, 1001, 100))
    crossings = {"a": 300, "b": 500}  # the latest first crossing: 500, horizon 1,000
    assert stop.decide(rows[:-1], P, crossings) is None  # step 900 < 1,000
    record = stop.decide(rows, P, crossings)
    assert record is not None
    assert record["reason"] == STOP_REASON and record["step"] == 1000 and record["phase"] == IM
    assert record["horizon"] == 1000 and record["generalized"] == {"a": 300, "b": 500}
    assert record["band"] == pytest.approx(chance_band(P, 0.5)) and record["ood_test_max"] == pytest.approx(0.15)
    assert record["rule"] == RULE.describe() and "step 500" in record["why"]
    # a longer factor waits longer
    assert StopRule(RULE, after=3.0).decide(rows, P, crossings) is None


def test_no_trial_of_its_depth_generalized_so_nothing_is_stopped():
    assert StopRule(RULE).decide(curve(range(100, 100_001, 100)), P, {}) is None


@pytest.mark.parametrize("touch_at", [100, 500, 1000])
def test_a_trial_that_ever_left_chance_is_not_stopped(touch_at):
    rows = curve(range(100, 1001, 100))
    rows[touch_at // 100] = row(touch_at, ood_test=0.33)  # above the band 0.321, under the threshold
    assert StopRule(RULE).decide(rows, P, {"a": 100}) is None
    rows[touch_at // 100] = row(touch_at, ood_test=0.32)  # just under it
    assert StopRule(RULE).decide(rows, P, {"a": 100}) is not None


def test_a_trial_that_has_not_fitted_its_tasks_is_never_stopped():
    """It is still learning: on the laptop grid's curves, n_id 32 trials are not fitted at step
    1,000 and end as id memorization."""
    assert StopRule(RULE).decide(curve(range(100, 10_001, 100), id_train=0.3), P, {"a": 100}) is None


def test_a_curve_without_its_beginning_or_with_a_nan_is_not_judged():
    """Metrics that restarted after a damaged file lack the evaluations where the trial may have
    left chance; a NaN accuracy is no evidence of being at chance."""
    rows = curve(range(100, 1001, 100))
    assert StopRule(RULE).decide(rows, P, {"a": 100}) is not None
    assert StopRule(RULE).decide(rows[1:], P, {"a": 100}) is None
    rows[3] = row(300, ood_test=float("nan"))
    assert StopRule(RULE).decide(rows, P, {"a": 100}) is None


def test_a_trial_whose_phase_changed_in_the_second_half_is_not_stopped():
    fitted_late = curve(range(100, 601, 100), id_train=0.1) + curve(range(700, 1001, 100))[1:]  # NF, then IM at 700
    assert StopRule(RULE).decide(fitted_late, P, {"a": 100}) is None
    fitted_early = curve(range(100, 401, 100), id_train=0.1) + curve(range(500, 1001, 100))[1:]  # IM from 500 on
    record = StopRule(RULE).decide(fitted_early, P, {"a": 100})
    assert record is not None and record["phase"] == IM and record["phase_since"] == 500


# ---------------------------------------------------------------------------------------------
# The evidence, from a run directory
# ---------------------------------------------------------------------------------------------

def grid_data(**run) -> dict:
    base = {**TINY_BASE, "eval": {"every": 20, "batches": 1}}
    return {"name": "stop", "base": base, "axes": {"model.depth": [1, 2], "task.n_id": [4, 8]}, "seeds": 1,
            "resources": {"cpu": 1}, "run": {"max_concurrent": 1, "max_failures": 1, "object_store_mb": 200,
                                             "stop": "ood_chance", **run}}


def write_grid(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def write_metrics(out: Path, rows: list[dict]) -> None:
    pq.write_table(pa.Table.from_pylist(rows, schema=METRICS_SCHEMA), out / METRICS_FILE)


@pytest.fixture
def run(tmp_path):
    """A prepared run directory: depth 1 and 2, n_id 4 and 8, one seed; nothing trained."""
    launch = resolve(write_grid(tmp_path / "stop.yaml", grid_data()), tmp_path / "run", False)
    prepare(launch.run_dir, launch.spec, launch.grid_text, launch.trials)
    return launch


def trial(launch, depth: int, n_id: int):
    return next(t for t in launch.trials if t.coords["model.depth"] == depth and t.coords["task.n_id"] == n_id)


def test_the_evidence_is_the_first_crossing_of_the_other_trials_of_its_depth(run):
    d1n4, d1n8, d2n4, d2n8 = (trial(run, d, n) for d in (1, 2) for n in (4, 8))
    rule = StopRule(RULE)
    at_chance = curve(range(20, 201, 20))
    stopper = SweepStopper(rule, run.run_dir, d1n4.trial_id, P, 1, refresh_s=0)
    assert stopper(at_chance) is None  # no other trial has metrics yet

    # depth 2 generalizes at step 40: no evidence for a depth-1 trial
    write_metrics(run.run_dir / d2n8.dir, curve((20,), ood_test=0.1) + curve((40, 60), ood_test=0.9)[1:])
    assert stopper(at_chance) is None
    assert SweepStopper(rule, run.run_dir, d2n4.trial_id, P, 2, refresh_s=0)(at_chance)["generalized"] == {
        d2n8.trial_id: 40}

    # its own depth, first crossing at 60: horizon 120, so a trial at step 200 stops, one at 100 does not
    write_metrics(run.run_dir / d1n8.dir, curve((20, 40), ood_test=0.2) + curve((60, 80), ood_test=0.6)[1:])
    assert stopper(at_chance[:5]) is None
    record = stopper(at_chance)
    assert record is not None and record["generalized"] == {d1n8.trial_id: 60} and record["horizon"] == 120


def test_the_evidence_is_read_again_only_after_refresh_s(run):
    d1n4, d1n8 = trial(run, 1, 4), trial(run, 1, 8)
    stopper = SweepStopper(StopRule(RULE), run.run_dir, d1n4.trial_id, P, 1, refresh_s=3600)
    at_chance = curve(range(20, 201, 20))
    assert stopper(at_chance) is None  # read once: nothing yet
    write_metrics(run.run_dir / d1n8.dir, curve((20, 40), ood_test=0.9))
    assert stopper(at_chance) is None  # not read again within the hour
    stopper.refresh_s = 0
    assert stopper(at_chance) is not None


def test_the_other_trials_are_not_read_while_the_own_curve_does_not_qualify(run):
    d1n4, d1n8 = trial(run, 1, 4), trial(run, 1, 8)
    write_metrics(run.run_dir / d1n8.dir, curve((20,), ood_test=0.1) + curve((40,), ood_test=0.9)[1:])
    stopper = SweepStopper(StopRule(RULE), run.run_dir, d1n4.trial_id, P, 1, refresh_s=0)
    assert stopper(curve(range(20, 201, 20), ood_test=0.4)) is None  # left chance: never stopped
    assert stopper._siblings is None and stopper._crossings == {}
    assert stopper(curve(range(20, 201, 20))) is not None
    assert stopper._crossings == {d1n8.trial_id: 40}


def test_an_unreadable_sibling_is_no_evidence(run):
    d1n4, d1n8 = trial(run, 1, 4), trial(run, 1, 8)
    (run.run_dir / d1n8.dir / METRICS_FILE).write_bytes(b"not parquet")
    assert SweepStopper(StopRule(RULE), run.run_dir, d1n4.trial_id, P, 1, refresh_s=0)(curve(range(20, 201, 20))) is None


def test_a_retired_trial_or_one_without_a_readable_config_gives_no_evidence(run):
    """A trial the grid no longer holds does not vote (as in the phase table); a sibling whose
    config.json is damaged is left out instead of failing the trial that asks."""
    d1n4, d1n8 = trial(run, 1, 4), trial(run, 1, 8)
    write_metrics(run.run_dir / d1n8.dir, curve((20, 40), ood_test=0.9))
    plan = read_plan(run.run_dir)
    retired = Plan(plan.name, tuple(replace(e, retired=e.trial_id == d1n8.trial_id) for e in plan.entries),
                   plan.max_failures)
    (run.run_dir / PLAN_FILE).write_text(json.dumps(retired.to_json()))
    at_chance = curve(range(20, 201, 20))
    assert SweepStopper(StopRule(RULE), run.run_dir, d1n4.trial_id, P, 1, refresh_s=0)(at_chance) is None

    (run.run_dir / PLAN_FILE).write_text(json.dumps(plan.to_json()))
    assert SweepStopper(StopRule(RULE), run.run_dir, d1n4.trial_id, P, 1, refresh_s=0)(at_chance) is not None
    (run.run_dir / d1n8.dir / "config.json").write_text('{"model": {}}')
    assert SweepStopper(StopRule(RULE), run.run_dir, d1n4.trial_id, P, 1, refresh_s=0)(at_chance) is None


@pytest.mark.parametrize("run_settings, expected", [
    ({"stop": "sometimes"}, "run.stop"),
    ({"stop_after": 0.5}, "run.stop_after must be >= 1"),
])
def test_a_bad_stop_setting_names_the_key_and_value(run_settings, expected):
    data = grid_data(**run_settings)
    with pytest.raises(GridError) as err:
        grid_from_dict(data, "stop.yaml")
    assert expected in str(err.value) and str(next(iter(run_settings.values()))) in str(err.value)


def test_stop_is_off_by_default():
    data = grid_data()
    del data["run"]["stop"]
    spec = grid_from_dict(data, "stop.yaml")
    assert spec.run.stop == "off" and spec.run.stop_after == 2.0


# ---------------------------------------------------------------------------------------------
# Where it shows
# ---------------------------------------------------------------------------------------------

def test_a_stopped_trial_shows_in_status_and_the_dry_run_with_what_it_saved(run):
    d1n4 = trial(run, 1, 4)
    out = run.run_dir / d1n4.dir
    write_metrics(out, curve((1, 20)))
    record = {"reason": STOP_REASON, "step": 20, "why": "test"}
    (out / STATUS_FILE).write_text(json.dumps(status_record(DONE, 20, 60, wall_time=1.0, stopped=record)))

    st = sweep_status(run.run_dir)
    assert st.stopped == 1 and st.counts["done"] == 1
    # the rest of its schedule: two thirds of the whole trial's estimate
    whole = estimate([d1n4.config], 0.0)
    assert st.stop_saved.flops == pytest.approx(whole.flops * 40 / 60)
    assert st.stop_saved.cpu_core_hours == pytest.approx(whole.cpu_core_hours * 40 / 60)
    text = format_status(st)
    assert "stopped 1 done trials early, o.o.d. at chance" in text and "saved about" in text

    dry = dry_run_text(run)
    assert "stopped early so far (run.stop, o.o.d. at chance): 1 of this grid's trials" in dry
    assert "stop: ood_chance" in dry


def test_status_without_stopped_trials_says_nothing_of_stop(run):
    assert "trials early" not in format_status(sweep_status(run.run_dir))
    assert "stopped early" not in dry_run_text(run)


# ---------------------------------------------------------------------------------------------
# The trial loop, and a real sweep
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_run_trial_ends_done_at_a_stoppers_record_and_stays_done(tmp_path):
    cfg = tiny_config("train.steps=100", "eval.every=20", "checkpoint.every=50")
    asked = []

    def stop(rows):
        asked.append(rows[-1]["step"])
        return {"reason": "test", "why": "enough"} if rows[-1]["step"] == 40 else None

    result = run_trial(cfg, tmp_path, echo=lambda line: None, tensorboard=False, stop=stop)
    assert asked == [1, 20, 40]
    assert result.step == 40 and result.stopped == {"reason": "test", "why": "enough"}
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert status["state"] == DONE and status["step"] == 40 and status["stopped"]["reason"] == "test"
    assert pq.read_table(tmp_path / METRICS_FILE)["step"].to_pylist() == [1, 20, 40]
    assert ckpt.load_latest(tmp_path / CHECKPOINT_DIR)["step"] == 40  # the model it ended with, not step 0
    again = run_trial(cfg, tmp_path, echo=lambda line: None, tensorboard=False, stop=stop)
    assert again.already_done and again.step == 40 and again.stopped["reason"] == "test"

    # without the stop (a sweep whose run.stop is off): it trains on from its stop to the end
    lines = []
    on = run_trial(cfg, tmp_path, echo=lines.append, tensorboard=False, resume_stopped=True)
    assert not on.already_done and on.step == 100 and on.stopped is None
    assert any("it was stopped there (test); it trains on to step 100" in line for line in lines)
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert status["state"] == DONE and status["step"] == 100 and "stopped" not in status
    assert pq.read_table(tmp_path / METRICS_FILE)["step"].to_pylist() == [1, 20, 40, 60, 80, 100]


@pytest.mark.slow
def test_a_trial_killed_right_after_its_stop_ends_there_again_on_resume(tmp_path):
    """The stop is saved with the stop step's checkpoint: a trial that dies before status.json says
    done (here its reporter fails at the stop step) resumes as stopped, without a stopper, and
    does not train on."""
    cfg = tiny_config("train.steps=100", "eval.every=20", "checkpoint.every=50")

    def stop(rows):
        return {"reason": "test", "why": "enough"} if rows[-1]["step"] == 40 else None

    def dies_at_the_stop(row, *, checkpointed, step):
        if step == 40:
            raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        run_trial(cfg, tmp_path, reporter=dies_at_the_stop, echo=lambda line: None, tensorboard=False, stop=stop)
    assert json.loads((tmp_path / STATUS_FILE).read_text())["state"] != DONE
    result = run_trial(cfg, tmp_path, echo=lambda line: None, tensorboard=False)
    assert result.step == 40 and result.stopped == {"reason": "test", "why": "enough"}
    status = json.loads((tmp_path / STATUS_FILE).read_text())
    assert status["state"] == DONE and status["step"] == 40 and status["stopped"]["reason"] == "test"
    assert pq.read_table(tmp_path / METRICS_FILE)["step"].to_pylist() == [1, 20, 40]


# the conftest's tiny trial (2 random tasks mod 7, width 64) as a grid base: seed 0 fits its tasks
# (id_train 0.69 at step 100, 0.95 at 200) while id_test stays at 0.44-0.56 and ood_test at 0.13-0.23
TRAINS = {
    "task": {"p": 7, "rule": "random", "n_ood": 8, "n_examples": 8},
    "model": {"width": 64, "heads": 2, "depth": 2},
    "train": {"steps": 400, "batch_size": 64, "lr": 1e-2, "warmup_steps": 50, "weight_decay": 0.0},
    "eval": {"every": 50, "batches": 2},
    "checkpoint": {"every": 100},
    "runtime": {"device": "cpu", "threads": 1, "log_every": 50},
}


@pytest.mark.slow
def test_a_sweep_with_stop_ends_a_trial_at_chance_past_its_depths_generalization(tmp_path, local_ray):
    """Two trials of depth 2 (n_id 2 and 4, seed 0). The n_id 4 one is written as finished, having
    first reached ood_test 0.95 at step 100 (a tiny trial never generalizes, so the evidence is
    written, as a trial of an earlier launch of the run would have left it); n_id 2 trains. The
    rule's threshold 0.6 puts the band at 0.37: the trial fits its tasks (id memorization) with
    ood_test at chance, so it is stopped at its first evaluation past step 200 (2 x 100) where its
    phase has held over the second half of its run, well before its schedule's end (400)."""
    data = {"name": "stop", "base": TRAINS, "axes": {"task.n_id": [2, 4]}, "seeds": 1, "resources": {"cpu": 1},
            "run": {"max_concurrent": 1, "max_failures": 1, "object_store_mb": 200, "stop": "ood_chance",
                    "phase_rule": {"threshold": 0.6}}}
    grid = write_grid(tmp_path / "stop.yaml", data)
    out = tmp_path / "run"
    launch = resolve(grid, out, False)
    prepare(launch.run_dir, launch.spec, launch.grid_text, launch.trials)
    trains, done = launch.trials
    write_metrics(out / done.dir, curve((1, 50), ood_test=0.1) + curve((100, 400), ood_test=0.95)[1:])
    (out / done.dir / STATUS_FILE).write_text(json.dumps(status_record(DONE, 400, 400, best_step=400, wall_time=1.0)))

    result = CliRunner().invoke(main, ["launch", str(grid), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "2 done, 0 errored, 0 unfinished" in result.output
    status = json.loads((out / trains.dir / STATUS_FILE).read_text())
    assert status["state"] == DONE and 200 <= status["step"] < 400 and status["steps"] == 400
    stopped = status["stopped"]
    assert stopped["reason"] == STOP_REASON and stopped["generalized"] == {done.trial_id: 100}
    assert stopped["horizon"] == 200 and stopped["phase"] == IM and stopped["step"] == status["step"]
    assert stopped["ood_test_max"] < stopped["band"] == pytest.approx(chance_band(7, 0.6))
    before = pq.read_table(out / trains.dir / METRICS_FILE)["step"].to_pylist()
    assert before[-1] == status["step"]
    assert f"stopped at step {status['step']} of 400" in (out / trains.dir / "train.log").read_text()

    shown = CliRunner().invoke(main, ["status", str(out)])
    assert shown.exit_code == 0 and "stopped 1 done trials early" in shown.output and "saved about" in shown.output
    trials = pd.read_parquet(out / "results" / "trials").set_index("trial_id")
    assert trials.loc[trains.trial_id, "status"] == "done"
    assert trials.loc[trains.trial_id, "steps_done"] == status["step"]

    # a stopped trial is done: the same launch again has nothing to train
    again = CliRunner().invoke(main, ["launch", str(grid), "--out", str(out)])
    assert again.exit_code == 0 and "2 done, 0 errored, 0 unfinished" in again.output
    assert json.loads((out / trains.dir / STATUS_FILE).read_text()) == status
    assert read_plan(out).ids == [trains.trial_id, done.trial_id]

    # the same grid without run.stop trains it on to the end of its schedule; the other is kept
    del data["run"]["stop"]
    dry = CliRunner().invoke(main, ["launch", str(write_grid(grid, data)), "--out", str(out), "--dry-run"])
    assert "this launch trains them on to their schedules' end (run.stop is off)" in dry.output
    off = CliRunner().invoke(main, ["launch", str(grid), "--out", str(out)])
    assert off.exit_code == 0, off.output
    assert "run.stop: 'ood_chance' -> 'off'" in off.output and "2 done, 0 errored, 0 unfinished" in off.output
    after = json.loads((out / trains.dir / STATUS_FILE).read_text())
    assert after["state"] == DONE and after["step"] == 400 and "stopped" not in after
    # one curve: the evaluations up to the stop kept, the rest of the schedule's after them
    steps = pq.read_table(out / trains.dir / METRICS_FILE)["step"].to_pylist()
    assert steps == before + list(range(status["step"] + 50, 401, 50))
    assert json.loads((out / done.dir / STATUS_FILE).read_text())["step"] == 400  # kept as written
    assert "trials early" not in CliRunner().invoke(main, ["status", str(out)]).output
