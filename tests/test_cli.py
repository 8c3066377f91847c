from pathlib import Path

import pytest
from click.testing import CliRunner

from ray_grok.cli import main
from ray_grok.trial.config import VALID_KEYS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", main.list_commands(None))
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output


def test_every_command_is_listed():
    assert main.list_commands(None) == sorted(["train", "config", "launch", "status", "aggregate", "phases", "plot",
                                               "task", "refine"])


def test_config_lists_every_key_with_default_and_meaning():
    result = CliRunner().invoke(main, ["config", "--set", "model.depth=2"])
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.output.splitlines()}
    assert set(lines) == set(VALID_KEYS)
    assert lines["model.depth"].split()[1] == "2"
    assert lines["task.p"].split()[1] == "29" and "prime" in lines["task.p"]


def test_train_rejects_bad_config_before_any_work(tmp_path):
    out = tmp_path / "trial"
    result = CliRunner().invoke(main, ["train", "--out", str(out), "--set", "task.alpha=1.5"])
    assert result.exit_code != 0
    assert "task.alpha must be in (0, 1), got 1.5" in result.output
    assert not out.exists()


def test_train_rejects_unknown_key(tmp_path):
    result = CliRunner().invoke(main, ["train", "--out", str(tmp_path), "--set", "model.layers=4"])
    assert result.exit_code != 0 and "unknown config key model.layers" in result.output


def test_a_grid_file_given_as_a_trial_config_is_named_as_one():
    result = CliRunner().invoke(main, ["config", "--config", str(ROOT / "grids" / "smoke.yaml")])
    assert result.exit_code == 1 and "unknown config key" not in result.output
    assert "smoke.yaml is a grid file (keys base, axes, seeds, resources, run), not a trial config" in result.output
    assert "ray-grok launch" in result.output and "base:" in result.output


@pytest.mark.parametrize("args, hint", [
    (["config", "--set", "task.nid=3"], "unknown config key task.nid (did you mean task.n_id?); valid keys: seed,"),
    (["config", "--set", "lr=3"], "unknown config key lr (did you mean train.lr?)"),
    (["config", "--set", "model.layers=3"], "unknown config key model.layers; valid keys"),  # nothing close
])
def test_a_typo_of_a_key_suggests_the_closest_valid_one(args, hint):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and hint in result.output, result.output


def test_a_grid_typo_suggests_the_key_and_a_trial_section_goes_under_base(tmp_path):
    for text, hint in (("axis: {model.depth: [1]}\n", "unknown key 'axis' (did you mean axes?)"),
                       ("base: {task: {alph: 0.5}}\n", "unknown config key base.task.alph (did you mean task.alpha?)"),
                       ("model: {depth: 2}\n", "unknown key 'model' (trial settings such as model: go under base:)")):
        (tmp_path / "g.yaml").write_text(text)
        result = CliRunner().invoke(main, ["launch", str(tmp_path / "g.yaml"), "--dry-run"])
        assert result.exit_code == 1 and hint in result.output, result.output


def test_docs_document_every_config_key():
    doc = (ROOT / "docs" / "trial.md").read_text()
    missing = [k for k in VALID_KEYS if f"`{k}`" not in doc]
    assert not missing, f"docs/trial.md lacks config keys {missing}; regenerate its table from describe_keys()"


def test_the_readme_install_and_test_commands_are_what_ci_runs():
    """The README's first commands are the ones .ci/run executes, so the one a new user copies is tested."""
    readme, ci = (ROOT / "README.md").read_text(), (ROOT / ".ci" / "run").read_text()
    assert "pip install torch==2.13.0 && pip install -e . && ray-grok launch grids/smoke.yaml" in readme
    assert 'pip install torch==2.13.0 && pip install -e ".[test]" && pytest' in readme
    assert "pip install -q torch==2.13.0" in ci and 'pip install -q -e ".[test]"' in ci and "pytest" in ci
    # the CPU build, for a machine without a GPU, from torch's own index
    assert "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu" in readme
    assert 'pytest -m "not slow"' in readme


@pytest.mark.slow
def test_rerun_applies_overrides_on_the_stored_config(tmp_path):
    from conftest import tiny_overrides

    out = str(tmp_path / "trial")
    args = ["train", "--out", out, "--no-tensorboard"]
    for o in tiny_overrides("train.steps=20", "eval.every=10"):
        args += ["--set", o]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output
    assert "step 20/20" in first.output and "ETA" in first.output
    # no overrides: the stored config; a runtime key may change; an experiment key may not
    assert "already finished" in CliRunner().invoke(main, ["train", "--out", out]).output
    again = CliRunner().invoke(main, ["train", "--out", out, "--set", "runtime.threads=2"])
    assert again.exit_code == 0 and "already finished" in again.output
    changed = CliRunner().invoke(main, ["train", "--out", out, "--set", "train.lr=0.5"])
    assert changed.exit_code != 0 and "different config (train.lr: 0.01 -> 0.5)" in changed.output
