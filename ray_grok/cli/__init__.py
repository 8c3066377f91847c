"""The `ray-grok` command: a thin shell over the library, one file per command group.

Each command parses its options and calls one library function. Errors the user can fix are
RayGrokErrors (ray_grok.errors); the group turns them into one clear line here, at the edge, so no
command catches them itself. Any other exception is a bug and keeps its traceback.
"""
from __future__ import annotations

import logging

import click

from ..errors import RayGrokError
from .results import phases_cmd, plot_cmd
from .sweep import aggregate_cmd, launch_cmd, status_cmd
from .task import task_cmd
from .trial import config_cmd, train


class _Main(click.Group):
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


for _command in (train, config_cmd, launch_cmd, status_cmd, aggregate_cmd, phases_cmd, plot_cmd, task_cmd):
    main.add_command(_command)
