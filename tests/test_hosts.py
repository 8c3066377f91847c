"""The cluster path across a real network boundary: a Slurm job whose Ray head and Ray worker run on
two different hosts, the test hosts of cluster/dev/hosts-up.sh (CI brings them up before pytest).

Each host is a set of Linux namespaces on this machine: its own network (eth0 on a management
network, where host names resolve and Slurm talks; data0 on a data network, the profile's
ray.interface), host name, processes and /tmp; the rest of the file system is shared, as a
cluster's is. rgh0 is the login node (slurmctld), rgh1 and rgh2 run slurmd, rgh3 is a stranger on
the same networks, outside Slurm. Every command of a test runs on one of them through
cluster/dev/on-host; nothing reaches this machine's own network. cluster/dev-hosts.yaml is the
profile: one task on each of rgh1 (Ray head and driver) and rgh2 (Ray worker).

    sudo cluster/dev/hosts-up.sh && sudo pytest tests/test_hosts.py -v -s

Every test skips, saying why, where the hosts are not up (not root, no network namespaces, no Slurm).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAB = Path(os.environ.get("RAY_GROK_HOSTS_LAB", "/var/tmp/ray-grok-hosts"))
ON_HOST = ROOT / "cluster/dev/on-host"
PROFILE = ROOT / "cluster/dev-hosts.yaml"
LOGIN, HEAD, WORKER, STRANGER = "rgh0", "rgh1", "rgh2", "rgh3"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "not root: the test hosts are network namespaces (sudo cluster/dev/hosts-up.sh, then pytest as root)"
    if not (LAB / "hosts.json").exists():
        why = (LAB / "failed").read_text().strip() if (LAB / "failed").exists() else "not brought up"
        return f"no test hosts in {LAB} ({why}); bring them up with `sudo cluster/dev/hosts-up.sh`"
    if not json.loads((LAB / "hosts.json").read_text())["slurm"]:
        return "the test hosts run no Slurm (hosts-up.sh was run with SLURM=0)"
    try:
        out = on_host(LOGIN, "sinfo", "-h", "-t", "idle", "-o", "%D", timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo on rgh0 timed out: the hosts' slurmctld is not answering"
    if out.stdout.strip() != "2":
        return f"the hosts' Slurm does not have 2 idle nodes: {out.stdout.strip()!r} {out.stderr.strip()}"
    return None


def on_host(host: str, *cmd: Any, timeout: float = 60, **kwargs: Any) -> subprocess.CompletedProcess:
    """CMD on a test host, from the repository (every host sees it: the file system is shared)."""
    return subprocess.run([str(ON_HOST), host, *map(str, cmd)], capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ, "LAB": str(LAB)}, **kwargs)


def py_on(host: str, code: str, *args: Any, timeout: float = 60) -> Any:
    """Run Python CODE on a host; it prints one JSON value last, which is returned."""
    res = on_host(host, sys.executable, "-c", code, *args, timeout=timeout)
    assert res.returncode == 0, f"on {host}: {res.stdout}\n{res.stderr}"
    return json.loads(res.stdout.strip().splitlines()[-1])


REASON = _skip_reason()
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=REASON or "")]
HOSTS = json.loads((LAB / "hosts.json").read_text())["hosts"] if REASON is None else {}


# ---------------------------------------------------------------------------------------------
# Processes of a host, seen from this machine (each host is a PID namespace under ours)
# ---------------------------------------------------------------------------------------------

def host_processes(host: str) -> dict[int, str]:
    """PID (as this machine sees it) -> command name of every process of HOST but its init."""
    init = HOSTS[host]["init"]
    ns = os.readlink(f"/proc/{init}/ns/pid")
    found = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == init:
            continue
        try:
            if os.readlink(f"/proc/{entry.name}/ns/pid") == ns:
                found[int(entry.name)] = Path(f"/proc/{entry.name}/comm").read_text().strip()
        except OSError:
            continue  # gone meanwhile
    return found


def kill_host_processes(host: str, spare: set[str]) -> list[str]:
    """SIGKILL every process of HOST whose command is not in SPARE, in rounds until none is left
    (a dying Ray node may still spawn one); returns the commands killed."""
    killed: list[str] = []
    for _ in range(20):
        victims = {pid: comm for pid, comm in host_processes(host).items() if comm not in spare}
        if not victims:
            return killed
        for pid, comm in victims.items():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(comm)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"processes of {host} survive SIGKILL: {host_processes(host)}")


def assert_nothing_left(run_dir: Path, job_id: str) -> None:
    """After the job: the compute hosts run nothing but slurmd (no task, no Ray process, no
    slurmstepd; waited for, as Slurm tears the step down), and every task's temp dir is gone
    from its own host's /tmp."""
    deadline = time.time() + 30
    left = {}
    while time.time() < deadline:
        left = {h: p for h in (HEAD, WORKER) if (p := {k: v for k, v in host_processes(h).items() if v != "slurmd"})}
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"job {job_id} left processes on the compute hosts: {left}"
    records = sorted(run_dir.glob(f"slurm/{job_id}/ray.*/node.*.json"))
    assert records, f"no node records of job {job_id}"
    for path in records:
        rec = json.loads(path.read_text())  # the host's /tmp is LAB/host/HOST/tmp here
        local = LAB / "host" / rec["host"] / "tmp" / Path(rec["temp_dir"]).relative_to("/tmp")
        assert not local.exists(), f"{path}: temp dir {rec['temp_dir']} left on {rec['host']}"


