"""Settle (run.settle: majority): the decision, the evidence a run directory gives it, how a skipped
trial shows in status, the results tables and the dry run, and (slow) a real local Ray sweep that
skips a settled cell's last seed and a later launch without settle that runs it.

The fast tests write the files a finished trial leaves (status.json, one row of metrics.parquet)
with the accuracies of a chosen phase: the decision reads them through the same code as the
results tables, so they exercise it without training.
"""
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from click.testing import CliRunner

from ray_grok.cli import main
from ray_grok.errors import GridError
from ray_grok.results.aggregate import aggregate
from ray_grok.results.phases import PHASES, PhaseRule, majority_phase, phase_table
from ray_grok.results.plan import read_plan
from ray_grok.sweep import launch as launch_module
from ray_grok.sweep.cost import dry_run_text
from ray_grok.sweep.grid import expand, grid_from_dict, load_grid
from ray_grok.sweep.rundir import prepare, resolve
from ray_grok.sweep.settle import (
    SETTLED, NoGate, SettleGate, gate_for, most_skippable, replay, settle_evidence, settled_phase,
)
from ray_grok.sweep.status import format_status, sweep_status
from ray_grok.trial.outputs import status_record
from ray_grok.trial.schema import (
    BY_SHOT_COLUMNS, CHECKPOINT_DIR, DONE, FAILED, METRICS_FILE, METRICS_SCHEMA, RUNNING, SET_METRICS, SETS, SKIPPED,
    STATUS_FILE,
)

from test_sweep import TINY_BASE  # the tiny trial every real-Ray sweep test runs

NF, IM, IG, OM, OG = PHASES
FITS = {NF: (0, 0, 0, 0), IM: (1, 0, 0, 0), IG: (1, 1, 0, 0), OM: (1, 0, 1, 0), OG: (1, 1, 1, 1)}


def grid_data(name: str = "settle", seeds: int = 3, **run) -> dict:
    return {"name": name, "base": TINY_BASE, "axes": {"task.n_id": [4, 8]}, "seeds": seeds,
            "resources": {"cpu": 1}, "run": {"max_concurrent": 2, "max_failures": 1, "object_store_mb": 200, **run}}


def write_grid(path: Path, data: dict) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("phases, settled", [
    ([IM, IM, None], IM),  # 2 of 3 agree: the third cannot change the majority
    ([IM, None, None], None),  # 1 of 3: the other two could outvote it
    ([IM, OG, None], None),  # a disagreement: the third decides
    ([IM, IM, IM], IM),  # all decided
    ([None, None, None], None),  # nothing finished: no evidence
    ([IM, IM, None, None], None),  # 2 of 4: two OG would tie, and a tie goes to the more-learned phase
    ([OG, OG, None, None], OG),  # 2 of 4 OG: a tie with anything still goes to OG
    ([IM, IM, IM, None], IM),  # 3 of 4
    ([IM, IM, OG, None], None),  # 2-1 with one left: it could tie to OG
    ([OG, OG, IM, None], OG),  # 2-1 for OG: a tie is OG's
    ([NF, NF, None, None, None], None),  # 2 of 5
    ([NF, NF, NF, None, None], NF),  # 3 of 5
])
def test_settled_only_when_no_outcome_of_the_undecided_seeds_changes_the_majority(phases, settled):
    assert settled_phase(phases) == settled


def test_the_decision_agrees_with_every_completion_of_the_cell():
    """Brute force: settled iff every way the undecided seeds could end gives the same majority."""
    import itertools
    rng = np.random.default_rng(0)
    for _ in range(300):
        n = int(rng.integers(1, 6))
        phases = [None if rng.random() < 0.4 else PHASES[int(rng.integers(0, 5))] for _ in range(n)]
        decided = [p for p in phases if p is not None]
        outcomes = {majority_phase(decided + list(rest))
                    for rest in itertools.product(PHASES, repeat=n - len(decided))} if decided else {None, "x"}
        assert (settled_phase(phases) is not None) == (len(outcomes) == 1), phases
        if len(outcomes) == 1:
            assert settled_phase(phases) == outcomes.pop()


