"""A Ray cluster inside one Slurm job: one Ray node per Slurm task, the head and the driver on task 0.

Every task of the job runs `run_task` (through submitit, see slurm.py, or through
`python -m ray_grok.cluster.bootstrap task` from slurm/ray-grok.sbatch):

  task 0   writes a fresh token file (mode 0600) into the job's rendezvous directory on the shared
           file system, starts `ray start --head --block` as its child, publishes the head's address
           in head.json, waits until every task's Ray node has joined, then runs the driver with a
           `RayCluster` in a child process (RAY_ADDRESS and the token set in its environment). When
           the driver returns or fails, it writes `done` and stops its Ray node.
  task k   waits for head.json, starts `ray start --address=HEAD --block`, and stops it when `done`
           appears, when the head stops answering, or on a signal.

What makes it safe on a shared cluster node (the module that does each part in brackets):
- Ports (ray_layout): each Ray node takes a block of ports (GCS, client server, dashboard, agents,
  node and object managers, metrics, worker range) chosen from the job id and the task's rank on
  the node (task_env), so two jobs, or two tasks of one job, on a node do not collide; a block
  whose ports are taken is skipped.
- A short temp dir per job and task (ray_layout: /tmp/rgUID-JOB-RANK): Ray's socket paths under it
  must stay below the 107-byte AF_UNIX limit.
- The object store is capped (ray_node; Ray's default is 30% of RAM in /dev/shm), --num-cpus and
  --num-gpus come from the allocation (ray_layout: the node's GPUs are split between its tasks).
- Token authentication: RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH are set explicitly for every
  Ray process (ray_node) and for the driver (here); the dashboard, if on, listens on 127.0.0.1 only.
- Nothing is left behind (procs, ray_node): every Ray process this task starts carries
  RAY_GROK_RAY_NODE=JOB/RANK in its environment, and the task is a child subreaper, so Ray
  processes orphaned by a dying parent stay in its process tree (where Slurm's process tracking
  also finds them). The task records them (PID and start time) in node.RANK.json, and stops them
  on exit and on SIGTERM (scancel, requeue) by PID, TERM then KILL, within `ray.stop_timeout_s`.
  `ray stop` is never used: it stops every Ray on the node.
- The time-limit warning (USR2, sent by Slurm to every process of the job step) is ignored by
  Ray's processes and the driver (procs.spawn); task 0 alone acts on it (here: submitit's
  Checkpointable handling, or `requeue_max` on the plain sbatch path): it stops the driver
  gracefully and requeues the job.

Files, per job start (the job id stays the same across requeues; SLURM_RESTART_COUNT counts them):
    RUN_DIR/slurm/JOB/ray.RESTART/   token, head.json, done, failed.RANK, node.RANK.json, ray.RANK.log
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from .profiles import RaySettings
from .procs import ENV_MARK, become_subreaper, marked_processes, spawn, stop_processes
from .layout import NodeLayout, choose_layout, node_ip, task_cpus, task_gpus
from .node import RayNode, ray_env, ray_start_args
from .task_env import ClusterError, TaskEnv, rendezvous_dir

HEAD_FILE, DONE_FILE, TOKEN_FILE = "head.json", "done", "token"
DRIVER_FILE, DRIVER_RESULT = "driver.pkl", "driver.result.pkl"
FRESH_S = 120.0  # a head.json older than this before the task started belongs to an earlier job
POLL_S = 0.5
GCS_MISSES = 6  # consecutive failed probes (1 s apart) after which a worker takes the head as gone
ALIVE = 0  # GcsNodeInfo.state of a live node


class Terminated(BaseException):
    """SIGTERM or SIGINT reached the task (scancel, preemption, requeue). A BaseException, so that
    `except Exception` in a driver does not swallow it and the task goes straight to stopping Ray."""


class DriverError(RuntimeError):
    """The driver raised; the message holds its traceback (it ran in a child process)."""


# ---------------------------------------------------------------------------------------------
# What the driver gets
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RayCluster:
    """The running Ray cluster of this job, handed to the driver on task 0. RAY_ADDRESS,
    RAY_AUTH_MODE=token and RAY_AUTH_TOKEN_PATH are already set in the driver's environment, so
    `ray.init()` (or `ray.init(address=cluster.address)`) connects."""

    address: str  # "IP:PORT" of the head's GCS
    nodes: int  # Ray nodes that joined (one per Slurm task)
    cpus: float  # totals over the nodes
    gpus: float
    run_dir: Path
    rendezvous: Path  # RUN_DIR/slurm/JOB/ray.RESTART
    job_id: str
    restart: int
    token_path: Path


Driver = Callable[[RayCluster], Any]


def checkpoint_budget_s(profile: Any) -> float:
    """Seconds the driver gets to stop gracefully after the time-limit warning: what is left of
    signal_delay_s once Ray has been stopped, with a margin (Slurm signals up to 60 s early)."""
    return max(5.0, profile.signal_delay_s - profile.ray.stop_timeout_s - 10.0)


# ---------------------------------------------------------------------------------------------
# The task's main: head or worker
# ---------------------------------------------------------------------------------------------

def _say(env: TaskEnv, message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} [ray-grok task {env.rank}/{env.num_tasks} on {env.hostname}] {message}",
          flush=True)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str))
    os.replace(tmp, path)


def write_token(path: Path) -> Path:
    """A fresh random token in a file only the user can read (created 0600, never widened)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
    return path


