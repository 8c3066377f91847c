"""Where one Ray node of a Slurm task lives on its host: its block of ports, its temp dir, its
CPUs and GPUs, and the IP address it announces. Pure functions of the job id, the task's rank on
the node and the profile's `ray` settings, plus a few probes of the host (free ports, interfaces).

- Ports: each Ray node takes a block of ports (GCS, client server, dashboard, agents, node and
  object managers, metrics, worker range) chosen from the job id and the task's rank on the node,
  so two jobs, or two tasks of one job, on a node do not collide; a block whose ports are taken is
  skipped.
- A short temp dir per job and task (/tmp/rgUID/JOB-RANK, in a directory only the user can
  enter): Ray's socket paths under it must fit the AF_UNIX limit (compat.MAX_RAY_TEMP_DIR).
- --num-cpus and --num-gpus come from the allocation (the node's GPUs are split between its tasks).
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import struct
import zlib
from dataclasses import dataclass

from .. import compat
from ..errors import ClusterError
from .profiles import FIXED_PORTS, PORT_CEILING, TASK_TEMP_DIR, RaySettings
from .task_env import TaskEnv


@dataclass(frozen=True)
class NodeLayout:
    """Ports and temp dir of one Ray node: a block of `ray.ports_per_node` ports from `base`."""

    slot: int
    base: int
    worker_ports: int
    temp_dir: str

    gcs = property(lambda self: self.base)  # head only
    client_server = property(lambda self: self.base + 1)  # head only (Ray Client)
    dashboard = property(lambda self: self.base + 2)  # head only, if the dashboard is on
    agent_http = property(lambda self: self.base + 3)
    agent_grpc = property(lambda self: self.base + 4)
    node_manager = property(lambda self: self.base + 5)
    object_manager = property(lambda self: self.base + 6)
    metrics = property(lambda self: self.base + 7)
    runtime_env_agent = property(lambda self: self.base + 8)
    min_worker = property(lambda self: self.base + FIXED_PORTS)
    max_worker = property(lambda self: self.base + FIXED_PORTS + self.worker_ports - 1)

    def fixed_ports(self, head: bool) -> list[int]:
        ports = [self.agent_http, self.agent_grpc, self.node_manager, self.object_manager, self.metrics,
                 self.runtime_env_agent]
        return ([self.gcs, self.client_server, self.dashboard] if head else []) + ports

    @property
    def ports(self) -> range:
        return range(self.base, self.max_worker + 1)


def port_slots(ray: RaySettings) -> int:
    return (PORT_CEILING - ray.port_base) // ray.ports_per_node


def _job_number(job_id: str) -> int:
    digits = str(job_id).replace("_", "")
    return int(digits) if digits.isdigit() else zlib.crc32(str(job_id).encode())


def node_layout(job_id: str, local_rank: int, tasks_per_node: int, ray: RaySettings,
                uid: int | None = None, shift: int = 0) -> NodeLayout:
    """The port block and temp dir of task `local_rank` of job `job_id` on its node.

    Blocks come in groups of `tasks_per_node`; the job id picks the group (consecutive job ids get
    consecutive groups) and the local rank the block in it, so the tasks of one job never share a
    block and jobs sharing a node only do if their ids collide modulo the number of groups. `shift`
    moves to the next group when a port of the chosen block is taken (see `choose_layout`)."""
    groups = port_slots(ray) // tasks_per_node
    if groups < 1:
        raise ClusterError(f"ray.port_base={ray.port_base} leaves no room for {tasks_per_node} blocks of "
                           f"{ray.ports_per_node} ports below {PORT_CEILING}")
    group = (_job_number(job_id) + shift) % groups
    slot = group * tasks_per_node + local_rank
    uid = os.getuid() if uid is None else uid
    temp_dir = ray.temp_root.rstrip("/") + TASK_TEMP_DIR.format(uid=uid, job_id=job_id, rank=local_rank)
    if len(temp_dir) > compat.MAX_RAY_TEMP_DIR:
        raise ClusterError(f"Ray temp dir {temp_dir!r} is {len(temp_dir)} characters; Ray's socket paths under it "
                           f"need it at most {compat.MAX_RAY_TEMP_DIR} (shorten ray.temp_root)")
    return NodeLayout(slot=slot, base=ray.port_base + slot * ray.ports_per_node,
                      worker_ports=ray.worker_ports, temp_dir=temp_dir)


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def choose_layout(env: TaskEnv, ray: RaySettings, head: bool) -> NodeLayout:
    """The first block, from the job's own, whose fixed ports (and worker range ends) are free."""
    groups = port_slots(ray) // env.tasks_per_node
    for shift in range(groups):
        layout = node_layout(env.job_id, env.local_rank, env.tasks_per_node, ray, shift=shift)
        if all(port_free(p) for p in [*layout.fixed_ports(head), layout.min_worker, layout.max_worker]):
            return layout
    raise ClusterError(f"no free block of {ray.ports_per_node} ports from {ray.port_base} on {env.hostname}")


def task_cpus(environ: dict[str, str] | None = None, tasks_per_node: int = 1) -> int:
    """CPUs of this task: SLURM_CPUS_PER_TASK, else this node's usable CPUs split between its tasks."""
    environ = os.environ if environ is None else environ
    if environ.get("SLURM_CPUS_PER_TASK", "").isdigit():
        return int(environ["SLURM_CPUS_PER_TASK"])
    return max(1, len(os.sched_getaffinity(0)) // tasks_per_node)


def task_gpus(local_rank: int, tasks_per_node: int, environ: dict[str, str] | None = None) -> list[str]:
    """GPU ids this task's Ray node gets: the node's GPUs (CUDA_VISIBLE_DEVICES as Slurm set it, or
    SLURM_GPUS_ON_NODE) dealt out round-robin to the node's tasks, so two tasks never claim one GPU;
    with --gpus-per-task Slurm has already given each task its own."""
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() not in ("", "NoDevFiles"):
        devices = [d.strip() for d in visible.split(",") if d.strip()]
    else:
        n = environ.get("SLURM_GPUS_ON_NODE", "0")
        devices = [str(i) for i in range(int(n))] if n.isdigit() else []
    if environ.get("SLURM_GPUS_PER_TASK"):
        return devices
    return devices[local_rank::tasks_per_node]


def node_ip(interface: str | None = None, multi_node: bool = False) -> str:
    """IPv4 address this Ray node announces: the interface's if given (e.g. ib0); else the one the
    default route leaves from (what Ray itself would pick); else the one the hostname resolves to.
    Loopback only for a job on one host: other hosts could not reach it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        if interface:
            try:  # SIOCGIFADDR
                packed = fcntl.ioctl(s.fileno(), 0x8915, struct.pack("256s", interface[:15].encode()))
            except OSError as exc:
                raise ClusterError(f"ray.interface={interface!r}: no IPv4 address on this node ({exc})") from None
            return socket.inet_ntoa(packed[20:24])
        candidates = []
        with contextlib.suppress(OSError):
            s.connect(("8.8.8.8", 80))  # UDP: sends nothing, only picks the route
            candidates.append(s.getsockname()[0])
    with contextlib.suppress(OSError):
        candidates.append(socket.gethostbyname(socket.gethostname()))
    for ip in candidates:
        if not ip.startswith("127."):
            return ip
    if multi_node:
        raise ClusterError(f"no address of {socket.gethostname()} other nodes can reach (no default route, hostname "
                           "resolves to loopback): set ray.interface in the profile, e.g. ib0 or eth0")
    return "127.0.0.1"

