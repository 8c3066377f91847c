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

from ray_grok.cluster.layout import NodeLayout

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
# one xdist worker runs every test of the Slurm group, one after another: they share the
# machine's test Slurm (tests/test_slurm_dev.py) or its test hosts (tests/test_hosts.py)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm"),
              pytest.mark.skipif(REASON is not None, reason=REASON or "")]
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


def job_processes(host: str, job_id: str | None) -> dict[int, str]:
    """Processes of HOST (all of them, or only those of Slurm job JOB_ID: every process a job's
    task starts, Ray's included, inherits SLURM_JOB_ID; slurmd and slurmstepd do not)."""
    found = host_processes(host)
    if job_id is None:
        return found
    want = f"SLURM_JOB_ID={job_id}".encode()
    mine = {}
    for pid, comm in found.items():
        try:
            if want in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                mine[pid] = comm
        except OSError:
            continue
    return mine


def kill_host_processes(host: str, job_id: str | None = None) -> list[str]:
    """SIGKILL every process of HOST (or of job JOB_ID on it), in rounds until none is left (a
    dying Ray node may still spawn one); returns the commands killed."""
    killed: list[str] = []
    for _ in range(20):
        victims = job_processes(host, job_id)
        if not victims:
            return killed
        for pid, comm in victims.items():
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(comm)
            except ProcessLookupError:
                pass
        time.sleep(0.2)
    raise AssertionError(f"processes of {host} survive SIGKILL: {job_processes(host, job_id)}")


def assert_nothing_left(run_dir: Path, job_id: str, killed: str | None = None) -> None:
    """After the job: the compute hosts run nothing but slurmd (no task, no Ray process, no
    slurmstepd; waited for, as Slurm tears the step down), and every task's temp dir is gone
    from its own host's /tmp, except on a host whose task was KILLED (SIGKILL leaves no chance to
    clean up; the next start of the same job there removes it)."""
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
        if rec["host"] == killed:
            continue
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
    assert f"ray-grok status {run_dir}" in res.stdout and "'complete': True" in res.stdout, res.stdout
    logs = [(run_dir / f"slurm/{job_id}/{job_id}_{rank}_log.out").read_text() for rank in (0, 1)]
    assert "Ray cluster up: 2 nodes" in logs[0]
    assert f"[ray-grok task 0/2 on {HEAD}] starting the Ray head at {HOSTS[HEAD]['data_ip']}:" in logs[0]
    assert f"[ray-grok task 1/2 on {WORKER}] joining the Ray head at {HOSTS[HEAD]['data_ip']}:" in logs[1]
    hosts = {tid: {h for h, _ in attempts(d)} for tid, d in trial_dirs(run_dir).items()}
    on_each = {h: sum(h in hs for hs in hosts.values()) for h in (HEAD, WORKER)}
    print(f"\njob {job_id}: smoke grid across {HEAD} and {WORKER} in {time.time() - t0:.0f} s; "
          f"trials per host {on_each}")
    assert all(on_each.values()), f"trials ran on one host only: {on_each}"
    assert set().union(*hosts.values()) == {HEAD, WORKER}
    assert_every_trial_once(run_dir)
    assert_nothing_left(run_dir, job_id)


# ---------------------------------------------------------------------------------------------
# One probe job held up while the tests look at it from the hosts
# ---------------------------------------------------------------------------------------------

SUBMIT_PROBE = """
import functools, json, sys
from pathlib import Path
from ray_grok.cluster.driver import probe_driver
from ray_grok.cluster.profiles import load_profile
from ray_grok.cluster.slurm import submit
run_dir, profile, hold_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
run_dir.mkdir(parents=True, exist_ok=True)
driver = functools.partial(probe_driver, out=str(run_dir / "probe.jsonl"), hold_s=hold_s)
job = submit(load_profile(profile), run_dir, driver)
print(json.dumps(job.job_id))
"""