def _gcs_reachable(address: str, timeout: float = 1.0) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
        return True
    except OSError:
        return False


def _client_env(token: Path) -> None:
    """This process (the driver) talks to the cluster with the job's token."""
    os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
    os.environ.pop("RAY_AUTH_TOKEN", None)
    if "ray._raylet" in sys.modules:  # Ray reads the auth mode when imported: make it read it again
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()


def _alive_nodes(address: str) -> tuple[int, float, float]:
    """(live nodes, CPUs, GPUs) from the GCS, without connecting a driver."""
    from ray._raylet import GcsClient

    info = GcsClient(address=address).get_all_node_info(timeout=5)
    live = [n for n in info.values() if n.state == ALIVE]
    return (len(live), sum(n.resources_total.get("CPU", 0.0) for n in live),
            sum(n.resources_total.get("GPU", 0.0) for n in live))


class _Recorder:
    """node.RANK.json: who this task is and the Ray processes it runs, refreshed every 2 seconds
    from a thread (task 0's main thread runs the driver), so the PIDs are known if we are killed."""

    def __init__(self, path: Path, env: TaskEnv, node: RayNode, layout: NodeLayout, ip: str):
        self.path, self.node = path, node
        self.info = {"rank": env.rank, "host": env.hostname, "task_pid": os.getpid(), "marker": env.marker,
                     "ip": ip, "temp_dir": layout.temp_dir, "ports": [layout.base, layout.max_worker]}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="ray-grok-recorder")

    def record(self, state: str = "running", **extra: Any) -> None:
        self.node.processes()
        _write_json(self.path, {**self.info, "state": state, "updated": time.time(), **extra,
                                "processes": [asdict(p) for p in self.node.recorded()]})

    def _loop(self) -> None:
        while not self._stop.wait(2.0):
            with contextlib.suppress(Exception):  # a record is informational
                self.record()

    def start(self) -> _Recorder:
        self.record()
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)


@contextlib.contextmanager
def _signals(env: TaskEnv, requeue_max: int | None, checkpoint_s: float) -> Iterator[None]:
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
            interrupt_driver(checkpoint_s)
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
    """Ray processes of an earlier start of this job on this node (killed too hard to clean up)."""
    stale = marked_processes(env.marker)
    if stale:
        _say(env, f"stopping {len(stale)} Ray processes left by an earlier start of this job")
        stop_processes(stale, grace_s=2.0)
    shutil.rmtree(layout.temp_dir, ignore_errors=True)


