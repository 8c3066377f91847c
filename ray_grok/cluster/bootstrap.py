"""A Ray cluster inside one job: one Ray node per task, the head and the driver on task 0.

Every task of a Slurm job runs `run_task` (through submitit, see slurm.py, or through
`python -m ray_grok.cli task` from slurm/ray-grok.sbatch). Nothing here needs Slurm: given a
TaskEnv (`TaskEnv.local`), tasks started as plain processes on one host form the same cluster.

  task 0   writes a fresh token file (mode 0600) into the job's rendezvous directory on the shared
           file system, starts `ray start --head --block` as its child, publishes the head's address
           in head.json, waits until every task's Ray node has joined, then runs the driver with a
           `RayCluster` in a child process (driver.py; RAY_ADDRESS and the token set in its
           environment). When the driver returns or fails, it writes `done` and stops its Ray node.
  task k   waits for head.json, starts `ray start --address=HEAD --block`, and stops it when `done`
           appears, when the head stops answering, or on a signal.

What makes it safe on a shared cluster node (the module that does each part in brackets):
- Ports (layout): each Ray node takes a block of ports (GCS, client server, dashboard, agents,
  node and object managers, metrics, worker range) chosen from the job id and the task's rank on
  the node (task_env), so two jobs, or two tasks of one job, on a node do not collide; a block
  whose ports are taken is skipped.
- A short temp dir per job and task (layout: /tmp/rgUID/JOB-RANK, in a directory only the user
  can enter, since Ray makes its temp dir world-writable): Ray's socket paths under it must fit the
  AF_UNIX limit (compat.MAX_RAY_TEMP_DIR).
- The object store is capped (node; Ray's default is 30% of RAM in /dev/shm), --num-cpus and
  --num-gpus come from the allocation (layout: the node's GPUs are split between its tasks).
- Token authentication: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH are set explicitly for every
  Ray process (node) and for the driver (here); the dashboard, if on, listens on 127.0.0.1 only.
- Nothing is left behind (procs, node): every Ray process this task starts carries
  RAY_GROK_RAY_NODE=JOB/RANK in its environment, and the task is a child subreaper, so Ray
  processes orphaned by a dying parent stay in its process tree (where Slurm's process tracking
  also finds them). The task records them (PID and start time) in node.RANK.json, and stops them
  on exit and on SIGTERM (scancel, requeue) by PID, TERM then KILL, within `ray.stop_timeout_s`.
  `ray stop` is never used: it stops every Ray on the node.
- The time-limit warning (USR2, sent by Slurm to every process of the job step) is ignored by
  Ray's processes and the driver (procs.spawn); task 0 alone acts on it (submitit's
  Checkpointable handling, or `requeue_max` on the plain sbatch path): it stops the driver
  gracefully and requeues the job.

Files, per job start (the job id stays the same across requeues; SLURM_RESTART_COUNT counts them):
    RUN_DIR/slurm/JOB/ray.RESTART/   token, head.json, done, failed.RANK, node.RANK.json, ray.RANK.log
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

from .. import compat
from ..errors import ClusterError
from ..io import private_dir, read_json, write_json
from .driver import Driver, DriverProcess, RayCluster
from .layout import NodeLayout, choose_layout, node_ip, task_cpus, task_gpus
from .node import NodeRecord, RayNode, ray_env, ray_start_args
from .procs import become_subreaper, marked_processes, stop_processes
from .profiles import RaySettings
from .task_env import TaskEnv, rendezvous_dir

HEAD_FILE, DONE_FILE, TOKEN_FILE = "head.json", "done", "token"
FRESH_S = 120.0  # a head.json older than this before the task started belongs to an earlier job
POLL_S = 0.5
GCS_MISSES = 6  # consecutive failed probes (1 s apart) after which a worker takes the head as gone


class Terminated(BaseException):
    """SIGTERM or SIGINT reached the task (scancel, preemption, requeue). A BaseException, so that
    `except Exception` in a driver does not swallow it and the task goes straight to stopping Ray."""


def run_task(driver: Driver | None, *, run_dir: Path, ray: RaySettings, env: TaskEnv | None = None,
             requeue_max: int | None = None, checkpoint_s: float = 60.0,
             child: DriverProcess | None = None) -> Any:
    """Run this task's part of the Ray cluster; on task 0 return what `driver(cluster)` returns.

    env: who this task is; default: from the Slurm environment (TaskEnv.current).
    requeue_max: set by the plain sbatch path: on USR2, task 0 stops the driver gracefully (up to
    checkpoint_s) and requeues the job, at most requeue_max times. Leave it None under submitit,
    whose Checkpointable handling does the same through `child` (see slurm.RayClusterJob)."""
    env = env or TaskEnv.current()
    child = child or DriverProcess()
    run_dir = Path(run_dir).resolve()
    rdir = task_dirs(run_dir, env)
    become_subreaper()
    with _signals(env, requeue_max, checkpoint_s, child):
        if env.rank == 0:
            if driver is None:
                raise ClusterError("task 0 needs a driver")
            return _run_head(env, driver, child, run_dir, rdir, ray)
        _run_worker(env, rdir, ray)
        return None


def task_dirs(run_dir: Path, env: TaskEnv) -> Path:
    """The job's directory and this start's rendezvous directory, created private (0700). Every
    task trusts what it finds there (the head's address, the token, the driver's pickle), so one
    that is a symlink, another user's, or cannot be made private stops the task."""
    rdir = rendezvous_dir(run_dir, env.job_id, env.restart)
    private_dir(rdir.parent, "job directory")
    return private_dir(rdir, "rendezvous directory")


