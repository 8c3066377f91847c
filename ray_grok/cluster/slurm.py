"""Submitting a sweep as one Slurm job through submitit, and the sbatch text it produces.

    job = submit(profile, run_dir, functools.partial(sweep_driver, grid="grids/full.yaml"))

The job has `nodes x tasks_per_node` tasks; each runs `RayClusterJob()`, i.e. `bootstrap.run_task`:
task 0 starts the Ray head and calls the driver, the others join as Ray workers.

Time limits: Slurm sends USR2 `signal_delay_s` before the limit (to the tasks, which submitit
runs under srun). submitit's handler on task 0 calls `RayClusterJob.checkpoint()`, which stops the
driver gracefully (SIGINT: Tune ends its trials and saves its state) and returns the same call;
submitit dumps it, runs `scontrol requeue` (at most `max_requeues` times) and exits, which stops
task 0's Ray node; Slurm stops the other tasks (SIGTERM: they stop their Ray nodes); when the job
starts again the driver resumes the sweep from the run directory.
submitit's files and logs go to RUN_DIR/slurm/JOB/, next to the Ray rendezvous directories.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import submitit
from submitit.helpers import Checkpointable, DelayedSubmission

from .. import compat
from ..errors import ProfileError, RunDirError, SubmitError
from ..io import private_dir
from ..sweep.rundir import SLURM_DIR, SLURM_JOBS_FILE, Launch, prepare, run_lock, slurm_jobs
from ..sweep.status import sweep_status
from .bootstrap import run_task
from .driver import Driver, DriverProcess, checkpoint_budget_s, sweep_driver
from .profiles import RaySettings, SlurmProfile
from .task_env import job_dir

SUBMITIT_FOLDER = f"{SLURM_DIR}/%j"  # under RUN_DIR; submitit puts one job's files in it


class RayClusterJob(Checkpointable):
    """What every task of the job runs (submitit pickles it). Checkpointable: at the time limit
    the job requeues itself with this same object; all state lives in the run directory."""

    def __init__(self, run_dir: str | Path, ray: RaySettings, driver: Driver, checkpoint_s: float = 60.0):
        self.run_dir = str(run_dir)
        self.ray = ray
        self.driver = driver
        self.checkpoint_s = checkpoint_s  # how long the driver gets to stop at the time limit

    def __getstate__(self) -> dict:
        # the driver child is this process's; 0.1.0 pickled the same four fields (compat.LEGACY)
        return {k: v for k, v in self.__dict__.items() if k != "child"}

    def __call__(self) -> Any:
        self.child = DriverProcess()
        return run_task(self.driver, run_dir=Path(self.run_dir), ray=self.ray, child=self.child)

    def checkpoint(self, *args: Any, **kwargs: Any) -> DelayedSubmission:
        """Called by submitit on task 0 when USR2 (the time-limit warning) arrives. The driver gets
        SIGINT and up to checkpoint_s to stop (Tune ends its trials, which keep their last
        checkpoints, and saves its experiment state); then the same call is requeued and, when the
        job starts again, the driver resumes the sweep from the run directory."""
        print(f"[ray-grok] time limit near: stopping the driver (up to {self.checkpoint_s:.0f} s), then "
              "requeueing; the sweep resumes from the run directory", flush=True)
        child = getattr(self, "child", None)  # None on the tasks that run no driver
        stopped = child.interrupt(self.checkpoint_s) if child is not None else True
        print(f"[ray-grok] driver {'stopped' if stopped else 'still running (it will be killed)'}", flush=True)
        return DelayedSubmission(self, *args, **kwargs)


def slurm_parameters(profile: SlurmProfile, run_dir: Path) -> dict[str, Any]:
    """SlurmExecutor.update_parameters(...) for this profile: what ends up in the sbatch text."""
    params: dict[str, Any] = {
        "job_name": profile.job_name,
        "nodes": profile.nodes,
        "ntasks_per_node": profile.tasks_per_node,
        "cpus_per_task": profile.cpus_per_task,
        "time": profile.time_min,
        "signal_delay_s": profile.signal_delay_s,
        "setup": list(profile.setup) or None,
        # since Slurm 22.05 srun no longer inherits --cpus-per-task from sbatch
        "srun_args": [f"--cpus-per-task={profile.cpus_per_task}"],
        # requeue explicitly: clusters with JobRequeue=0 refuse `scontrol requeue` otherwise
        "additional_parameters": {**dict(profile.sbatch_extra), "requeue": True},
    }
    for key in ("partition", "account", "qos", "mem"):
        if getattr(profile, key) is not None:
            params[key] = getattr(profile, key)
    if profile.gpus_per_node:
        params["gpus_per_node"] = profile.gpus_per_node
    return params


def submitit_folder(run_dir: Path) -> Path:
    return Path(run_dir) / SUBMITIT_FOLDER


def render_sbatch(profile: SlurmProfile, run_dir: Path, python: str = "python3") -> str:
    """The sbatch script `submit` hands to Slurm for this profile (submitit writes the same text)."""
    folder = submitit_folder(run_dir)
    command = " ".join([python, "-u -m", compat.SUBMIT_MODULE, shlex.quote(str(folder))])
    return compat.make_sbatch_string(command, folder, **slurm_parameters(profile, run_dir))


def executor(profile: SlurmProfile, run_dir: Path) -> submitit.SlurmExecutor:
    if shutil.which("sbatch") is None or shutil.which("srun") is None:
        raise ProfileError(f"{profile.source}: kind slurm needs sbatch and srun on PATH (run on a login node; "
                           "to try it on one machine: cluster/dev/slurm-up.sh)")
    compat.require("submitit")  # its job runs submitit.core._submit on every task
    ex = submitit.SlurmExecutor(folder=submitit_folder(run_dir), max_num_timeout=profile.max_requeues,
                                python=profile.python)
    ex.update_parameters(**slurm_parameters(profile, run_dir))
    return ex


def submit(profile: SlurmProfile, run_dir: Path, driver: Driver) -> submitit.Job:
    """Submit the job: returns submitit's Job (job.job_id, job.state, job.result(), job.cancel()).
    `driver` runs on task 0 against the job's Ray cluster; it must be picklable (a module-level
    function, or functools.partial of one)."""
    run_dir = Path(run_dir).resolve()
    # submitit pickles the job (and every task loads it) under RUN_DIR/slurm: private, like RUN_DIR
    private_dir(run_dir, "run directory")
    private_dir(run_dir / SLURM_DIR, "Slurm directory")
    job = RayClusterJob(run_dir, profile.ray, driver, checkpoint_s=checkpoint_budget_s(profile))
    submitted = executor(profile, run_dir).submit(job)
    private_dir(job_dir(run_dir, submitted.job_id), "job directory")
    return submitted


def job_logs(run_dir: Path, job: submitit.Job) -> Path:
    """Where one job's stdout/stderr (submitit's, per task) and Ray logs are."""
    return job_dir(Path(run_dir), job.job_id)


def driver_result(job: submitit.Job) -> Any:
    """What the driver returned on task 0 (blocks until the job ends; raises if a task failed)."""
    return job.results()[0]


# ---------------------------------------------------------------------------------------------
# `ray-grok launch GRID --cluster PROFILE` for a Slurm profile
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmLaunch:
    job: submitit.Job
    run_dir: Path
    logs: Path


SQUEUE_GONE = "Invalid job id specified"  # squeue's answer for a job Slurm no longer knows: it ended


def in_queue(job_id: str, run_dir: Path) -> bool:
    """Whether Slurm still has job JOB_ID queued or running. A squeue that cannot answer (no
    controller, not installed, timed out) is not "no job": that refuses, saying why."""
    def cannot(why: str) -> RunDirError:
        return RunDirError(f"cannot tell whether job {job_id} of {run_dir} is still queued or running: {why}; "
                           "a second job would train the same trials twice, so nothing was submitted: check "
                           "Slurm (squeue) and launch again")

    try:
        out = subprocess.run(["squeue", "-h", "-j", str(job_id), "-o", "%T"], capture_output=True, text=True,
                             timeout=60)
    except FileNotFoundError:
        raise cannot("squeue is not on PATH") from None
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise cannot(f"squeue failed ({exc})") from None
    if out.returncode == 0:
        return bool(out.stdout.strip())
    if SQUEUE_GONE in out.stderr:
        return False
    first = (out.stderr.strip() or out.stdout.strip() or "no output").splitlines()[0]
    raise cannot(f"squeue exited with code {out.returncode} ({first})")


def launch_sweep(profile: SlurmProfile, plan: Launch) -> SlurmLaunch:
    """Create (or check) RUN_DIR on this login node, then submit one job that runs the sweep in it.
    Refused while another process drives or submits RUN_DIR (its lock), and while an earlier job
    of it is still queued or running: two drivers on one sweep would train the same trials twice."""
    executor(profile, plan.run_dir)  # sbatch and srun present, before anything is written
    with run_lock(plan.run_dir, "submit"):
        for rec in slurm_jobs(plan.run_dir):
            if in_queue(rec["job_id"], plan.run_dir):
                raise RunDirError(f"job {rec['job_id']} is still queued or running this sweep ({plan.run_dir}): "
                                  f"follow it with `ray-grok status {plan.run_dir}`, or `scancel {rec['job_id']}` "
                                  "and launch again")
        prepare(plan.run_dir, plan.spec, plan.grid_text, plan.trials)
        # the driver reads the grid stored in RUN_DIR, not GRID: the job may start on a node that
        # does not see the login node's working directory
        try:
            job = submit(profile, plan.run_dir, sweep_driver)
        except compat.submit_refused() as exc:  # sbatch refused: no controller, bad partition, ...
            raise SubmitError(f"sbatch refused the job for {plan.run_dir} ({profile.source}): "
                              f"{' '.join(str(exc).split())}") from exc
        with open(plan.run_dir / SLURM_JOBS_FILE, "a") as f:
            f.write(json.dumps({"job_id": job.job_id, "profile": profile.source, "submitted": time.time()}) + "\n")
            f.flush()
            os.fsync(f.fileno())  # the record that refuses a second job must survive a crash
    return SlurmLaunch(job, plan.run_dir, job_logs(plan.run_dir, job))


def follow(launch: SlurmLaunch, echo: Callable[[str], None] = print, every_s: float = 30.0) -> dict:
    """Block until the job ends, echoing the job's state and the sweep's counts when they change
    (at most every `every_s`). Returns what the sweep driver returned; raises if the job failed."""

    last = ""
    while not launch.job.done():
        st = sweep_status(launch.run_dir)
        counts = " | ".join(f"{k} {v}" for k, v in st.counts.items() if v)
        eta = f" | ETA {st.eta_s / 60:.0f} min" if st.eta_s else ""
        line = f"job {launch.job.job_id} {launch.job.state}: {counts}{eta}"
        if line != last:
            echo(f"[{time.strftime('%H:%M:%S')}] {line}")
            last = line
        time.sleep(every_s)
    return driver_result(launch.job)