def run_task(driver: Driver | None, *, run_dir: Path, ray: RaySettings, env: TaskEnv | None = None,
             requeue_max: int | None = None, checkpoint_s: float = 60.0) -> Any:
    """Run this Slurm task's part of the Ray cluster; on task 0 return what `driver(cluster)` returns.

    requeue_max: set by the plain sbatch path: on USR2, task 0 stops the driver gracefully (up to
    checkpoint_s) and requeues the job, at most requeue_max times. Leave it None under submitit,
    whose Checkpointable handling does the same (see slurm.RayClusterJob)."""
    env = env or TaskEnv.current()
    run_dir = Path(run_dir).resolve()
    rdir = rendezvous_dir(run_dir, env.job_id, env.restart)
    if env.rank == 0:  # the others only read it, once head.json is there
        rdir.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            rdir.chmod(0o700)
    become_subreaper()
    with _signals(env, requeue_max, checkpoint_s):
        if env.rank == 0:
            if driver is None:
                raise ClusterError("task 0 needs a driver")
            return _run_head(env, driver, run_dir, rdir, ray)
        _run_worker(env, rdir, ray)
        return None


def _finish(env: TaskEnv, node: RayNode, layout: NodeLayout, recorder: _Recorder | None, ray: RaySettings,
            t0: float, state: str) -> None:
    _shield()
    t = time.monotonic()
    found, left = node.stop(ray.stop_timeout_s)
    if recorder is not None:
        recorder.close()
        with contextlib.suppress(Exception):
            recorder.record(state=state, stopped_in_s=round(time.monotonic() - t, 2), left=[asdict(p) for p in left])
    if not left:
        shutil.rmtree(layout.temp_dir, ignore_errors=True)
    _say(env, f"Ray node stopped ({state}): {len(found)} processes, {len(left)} left"
              f"{' ' + str([p.pid for p in left]) if left else ''}, in {time.monotonic() - t:.1f} s "
              f"({time.monotonic() - t0:.0f} s after the task started)")


def _run_head(env: TaskEnv, driver: Driver, run_dir: Path, rdir: Path, ray: RaySettings) -> Any:
    t0 = time.monotonic()
    for stale in [rdir / DONE_FILE, rdir / HEAD_FILE, *rdir.glob("failed.*")]:
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    token = write_token(rdir / TOKEN_FILE)
    _client_env(token)
    node: RayNode | None = None
    layout: NodeLayout | None = None
    recorder = None
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
        recorder = _Recorder(rdir / f"node.{env.rank}.json", env, node, layout, ip).start()
        joined, cpus_total, gpus_total = _wait_for_nodes(env, node, address, rdir, ray, recorder)
        _say(env, f"Ray cluster up: {joined} nodes, {cpus_total:g} CPUs, {gpus_total:g} GPUs, "
                  f"{time.monotonic() - t0:.1f} s after the task started")
        os.environ["RAY_ADDRESS"] = address
        cluster = RayCluster(address=address, nodes=joined, cpus=cpus_total, gpus=gpus_total, run_dir=run_dir,
                             rendezvous=rdir, job_id=env.job_id, restart=env.restart, token_path=token)
        result = run_driver(driver, cluster, env)
        state = "done"
        return result
    except (Terminated, SystemExit, KeyboardInterrupt) as exc:
        state = f"stopped: {exc!r}"
        raise
    finally:
        _shield()
        stop_driver(grace_s=2.0)
        with contextlib.suppress(OSError):
            _write_json(rdir / DONE_FILE, {"state": state, "time": time.time()})
        if node is not None and layout is not None:
            _finish(env, node, layout, recorder, ray, t0, state)


_driver: subprocess.Popen | None = None  # the driver child of task 0, while it runs