def test_majority_phase_is_the_phase_tables_majority():
    from tests.synthetic import trial, trials_frame
    rng = np.random.default_rng(1)
    for _ in range(20):
        votes = [PHASES[int(i)] for i in rng.integers(0, 5, size=int(rng.integers(1, 6)))]
        table = phase_table(trials_frame([trial(seed=s, best=p, final=p) for s, p in enumerate(votes)]))
        assert table["phase"].item() == majority_phase(votes), votes


def test_unknown_phase_is_refused():
    with pytest.raises(ValueError, match="not phases"):
        settled_phase(["memorized", None])


def test_replay_skips_what_the_gate_would_and_concurrency_costs_savings_not_correctness():
    from tests.synthetic import trial, trials_frame
    votes = {4: [IM, IM, OG], 8: [OG, OG, OG], 16: [IM, OG, IM]}  # the last cell only settles at its end
    frame = trials_frame([trial(n_id=n, seed=s, best=p, final=p) for n, ps in votes.items() for s, p in enumerate(ps)])
    order = [f"d6_n{n}_a0.6_s{s}" for s in range(3) for n in votes]  # seed-major, as grid.expand
    assert set(order) == set(frame["trial_id"])
    assert replay(frame, order, PhaseRule()) == ["d6_n4_a0.6_s2", "d6_n8_a0.6_s2"]
    assert replay(frame, order, PhaseRule(), concurrency=2) == ["d6_n4_a0.6_s2", "d6_n8_a0.6_s2"]
    # three at a time: when n8's seed 2 starts, its seed 1 is still running (n4's seed 2 took no slot)
    assert replay(frame, order, PhaseRule(), concurrency=3) == ["d6_n4_a0.6_s2"]
    assert replay(frame, order, PhaseRule(), concurrency=4) == []
    # the skipped seed disagreed (n4 seed 2 is OG): the cell's phase stays IM, only its agreement changes
    skipped = frame["trial_id"].isin(replay(frame, order, PhaseRule()))
    after = phase_table(frame.assign(status=frame["status"].where(~skipped, "skipped: settled")))
    assert (after["phase"] == phase_table(frame)["phase"]).all()


# ---------------------------------------------------------------------------------------------
# The grid: run.settle and run.phase_rule
# ---------------------------------------------------------------------------------------------

def test_settle_is_off_by_default_and_majority_is_read_with_its_rule(tmp_path):
    assert load_grid(write_grid(tmp_path / "a.yaml", grid_data())).run.settle == "off"
    spec = load_grid(write_grid(tmp_path / "b.yaml", grid_data(settle="majority", phase_rule={"threshold": 0.3,
                                                                                            "time": "final"})))
    assert spec.run.settle == "majority"
    assert spec.run.phase_rule.rule() == PhaseRule(threshold=0.3, time="final")


@pytest.mark.parametrize("run, expected", [
    ({"settle": "yes"}, "run.settle must be one of ['off', 'majority'], got 'yes'"),
    ({"settle": True}, "run.settle must be one of ['off', 'majority'], got True"),
    ({"phase_rule": {"threshold": 1.5}}, "run.phase_rule.threshold must be in (0, 1], got 1.5"),
    ({"phase_rule": {"metric": "loss"}}, "run.phase_rule.metric must be one of ['acc_last', 'acc'], got 'loss'"),
    ({"phase_rule": {"thresh": 0.5}}, "unknown key run.phase_rule.thresh (did you mean run.phase_rule.threshold?)"),
    ({"phase_rule": 0.5}, "run.phase_rule must be a mapping of its keys, got 0.5"),
    ({"setle": "majority"}, "unknown key run.setle (did you mean run.settle?)"),
])
def test_a_bad_settle_setting_names_the_grid_file_key_and_value(tmp_path, run, expected):
    path = write_grid(tmp_path / "bad.yaml", grid_data(**run))
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert str(err.value).startswith(f"{path}: ") and expected in str(err.value)


