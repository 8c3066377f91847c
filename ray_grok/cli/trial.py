"""`ray-grok train` and `ray-grok config`: one trial, and the keys of its config."""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from ..trial.config import describe_keys, load_config


@click.command()
@click.option("--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="trial directory (created; an unfinished trial there is resumed)")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="YAML file of config keys (see `ray-grok config`)")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="override one config key, e.g. --set task.alpha=0.7 (repeatable)")
@click.option("--no-tensorboard", is_flag=True, help="do not write TensorBoard event files")
def train(out: Path, config_file: Path | None, overrides: tuple[str, ...], no_tensorboard: bool) -> None:
    """Train one trial into OUT, printing progress; run it again to resume.

    On an existing OUT, --config and --set apply on top of its stored config: runtime keys
    (device, threads, ...) may change on resume, experiment keys may not.

    Example: ray-grok train --out runs/d2 --set model.depth=2 --set train.steps=20000
    """
    from ..trial.trialdir import read_status, stored_config

    stored = stored_config(out)
    cfg = load_config(config_file, overrides, base=stored.to_dict() if stored else None)
    try:
        from ..trial.run import run_trial  # torch (a second or more): only once the config is known to be good

        run_trial(cfg, out, echo=click.echo, tensorboard=not no_tensorboard)
    except KeyboardInterrupt:
        click.echo(interrupted_message(out, read_status(out) or {}), err=True)
        sys.exit(130)  # the shell's code for a SIGINT


def interrupted_message(out: Path, status: dict) -> str:
    """What Ctrl-C left (status.json says interrupted) and the command that resumes it."""
    resume = int(status.get("resume_step", 0))
    where = (f"continues from its last checkpoint, step {resume:,}" if resume
             else "starts over (no checkpoint was saved yet)")
    return (f"interrupted at step {int(status.get('step', 0)):,} of {int(status.get('steps', 0)):,}; "
            f"{out}/status.json says interrupted. The same command {where}: "
            f"ray-grok train --out {shlex.quote(str(out))}")


@click.command("config")
@click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
              help="show this file's resolved config instead of the defaults")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="override one key (repeatable)")
def config_cmd(config_file: Path | None, overrides: tuple[str, ...]) -> None:
    """List every config key with its value (default: the paper's) and meaning.

    Example: ray-grok config --set model.depth=2
    """
    flat = load_config(config_file, overrides).flat()
    width = max(len(k) for k, _, _ in describe_keys())
    for key, _, help_text in describe_keys():
        click.echo(f"{key:<{width}}  {flat[key]!s:<18}  {help_text}")
