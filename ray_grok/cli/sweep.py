"""`ray-grok launch`, `status` and `aggregate`: thin commands over ray_grok.sweep and ray_grok.results.

Ray is imported only by `launch` (and not for --dry-run), so `status` and `aggregate` are quick
and work without it.
"""
from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click


@click.command("launch")
@click.argument("grid", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="run directory (default: runs/<grid name>, or the profile's storage_root/<grid name>); "
                   "an existing one is continued")
@click.option("--resume", is_flag=True,
              help="continue the sweep in --out (GRID may be left out: the stored copy is used)")
@click.option("--cluster", "cluster_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="cluster profile (default: cluster/local.yaml's settings, a Ray on this machine); a "
                   "kind: slurm profile submits the sweep as one Slurm job")
@click.option("--wait", is_flag=True, help="with a Slurm profile: block and show progress until the job ends")
@click.option("--dry-run", is_flag=True,
              help="print the trials, their resources and a cost estimate (and the sbatch script for a "
                   "Slurm profile); start nothing")
@click.option("--gpu-tflops", type=float, default=None, metavar="TFLOPS",
              help="achieved model TFLOP/s per GPU for the --dry-run estimate (default: 100, see cost.py)")
def launch_cmd(grid: Path | None, out: Path | None, resume: bool, cluster_path: Path | None, wait: bool,
               dry_run: bool, gpu_tflops: float | None) -> None:
    """Run every trial of GRID on Ray Tune: on a local Ray (or RAY_ADDRESS's), or, with a Slurm
    --cluster profile, in one Slurm job that starts a Ray cluster across its nodes.

    Running it again on the same run directory resumes: finished trials are kept, unfinished ones
    continue from their checkpoints, errored ones are retried. A changed grid extends the sweep:
    trials still in it are kept, new ones run, the others are retired (kept, not run, left out of
    phases); a changed base is refused (docs/sweeps.md).

    \b
    Example: ray-grok launch grids/smoke.yaml --out runs/smoke
    Example: ray-grok launch grids/full.yaml --cluster cluster/mycluster.yaml --dry-run
    """
    from ..cluster.profiles import LocalProfile, load_profile, plan_for
    from ..sweep.cost import dry_run_text

    profile = load_profile(cluster_path) if cluster_path is not None else LocalProfile()
    if isinstance(profile, LocalProfile) and wait:
        raise click.UsageError("--wait is for a Slurm --cluster profile (a local launch always waits)")
    plan = plan_for(profile, grid, out, resume)
    if not isinstance(profile, LocalProfile):
        _launch_on_slurm(profile, plan, wait, dry_run, gpu_tflops)
        return
    if dry_run:
        click.echo(dry_run_text(plan, gpu_tflops))
        return
    from ..sweep.launch import launch  # imports Ray

    outcome = launch(plan, echo=click.echo)
    run_dir = shlex.quote(str(outcome.run_dir))
    if outcome.unfinished:
        raise click.ClickException(f"interrupted with {outcome.unfinished} trials unfinished: the same command "
                                   f"resumes the sweep, or `ray-grok launch --resume --out {run_dir}`")
    if outcome.errored:
        raise click.ClickException(f"{outcome.errored} trials errored; see `ray-grok status {run_dir}`")
    click.echo(f"the phase diagrams: ray-grok phases {run_dir}; ray-grok plot {run_dir}")


def _launch_on_slurm(profile, plan, wait: bool, dry_run: bool, gpu_tflops: float | None) -> None:
    from ..sweep.cost import dry_run_text
    from ..cluster.slurm import follow, launch_sweep, render_sbatch

    if dry_run:
        click.echo(dry_run_text(plan, gpu_tflops))
        click.echo(f"\nwould submit one Slurm job ({profile.source}), run directory {plan.run_dir}:\n")
        click.echo(render_sbatch(profile, plan.run_dir, python=profile.python or shlex.quote(sys.executable)))
        return
    launched = launch_sweep(profile, plan)
    run_dir = launched.run_dir
    click.echo(f"submitted Slurm job {launched.job.job_id}: {len(plan.trials)} trials of {plan.spec.name} "
               f"on {profile.nodes} node(s) x {profile.tasks_per_node} task(s)\n"
               f"  run directory  {run_dir}\n"
               f"  job logs       {launched.logs} (per task: {launched.job.job_id}_RANK_log.out/.err)\n"
               f"  progress       ray-grok status {run_dir}\n"
               f"  curves         tensorboard --logdir {run_dir}\n"
               f"  cancel         scancel {launched.job.job_id} (then the same launch command resumes)")
    if not wait:
        return
    try:
        result = follow(launched, echo=click.echo, every_s=15.0)
    except KeyboardInterrupt:
        click.echo(f"stopped waiting; job {launched.job.job_id} keeps running")
        return
    except Exception as exc:  # the job failed: submitit raises with the task's traceback
        raise click.ClickException(f"job {launched.job.job_id} failed: {exc}\nlogs: {launched.logs}") from exc
    click.echo(f"job {launched.job.job_id} ended: {result}")
    if not result.get("complete"):
        raise click.ClickException(f"the sweep is not complete; see `ray-grok status {run_dir}`")


@click.command("status")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def status_cmd(run_dir: Path) -> None:
    """Counts by state, progress, ETA and the errored trials of a sweep, from its files alone.

    Example: ray-grok status runs/smoke
    """
    from ..sweep.status import format_status, sweep_status

    click.echo(format_status(sweep_status(run_dir)))


@click.command("aggregate")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
def aggregate_cmd(run_dir: Path) -> None:
    """Gather the trial directories into RUN_DIR/results/{trials,curves} (Parquet); safe mid-sweep.

    Example: ray-grok aggregate runs/smoke
    """
    from ..results.aggregate import aggregate

    s = aggregate(run_dir)
    states = ", ".join(f"{v} {k}" for k, v in sorted(s.by_status.items()))
    click.echo(f"{s.trials} trials ({states}), {s.curve_rows} curve rows -> {s.path}/trials, {s.path}/curves")