# ---------------------------------------------------------------------------------------------
# A run directory: the evidence, the skip, and how it shows
# ---------------------------------------------------------------------------------------------

def finish(out: Path, phase: str | None = None, state: str = DONE, steps: int = 60) -> None:
    """The files a trial that ended in STATE leaves, its last evaluation of PHASE's accuracies."""
    if phase is not None:
        # every metric of a set at its accuracy (the loss too: no rule reads it)
        row = {f"{s}_{m}": 0.95 if fit else 0.1 for s, fit in zip(SETS, FITS[phase]) for m in SET_METRICS}
        row.update({c: [0.1] * 8 for c in BY_SHOT_COLUMNS}, step=steps, lr=1e-3, tokens_seen=1, wall_time=1.0)
        pq.write_table(pa.Table.from_pylist([row], schema=METRICS_SCHEMA), out / METRICS_FILE)
    extra = {"best_step": steps, "wall_time": 1.0} if state == DONE else {}
    (out / STATUS_FILE).write_text(json.dumps(status_record(state, steps if state == DONE else 0, steps, **extra)))


@pytest.fixture
def run(tmp_path):
    """A prepared run directory of 2 cells (n_id 4, 8) x 3 seeds, settle on; nothing trained."""
    launch = resolve(write_grid(tmp_path / "settle.yaml", grid_data(settle="majority")), tmp_path / "run", False)
    prepare(launch.run_dir, launch.spec, launch.grid_text, launch.trials)
    return launch


def dirs(launch, n_id: int) -> list[Path]:
    """The trial directories of one cell, seed 0 first."""
    return [launch.run_dir / t.dir for t in launch.trials if t.coords["task.n_id"] == n_id]


def gate(launch):
    return gate_for(launch.spec.run.settle, launch.run_dir, launch.spec.run.phase_rule.rule())


def ids(launch, n_id: int) -> list[str]:
    return [t.trial_id for t in launch.trials if t.coords["task.n_id"] == n_id]


def test_a_cells_last_seed_is_skipped_once_its_first_two_agree_with_the_evidence(run):
    a0, a1, a2 = dirs(run, 4)
    assert isinstance(gate(run), SettleGate)
    assert gate(run).skip(ids(run, 4)[2], a2, 60) is None  # nothing finished yet
    assert not (a2 / STATUS_FILE).exists()
    finish(a0, IM)
    assert gate(run).skip(ids(run, 4)[2], a2, 60) is None  # 1 of 3
    finish(a1, IM)
    settled = gate(run).skip(ids(run, 4)[2], a2, 60)
    assert settled is not None and settled.phase == IM
    status = json.loads((a2 / STATUS_FILE).read_text())
    assert status["state"] == SKIPPED and status["reason"] == SETTLED and status["step"] == 0
    evidence = status["settled"]
    assert evidence["phase"] == IM and evidence["agree"] == 2 and evidence["decided"] == 2 and evidence["seeds"] == 3
    assert evidence["votes"] == {ids(run, 4)[0]: IM, ids(run, 4)[1]: IM, ids(run, 4)[2]: None}
    assert "0.5" in evidence["rule"]
    # the other cell is not touched by this one's evidence
    assert gate(run).skip(ids(run, 8)[2], dirs(run, 8)[2], 60) is None


def test_disagreeing_failed_or_running_seeds_do_not_settle(run):
    a0, a1, a2 = dirs(run, 4)
    finish(a0, IM)
    finish(a1, OG)
    assert gate(run).skip(ids(run, 4)[2], a2, 60) is None  # 1-1: the last seed decides
    finish(a1, IM, state=FAILED)  # a failed seed is undecided (a later launch retries it), whatever it logged
    assert gate(run).skip(ids(run, 4)[2], a2, 60) is None
    finish(a1, IM, state=RUNNING)
    assert gate(run).skip(ids(run, 4)[2], a2, 60) is None