# ---------------------------------------------------------------------------------------------
# Jobs, run directories, trials
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def run_dir(request) -> Path:
    """On the shared file system (a host's /tmp is its own); the last run's is kept to look at."""
    path = LAB / "shared/tests" / request.node.name
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def ray_grok(*args: Any, timeout: float = 600) -> subprocess.CompletedProcess:
    """`ray-grok ...` on the login node, as a user runs it there."""
    return on_host(LOGIN, sys.executable, "-m", "ray_grok.cli", *args, timeout=timeout)


def submitted_job_id(out: str) -> str:
    m = re.search(r"submitted Slurm job (\d+)", out)
    assert m, out
    return m.group(1)


def in_queue(job_id: str) -> bool:
    return bool(on_host(LOGIN, "squeue", "-h", "-j", job_id).stdout.strip())


def wait_until(predicate, timeout: float, what: str, job_id: str | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    if job_id:
        on_host(LOGIN, "scancel", job_id)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def attempts(trial_dir: Path) -> list[tuple[str, int]]:
    """(host, step it resumed from, 0 for a fresh start) of each attempt, from the trial's train.log."""
    found: list[tuple[str, int]] = []
    log = trial_dir / "train.log"
    for line in (log.read_text().splitlines() if log.exists() else []):
        if m := re.match(r"== \S+: attempt \d+ at .* on (\S+) \(pid", line):
            found.append((m.group(1), 0))
        elif (m := re.match(r"resuming .* from step (\d+)", line)) and found:
            found[-1] = (found[-1][0], int(m.group(1)))
    return found


def trial_dirs(run_dir: Path) -> dict[str, Path]:
    from ray_grok.results.plan import read_plan

    return {e.trial_id: run_dir / e.dir for e in read_plan(run_dir).entries}


def assert_every_trial_once(run_dir: Path) -> None:
    """Every planned trial is in the results exactly once, done, its curve without a repeated step."""
    import pandas as pd

    dirs = trial_dirs(run_dir)
    trials = pd.read_parquet(run_dir / "results/trials")
    assert sorted(trials["trial_id"]) == sorted(dirs)
    assert set(trials["status"]) == {"done"}
    for tid, d in dirs.items():
        steps = pd.read_parquet(d / "metrics.parquet")["step"]
        assert steps.is_unique and steps.is_monotonic_increasing, tid


# ---------------------------------------------------------------------------------------------
# The smoke grid across two hosts
# ---------------------------------------------------------------------------------------------

def test_smoke_grid_runs_on_a_ray_cluster_across_two_hosts(run_dir):
    """`ray-grok launch --cluster --wait` on the login node: the head on rgh1 and a worker on rgh2
    form one Ray cluster over the data network, trials run on both hosts, each exactly once, and
    nothing of the job is left on either host."""
    t0 = time.time()
    res = ray_grok("launch", "grids/smoke.yaml", "--cluster", PROFILE, "--out", run_dir, "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    job_id = submitted_job_id(res.stdout)
    assert "'complete': True" in res.stdout, res.stdout
    logs = [(run_dir / f"slurm/{job_id}/{job_id}_{rank}_log.out").read_text() for rank in (0, 1)]
    assert "Ray cluster up: 2 nodes" in logs[0]
    assert f"[ray-grok task 0/2 on {HEAD}] starting the Ray head at {HOSTS[HEAD]['data_ip']}:" in logs[0]
    assert f"[ray-grok task 1/2 on {WORKER}] joining the Ray head at {HOSTS[HEAD]['data_ip']}:" in logs[1]
    hosts = {tid: {h for h, _ in attempts(d)} for tid, d in trial_dirs(run_dir).items()}
    on_each = {h: sum(h in hs for hs in hosts.values()) for h in (HEAD, WORKER)}
    print(f"\njob {job_id}: smoke grid across {HEAD} and {WORKER} in {time.time() - t0:.0f} s; trials per host {on_each}")
    assert all(on_each.values()), f"trials ran on one host only: {on_each}"
    assert set().union(*hosts.values()) == {HEAD, WORKER}
    assert_every_trial_once(run_dir)
    assert_nothing_left(run_dir, job_id)