LISTENERS = """
import json, re, subprocess
out = subprocess.run(["ss", "-Hltnp"], capture_output=True, text=True, check=True).stdout
found = []
for line in out.splitlines():
    local, users = line.split()[3], line.split(None, 5)[5] if len(line.split()) > 5 else ""
    addr, port = local.rsplit(":", 1)
    addr = addr.strip("[]").removeprefix("::ffff:")
    comms = sorted(set(re.findall(r'"([^"]+)",pid=', users)))
    found.append({"addr": addr, "port": int(port), "comms": comms})
print(json.dumps(found))
"""

# Every gRPC method of Ray's own services (from Ray's generated Python protos, plus the object
# manager's, which has none), called with an empty request: a service that checks the token
# answers UNAUTHENTICATED; UNIMPLEMENTED means the port serves no such method (rejected before
# any handler runs); anything else (OK, or an error from a handler) would be an answer.
PORT_PROBE = """
import grpc, http.client, importlib, json, pkgutil, sys
import ray.core.generated as generated
methods = ["/ray.rpc.ObjectManagerService/Push", "/ray.rpc.ObjectManagerService/Pull"]
for mod in pkgutil.iter_modules(generated.__path__):
    if mod.name.endswith("_pb2"):
        try:
            m = importlib.import_module(f"ray.core.generated.{mod.name}")
        except Exception:
            continue
        methods += [f"/{s.full_name}/{x.name}" for s in m.DESCRIPTOR.services_by_name.values() for x in s.methods]
report = {}
for target in sys.argv[1:]:
    codes = {}
    with grpc.insecure_channel(target) as channel:
        for method in methods:
            try:
                channel.unary_unary(method)(b"", timeout=5)
                code = "OK"
            except grpc.RpcError as exc:
                code = exc.code().name
            codes.setdefault(code, []).append(method)
    host, port = target.rsplit(":", 1)
    try:
        conn = http.client.HTTPConnection(host, int(port), timeout=5)
        conn.request("GET", "/")
        http_status = conn.getresponse().status
    except Exception as exc:
        http_status = type(exc).__name__
    report[target] = {"grpc": {k: (len(v), v[:3]) for k, v in codes.items()}, "http": http_status}
print(json.dumps({"methods": len(methods), "ports": report}))
"""

# The stranger tries to join as a Ray worker node, and to connect a driver, once without any
# token and once with a wrong one. RAY_gcs_server_port_wait_time_s=2 only shortens Ray's ~20 s of
# retries: each attempt is refused as a whole, and the error must say it is the token.
STRANGER_JOIN = """
import json, os, subprocess, sys
head = sys.argv[1]
open("/tmp/wrong-token", "w").write("0" * 64)
base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
base.update(RAY_USAGE_STATS_ENABLED="0", RAY_gcs_server_port_wait_time_s="2")
modes = {"no token": {"RAY_AUTH_MODE": "disabled"},
         "wrong token": {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": "/tmp/wrong-token"}}
drive = "import ray, sys; ray.init(address=sys.argv[1]); print('CONNECTED', len(ray.nodes()))"
procs = {}
for mode, env in modes.items():
    procs[f"join, {mode}"] = subprocess.Popen(
        ["ray", "start", f"--address={head}", "--block", f"--temp-dir=/tmp/stranger-{len(procs)}", "--num-cpus=1",
         "--object-store-memory=80000000", "--disable-usage-stats"],
        env={**base, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    procs[f"driver, {mode}"] = subprocess.Popen([sys.executable, "-c", drive, head], env={**base, **env},
                                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
report = {}
for name, p in procs.items():
    try:
        out = p.communicate(timeout=90)[0]
    except subprocess.TimeoutExpired:
        p.kill()
        out = p.communicate()[0] + "\\n(still running after 90 s: killed)"
    report[name] = {"rc": p.returncode, "refused_for_token": "InvalidAuthToken" in out, "tail": out[-600:]}
print(json.dumps(report))
"""

# The same host with the job's token (read from the shared file system): the GCS answers, which
# shows that the network lets the stranger through and only the token keeps it out.
GCS_NODES = """
import grpc, json, sys
from ray.core.generated import gcs_service_pb2
token = open(sys.argv[2]).read().strip()
with grpc.insecure_channel(sys.argv[1]) as channel:
    reply = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetAllNodeInfo")(
        b"", timeout=10, metadata=[("authorization", "Bearer " + token)])
nodes = gcs_service_pb2.GetAllNodeInfoReply.FromString(reply).node_info_list
print(json.dumps(sorted([n.node_manager_address, "ALIVE" if n.state == 0 else "DEAD"] for n in nodes)))
"""