# ---------------------------------------------------------------------------------------------
# Task 0: the head and the driver
# ---------------------------------------------------------------------------------------------

def _run_head(env: TaskEnv, driver: Driver, child: DriverProcess, run_dir: Path, rdir: Path,
              ray: RaySettings) -> Any:
    t0 = time.monotonic()
    for stale in [rdir / DONE_FILE, rdir / HEAD_FILE, *rdir.glob("failed.*")]:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    token = write_token(rdir / TOKEN_FILE)
    _client_env(token)
    node: RayNode | None = None
    layout: NodeLayout | None = None
    record = None
    state = "failed"
    try:  # from here on, `done` is written whatever happens, so the workers never wait in vain
        layout = choose_layout(env, ray, head=True)
        _clean_leftovers(env, layout)
        ip = node_ip(ray.interface, multi_node=env.num_nodes > 1)
        address = f"{ip}:{layout.gcs}"
        gpus = task_gpus(env.local_rank, env.tasks_per_node)
        cpus = task_cpus(tasks_per_node=env.tasks_per_node)
        node = RayNode(ray_start_args(layout, ray, ip, cpus, len(gpus), None), ray_env(token, env.marker, gpus, ray),
                       rdir / f"ray.{env.rank}.log", env.marker)
        _say(env, f"starting the Ray head at {address} (ports {layout.base}-{layout.max_worker}, {cpus} CPUs, "
                  f"GPUs [{','.join(gpus)}], temp dir {layout.temp_dir}); log: {node.log}")
        node.start()
        record = _record(rdir, env, node, layout, ip).start()
        joined, cpus_total, gpus_total = _wait_for_nodes(env, node, address, rdir, ray, record)
        _say(env, f"Ray cluster up: {joined} nodes, {cpus_total:g} CPUs, {gpus_total:g} GPUs, "
                  f"{time.monotonic() - t0:.1f} s after the task started")
        os.environ["RAY_ADDRESS"] = address
        cluster = RayCluster(address=address, nodes=joined, cpus=cpus_total, gpus=gpus_total, run_dir=run_dir,
                             rendezvous=rdir, job_id=env.job_id, restart=env.restart, token_path=token)
        result = child.run(driver, cluster, env.marker)
        state = "done"
        return result
    except (Terminated, SystemExit, KeyboardInterrupt) as exc:
        state = f"stopped: {exc!r}"
        raise
    finally:
        _shield()
        child.stop(grace_s=2.0)
        with contextlib.suppress(OSError):
            write_json(rdir / DONE_FILE, {"state": state, "time": time.time()})
        if node is not None and layout is not None:
            _finish(env, node, layout, record, ray, t0, state)


def write_token(path: Path) -> Path:
    """A fresh random token in a file only the user can read (created 0600, never widened)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def _client_env(token: Path) -> None:
    """This process (and so the driver child) talks to the cluster with the job's token."""
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    os.environ.pop("RAY_AUTH_TOKEN", None)
    if "ray._raylet" in sys.modules:  # Ray reads the auth mode when imported: make it read it again
        compat.reload_auth()


