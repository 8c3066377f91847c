from pathlib import Path

import pytest
from click.testing import CliRunner

from ray_grok.cli import main
from ray_grok.config import VALID_KEYS

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("command", sorted(main.commands))
def test_every_command_has_help_with_an_example(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example:" in result.output


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