@pytest.fixture(scope="class")
def held_cluster():
    """A 2-host job whose driver probes its Ray cluster (a task on each node), then holds it up
    until the tests of TestOneHeldJob are done; then it is cancelled, and nothing of it may be
    left on either host (before any other test's job starts)."""
    run_dir = LAB / "shared/tests/held_cluster"
    shutil.rmtree(run_dir, ignore_errors=True)
    job_id = py_on(LOGIN, SUBMIT_PROBE, run_dir, PROFILE, 300)
    out = run_dir / "probe.jsonl"
    wait_until(lambda: out.exists() and out.read_text().strip(), 150, "the probe job's Ray cluster", job_id)
    rdir = run_dir / f"slurm/{job_id}/ray.0"
    yield {"job_id": job_id, "run_dir": run_dir, "rendezvous": rdir,
           "report": json.loads(out.read_text().splitlines()[0]), "head": json.loads((rdir / "head.json").read_text()),
           "records": [json.loads((rdir / f"node.{rank}.json").read_text()) for rank in (0, 1)]}
    on_host(LOGIN, "scancel", job_id)
    wait_until(lambda: not in_queue(job_id), 90, "the probe job to end")
    assert_nothing_left(run_dir, job_id)


class TestOneHeldJob:
    """Tests that look at one running job from the hosts (one job for both: it costs ~20 s)."""

    def test_ray_interface_picks_the_data_network_and_the_head_advertises_it(self, held_cluster):
        """Host names resolve to the management network (eth0), the profile names data0: the head
        publishes its data0 address, both Ray nodes announce their hosts' data0 addresses (never
        loopback), and a task ran on each host."""
        head_ip, worker_ip = HOSTS[HEAD]["data_ip"], HOSTS[WORKER]["data_ip"]
        head = held_cluster["head"]
        assert (head["host"], head["address"].rsplit(":", 1)[0]) == (HEAD, head_ip)
        assert held_cluster["report"]["address"] == head["address"]
        assert held_cluster["report"]["node_ips"] == sorted([head_ip, worker_ip])  # what Ray itself lists
        assert held_cluster["report"]["task_hosts"] == [HEAD, WORKER]
        assert [(r["host"], r["ip"]) for r in held_cluster["records"]] == [(HEAD, head_ip), (WORKER, worker_ip)]
        # the choice is ray.interface's: on the head's host, without it the address would be eth0's
        chosen = py_on(HEAD, "import json; from ray_grok.cluster.layout import node_ip; "
                             "print(json.dumps([node_ip('data0', multi_node=True), node_ip(None, multi_node=True)]))")
        assert chosen == [head_ip, HOSTS[HEAD]["ip"]]

    def test_a_stranger_without_the_token_cannot_join_submit_or_get_an_answer(self, held_cluster):
        """rgh3 reaches every port of the job (same networks) but has no token: its Ray node cannot
        join, its driver cannot connect, and no listening port of the job, on either host, answers
        it; the dashboard is off. With the token the same host gets answers (the control)."""
        head = held_cluster["head"]["address"]
        try:
            joins = py_on(STRANGER, STRANGER_JOIN, head, timeout=200)
            for name, r in joins.items():
                assert r["rc"] not in (0, None) and r["refused_for_token"], f"{name}: {r}"
        finally:
            kill_host_processes(STRANGER)

        listeners = {h: py_on(h, LISTENERS) for h in (HEAD, WORKER)}
        targets, blocks = [], {}
        for rec in held_cluster["records"]:
            lo, hi = rec["ports"]
            blocks[rec["host"]] = (lo, hi)
            for sock in listeners[rec["host"]]:
                if set(sock["comms"]) & {"slurmd", "slurmstepd", "srun"}:
                    continue  # Slurm's own (munge-authenticated), not Ray's
                assert lo <= sock["port"] <= hi, f"{rec['host']}: {sock} listens outside the job's block {lo}-{hi}"
                if sock["addr"].startswith("127.") or sock["addr"] == "::1":
                    continue  # not reachable from another host
                addrs = [HOSTS[rec["host"]]["ip"], HOSTS[rec["host"]]["data_ip"]]
                targets += [f"{a}:{sock['port']}" for a in addrs if sock["addr"] in ("*", "0.0.0.0", "::", a)]
        head_lo = blocks[HEAD][0]
        dashboard = NodeLayout(slot=0, base=head_lo, worker_ports=0, temp_dir="").dashboard
        assert not [s for s in listeners[HEAD] if s["port"] in (dashboard, 8265)], "a dashboard is listening"
        assert f"{HOSTS[HEAD]['data_ip']}:{head_lo}" in targets  # the GCS is among them

        probe = py_on(STRANGER, PORT_PROBE, *targets, timeout=300)
        print(f"\n{len(targets)} listening addresses of job {held_cluster['job_id']} x {probe['methods']} gRPC methods "
              f"from {STRANGER} without a token: " + "; ".join(
                  f"{t} {sorted(r['grpc'])} http {r['http']}" for t, r in probe["ports"].items()))
        for target, r in probe["ports"].items():
            answered = set(r["grpc"]) - {"UNAUTHENTICATED", "UNIMPLEMENTED", "UNAVAILABLE"}
            assert not answered, f"{target} answered without the token: {r}"
            assert r["http"] not in range(200, 400), f"{target} answered HTTP GET / with {r['http']}"
            # reached and refused on the token (gRPC) or on the missing credentials (HTTP 401)
            assert "UNAUTHENTICATED" in r["grpc"] or r["http"] == 401, f"{target}: never refused for the token: {r}"

        nodes = py_on(STRANGER, GCS_NODES, head, held_cluster["rendezvous"] / "token")
        assert nodes == sorted([[HOSTS[HEAD]["data_ip"], "ALIVE"], [HOSTS[WORKER]["data_ip"], "ALIVE"]]), nodes