def _wait_for_nodes(env: TaskEnv, node: RayNode, address: str, rdir: Path, ray: RaySettings,
                    record: NodeRecord) -> tuple[int, float, float]:
    deadline = time.monotonic() + ray.join_timeout_s
    published = False
    joined, cpus, gpus, last_error = 0, 0.0, 0.0, ""
    while time.monotonic() < deadline:
        rc = node.exit_code()
        if rc is not None:
            raise ClusterError(f"`ray start --head` exited with code {rc}; see {node.log}")
        failed = sorted(rdir.glob("failed.*"))
        if failed:
            raise ClusterError(f"a worker could not start its Ray node: {failed[0].read_text().strip()}")
        if _gcs_reachable(address):
            try:
                joined, cpus, gpus = compat.live_nodes(address)
            except Exception as exc:  # GCS up but not serving yet
                last_error = f"{type(exc).__name__}: {exc}"
                joined = 0
            if joined and not published:  # the head itself is up: let the workers join
                write_json(rdir / HEAD_FILE, {"address": address, "time": time.time(), "job_id": env.job_id,
                                              "restart": env.restart, "host": env.hostname})
                record.record()
                published = True
            if joined >= env.num_tasks:
                record.record()
                return joined, cpus, gpus
        time.sleep(POLL_S)
    raise ClusterError(f"only {joined} of {env.num_tasks} Ray nodes joined within ray.join_timeout_s="
                       f"{ray.join_timeout_s:g} s ({last_error or 'see the ray.*.log files'} in {rdir})")


# ---------------------------------------------------------------------------------------------
# Task k > 0: a worker
# ---------------------------------------------------------------------------------------------

def _run_worker(env: TaskEnv, rdir: Path, ray: RaySettings) -> None:
    t0, started = time.monotonic(), time.time()
    try:
        head = _wait_for_head(rdir, ray, started)
        if head is None:
            _say(env, "the head finished before this task joined; nothing to do")
            return
        address = head["address"]
        layout = choose_layout(env, ray, head=False)
        _clean_leftovers(env, layout)
        ip = node_ip(ray.interface, multi_node=env.num_nodes > 1)
    except ClusterError as exc:
        _report_failure(env, rdir, exc)
        raise
    gpus = task_gpus(env.local_rank, env.tasks_per_node)
    cpus = task_cpus(tasks_per_node=env.tasks_per_node)
    node = RayNode(ray_start_args(layout, ray, ip, cpus, len(gpus), address),
                   ray_env(rdir / TOKEN_FILE, env.marker, gpus, ray), rdir / f"ray.{env.rank}.log", env.marker)
    _say(env, f"joining the Ray head at {address} (ports {layout.base}-{layout.max_worker}, {cpus} CPUs, "
              f"GPUs [{','.join(gpus)}], temp dir {layout.temp_dir}); log: {node.log}")
    record = None
    state = "failed"
    try:
        node.start()
        record = _record(rdir, env, node, layout, ip).start()
        misses = 0
        while True:
            if (rdir / DONE_FILE).exists():
                state = "done"
                break
            rc = node.exit_code()
            if rc is not None:
                raise ClusterError(f"`ray start --address={address}` exited with code {rc}; see {node.log}")
            misses = 0 if _gcs_reachable(address) else misses + 1
            if misses >= GCS_MISSES:
                state = "head gone"
                _say(env, f"the head at {address} stopped answering; stopping this node")
                break
            time.sleep(1.0)
    except ClusterError as exc:
        _report_failure(env, rdir, exc)
        raise
    except (Terminated, SystemExit, KeyboardInterrupt) as exc:
        state = f"stopped: {exc!r}"
        raise
    finally:
        _finish(env, node, layout, record, ray, t0, state)


def _wait_for_head(rdir: Path, ray: RaySettings, started: float) -> dict | None:
    """head.json of this job start (not a stale one), or None if the head already finished."""
    deadline = time.monotonic() + ray.join_timeout_s
    while time.monotonic() < deadline:
        if (rdir / DONE_FILE).exists():
            return None
        with contextlib.suppress(OSError, ValueError):
            head = read_json(rdir / HEAD_FILE)
            if head.get("time", 0) >= started - FRESH_S and _gcs_reachable(head["address"]):
                return head
        time.sleep(POLL_S)
    raise ClusterError(f"no Ray head published its address in {rdir / HEAD_FILE} within "
                       f"ray.join_timeout_s={ray.join_timeout_s:g} s")


