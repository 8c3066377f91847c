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
                                               "task"])


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


def test_readme_documents_every_config_key():
    readme = (ROOT / "README.md").read_text()
    missing = [k for k in VALID_KEYS if f"`{k}`" not in readme]
    assert not missing, f"README.md lacks config keys {missing}; regenerate its table from describe_keys()"


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