def run_driver(driver: Driver, cluster: RayCluster, env: TaskEnv) -> Any:
    """driver(cluster) in a child process, and its result. A child, because a Ray driver's core
    worker takes over SIGTERM (it aborts the process at once), and this task must stay able to
    stop Ray on SIGTERM; and because a graceful stop (SIGINT: Tune stops its trials and saves its
    experiment state) can then be asked of it at the time limit (see `interrupt_driver`)."""
    import cloudpickle

    global _driver
    payload, result = cluster.rendezvous / DRIVER_FILE, cluster.rendezvous / DRIVER_RESULT
    payload.write_bytes(cloudpickle.dumps((driver, cluster)))
    with contextlib.suppress(FileNotFoundError):
        result.unlink()
    child_env = {**os.environ, ENV_MARK: env.marker}
    _driver = spawn([sys.executable, "-m", "ray_grok.cluster.bootstrap", "driver", str(cluster.rendezvous)], child_env)
    try:
        while _driver.poll() is None:
            time.sleep(POLL_S)  # signal handlers (SIGTERM, submitit's USR2) run between sleeps
    except BaseException:
        _shield()
        stop_driver(grace_s=2.0)
        raise
    try:
        status, value = cloudpickle.loads(result.read_bytes())
    except (OSError, EOFError) as exc:
        raise DriverError(f"the driver exited with code {_driver.returncode} without a result ({exc})") from None
    if status == "error":
        raise DriverError(f"the driver failed:\n{value}")
    return value


def interrupt_driver(timeout_s: float) -> bool:
    """Ask the running driver to stop gracefully (SIGINT; Tune ends its trials and saves its state)
    and wait up to timeout_s. True if it exited by itself."""
    proc = _driver
    if proc is None or proc.poll() is not None:
        return True
    proc.send_signal(signal.SIGINT)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=timeout_s)
        return True
    return False


def stop_driver(grace_s: float) -> None:
    """The driver child is gone when this returns: SIGINT, SIGTERM, SIGKILL, grace_s apart."""
    proc = _driver
    if proc is None:
        return
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)


def _driver_child(rendezvous: Path) -> int:
    """The driver child's main: run driver(cluster), pickle ("ok", value) or ("error", traceback)."""
    import traceback

    import cloudpickle

    driver, cluster = cloudpickle.loads((rendezvous / DRIVER_FILE).read_bytes())
    try:
        out, code = ("ok", driver(cluster)), 0
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the task as text
        code = 130 if isinstance(exc, KeyboardInterrupt) else 1
        out = ("error", "".join(traceback.format_exception(exc)))
    tmp = rendezvous / f".{DRIVER_RESULT}.tmp"
    tmp.write_bytes(cloudpickle.dumps(out))
    os.replace(tmp, rendezvous / DRIVER_RESULT)
    return code


def _wait_for_nodes(env: TaskEnv, node: RayNode, address: str, rdir: Path, ray: RaySettings,
                    recorder: _Recorder) -> tuple[int, float, float]:
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
                joined, cpus, gpus = _alive_nodes(address)
            except Exception as exc:  # GCS up but not serving yet
                last_error = f"{type(exc).__name__}: {exc}"
                joined = 0
            if joined and not published:  # the head itself is up: let the workers join
                _write_json(rdir / HEAD_FILE, {"address": address, "time": time.time(), "job_id": env.job_id,
                                               "restart": env.restart, "host": env.hostname})
                recorder.record()
                published = True
            if joined >= env.num_tasks:
                recorder.record()
                return joined, cpus, gpus
        time.sleep(POLL_S)
    raise ClusterError(f"only {joined} of {env.num_tasks} Ray nodes joined within ray.join_timeout_s="
                       f"{ray.join_timeout_s:g} s ({last_error or 'see the ray.*.log files'} in {rdir})")


def _wait_for_head(env: TaskEnv, rdir: Path, ray: RaySettings, started: float) -> dict | None:
    """head.json of this job start (not a stale one), or None if the head already finished."""
    deadline = time.monotonic() + ray.join_timeout_s
    while time.monotonic() < deadline:
        if (rdir / DONE_FILE).exists():
            return None
        with contextlib.suppress(OSError, ValueError):
            head = json.loads((rdir / HEAD_FILE).read_text())
            if head.get("time", 0) >= started - FRESH_S and _gcs_reachable(head["address"]):
                return head
        time.sleep(POLL_S)
    raise ClusterError(f"no Ray head published its address in {rdir / HEAD_FILE} within "
                       f"ray.join_timeout_s={ray.join_timeout_s:g} s")