# ---------------------------------------------------------------------------------------------
# The worker's host loses the job's processes mid-sweep
# ---------------------------------------------------------------------------------------------

# 4 tiny CPU trials, one per Ray node at a time (each node has 1 CPU): long enough (~15 s each) for
# a trial on the worker to be killed mid-way, after some of its checkpoints.
KILL_GRID = """\
# 4 tiny CPU trials of 2,000 steps, two at a time: one on each host of cluster/dev-hosts.yaml
name: hosts-kill
base:
  task: {p: 11, n_id: 8, n_ood: 16, n_examples: 8}
  model: {width: 32, heads: 2}
  train: {steps: 2000, batch_size: 32, lr: 3.0e-3, warmup_steps: 30, weight_decay: 0.1}
  eval: {every: 200, batches: 2}
  checkpoint: {every: 200}
  runtime: {device: cpu, log_every: 200}
axes:
  model.depth: [1, 2]
seeds: 2
resources: {cpu: 1, gpu: 0}
run: {max_concurrent: 2, max_failures: 2}
"""
KILL_AT_STEP = 400  # two checkpoints in


def test_worker_host_killed_mid_sweep_its_trials_resume_on_the_head_host(run_dir):
    """Every process of the job on rgh2 (the Slurm task and its Ray node with a running trial) is
    SIGKILLed at once, as when the OOM killer or a crash takes them (slurmd and slurmstepd, which
    are Slurm's, survive, as they do then). Ray declares the node dead, Tune retries the trial, which continues on rgh1
    from its last checkpoint; the sweep completes with every trial exactly once."""
    grid = run_dir.parent / f"{run_dir.name}.yaml"  # shared: the login node does not see our /tmp
    grid.write_text(KILL_GRID)
    t0 = time.time()
    res = ray_grok("launch", grid, "--cluster", PROFILE, "--out", run_dir)
    assert res.returncode == 0, res.stdout + res.stderr
    job_id = submitted_job_id(res.stdout)

    victim: dict[str, Any] = {}

    def worker_trial_checkpointed() -> bool:
        if not (run_dir / "plan.json").exists():
            return False
        for tid, d in trial_dirs(run_dir).items():
            tried = attempts(d)
            status = json.loads((d / "status.json").read_text()) if (d / "status.json").exists() else {}
            if tried and tried[-1][0] == WORKER and status.get("state") == "running" \
                    and status.get("step", 0) >= KILL_AT_STEP:
                victim.update(trial=tid, dir=d, step=status["step"])
                return True
        return False

    wait_until(worker_trial_checkpointed, 240, f"a trial on {WORKER} to reach step {KILL_AT_STEP}", job_id)
    t_kill = time.time()
    killed = kill_host_processes(WORKER, job_id)
    print(f"\njob {job_id}: killed {len(killed)} processes on {WORKER} {sorted(set(killed))} "
          f"{t_kill - t0:.0f} s after launch, trial {victim['trial']} at step {victim['step']}")
    assert {"raylet", "python"} <= set(killed) or {"raylet", "python3"} <= set(killed), killed

    wait_until(lambda: not in_queue(job_id), 300, "the sweep to finish on the head's host", job_id)
    print(f"job {job_id}: sweep over {time.time() - t_kill:.0f} s after the kill, {time.time() - t0:.0f} s in all")
    log = (run_dir / f"slurm/{job_id}/{job_id}_0_log.out").read_text()
    assert "Ray cluster up: 2 nodes" in log
    tried = attempts(victim["dir"])
    assert tried[0][0] == WORKER and tried[-1][0] == HEAD, tried
    assert tried[-1][1] >= KILL_AT_STEP, f"the retry did not continue from a checkpoint: {tried}"
    late = [tid for tid, d in trial_dirs(run_dir).items() if (d / "attempts.json").exists()
            and json.loads((d / "attempts.json").read_text())["last_start"] > t_kill]
    assert victim["trial"] in late
    for tid in late:
        assert attempts(trial_dirs(run_dir)[tid])[-1][0] == HEAD, tid  # the dead host gets no more work
    assert_every_trial_once(run_dir)
    assert_nothing_left(run_dir, job_id, killed=WORKER)


