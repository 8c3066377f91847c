"""Phase classification, the per-cell phase table and the `ray-grok phases` command, on synthetic
results tables (tests/synthetic.py) with the exact schema of ray_grok.schema."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from ray_grok.cli import main
from ray_grok.results.schema import TRIALS_SCHEMA
from ray_grok.results.phases import (
    MISSING,
    PHASES,
    Cell,
    MissingResultsError,
    PhaseError,
    PhaseRule,
    classify_trials,
    find_cell,
    format_phase_table,
    missing_cells,
    phase_table,
    read_results,
    time_point_changes,
)
from synthetic import (
    FIG1B_DEPTH6,
    FIG1B_DEPTH6_FINAL,
    FIG1B_DISSENT,
    fig1b_depth6_trials,
    trial,
    trials_frame,
)

BELOW_HALF = float(np.nextafter(0.5, 0.0))


def phases_of(*specs: dict, rule: PhaseRule = PhaseRule()) -> list:
    return classify_trials(trials_frame(specs), rule)["phase"].tolist()


def cell(table: pd.DataFrame, depth: int, n_id: int, alpha: float) -> pd.Series:
    return find_cell(table, Cell(depth, n_id, alpha))


# ---- classification of single trials ----

def test_synthetic_trials_are_a_valid_trials_table():
    """The phase tests run on synthetic tables: they must have the real table's columns and types."""
    table = pa.Table.from_pandas(trials_frame([trial(), trial(seed=1)]), schema=TRIALS_SCHEMA, preserve_index=False)
    assert table.schema.names == TRIALS_SCHEMA.names and table.num_rows == 2


@pytest.mark.parametrize("phase", PHASES)
def test_each_phase_from_its_clean_accuracies(phase):
    assert phases_of(trial(best=phase)) == [phase]


@pytest.mark.parametrize("accs, phase", [
    # (id_train, id_test, ood_train, ood_test): the hardest set fitted names the phase
    ((0.9, 0.1, 0.9, 0.1), "ood memorization"),  # the paper: o.o.d. tasks on train inputs only
    ((0.9, 0.9, 0.9, 0.1), "ood memorization"),  # id_test fitted too: still not ood_test
    ((0.9, 0.1, 0.1, 0.9), "ood generalization"),  # inconsistent: ood_test is the strongest evidence
    ((0.9, 0.1, 0.9, 0.9), "ood generalization"),
    ((0.1, 0.9, 0.9, 0.9), "not fitted"),  # not fitting the training data is never hidden
])
def test_mixed_fits_follow_the_hardest_set(accs, phase):
    assert phases_of(trial(best=accs)) == [phase]


def test_threshold_is_inclusive():
    at = phases_of(trial(best=(0.5, 0.5, 0.5, 0.5)))
    just_below_ood_test = phases_of(trial(best=(0.5, 0.5, 0.5, BELOW_HALF)))
    just_below_id_train = phases_of(trial(best=(BELOW_HALF, 0.5, 0.5, 0.5)))
    assert (at, just_below_ood_test, just_below_id_train) == (
        ["ood generalization"], ["ood memorization"], ["not fitted"])


def test_threshold_is_configurable():
    spec = trial(best=(0.95, 0.8, 0.8, 0.8))
    assert phases_of(spec, rule=PhaseRule(threshold=0.9)) == ["id memorization"]
    assert phases_of(spec, rule=PhaseRule(threshold=0.75)) == ["ood generalization"]


def test_metric_acc_reads_the_mean_over_positions():
    frame = trials_frame([trial(best=(0.55, 0.55, 0.55, 0.55))])
    assert frame["best_id_train_acc"].iloc[0] < 0.5 <= frame["best_id_train_acc_last"].iloc[0]
    assert classify_trials(frame, PhaseRule(metric="acc_last"))["phase"].tolist() == ["ood generalization"]
    assert classify_trials(frame, PhaseRule(metric="acc"))["phase"].tolist() == ["not fitted"]


