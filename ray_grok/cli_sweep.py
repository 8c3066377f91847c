"""`ray-grok launch`, `status` and `aggregate`: thin commands over sweep, status and aggregate.

Registered on the main group by ray_grok.cli (main.add_command). Ray is imported only by
`launch` (and not for --dry-run), so `status` and `aggregate` are quick and work without it.
"""
from __future__ import annotations

from pathlib import Path

import click

from .config import ConfigError


def _domain_errors() -> tuple[type[Exception], ...]:
    from .data import TaskDrawError
    from .trial import TrialError

    return (ConfigError, TaskDrawError, TrialError)


@click.command("launch")
@click.argument("grid", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="run directory (default: runs/<grid name>); an existing one is continued")
@click.option("--resume", is_flag=True,
              help="continue the sweep in --out (GRID may be left out: the stored copy is used)")
@click.option("--dry-run", is_flag=True,
              help="print the trials, their resources and a cost estimate; start nothing")
@click.option("--gpu-tflops", type=float, default=None, metavar="TFLOPS",
              help="achieved model TFLOP/s per GPU for the --dry-run estimate (default: 100, see cost.py)")
def launch_cmd(grid: Path | None, out: Path | None, resume: bool, dry_run: bool, gpu_tflops: float | None) -> None:
    """Run every trial of GRID on Ray Tune (a local Ray unless RAY_ADDRESS is set).

    Running it again on the same run directory resumes: finished trials are kept, unfinished ones
    continue from their checkpoints, errored ones are retried. A changed grid is refused.

    Example: ray-grok launch grids/smoke.yaml --out runs/smoke
    """
    from .cost import dry_run_text
    from .rundir import resolve

    try:
        plan = resolve(grid, out, resume)
        if dry_run:
            click.echo(dry_run_text(plan, gpu_tflops))
            return
        from .sweep import launch  # imports Ray

        outcome = launch(plan, echo=click.echo)
    except _domain_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    if outcome.unfinished:
        raise click.ClickException(f"interrupted with {outcome.unfinished} trials unfinished: run the same "
                                   "command to resume")
    if outcome.errored:
        raise click.ClickException(f"{outcome.errored} trials errored; see `ray-grok status {outcome.run_dir}`")


@click.command("status")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def status_cmd(run_dir: Path) -> None:
    """Counts by state, progress, ETA and the errored trials of a sweep, from its files alone.

    Example: ray-grok status runs/smoke
    """
    from .status import format_status, sweep_status

    try:
        click.echo(format_status(sweep_status(run_dir)))
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc


@click.command("aggregate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def aggregate_cmd(run_dir: Path) -> None:
    """Gather the trial directories into RUN_DIR/results/{trials,curves} (Parquet); safe mid-sweep.

    Example: ray-grok aggregate runs/smoke
    """
    from .aggregate import aggregate

    try:
        s = aggregate(run_dir)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from exc
    states = ", ".join(f"{v} {k}" for k, v in sorted(s.by_status.items()))
    click.echo(f"{s.trials} trials ({states}), {s.curve_rows} curve rows -> {s.path}/trials, {s.path}/curves")