def test_a_trial_that_has_started_is_never_skipped_and_settle_off_never_skips(run):
    a0, a1, a2 = dirs(run, 4)
    finish(a0, IM)
    finish(a1, IM)
    finish(a2, None, state=FAILED)  # an earlier attempt failed: the retry goes on
    assert gate(run).skip(ids(run, 4)[2], a2, 60) is None
    assert json.loads((a2 / STATUS_FILE).read_text())["state"] == FAILED
    (a2 / STATUS_FILE).write_text("{not json")  # damaged: read as no status, but it has checkpoints
    (a2 / "checkpoints").mkdir()
    (a2 / "checkpoints" / "latest.pt").write_bytes(b"")
    assert gate(run).skip(ids(run, 4)[2], a2, 60) is None
    (a2 / STATUS_FILE).unlink()
    assert NoGate().skip(ids(run, 4)[2], a2, 60) is None
    assert isinstance(gate_for("off", run.run_dir, PhaseRule()), NoGate)


def test_a_skip_whose_evidence_is_gone_is_pending_again(run):
    a0, a1, a2 = dirs(run, 4)
    finish(a0, IM)
    finish(a1, IM)
    assert gate(run).skip(ids(run, 4)[2], a2, 60) is not None
    (a1 / STATUS_FILE).unlink()  # a sibling's directory emptied by hand
    assert gate(run).skip(ids(run, 4)[2], a2, 60) is None
    assert not (a2 / STATUS_FILE).exists()


def test_the_grids_rule_decides_the_phase(run, tmp_path):
    a0, a1, a2 = dirs(run, 4)
    finish(a0, IM)  # id_train at 0.95, the rest at 0.1
    finish(a1, IM)
    plan = read_plan(run.run_dir)
    assert settle_evidence(run.run_dir, plan, ids(run, 4)[2], PhaseRule(threshold=0.5)).phase == IM
    assert settle_evidence(run.run_dir, plan, ids(run, 4)[2], PhaseRule(threshold=0.05)).phase == OG
    assert settle_evidence(run.run_dir, plan, ids(run, 4)[2], PhaseRule(threshold=0.99)).phase == NF


def one_cell_launcher(tmp_path):
    """launch_of(name, **changes): the launch, into tmp_path/run, of a one-cell grid of 3 seeds with
    run.settle majority, its grid data changed by CHANGES."""
    one_cell = grid_data(settle="majority")
    one_cell["axes"] = {"task.n_id": [4]}

    def launch_of(name: str, **changes):
        return resolve(write_grid(tmp_path / f"{name}.yaml", {**one_cell, **changes}), tmp_path / "run", False)

    return launch_of


def settled_third_seed(launch_of):
    """The first launch, prepared; seeds 0 and 1 end NF, so the gate skips seed 2 as settled."""
    first = launch_of("first")
    prepare(first.run_dir, first.spec, first.grid_text, first.trials)
    s0, s1, s2 = (first.run_dir / t.dir for t in first.trials)
    finish(s0, NF)
    finish(s1, NF)
    assert gate(first).skip(first.trials[2].trial_id, s2, 60) is not None
    return first


def test_whether_a_launch_has_work_is_decided_on_the_grid_it_launches(tmp_path):
    """A launch starts Ray only if a trial is left to train; a skipped trial counts as left when
    its cell in the grid being launched (not the stored one) is no longer settled."""
    launch_of = one_cell_launcher(tmp_path)

    def work(launch) -> bool:
        return launch_module._work_left(launch.run_dir, launch.spec, launch_module.grid_states(launch.run_dir,
                                                                                               launch.trials))

    first = settled_third_seed(launch_of)
    assert not work(first)  # 2 done, the third skipped and still settled: nothing to train
    assert work(launch_of("off", run={**grid_data(settle="majority")["run"], "settle": "off"}))  # without settle it trains

    # seeds 1 and 2 only: the cell {s1 NF, s2 ?} is not settled, so seed 2 must train
    assert work(launch_of("later", seeds=[1, 2]))
    # seed 2 retired by a 2-seed grid, then the 3-seed grid again: still settled, no crash
    fewer = launch_of("fewer", seeds=2)
    prepare(fewer.run_dir, fewer.spec, fewer.grid_text, fewer.trials)
    assert not work(launch_of("again"))


