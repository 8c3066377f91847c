"""One Ray node: the `ray start --block` command line for its layout (every port explicit, the
object store capped), the environment of its processes (token authentication, its GPUs, the
marker that finds them), the child process itself, stopping it with everything it spawned, and
its record on the shared file system (node.RANK.json).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from .. import compat
from ..io import write_json
from .layout import NodeLayout
from .procs import (
    ENV_MARK, Proc, descendants, marked_processes, proc_alive, reap_zombie_children, spawn, stop_processes,
)
from .profiles import RaySettings


class RayNode:
    """One `ray start ... --block` child process and everything it spawns."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path, marker: str):
        self.args, self.env, self.log, self.marker = args, env, log, marker
        self.proc: subprocess.Popen | None = None
        self.seen: dict[tuple[int, int], Proc] = {}  # every process of this node ever found, by (pid, start)
        self._lock = threading.Lock()  # the recorder thread looks too

    def start(self) -> None:
        with open(self.log, "ab") as logf:
            self.proc = spawn([*compat.ray_start_command(), *self.args], self.env, stdout=logf,
                              stderr=subprocess.STDOUT)

    def exit_code(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def processes(self) -> list[Proc]:
        """This node's live processes: those carrying its marker, this task's descendants, and any
        seen before. Not the marker alone: Ray's agents set their process title, which can
        overwrite the environment that /proc shows."""
        found = marked_processes(self.marker) + descendants(os.getpid())
        with self._lock:
            self.seen.update({(p.pid, p.start): p for p in found})
            return [p for p in self.seen.values() if proc_alive(p)]

    def recorded(self) -> list[Proc]:
        with self._lock:
            return list(self.seen.values())

    def stop(self, timeout_s: float) -> tuple[list[Proc], list[Proc]]:
        """Stop it: SIGTERM to `ray start` (it stops its children), then TERM/KILL whatever of ours
        is left. Returns (processes found at the start, processes still alive at the end)."""
        procs = self.processes()
        keep = {self.proc.pid} if self.proc is not None else set()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=timeout_s * 0.5)
        left = stop_processes(procs + self.processes(), grace_s=max(1.0, timeout_s * 0.3), keep=keep)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        reap_zombie_children()
        return procs, left


def ray_start_args(layout: NodeLayout, ray: RaySettings, ip: str, cpus: int, gpus: int,
                   head_address: str | None) -> list[str]:
    """Arguments of `ray start` for one node: every port explicit, the object store capped."""
    args = [
        "--block", "--disable-usage-stats", f"--node-ip-address={ip}", f"--temp-dir={layout.temp_dir}",
        f"--num-cpus={cpus}", f"--num-gpus={gpus}", f"--object-store-memory={ray.object_store_mb * 2**20}",
        f"--node-manager-port={layout.node_manager}", f"--object-manager-port={layout.object_manager}",
        f"--metrics-export-port={layout.metrics}", f"--runtime-env-agent-port={layout.runtime_env_agent}",
        f"--dashboard-agent-listen-port={layout.agent_http}", f"--dashboard-agent-grpc-port={layout.agent_grpc}",
        f"--min-worker-port={layout.min_worker}", f"--max-worker-port={layout.max_worker}",
    ]
    if head_address is None:
        args += ["--head", f"--port={layout.gcs}", f"--ray-client-server-port={layout.client_server}"]
        if ray.dashboard:
            args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={layout.dashboard}"]
        else:
            args += ["--include-dashboard=false"]
    else:
        args += [f"--address={head_address}"]
    return args


def ray_env(token: Path, marker: str, gpus: list[str], ray: RaySettings,
            base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the `ray start` child (and so of every Ray process of the node)."""
    env = dict(os.environ if base is None else base)
    for key in ("RAY_ADDRESS", "RAY_AUTH_TOKEN"):  # the token comes from our file, the address from us
        env.pop(key, None)
    env.update({
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN_PATH": str(token),
        "RAY_USAGE_STATS_ENABLED": "0",
        # on SIGTERM a node drains for up to 30 s by default: longer than we have before SIGKILL
        "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": str(max(1.0, ray.stop_timeout_s / 3)),
        "CUDA_VISIBLE_DEVICES": ",".join(gpus),
        ENV_MARK: marker,
    })
    return env


class NodeRecord:
    """node.RANK.json: who this task is and the Ray processes it runs, refreshed every 2 seconds
    from a thread (task 0's main thread runs the driver), so the PIDs are known if we are killed."""

    def __init__(self, path: Path, node: RayNode, info: dict[str, Any]):
        self.path, self.node, self.info = path, node, info
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name="ray-grok-recorder")

    def record(self, state: str = "running", **extra: Any) -> None:
        self.node.processes()
        # rewritten every 2 s and informational: not worth an fsync each time on a shared file system
        write_json(self.path, {**self.info, "state": state, "updated": time.time(), **extra,
                               "processes": [asdict(p) for p in self.node.recorded()]}, durable=False)

    def _loop(self) -> None:
        while not self._stop.wait(2.0):
            with contextlib.suppress(Exception):  # a record is informational
                self.record()

    def start(self) -> NodeRecord:
        self.record()
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=2)
