"""Grid files: validation (a table of invalid grids), expansion, trial ids and directories, dry run.

Fast: nothing here starts Ray or trains.
"""
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ray_grok.cli import main
from ray_grok.errors import ConfigError, GridError
from ray_grok.sweep.grid import expand, grid_from_dict, load_grid
from ray_grok.trial.config import config_from_dict

ROOT = Path(__file__).resolve().parents[1]
GRIDS = ROOT / "grids"

VALID = {
    "name": "t",
    "base": {"task": {"p": 11, "n_ood": 16, "n_examples": 8}, "model": {"width": 32, "heads": 2},
             "train": {"steps": 20, "batch_size": 32}, "runtime": {"device": "cpu"}},
    "axes": {"model.depth": [1, 2], "task.n_id": {"pow2": {"from": 8, "to": 16}},
             "task.alpha": {"range": {"from": 0.4, "to": 0.6, "step": 0.1}}},
    "seeds": 2,
    "resources": {"cpu": 1},
    "run": {"max_concurrent": 2, "max_failures": 1},
}


def with_(path: str, value, base=VALID) -> dict:
    """VALID with the dotted PATH set to VALUE (None deletes it)."""
    data = yaml.safe_load(yaml.safe_dump(base, sort_keys=False))
    node = data
    *parents, last = path.split("/")
    for p in parents:
        node = node.setdefault(p, {})
    if value is None:
        node.pop(last, None)
    else:
        node[last] = value
    return data


# ---------------------------------------------------------------------------------------------
# The grids shipped in grids/
# ---------------------------------------------------------------------------------------------

def test_full_grid_is_the_papers_1470_trials():
    spec = load_grid(GRIDS / "full.yaml")
    trials = expand(spec)
    assert len(trials) == 1470
    assert {t.config.model.depth for t in trials} == {2, 4, 6}
    assert sorted({t.config.task.n_id for t in trials}) == [8, 16, 32, 64, 128, 256, 512]
    assert sorted({t.config.task.alpha for t in trials}) == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]
    assert {t.config.seed for t in trials} == set(range(10))
    paper = config_from_dict({}).to_dict()  # every default is the paper's value
    for t in trials[:50]:
        d = t.config.to_dict()
        d["model"]["depth"], d["task"]["n_id"], d["task"]["alpha"], d["seed"] = 6, 512, 0.6, 0
        assert d == paper
    assert spec.resources.gpu == 1


def test_full_grid_opens_with_what_it_reproduces_and_costs():
    head = (GRIDS / "full.yaml").read_text().split("\nname:")[0]
    assert "1,470 trials" in head and "GPU-hours" in head and "ray-grok launch grids/full.yaml" in head


def test_random_tasks_grid_uses_the_random_rule_and_its_lr():
    trials = expand(load_grid(GRIDS / "random-tasks.yaml"))
    assert len(trials) == 1470
    assert {t.config.task.rule for t in trials} == {"random"}
    assert {t.config.train.lr for t in trials} == {1e-4}


def test_smoke_grid_sweeps_every_axis_on_cpu():
    spec = load_grid(GRIDS / "smoke.yaml")
    trials = expand(spec)
    swept = {a.key for a in spec.axes}
    assert {"model.depth", "task.n_id", "task.alpha"} <= swept and len(spec.seeds) >= 2
    assert len(swept) >= 4  # and one more key (the task rule)
    assert spec.resources.gpu == 0 and all(t.config.runtime.device == "cpu" for t in trials)
    assert len(trials) <= 64 and all(t.config.train.steps <= 1000 for t in trials)