def test_skipped_trials_show_in_status_the_tables_and_the_dry_run(run):
    a0, a1, a2 = dirs(run, 4)
    finish(a0, IM)
    finish(a1, IM)
    gate(run).skip(ids(run, 4)[2], a2, 60)

    st = sweep_status(run.run_dir)
    assert st.counts["skipped: settled"] == 1 and st.skipped == 1 and st.counts["done"] == 2
    assert st.steps_total == 5 * 60  # progress counts the trials to train
    text = format_status(st)
    assert "skipped: settled 1" in text and "saved about" in text and "CPU core-minutes" in text
    assert "3 trials unfinished" in text  # the other cell's seeds; not the skipped one

    summary = aggregate(run.run_dir)
    assert summary.by_status == {"done": 2, "skipped: settled": 1, "pending": 3}
    trials = pd.read_parquet(run.run_dir / "results" / "trials").set_index("trial_id")
    assert trials.loc[ids(run, 4)[2], "status"] == "skipped: settled"
    assert trials.loc[ids(run, 4)[2], "steps_done"] == 0 and pd.isna(trials.loc[ids(run, 4)[2], "wall_time"])
    table = phase_table(trials.reset_index())
    cell = table[table["task.n_id"] == 4].iloc[0]
    assert cell["phase"] == IM and cell["n_seeds"] == 2 and cell["n_unclassified"] == 1

    text = dry_run_text(run)
    assert "at most 2 trials skipped" in text  # one per cell of 3 seeds
    assert ("skipped so far as settled: 1 of this grid's trials" in text
            and "they stay skipped while their cells stay settled" in text)


def test_the_dry_run_counts_skips_on_the_grid_it_launches(tmp_path):
    """--dry-run's "skipped so far" is about the grid being launched: a skipped seed that a changed
    grid unsettles is said to train, one the grid retires is counted apart, not in the saving."""
    launch_of = one_cell_launcher(tmp_path)

    first = settled_third_seed(launch_of)

    text = dry_run_text(launch_of("same"))
    assert "skipped so far as settled: 1 of this grid's trials" in text
    assert "they stay skipped while their cells stay settled" in text and "retired" not in text
    # seeds 1 and 2: the cell {s1 NF, s2 ?} is no longer settled, so seed 2 trains
    text = dry_run_text(launch_of("later", seeds=[1, 2]))
    assert "1 of this grid's trials" in text and "0 stay skipped, 1 train in this launch" in text, text
    # two seeds: seed 2, the skipped one, leaves the grid
    text = dry_run_text(launch_of("fewer", seeds=2))
    assert "none of this grid's trials; 1 skipped trials are no longer in the grid (retired)" in text, text


@pytest.mark.parametrize("damage", ["no grid file", "a grid file status cannot read", "no config"])
def test_status_with_skips_goes_on_without_the_grid_or_a_skipped_trials_config(run, damage):
    a0, a1, a2 = dirs(run, 4)
    finish(a0, IM)
    finish(a1, IM)
    gate(run).skip(ids(run, 4)[2], a2, 60)
    if damage == "no grid file":
        (run.run_dir / "grid.yaml").unlink()
    elif damage == "a grid file status cannot read":
        (run.run_dir / "grid.yaml").write_text("resources: {cpu: 0}\n")
    else:
        (a2 / "config.json").unlink()
    text = format_status(sweep_status(run.run_dir))
    assert "skipped: settled 1" in text and "saved about" not in text  # the count, without a cost


def test_most_skippable_is_the_last_seeds_of_each_cell():
    # 2 and 4 seeds: half of them, after OG seeds (a tie is OG's); 3 and 5: fewer than half
    for seeds, per_cell in ((1, 0), (2, 1), (3, 1), (4, 2), (5, 2)):
        trials = expand(grid_from_dict(grid_data(seeds=seeds, settle="majority")))
        best = most_skippable(trials)
        assert len(best) == 2 * per_cell, seeds
        assert all(t.coords["seed"] >= seeds - per_cell for t in best)


