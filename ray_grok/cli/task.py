"""`ray-grok task` (hidden): one task of a Ray-in-Slurm job started by slurm/ray-grok.sbatch.

Every srun task runs `python -m ray_grok.cli task --profile ... --grid ...`: the same bootstrap
as the launcher's submitit job (ray_grok.cluster.bootstrap), with the requeue at the time limit
done here instead of by submitit.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click
import yaml

from ..errors import ProfileError


@click.command("task", hidden=True)
@click.option("--profile", "profile_path", required=True, type=click.Path(dir_okay=False),
              help="cluster profile (its ray, storage_root and max_requeues keys are used)")
@click.option("--grid", type=click.Path(dir_okay=False), help="grid file (the sweep driver)")
@click.option("--run-dir", type=click.Path(file_okay=False), help="default: storage_root/<grid name>")
@click.option("--driver", default="sweep", show_default=True, help="sweep, probe or module:function")
@click.option("--arg", "args", multiple=True, metavar="KEY=VALUE", help="keyword argument of the driver")
def task_cmd(profile_path: str, grid: str | None, run_dir: str | None, driver: str, args: tuple[str, ...]) -> None:
    """Run this Slurm task's part: Ray head + driver on task 0, a Ray worker on the others.

    Example: srun python -m ray_grok.cli task --profile cluster/dev-slurm.yaml --grid grids/smoke.yaml
    """
    from ..cluster.bootstrap import Terminated, run_task
    from ..cluster.driver import checkpoint_budget_s, prepare_sweep, resolve_driver
    from ..cluster.profiles import SlurmProfile, load_profile, run_dir_for
    from ..cluster.task_env import TaskEnv
    from ..sweep.grid import load_grid

    profile = load_profile(profile_path)
    if not isinstance(profile, SlurmProfile):
        raise ProfileError(f"{profile_path}: kind must be slurm for a Slurm task, got {profile.kind!r}")
    if run_dir is None:
        if grid is None:
            raise click.UsageError("give --run-dir or --grid")
        run_dir = str(run_dir_for(profile, load_grid(grid).name))
    fn = resolve_driver(driver, {k: yaml.safe_load(v) for k, _, v in (a.partition("=") for a in args)})
    if driver == "sweep":
        if grid is None:
            raise click.UsageError("the sweep driver needs --grid")
        if TaskEnv.current().rank == 0:  # before anything of the job is written into RUN_DIR
            prepare_sweep(grid, run_dir)
    try:
        result = run_task(fn, run_dir=Path(run_dir), ray=profile.ray, requeue_max=profile.max_requeues,
                          checkpoint_s=checkpoint_budget_s(profile))
    except Terminated as exc:  # scancel, requeue: Ray is stopped already; no traceback
        click.echo(f"ray-grok task stopped: {exc}", err=True)
        sys.exit(143)
    if result is not None:
        click.echo(json.dumps(result, default=str))