def _report_failure(env: TaskEnv, rdir: Path, exc: Exception) -> None:
    """failed.RANK tells the head at once, instead of after ray.join_timeout_s."""
    with contextlib.suppress(OSError):
        write_json(rdir / f"failed.{env.rank}", {"rank": env.rank, "host": env.hostname, "error": str(exc)})


# ---------------------------------------------------------------------------------------------
# Both: signals, the node's record, stopping
# ---------------------------------------------------------------------------------------------

def _say(env: TaskEnv, message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [ray-grok task {env.rank}/{env.num_tasks} on {env.hostname}] {message}",
          flush=True)


def _gcs_reachable(address: str, timeout: float = 1.0) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return True
    except OSError:
        return False


def _record(rdir: Path, env: TaskEnv, node: RayNode, layout: NodeLayout, ip: str) -> NodeRecord:
    return NodeRecord(rdir / f"node.{env.rank}.json", node, {
        "rank": env.rank, "host": env.hostname, "task_pid": os.getpid(), "marker": env.marker, "ip": ip,
        "temp_dir": layout.temp_dir, "ports": [layout.base, layout.max_worker]})


@contextlib.contextmanager
def _signals(env: TaskEnv, requeue_max: int | None, checkpoint_s: float, child: DriverProcess) -> Iterator[None]:
    """SIGTERM/SIGINT raise Terminated. With requeue_max (the plain sbatch path), USR2 on task 0
    requeues the job (at most requeue_max times) and then stops it; under submitit, submitit's own
    USR2 handler does that (Checkpointable) and is left alone."""

    def on_term(signum: int, frame: Any) -> None:
        raise Terminated(f"received {signal.Signals(signum).name}")

    def on_usr2(signum: int, frame: Any) -> None:
        if env.rank != 0:
            _say(env, "USR2: the job is near its time limit; task 0 decides about the requeue")
            return
        if env.restart < requeue_max:
            _say(env, f"USR2: near the time limit; stopping the driver (up to {checkpoint_s:.0f} s), then "
                      f"requeueing job {env.job_id} (start {env.restart + 2} of at most {requeue_max + 1})")
            child.interrupt(checkpoint_s)
            subprocess.run(["scontrol", "requeue", env.job_id], check=False, timeout=60)
            raise Terminated("requeued at the time limit")
        raise Terminated(f"time limit reached after {env.restart} requeues (max_requeues={requeue_max})")

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR2)}
    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    if requeue_max is not None:
        signal.signal(signal.SIGUSR2, on_usr2)
    try:
        yield
    finally:
        for s, h in old.items():
            with contextlib.suppress(ValueError, TypeError):
                signal.signal(s, h)


def _shield() -> None:
    """From here on the task is stopping: a second SIGTERM (Slurm sends one to every task when the
    job is cancelled or requeued) must not interrupt the stop."""
    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, signal.SIG_IGN)


def _clean_leftovers(env: TaskEnv, layout: NodeLayout) -> None:
    """Ray processes and the temp dir of an earlier start of this job on this node (killed too
    hard to clean up); then a fresh temp dir in the user's private temp root. One that is a
    symlink or another user's is refused, never followed or removed: Ray puts its sockets there."""
    stale = marked_processes(env.marker)
    if stale:
        _say(env, f"stopping {len(stale)} Ray processes left by an earlier start of this job")
        stop_processes(stale, grace_s=2.0)
    private_dir(os.path.dirname(layout.temp_dir), "Ray temp root")  # Ray will make the task's dir 0777
    shutil.rmtree(private_dir(layout.temp_dir, "Ray temp dir"))
    private_dir(layout.temp_dir, "Ray temp dir")


def _finish(env: TaskEnv, node: RayNode, layout: NodeLayout, record: NodeRecord | None, ray: RaySettings,
            t0: float, state: str) -> None:
    _shield()
    t = time.monotonic()
    found, left = node.stop(ray.stop_timeout_s)
    if record is not None:
        record.close()
        with contextlib.suppress(Exception):
            record.record(state=state, stopped_in_s=round(time.monotonic() - t, 2), left=[asdict(p) for p in left])
    if not left:
        shutil.rmtree(layout.temp_dir, ignore_errors=True)
    _say(env, f"Ray node stopped ({state}): {len(found)} processes, {len(left)} left"
              f"{' ' + str([p.pid for p in left]) if left else ''}, in {time.monotonic() - t:.1f} s "
              f"({time.monotonic() - t0:.0f} s after the task started)")
