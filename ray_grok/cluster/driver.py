"""The driver of a Ray-in-Slurm job: what runs on task 0 once the Ray cluster is up.

A driver is any picklable `driver(cluster: RayCluster)`: `sweep_driver` runs the sweep of the run
directory, `probe_driver` checks the cluster. Task 0 runs it in a child process (DriverProcess):
a Ray driver's core worker takes over SIGTERM (it aborts the process at once), and the task must
stay able to stop Ray on SIGTERM; and a graceful stop (SIGINT: Tune ends its trials and saves its
state) can then be asked of the child at the time limit.

    python -m ray_grok.cluster.driver RENDEZVOUS    # the child: runs RENDEZVOUS/driver.pkl
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ..errors import ClusterError, DriverError
from ..sweep.rundir import GRID_FILE, prepare, resolve, run_lock
from .procs import ENV_MARK, spawn

DRIVER_FILE, DRIVER_RESULT = "driver.pkl", "driver.result.pkl"
POLL_S = 0.5
# how long the job's driver waits for RUN_DIR's lock: the login node's `launch --cluster` holds it
# until the job is recorded, which a job that starts at once (an idle cluster) may race
LOCK_WAIT_S = 30.0


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
# The driver child
# ---------------------------------------------------------------------------------------------

class DriverProcess:
    """driver(cluster) in a child process of the task, and how to stop it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def run(self, driver: Driver, cluster: RayCluster, marker: str) -> Any:
        """Run the driver to its end (signal handlers run between polls); return what it returned."""
        import cloudpickle

        payload, result = cluster.rendezvous / DRIVER_FILE, cluster.rendezvous / DRIVER_RESULT
        payload.write_bytes(cloudpickle.dumps((driver, cluster)))
        with contextlib.suppress(FileNotFoundError):
            result.unlink()
        self.proc = spawn([sys.executable, "-m", __name__, str(cluster.rendezvous)], {**os.environ, ENV_MARK: marker})
        while self.proc.poll() is None:
            time.sleep(POLL_S)
        try:
            status, value = cloudpickle.loads(result.read_bytes())
        except (OSError, EOFError) as exc:
            raise DriverError(f"the driver exited with code {self.proc.returncode} without a result ({exc})") from None
        if status == "error":
            raise DriverError(f"the driver failed:\n{value}")
        return value

    def interrupt(self, timeout_s: float) -> bool:
        """Ask the running driver to stop gracefully (SIGINT; Tune ends its trials and saves its
        state) and wait up to timeout_s. True if it exited by itself."""
        if self.proc is None or self.proc.poll() is not None:
            return True
        self.proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=timeout_s)
            return True
        return False

    def stop(self, grace_s: float) -> None:
        """The driver child is gone when this returns: SIGINT, SIGTERM, SIGKILL, grace_s apart."""
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL):
            if self.proc is None or self.proc.poll() is not None:
                return
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace_s)


def main(argv: list[str] | None = None) -> int:
    """The driver child: run driver(cluster) from RENDEZVOUS/driver.pkl, and pickle ("ok", value)
    or ("error", traceback) into RENDEZVOUS/driver.result.pkl for the task."""
    import cloudpickle

    rendezvous = Path((sys.argv[1:] if argv is None else argv)[0])
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
        def where() -> tuple[str, int, str]:
            return os.environ.get(ENV_MARK, ""), os.getpid(), socket.gethostname()

        placements = ray.get([where.options(scheduling_strategy=ray.util.scheduling_strategies
                                            .NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote()
                              for n in nodes])
        report = {"address": cluster.address, "nodes_alive": len(nodes), "cpus": cluster.cpus, "gpus": cluster.gpus,
                  "job_id": cluster.job_id, "restart": cluster.restart,
                  "task_markers": sorted(m for m, _, _ in placements), "task_pids": [p for _, p, _ in placements],
                  "task_hosts": sorted(h for _, _, h in placements),
                  "node_ips": sorted(n["NodeManagerAddress"] for n in nodes), "connect_s": round(time.time() - t0, 2),
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
    plan = resolve(Path(grid), Path(run_dir), resume=False)
    with run_lock(plan.run_dir, "prepare", wait_s=LOCK_WAIT_S):
        prepare(plan.run_dir, plan.spec, plan.grid_text, plan.trials)
    return plan.run_dir


def sweep_driver(cluster: RayCluster, grid: str | None = None) -> dict:
    """Run (or resume) the sweep of RUN_DIR against this cluster, from the grid stored in RUN_DIR
    (see prepare_sweep; `grid` is only a check that it is that grid). Finished trials are not
    re-run, unfinished ones continue from their checkpoints. sweep.launch connects via RAY_ADDRESS."""
    from ..sweep.launch import launch

    run_dir = cluster.run_dir
    if not (run_dir / GRID_FILE).exists():
        raise ClusterError(f"{run_dir} holds no sweep: prepare it before the job starts (prepare_sweep)")
    if grid is not None:
        prepare_sweep(grid, run_dir)  # refuses a grid other than the stored one
    outcome = launch(resolve(None, run_dir, resume=True), echo=lambda line: print(line, flush=True),
                     wait_s=LOCK_WAIT_S)
    return {"counts": outcome.counts, "complete": outcome.complete, "wall_time": outcome.wall_time}


DRIVERS: dict[str, Driver] = {"sweep": sweep_driver, "probe": probe_driver}


def resolve_driver(name: str, kwargs: dict[str, Any]) -> Driver:
    """'sweep', 'probe' or 'package.module:function', with keyword arguments bound."""
    if name in DRIVERS:
        fn = DRIVERS[name]
    else:
        module, _, func = name.partition(":")
        if not module or not func:
            raise ClusterError(f"--driver must be one of {sorted(DRIVERS)} or module:function, got {name!r}")
        fn = getattr(importlib.import_module(module), func)
    return functools.partial(fn, **kwargs)


if __name__ == "__main__":
    sys.exit(main())