def test_dry_run_reports_1470_trials_and_starts_nothing(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["launch", str(GRIDS / "full.yaml"), "--out", str(out), "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "1,470 trials" in result.output
    assert "2 CPU, 1 GPU" in result.output
    assert "GPU-hours" in result.output and "assumes" in result.output
    assert not out.exists()


def test_dry_run_cost_scales_with_the_given_throughput(tmp_path):
    def hours(*extra: str) -> float:
        result = CliRunner().invoke(main, ["launch", str(GRIDS / "full.yaml"), "--dry-run", *extra])
        assert result.exit_code == 0, result.output
        line = next(ln for ln in result.output.splitlines() if "GPU-hours" in ln)
        return float(line.split("about ")[1].split(" GPU-hours")[0].replace(",", ""))

    assert hours("--gpu-tflops", "200") == pytest.approx(hours() / 2, rel=0.01)


# ---------------------------------------------------------------------------------------------
# Expansion, ids and directories
# ---------------------------------------------------------------------------------------------

def test_expansion_counts_and_seed_outermost_order():
    trials = expand(grid_from_dict(VALID))
    assert len(trials) == 2 * 2 * 3 * 2
    seeds = [t.config.seed for t in trials]
    assert seeds == sorted(seeds)  # all of seed 0 first: a partial sweep covers every cell
    assert [t.config.model.depth for t in trials[:12]] == [1] * 6 + [2] * 6


def test_ranges_and_powers_of_two_give_exact_values():
    spec = grid_from_dict(with_("axes/task.alpha", {"range": {"from": 0.2, "to": 0.8, "step": 0.1}}))
    alphas = next(a.values for a in spec.axes if a.key == "task.alpha")
    assert alphas == (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
    spec = grid_from_dict(with_("axes/model.depth", {"range": {"from": 2, "to": 6, "step": 2}}))
    assert next(a.values for a in spec.axes if a.key == "model.depth") == (2, 4, 6)
    spec = grid_from_dict(with_("axes/task.n_id", {"pow2": {"from": 4, "to": 32}}))
    assert next(a.values for a in spec.axes if a.key == "task.n_id") == (4, 8, 16, 32)


def test_trial_ids_are_readable_stable_and_derived_from_the_config():
    trials = expand(grid_from_dict(VALID))
    again = expand(grid_from_dict(VALID))
    assert [t.trial_id for t in trials] == [t.trial_id for t in again]
    first = trials[0]
    assert first.trial_id == f"d1-n8-a0.4-s0-{first.config.config_hash()[:8]}"
    assert first.dir == "trials/depth=1/n_id=8/alpha=0.4/seed=0"
    assert first.coords == {"model.depth": 1, "task.n_id": 8, "task.alpha": 0.4, "seed": 0}
    assert len({t.trial_id for t in trials}) == len(trials) == len({t.dir for t in trials})
    # another base value is another experiment: another id; a runtime setting is not
    other = expand(grid_from_dict(with_("base/train/lr", 1e-3)))[0]
    assert other.trial_id != first.trial_id and other.trial_id.startswith("d1-n8-a0.4-s0-")
    same = expand(grid_from_dict(with_("base/runtime/log_every", 7)))[0]
    assert same.trial_id == first.trial_id


def test_other_keys_name_ids_and_dirs_by_their_last_component():
    data = with_("axes/task.rule", ["rectangular", "random"])
    data = with_("axes/train.lr", [1e-3, 1e-4], data)
    t = expand(grid_from_dict(data))[0]
    assert t.trial_id.startswith("d1-n8-a0.4-rectangular-lr0.001-s0-")
    assert t.dir == "trials/depth=1/n_id=8/alpha=0.4/rule=rectangular/lr=0.001/seed=0"


def test_seed_may_be_an_axis_or_a_list():
    data = with_("seeds", None)
    data = with_("axes/seed", [3, 5], data)
    trials = expand(grid_from_dict(data))
    assert {t.config.seed for t in trials} == {3, 5}
    assert {t.config.seed for t in expand(grid_from_dict(with_("seeds", [7, 9])))} == {7, 9}


# ---------------------------------------------------------------------------------------------
# Invalid grids: each rejected at load, the message naming the file and the key
# ---------------------------------------------------------------------------------------------

INVALID = [
    ("unknown top-level key", with_("axis", {"model.depth": [2]}), ["unknown key 'axis'", "axes"]),
    ("unknown axis key", with_("axes/model.layers", [2]), ["axes.model.layers", "model.depth"]),
    ("unknown base key", with_("base/model/layers", 2), ["base.model.layers"]),
    ("axis not a list", with_("axes/model.depth", 2), ["axes.model.depth", "a list of values"]),
    ("range lacks step", with_("axes/task.alpha", {"range": {"from": 0.2, "to": 0.8}}),
     ["axes.task.alpha.range", "step"]),
    ("range not whole steps", with_("axes/task.alpha", {"range": {"from": 0.2, "to": 0.75, "step": 0.1}}),
     ["axes.task.alpha.range", "whole number of steps"]),
    ("pow2 end not a power", with_("axes/task.n_id", {"pow2": {"from": 8, "to": 100}}),
     ["axes.task.n_id.pow2.to"]),
    ("empty axis", with_("axes/model.depth", []), ["axes.model.depth has no values"]),
    ("repeated value", with_("axes/model.depth", [2, 2]), ["axes.model.depth", "twice"]),
    ("wrong value type", with_("axes/model.depth", ["two"]), ["model.depth must be an integer, got 'two'"]),
    ("trial rule: rectangles", with_("axes/task.n_id", [6, 8]), ["trial depth=1 n_id=6", "task.n_id must be a multiple of 4"]),
    ("trial rule: alpha", with_("axes/task.alpha", [0.5, 1.5]), ["task.alpha must be in (0, 1), got 1.5"]),
    ("trial rule: batch", with_("base/train/batch_size", 20), ["train.batch_size", "20"]),
    ("base and axes", with_("base/model/depth", 2), ["model.depth is both in base"]),
    ("no seeds", with_("seeds", 0), ["seeds must be a count from 1", "got 0"]),
    ("seeds and seed axis", with_("axes/seed", [0, 1]), ["seed is an axis and seeds is set"]),
    ("unknown resource", with_("resources/gpus", 1), ["resources.gpus", "gpu (default"]),
    ("fractional GPUs above one", with_("resources/gpu", 1.5), ["resources.gpu", "1.5"]),
    ("no CPU", with_("resources/cpu", 0), ["resources.cpu must be > 0"]),
    ("negative retries", with_("run/max_failures", -1), ["run.max_failures must be >= 0, got -1"]),
    ("concurrency not an int", with_("run/max_concurrent", "two"), ["run.max_concurrent must be an integer"]),
    ("unknown run key", with_("run/retries", 3), ["run.retries", "max_failures"]),
    ("cuda without a GPU", with_("base/runtime/device", "cuda"), ["runtime.device", "resources.gpu is 0"]),
    ("name with a slash", with_("name", "a/b"), ["name must be"]),
]


@pytest.mark.parametrize("why,data,expected", INVALID, ids=[c[0] for c in INVALID])
def test_invalid_grid_is_rejected_naming_the_file_and_key(tmp_path, why, data, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    with pytest.raises(GridError) as err:
        load_grid(path)
    message = str(err.value)
    assert message.startswith(f"{path}: "), message
    for part in expected:
        assert part in message, f"{why}: {part!r} not in {message!r}"
    assert isinstance(err.value, ConfigError)


def test_not_a_mapping_and_not_yaml(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(GridError, match="a grid must be a mapping"):
        load_grid(path)
    path.write_text("axes: [unclosed\n")
    with pytest.raises(GridError, match="not valid YAML"):
        load_grid(path)


def test_launch_refuses_an_invalid_grid_before_starting_anything(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(with_("axes/task.alpha", [0.5, 1.5]), sort_keys=False))
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["launch", str(path), "--out", str(out)])
    assert result.exit_code != 0
    assert "task.alpha must be in (0, 1), got 1.5" in result.output and str(path) in result.output
    assert not out.exists()
