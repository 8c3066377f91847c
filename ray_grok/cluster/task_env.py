"""Who this process is in its job (rank, node, restart), and where that job's files go.

Read from the Slurm environment (through submitit's reader) by every task of a Ray-in-Slurm job,
or given (`TaskEnv.local`) to tasks started as plain processes on one host; see bootstrap.py for
what the tasks do with it.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from .. import compat
from ..errors import ClusterError
from ..sweep.rundir import SLURM_DIR

@dataclass(frozen=True)
class TaskEnv:
    job_id: str  # submitit's job id: "1234", or "1234_5" for an array element
    restart: int  # SLURM_RESTART_COUNT: 0 on the first start, +1 per requeue
    rank: int  # global rank of the task (SLURM_PROCID)
    num_tasks: int
    node: int  # index of the node in the job
    num_nodes: int
    local_rank: int  # rank of the task on its node
    hostname: str
    hostnames: tuple[str, ...]

    @property
    def tasks_per_node(self) -> int:
        return max(1, self.num_tasks // max(1, self.num_nodes))

    @property
    def marker(self) -> str:
        """Value of RAY_GROK_RAY_NODE in this task's Ray processes (unique per job and host)."""
        return f"{self.job_id}/{self.local_rank}"

    @classmethod
    def local(cls, job_id: str, rank: int, num_tasks: int) -> TaskEnv:
        """Task RANK of NUM_TASKS started as plain processes on this host (no Slurm): one node."""
        host = socket.gethostname()
        return cls(job_id=str(job_id), restart=0, rank=rank, num_tasks=num_tasks, node=0, num_nodes=1,
                   local_rank=rank, hostname=host, hostnames=(host,))

    @classmethod
    def current(cls) -> TaskEnv:
        """From submitit's job environment: the submitit path sets SUBMITIT_EXECUTOR=slurm; the
        plain sbatch + srun path does not, and gets the same Slurm environment reader directly."""
        if not (os.environ.get("SUBMITIT_EXECUTOR") or os.environ.get("SLURM_JOB_ID")):
            raise ClusterError("not inside a Slurm job (no SLURM_JOB_ID): run this through sbatch/srun or submitit")
        env = compat.slurm_job_environment(through_submitit=bool(os.environ.get("SUBMITIT_EXECUTOR")))
        return cls(
            job_id=str(env.job_id), restart=int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0),
            rank=env.global_rank, num_tasks=env.num_tasks, node=env.node, num_nodes=env.num_nodes,
            local_rank=env.local_rank, hostname=env.hostname, hostnames=tuple(env.hostnames),
        )


def job_dir(run_dir: Path, job_id: str) -> Path:
    """RUN_DIR/slurm/JOB: submitit's files and the Ray rendezvous directories of one Slurm job."""
    return Path(run_dir) / SLURM_DIR / str(job_id)


def rendezvous_dir(run_dir: Path, job_id: str, restart: int) -> Path:
    """Fresh for every start of the job: a requeued job must not read its previous head's address."""
    return job_dir(run_dir, job_id) / f"ray.{restart}"