# ---------------------------------------------------------------------------------------------
# The time limit: requeue and resume with two hosts
# ---------------------------------------------------------------------------------------------

# As tests/test_slurm_dev.py's time-limit test (its comments explain the sizes): a real 2-minute
# limit, the warning 45 s before it, 8 trials of 4,000 steps two at a time, so the warning lands
# mid-sweep. That test lets the job requeue until the sweep is done (3-5 starts, more on a busy
# machine); this one checks one full cycle across two hosts and then, to bound its time, raises
# the requeued job's limit (as an administrator can) so that its second start finishes the sweep.
TIME_LIMIT_GRID = """\
# 8 tiny CPU trials of 4,000 steps, two at a time: a sweep that the time limit interrupts midway
name: hosts-time-limit
base:
  task: {p: 11, n_ood: 16, n_examples: 8}
  model: {width: 32, heads: 2}
  train: {steps: 4000, batch_size: 32, lr: 3.0e-3, warmup_steps: 30, weight_decay: 0.1}
  eval: {every: 250, batches: 2}
  checkpoint: {every: 250}
  runtime: {device: cpu, log_every: 250}
axes:
  model.depth: [1, 2]
  task.n_id: [8, 16]
seeds: 2
resources: {cpu: 1, gpu: 0}
run: {max_concurrent: 2, max_failures: 1}
"""
TIME_LIMIT = {"time": "'2'", "signal_delay_s": "45", "max_requeues": "4"}