def test_time_point_best_catches_transient_ood_generalization():
    spec = trial(best="ood generalization", final="ood memorization")
    assert phases_of(spec, rule=PhaseRule(time="best")) == ["ood generalization"]
    assert phases_of(spec, rule=PhaseRule(time="final")) == ["ood memorization"]
    assert phases_of(spec, rule=PhaseRule(time="auto")) == ["ood generalization"]


def test_time_point_auto_ignores_a_noise_peak_of_a_run_that_never_generalizes():
    # The o.o.d. test accuracy never fits, so its "best" step is an early, random one where the
    # run had not yet memorized: best reads "not fitted", auto reads the end of training.
    spec = trial(best=(0.2, 0.1, 0.1, 0.12), final=(0.98, 0.1, 0.1, 0.08))
    assert phases_of(spec, rule=PhaseRule(time="best")) == ["not fitted"]
    assert phases_of(spec, rule=PhaseRule(time="auto")) == ["id memorization"]
    assert phases_of(spec, rule=PhaseRule(time="final")) == ["id memorization"]


def test_time_point_auto_decides_per_trial_and_its_table_means_what_it_classified():
    generalizes = trial(seed=0, best=(1.0, 1.0, 0.9, 0.8), final=(1.0, 1.0, 0.9, 0.3))
    memorizes = trial(seed=1, best=(0.3, 0.1, 0.1, 0.4), final=(0.9, 0.2, 0.1, 0.1))
    rule = PhaseRule(time="auto")
    assert phases_of(generalizes, memorizes, rule=rule) == ["ood generalization", "id memorization"]
    row = phase_table(trials_frame([generalizes, memorizes]), rule).iloc[0]
    # best for the first trial, final for the second
    assert np.allclose(row[["acc_id_train", "acc_ood_test"]].astype(float), [(1.0 + 0.9) / 2, (0.8 + 0.1) / 2])


def test_unfinished_failed_and_nan_trials_are_not_classified():
    nan = (0.9, 0.9, float("nan"), 0.9)
    got = phases_of(trial(status="failed"), trial(status="running"), trial(best=nan), trial())
    assert [isinstance(p, str) for p in got] == [False, False, False, True]


def test_missing_columns_are_named():
    frame = trials_frame([trial()]).drop(columns=["best_ood_test_acc_last"])
    with pytest.raises(PhaseError, match="best_ood_test_acc_last"):
        classify_trials(frame, PhaseRule())


# ---- the rule ----

@pytest.mark.parametrize("kwargs, field", [
    ({"metric": "loss"}, "PhaseRule.metric"),
    ({"time": "last"}, "PhaseRule.time"),
    ({"threshold": 1.5}, "PhaseRule.threshold"),
    ({"threshold": 0.0}, "PhaseRule.threshold"),
    ({"threshold": float("nan")}, "PhaseRule.threshold"),
    ({"threshold": True}, "PhaseRule.threshold"),
])
def test_rule_validation_names_field_and_value(kwargs, field):
    with pytest.raises(PhaseError) as err:
        PhaseRule(**kwargs)
    message = str(err.value)
    assert field in message and repr(next(iter(kwargs.values()))) in message


def test_rule_defaults_and_description():
    rule = PhaseRule()
    assert (rule.metric, rule.threshold, rule.time) == ("acc_last", 0.5, "auto")
    assert rule.needed_columns == [f"{t}_{s}_acc_last" for t in ("best", "final")
                                   for s in ("id_train", "id_test", "ood_train", "ood_test")]
    assert PhaseRule(time="final", metric="acc").needed_columns[-1] == "final_ood_test_acc"
    assert "last-position accuracy >= 0.5" in rule.describe() and "if ood_test fits there" in rule.describe()
    assert "early-stopping step (best" in PhaseRule(time="best").describe()
    assert "end of training" in PhaseRule(time="final", threshold=0.9).describe()


# ---- the phase table ----

def test_majority_vote_and_agreement():
    table = phase_table(trials_frame([
        trial(seed=0, best="ood generalization"),
        trial(seed=1, best="ood generalization"),
        trial(seed=2, best="ood memorization"),
    ]))
    row = table.iloc[0]
    assert (row["phase"], row["n_seeds"], row["n_ood_generalization"], row["n_ood_memorization"]) == (
        "ood generalization", 3, 2, 1)
    assert math.isclose(row["agreement"], 2 / 3)