def test_status_without_skips_says_nothing_of_settle(run):
    text = format_status(sweep_status(run.run_dir))
    assert "skipped" not in text and "saved" not in text


# ---------------------------------------------------------------------------------------------
# On a real local Ray
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sweep_with_settle_skips_the_last_seed_and_a_launch_without_it_runs_it(tmp_path, local_ray):
    # (and a seed emptied by hand is run again, though Tune's experiment holds it as finished)
    """One cell, 3 seeds, one trial at a time (seed-major: seeds 0 and 1 finish before seed 2
    starts). The grid's rule (threshold 0.01: a set fits at 1% accuracy, below chance 1/7) makes
    every tiny trial "ood generalization", so the first two seeds agree whatever they learn."""
    data = grid_data(settle="majority", phase_rule={"threshold": 0.01}, max_concurrent=1)
    data["axes"] = {"task.n_id": [4]}
    grid = write_grid(tmp_path / "settle.yaml", data)
    out = tmp_path / "run"
    first = CliRunner().invoke(main, ["launch", str(grid), "--out", str(out)])
    assert first.exit_code == 0, first.output
    assert "1 skipped (settled" in first.output

    plan = read_plan(out)
    states = [json.loads((out / e.dir / STATUS_FILE).read_text()) for e in plan.entries]
    assert [s["state"] for s in states] == [DONE, DONE, SKIPPED]
    assert states[2]["settled"]["phase"] == OG and states[2]["settled"]["agree"] == 2
    assert not (out / plan.entries[2].dir / METRICS_FILE).exists()  # not trained
    status = CliRunner().invoke(main, ["status", str(out)])
    assert status.exit_code == 0 and "skipped: settled 1" in status.output and "saved about" in status.output
    trials = pd.read_parquet(out / "results" / "trials").set_index("trial_id")
    assert trials.loc[plan.entries[2].trial_id, "status"] == "skipped: settled"

    # the same grid again: nothing is left to train, so Ray is not started at all
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(launch_module, "_ray", lambda spec: pytest.fail("a launch with nothing to train started Ray"))
        again = CliRunner().invoke(main, ["launch", str(grid), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert "2 done, 0 errored, 0 unfinished, 1 skipped" in again.output
    assert json.loads((out / plan.entries[2].dir / STATUS_FILE).read_text())["state"] == SKIPPED

    # a seed emptied by hand: Tune's experiment holds it, and the seed skipped on its evidence, as
    # finished, and would not run them; it is set aside and a fresh one runs what is not done:
    # seed 1 trains again and settles its cell again, so seed 2 is skipped again
    for name in (STATUS_FILE, METRICS_FILE):
        (out / plan.entries[1].dir / name).unlink()
    shutil.rmtree(out / plan.entries[1].dir / CHECKPOINT_DIR)
    emptied = CliRunner().invoke(main, ["launch", str(grid), "--out", str(out)])
    assert emptied.exit_code == 0, emptied.output
    assert "holds 2 trials as finished that have work left on disk" in emptied.output
    assert "2 done, 0 errored, 0 unfinished, 1 skipped" in emptied.output
    states = [json.loads((out / e.dir / STATUS_FILE).read_text()) for e in plan.entries]
    assert [s["state"] for s in states] == [DONE, DONE, SKIPPED] and states[1]["step"] == 60

    # the same grid without settle: the skipped trial runs; the finished ones are kept
    data["run"].pop("settle")
    second = CliRunner().invoke(main, ["launch", str(write_grid(grid, data)), "--out", str(out)])
    assert second.exit_code == 0, second.output
    assert "run.settle: 'majority' -> 'off'" in second.output
    after = [json.loads((out / e.dir / STATUS_FILE).read_text()) for e in plan.entries]
    assert [s["state"] for s in after] == [DONE, DONE, DONE]
    assert after[:2] == states[:2]  # kept, not re-run
    assert after[2]["step"] == 60
    trials = pd.read_parquet(out / "results" / "trials")
    assert set(trials["status"]) == {"done"}
    status = CliRunner().invoke(main, ["status", str(out)])
    assert "skipped" not in status.output and "done 3 |" in status.output