def test_time_limit_requeues_the_two_host_job_and_the_sweep_completes(run_dir):
    """Slurm warns the job (USR2) mid-sweep; task 0 on rgh1 stops the driver (Tune saves its
    state), requeues the job and every task stops its Ray node; the job starts again on both hosts
    with a fresh rendezvous, forms a 2-node cluster again and resumes the sweep to its end: no
    trial lost or run twice, a trial once done never written again, nothing left behind.

    The requeue is asserted on what Slurm records (its restart count) and on the second start, not
    on submitit's "Requeued job" log line: on a busy machine the requeue's SIGTERM can reach task 0
    before that line is written (seen with the suite on two workers)."""
    grid = run_dir.parent / f"{run_dir.name}.yaml"
    grid.write_text(TIME_LIMIT_GRID)
    profile = run_dir.parent / f"{run_dir.name}.profile.yaml"
    text = PROFILE.read_text()
    for key, value in TIME_LIMIT.items():
        text, n = re.subn(rf"(?m)^{key}: .*$", f"{key}: {value}", text)
        assert n == 1, key
    profile.write_text(text)
    t0 = time.time()
    res = ray_grok("launch", grid, "--cluster", profile, "--out", run_dir)
    assert res.returncode == 0, res.stdout + res.stderr
    job_id = submitted_job_id(res.stdout)
    log_path = run_dir / f"slurm/{job_id}/{job_id}_0_log.out"
    done_at: dict[str, float] = {}  # trial -> mtime of its metrics when first seen done
    at_requeue: dict[str, tuple[bool, int]] = {}  # trial -> (done, step) when the warning is in the log

    def watch() -> bool:
        if (run_dir / "plan.json").exists():
            dirs = trial_dirs(run_dir)
            status = {tid: _status(d) for tid, d in dirs.items()}
            for tid, d in dirs.items():
                if status[tid].get("state") == "done":
                    done_at.setdefault(tid, (d / "metrics.parquet").stat().st_mtime)
            if not at_requeue and log_path.exists() and "Calling checkpoint method" in log_path.read_text():
                at_requeue.update({t: (st.get("state") == "done", st.get("step", 0)) for t, st in status.items()})
                # the job requeues now: the limit it starts again with lets the sweep finish
                raised = on_host(LOGIN, "scontrol", "update", f"JobId={job_id}", "TimeLimit=15")
                assert raised.returncode == 0, raised.stderr
        return not in_queue(job_id)

    wait_until(watch, 420, "the job to requeue at its time limit and finish the sweep", job_id)
    log = log_path.read_text()
    starts = log.count("Starting with JobEnvironment")
    shown = on_host(LOGIN, "scontrol", "show", "job", "-o", job_id)  # kept MinJobAge = 300 s after the end
    record = dict(kv.split("=", 1) for kv in shown.stdout.split() if "=" in kv)
    requeues = int(record.get("Restarts", -1))
    ups = re.findall(r"Ray cluster up: (\d+) nodes", log)
    print(f"\njob {job_id}: {requeues} requeue(s), {starts} starts, Ray cluster up {ups} nodes; at the requeue "
          f"(done, step) per trial: {sorted(at_requeue.values())}; sweep complete {time.time() - t0:.0f} s "
          "after submission")
    assert (requeues, starts) == (1, 2), f"{record}\n{log}"
    assert log.count("Job has timed out") == 1 and "Calling checkpoint method" in log, log
    # warned mid-sweep: training had begun and was not over (on a busy machine no trial may be done yet)
    assert any(step > 0 for _, step in at_requeue.values()) and not all(d for d, _ in at_requeue.values()), at_requeue
    assert ups == ["2"] * starts  # every start spans both hosts again
    for restart in range(starts):
        rdir = run_dir / f"slurm/{job_id}/ray.{restart}"
        assert [json.loads((rdir / f"node.{r}.json").read_text())["host"] for r in (0, 1)] == [HEAD, WORKER]
    assert_every_trial_once(run_dir)
    for tid, d in trial_dirs(run_dir).items():
        if tid in done_at:  # finished before a requeue: not run again
            assert (d / "metrics.parquet").stat().st_mtime == done_at[tid], tid
        done, step = at_requeue[tid]
        if not done and step >= 250:  # interrupted after a checkpoint: continued from it, not from 0
            assert attempts(d)[-1][1] > 0, (tid, attempts(d))
    assert_nothing_left(run_dir, job_id)


def _status(trial_dir: Path) -> dict:
    path = trial_dir / "status.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # not there yet
        return {}
