"""The `ray-grok` command: a thin shell over the library, one file per command group.

Each command parses its options and calls one library function. Errors the user can fix are
RayGrokErrors (ray_grok.errors); the group turns them into one clear line here, at the edge, so no
command catches them itself. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import importlib
import logging

import click

from ..errors import RayGrokError
from .sweep import aggregate_cmd, launch_cmd, status_cmd
from .task import task_cmd
from .trial import config_cmd, train

# Commands whose module imports pandas (half a second or more): loaded when they are run, so that
# every other command, and every refusal of bad input, starts without it
LAZY = {"phases": "results:phases_cmd", "plot": "results:plot_cmd", "refine": "refine:refine_cmd"}


class _Main(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *LAZY])

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name in LAZY:
            module, _, attr = LAZY[name].partition(":")
            return getattr(importlib.import_module(f".{module}", __name__), attr)
        return super().get_command(ctx, name)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except RayGrokError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_Main)
@click.version_option(package_name="ray-grok")
def main() -> None:
    """ray-grok: run He et al. 2024's modular-arithmetic phase diagrams as sweeps.

    Example: ray-grok train --out runs/one --set model.depth=2 --set task.n_id=256
    """
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


for _command in (train, config_cmd, launch_cmd, status_cmd, aggregate_cmd, task_cmd):
    main.add_command(_command)