def _run_worker(env: TaskEnv, rdir: Path, ray: RaySettings) -> None:
    t0, started = time.monotonic(), time.time()
    try:
        head = _wait_for_head(env, rdir, ray, started)
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
    recorder = None
    state = "failed"
    try:
        node.start()
        recorder = _Recorder(rdir / f"node.{env.rank}.json", env, node, layout, ip).start()
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
        _finish(env, node, layout, recorder, ray, t0, state)


def _report_failure(env: TaskEnv, rdir: Path, exc: Exception) -> None:
    """failed.RANK tells the head at once, instead of after ray.join_timeout_s."""
    with contextlib.suppress(OSError):
        _write_json(rdir / f"failed.{env.rank}", {"rank": env.rank, "host": env.hostname, "error": str(exc)})


# ---------------------------------------------------------------------------------------------
# Drivers
# ---------------------------------------------------------------------------------------------

def probe_driver(cluster: RayCluster, out: str | None = None, hold_s: float = 0.0) -> dict:
    """Check a cluster: connect, count live nodes, run one task per node, hold `hold_s` seconds
    (tests use it to cancel or time out a job mid-run), record it all in `out` (JSON)."""
    import ray

    t0 = time.time()
    ray.init(address=cluster.address, log_to_driver=False, logging_level="WARNING")
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]

        @ray.remote(num_cpus=0)
        def where() -> tuple[str, int]:
            return os.environ.get(ENV_MARK, ""), os.getpid()

        placements = ray.get([where.options(scheduling_strategy=ray.util.scheduling_strategies
                                            .NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
                              for n in nodes])
        report = {"address": cluster.address, "nodes_alive": len(nodes), "cpus": cluster.cpus, "gpus": cluster.gpus,
                  "job_id": cluster.job_id, "restart": cluster.restart,
                  "task_markers": sorted(m for m, _ in placements),
                  "task_pids": [p for _, p in placements], "connect_s": round(time.time() - t0, 2),
                  "auth_mode": os.environ.get("RAY_AUTH_MODE"),
                  "token_mode": oct(cluster.token_path.stat().st_mode & 0o777)}
        if out:
            Path(out).parent.mkdir(parents=True, exist_ok=True)
            with open(out, "a") as f:  # one line per job start: a requeued job appends its second
                f.write(json.dumps(report) + "\n")
        deadline = time.time() + hold_s
        while time.time() < deadline:
            time.sleep(0.5)
        return report
    finally:
        ray.shutdown()


def prepare_sweep(grid: str | Path, run_dir: str | Path) -> Path:
    """Create RUN_DIR for GRID (or check it holds this grid) before the job writes its Slurm files
    into it: the sweep layer refuses to start a sweep in a directory that holds other files.
    `ray-grok launch --cluster` calls this on the login node before submitting; the sbatch path
    on task 0 before Ray starts. Returns the run directory."""
    from ..sweep.rundir import prepare, resolve

    plan = resolve(Path(grid), Path(run_dir), resume=False)
    prepare(plan.run_dir, plan.spec, plan.grid_text, plan.trials)
    return plan.run_dir


def sweep_driver(cluster: RayCluster, grid: str | None = None) -> dict:
    """Run (or resume) the sweep of RUN_DIR against this cluster, from the grid stored in RUN_DIR
    (see prepare_sweep; `grid` is only a check that it is that grid). Finished trials are not
    re-run, unfinished ones continue from their checkpoints. sweep.launch connects via RAY_ADDRESS."""
    from ..sweep.rundir import GRID_FILE, resolve
    from ..sweep.launch import launch

    run_dir = cluster.run_dir
    if not (run_dir / GRID_FILE).exists():
        raise ClusterError(f"{run_dir} holds no sweep: prepare it before the job starts (prepare_sweep)")
    if grid is not None:
        prepare_sweep(grid, run_dir)  # refuses a grid other than the stored one
    plan = resolve(None, run_dir, resume=True)
    outcome = launch(plan, echo=lambda line: print(line, flush=True))
    return {"counts": outcome.counts, "complete": outcome.complete, "wall_time": outcome.wall_time}


DRIVERS: dict[str, Driver] = {"sweep": sweep_driver, "probe": probe_driver}


def resolve_driver(name: str) -> Driver:
    """'sweep', 'probe' or 'package.module:function'."""
    if name in DRIVERS:
        return DRIVERS[name]
    module, _, func = name.partition(":")
    if not module or not func:
        raise ClusterError(f"--driver must be one of {sorted(DRIVERS)} or module:function, got {name!r}")
    import importlib

    return getattr(importlib.import_module(module), func)


# ---------------------------------------------------------------------------------------------
# python -m ray_grok.cluster.bootstrap task ...   (one srun task of slurm/ray-grok.sbatch)
# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    import functools

    import click
    import yaml

    from .profiles import ProfileError, SlurmProfile, load_profile, run_dir_for
    from ..trial.config import ConfigError

    @click.group()
    def cli() -> None:
        """Ray inside a Slurm job (the per-task part of slurm/ray-grok.sbatch)."""

    @cli.command()
    @click.option("--profile", "profile_path", required=True, type=click.Path(dir_okay=False),
                  help="cluster profile (its ray, storage_root and max_requeues keys are used)")
    @click.option("--grid", type=click.Path(dir_okay=False), help="grid file (the sweep driver)")
    @click.option("--run-dir", type=click.Path(file_okay=False), help="default: storage_root/<grid name>")
    @click.option("--driver", default="sweep", show_default=True, help="sweep, probe or module:function")
    @click.option("--arg", "args", multiple=True, metavar="KEY=VALUE", help="keyword argument of the driver")
    def task(profile_path: str, grid: str | None, run_dir: str | None, driver: str, args: tuple[str, ...]) -> None:
        """Run this Slurm task's part: Ray head + driver on task 0, a Ray worker on the others.

        Example: srun python -m ray_grok.cluster.bootstrap task --profile cluster/dev-slurm.yaml --grid grids/smoke.yaml
        """
        try:
            profile = load_profile(profile_path)
            if not isinstance(profile, SlurmProfile):
                raise ProfileError(f"{profile_path}: kind must be slurm for a Slurm task, got {profile.kind!r}")
            if run_dir is None:
                if grid is None:
                    raise click.UsageError("give --run-dir or --grid")
                from ..sweep.grid import load_grid

                run_dir = str(run_dir_for(profile, load_grid(grid).name))
            kwargs = {k: yaml.safe_load(v) for k, _, v in (a.partition("=") for a in args)}
            fn = functools.partial(resolve_driver(driver), **kwargs)
            if driver == "sweep":
                if grid is None:
                    raise click.UsageError("the sweep driver needs --grid")
                if TaskEnv.current().rank == 0:  # before anything of the job is written into RUN_DIR
                    prepare_sweep(grid, run_dir)
        except (ConfigError, ClusterError) as exc:  # profile, grid or run directory errors
            raise click.ClickException(str(exc)) from exc
        try:
            result = run_task(fn, run_dir=Path(run_dir), ray=profile.ray, requeue_max=profile.max_requeues,
                              checkpoint_s=checkpoint_budget_s(profile))
        except Terminated as exc:  # scancel, requeue: Ray is stopped already; no traceback
            click.echo(f"ray-grok task stopped: {exc}", err=True)
            sys.exit(143)
        except (ClusterError, DriverError) as exc:
            raise click.ClickException(str(exc)) from exc
        if result is not None:
            click.echo(json.dumps(result, default=str))

    @cli.command(hidden=True)
    @click.argument("rendezvous", type=click.Path(file_okay=False))
    def driver(rendezvous: str) -> None:
        """Task 0's driver child (started by run_driver)."""
        sys.exit(_driver_child(Path(rendezvous)))

    return cli.main(args=argv, prog_name="python -m ray_grok.cluster.bootstrap", standalone_mode=True)


if __name__ == "__main__":
    sys.exit(main())
