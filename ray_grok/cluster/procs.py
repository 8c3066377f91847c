"""Processes of a Ray node, found without Ray's help and stopped by PID: by a marker in their
environment (RAY_GROK_RAY_NODE=JOB/RANK) and as descendants of the task, which is a child
subreaper so that orphans of its Ray processes stay in its process tree (where Slurm's process
tracking also finds them). A process is recorded with its start time, so a reused PID is never
taken for it. Never by name (`ray stop`, pkill): that would stop every Ray on a shared node.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ENV_MARK = "RAY_GROK_RAY_NODE"  # in the environment of every Ray process started here: JOB/RANK


@dataclass(frozen=True)
class Proc:
    pid: int
    start: int  # start time in clock ticks since boot: tells a reused PID apart
    comm: str


def _stat(pid: int) -> tuple[str, int, int, str] | None:
    """(state, ppid, start ticks, comm) of a process, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = text[text.index("(") + 1:text.rindex(")")]
    rest = text[text.rindex(")") + 2:].split()
    return rest[0], int(rest[1]), int(rest[19]), comm


def proc_alive(p: Proc) -> bool:
    st = _stat(p.pid)
    return st is not None and st[2] == p.start and st[0] not in ("Z", "X")


def marked_processes(marker: str, prefix: bool = False) -> list[Proc]:
    """Live processes whose environment holds RAY_GROK_RAY_NODE=marker (or a value starting with it)."""
    want = f"{ENV_MARK}={marker}".encode()
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry.name}/environ").read_bytes()
        except OSError:
            continue
        if want not in environ:
            continue
        if not any(v == want or (prefix and v.startswith(want)) for v in environ.split(b"\0")):
            continue
        st = _stat(int(entry.name))
        if st is not None and st[0] not in ("Z", "X"):
            found.append(Proc(int(entry.name), st[2], st[3]))
    return found


def descendants(root: int) -> list[Proc]:
    """Live descendants of process `root` (with the task as subreaper, orphans of its Ray
    processes stay among them)."""
    children: dict[int, list[int]] = {}
    stats: dict[int, tuple[str, int, int, str]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            st = _stat(int(entry.name))
            if st is not None:
                stats[int(entry.name)] = st
                children.setdefault(st[1], []).append(int(entry.name))
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        st = stats[pid]
        if st[0] not in ("Z", "X"):
            found.append(Proc(pid, st[2], st[3]))
        todo.extend(children.get(pid, []))
    return found


def reap_zombie_children(keep: set[int] = frozenset()) -> None:
    """waitpid our zombie children that no Popen owns (orphans reparented to us as subreaper)."""
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and int(entry.name) not in keep:
            st = _stat(int(entry.name))
            if st is not None and st[1] == me and st[0] == "Z":
                with contextlib.suppress(ChildProcessError, OSError):
                    os.waitpid(int(entry.name), os.WNOHANG)


def stop_processes(procs: list[Proc], grace_s: float, keep: set[int] = frozenset()) -> list[Proc]:
    """SIGTERM, up to grace_s, SIGKILL, up to 5 s more; returns those still alive (should be none)."""
    def alive() -> list[Proc]:
        reap_zombie_children(keep)
        return [p for p in procs if proc_alive(p)]

    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        for p in alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, sig)
        deadline = time.monotonic() + wait_s
        while alive() and time.monotonic() < deadline:
            time.sleep(0.1)
    return alive()


def become_subreaper() -> bool:
    """PR_SET_CHILD_SUBREAPER: orphans of our descendants are reparented to us, not to init, so they
    stay in the task's process tree (and in Slurm's process tracking) until we stop them."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def spawn(cmd: list[str], env: dict[str, str], **kwargs: Any) -> subprocess.Popen:
    """Popen with SIGUSR2 ignored in the child and everything it starts (an ignored signal stays
    ignored across exec): Slurm sends the time-limit warning to every process of the job step, and
    only the task process should act on it, not Ray's daemons, trial workers or the driver."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGUSR2, signal.SIG_IGN) if main else None
    try:
        return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, **kwargs)
    finally:
        if main:
            signal.signal(signal.SIGUSR2, old)