def test_tie_goes_to_the_more_learned_phase():
    table = phase_table(trials_frame([
        trial(seed=0, best="id memorization"), trial(seed=1, best="id generalization"),
        trial(seed=2, best="id generalization"), trial(seed=3, best="id memorization"),
    ]))
    assert (table["phase"].iloc[0], table["agreement"].iloc[0]) == ("id generalization", 0.5)


def test_not_fitted_cell_is_a_phase_not_missing():
    table = phase_table(trials_frame([trial(seed=s, best="not fitted") for s in range(2)]))
    assert (table["phase"].iloc[0], missing_cells(table)) == ("not fitted", 0)


def test_missing_cells_are_counted_never_an_error():
    trials = trials_frame([
        trial(6, 8, 0.2, 0, best="id memorization"),
        trial(6, 8, 0.2, 1, best="id memorization", status="failed"),
        trial(6, 16, 0.3, 0, best="id generalization", status="running"),  # its only trial: missing
        trial(6, 16, 0.2, 0, best=(0.9, float("nan"), 0.1, 0.1)),  # NaN: missing
    ])  # (6, 8, 0.3) has no trial at all: missing
    table = phase_table(trials)
    assert len(table) == 4 and missing_cells(table) == 3
    assert cell(table, 6, 8, 0.2)[["phase", "n_seeds", "n_unclassified"]].tolist() == ["id memorization", 1, 1]
    absent = cell(table, 6, 8, 0.3)
    assert absent["phase"] == MISSING and absent["n_unclassified"] == 0 and np.isnan(absent["agreement"])
    assert cell(table, 6, 16, 0.3)[["phase", "n_unclassified"]].tolist() == [MISSING, 1]


def test_planned_grid_adds_cells_not_run_yet():
    trials = trials_frame([trial(6, 8, 0.2)])
    table = phase_table(trials, grid={"task.n_id": [8, 16, 32], "task.alpha": [0.2, 0.3]})
    assert len(table) == 6 and missing_cells(table) == 5
    with pytest.raises(PhaseError, match="task.width"):
        phase_table(trials, grid={"task.width": [1]})


def test_float_noise_in_alpha_is_one_cell():
    trials = trials_frame([trial(alpha=0.3, seed=0), trial(alpha=0.1 * 3, seed=1)])
    table = phase_table(trials)
    assert len(table) == 1 and table["n_seeds"].iloc[0] == 2


def test_table_records_its_rule_and_mean_accuracies():
    trials = trials_frame([trial(seed=0, best=(0.9, 0.8, 0.7, 0.6)), trial(seed=1, best=(0.7, 0.6, 0.5, 0.4))])
    row = phase_table(trials, PhaseRule(threshold=0.55)).iloc[0]
    assert row[["rule.metric", "rule.threshold", "rule.time"]].tolist() == ["acc_last", 0.55, "auto"]
    assert np.allclose(row[["acc_id_train", "acc_id_test", "acc_ood_train", "acc_ood_test"]].astype(float),
                       [0.8, 0.7, 0.6, 0.5])


def test_fig1b_depth6_sweep_gives_the_paper_phase_table():
    table = phase_table(fig1b_depth6_trials(seeds=3))
    got = {(int(r["task.n_id"]), round(r["task.alpha"], 1)): r["phase"] for r in table.to_dict("records")}
    assert got == FIG1B_DEPTH6
    for (n_id, alpha) in FIG1B_DEPTH6:
        expected_agreement = 2 / 3 if (n_id, alpha) in FIG1B_DISSENT else 1.0
        assert math.isclose(cell(table, 6, n_id, alpha)["agreement"], expected_agreement)
    assert missing_cells(table) == 0 and set(table["n_seeds"]) == {3}


def test_fig1b_depth6_at_the_end_shows_the_decay():
    table = phase_table(fig1b_depth6_trials(seeds=3), PhaseRule(time="final"))
    got = {(int(r["task.n_id"]), round(r["task.alpha"], 1)): r["phase"] for r in table.to_dict("records")}
    assert got == FIG1B_DEPTH6_FINAL
    assert "ood generalization" not in got.values()


def test_text_table_rows_are_alphas_columns_n_id():
    text = format_phase_table(phase_table(fig1b_depth6_trials(seeds=3)), PhaseRule())
    rows = {line.split()[0]: line.split()[1:] for line in text.splitlines() if line[:3] in {"0.2", "0.4", "0.8"}}
    assert rows["0.8"] == ["IM", "IM", "IG", "IG", "IG", "OG", "OG"]
    assert rows["0.4"] == ["IM", "IM", "IM", "IM", "IG", "2/3", "OG", "OG"]
    assert rows["0.2"] == ["IM", "IM", "IM", "IM", "IM", "OM", "OM"]
    assert "missing cells: 0 of 49" in text


# ---- reading results and the `phases` command ----

@pytest.fixture
def run_dir(tmp_path):
    """A RUN_DIR whose results/trials is a Parquet dataset partitioned by depth, as a sweep could
    write it (the partition column comes back as a category), with one cell's trials all failed."""
    trials = fig1b_depth6_trials(seeds=3)
    trials.loc[(trials["task.n_id"] == 64) & (trials["task.alpha"] == 0.5), "status"] = "failed"
    pq.write_to_dataset(pa.Table.from_pandas(trials, preserve_index=False),
                        tmp_path / "results" / "trials", partition_cols=["model.depth"])
    return tmp_path


def test_phases_command_prints_table_and_writes_files(run_dir):
    csv, parquet = run_dir / "phases.csv", run_dir / "phases.parquet"
    result = CliRunner().invoke(main, ["phases", str(run_dir), "--csv", str(csv), "--parquet", str(parquet)])
    assert result.exit_code == 0, result.output
    line = next(l for l in result.output.splitlines() if l.startswith("0.5 "))
    assert line.split() == ["0.5", "IM", "IM", "IM", "--", "IG", "OG", "OG"]
    assert "depth 6: 49 cells, 1 missing" in result.output
    assert PhaseRule().describe() in result.output
    expected = phase_table(read_results(run_dir, "trials"), PhaseRule())
    for written in (pd.read_csv(csv), pd.read_parquet(parquet)):
        assert len(written) == 49 and missing_cells(written) == 1
        assert written["phase"].tolist() == expected["phase"].tolist()
        assert set(written["rule.time"]) == {"auto"}


def test_phases_command_rule_options(run_dir):
    result = CliRunner().invoke(main, ["phases", str(run_dir), "--time", "final", "--threshold", "0.9"])
    assert result.exit_code == 0, result.output
    assert PhaseRule(time="final", threshold=0.9).describe() in result.output
    grid = [l.split()[1:] for l in result.output.splitlines() if l[:2] in {"0.", "1."}]
    assert len(grid) == 7 and "OM" in sum(grid, [])
    assert "OG" not in sum(grid, [])  # transient o.o.d. generalization has decayed by the end


def test_phases_command_errors_are_one_clear_line(tmp_path_factory, run_dir):
    missing = CliRunner().invoke(main, ["phases", str(tmp_path_factory.mktemp("not_aggregated"))])
    assert missing.exit_code == 1 and "ray-grok aggregate" in missing.output
    assert "Traceback" not in missing.output
    bad = CliRunner().invoke(main, ["phases", str(run_dir), "--threshold", "2"])
    assert bad.exit_code == 2 and "PhaseRule.threshold" in bad.output


def test_read_results_single_file_and_missing(tmp_path):
    with pytest.raises(MissingResultsError, match="ray-grok aggregate"):
        read_results(tmp_path, "trials")
    (tmp_path / "results").mkdir()
    trials_frame([trial()]).to_parquet(tmp_path / "results" / "trials")
    assert read_results(tmp_path, "trials", columns=["trial_id", "status"]).shape == (1, 2)


def test_time_point_changes_lists_the_cells_another_time_point_moves(run_dir):
    # The synthetic Fig. 1b sweep is transient: at the end its o.o.d. generalization has decayed,
    # so `final` moves exactly the cells that `auto` (= best there) reads as ood generalization.
    trials = read_results(run_dir, "trials")
    auto = phase_table(trials, PhaseRule())
    changes = time_point_changes(trials, PhaseRule())
    og = auto[auto["phase"] == "ood generalization"]
    final = changes[changes["time"] == "final"]
    assert len(final) == len(og) > 0 and set(final["phase"]) == {"ood generalization"}
    assert set(final["other_phase"]) == {"ood memorization"}
    assert changes[changes["time"] == "best"].empty  # the synthetic best_* never mislabels memorizers
    result = CliRunner().invoke(main, ["phases", str(run_dir), "--compare-times"])
    assert result.exit_code == 0, result.output
    assert f"--time final instead of auto: {len(og)} of 49 cells change phase" in result.output
    assert "--time best instead of auto: 0 of 49 cells change phase" in result.output
    assert "model.depth 6, task.n_id 512, task.alpha 0.8: OG -> OM" in result.output


# ---- every non-seed axis keys the cell ----

def two_rule_trials() -> pd.DataFrame:
    """2 seeds x 2 task rules of one depth-6 cell and one other: under the rectangular rule the
    cell (6, 512, 0.6) generalizes o.o.d., under the random rule it only memorizes."""
    rect = trials_frame([trial(n_id=n, seed=s, best="ood generalization") for n in (256, 512) for s in (0, 1)])
    rand = trials_frame([trial(n_id=n, seed=s, best="id memorization") for n in (256, 512) for s in (0, 1)])
    rand = rand.assign(**{"task.rule": "random", "trial_id": "rand_" + rand["trial_id"]})
    return pd.concat([rect, rand], ignore_index=True)


def test_another_axis_keys_the_cell_instead_of_adding_seeds():
    table = phase_table(two_rule_trials())
    assert list(table.columns[:4]) == ["task.rule", "model.depth", "task.n_id", "task.alpha"]
    assert len(table) == 4 and set(table["n_seeds"]) == {2}  # 2 seeds of each rule, never "4 seeds"
    by_rule = table.set_index(["task.rule", "task.n_id"])["phase"]
    assert by_rule[("rectangular", 512)] == "ood generalization"
    assert by_rule[("random", 512)] == "id memorization"
    assert set(table["agreement"]) == {1.0}  # pooled, the two rules would tie 2/4
    for rule, phase in (("random", "id memorization"), ("rectangular", "ood generalization")):
        assert find_cell(table, Cell(6, 512, 0.6, (("task.rule", rule),)))["phase"] == phase


def test_seed_and_runtime_keys_never_key_a_cell():
    trials = fig1b_depth6_trials(seeds=2)
    trials["runtime.threads"] = trials["seed"] + 1  # a runtime setting that differs by trial
    table = phase_table(trials)
    assert list(table.columns[:3]) == ["model.depth", "task.n_id", "task.alpha"] and len(table) == 49


def test_text_output_has_a_block_per_rule_and_depth_with_the_runs_chance():
    text = format_phase_table(phase_table(two_rule_trials()), PhaseRule())
    assert "rule random, depth 6: 2 cells, 0 missing" in text
    assert "rule rectangular, depth 6: 2 cells, 0 missing" in text
    assert "chance (1/p) is 0.034 for p = 29" in text.splitlines()[0]


def test_phases_command_csv_has_the_other_axis_as_a_column(tmp_path):
    (tmp_path / "results").mkdir()
    two_rule_trials().to_parquet(tmp_path / "results" / "trials")
    csv = tmp_path / "phases.csv"
    result = CliRunner().invoke(main, ["phases", str(tmp_path), "--csv", str(csv)])
    assert result.exit_code == 0, result.output
    written = pd.read_csv(csv)
    assert set(written["task.rule"]) == {"random", "rectangular"} and set(written["n_seeds"]) == {2}
    assert written["chance"].round(4).tolist() == [round(1 / 29, 4)] * 4
