"""The Ray-in-a-job bootstrap without Slurm: two tasks started as plain processes on this host
(TaskEnv.local) form a 2-node Ray cluster, head and worker; task 0 runs a driver against it, and
both stop their Ray nodes, leaving no process and no temp dir behind. tests/test_slurm_dev.py runs
the same code as the tasks of a real Slurm job."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ray_grok.cluster.procs import Proc, marked_processes, proc_alive

pytestmark = pytest.mark.slow

TASK = """
import functools, json, sys
from pathlib import Path
from ray_grok.cluster.bootstrap import run_task
from ray_grok.cluster.driver import probe_driver
from ray_grok.cluster.profiles import RaySettings
from ray_grok.cluster.task_env import TaskEnv

job, rank, run_dir, out = sys.argv[1], int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
driver = functools.partial(probe_driver, out=out) if rank == 0 else None
ray = RaySettings(object_store_mb=100, worker_ports=32, join_timeout_s=180)
print(json.dumps(run_task(driver, run_dir=run_dir, ray=ray, env=TaskEnv.local(job, rank, num_tasks=2))))
"""


def test_two_local_tasks_form_a_two_node_ray_cluster(tmp_path):
    job = str(700000 + os.getpid() % 100000)  # its own block of ports and its own temp dirs
    run_dir, out = tmp_path / "run", tmp_path / "probe.jsonl"
    tasks = [subprocess.Popen([sys.executable, "-c", TASK, job, str(rank), str(run_dir), str(out)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    try:
        logs = [t.communicate(timeout=300)[0] for t in tasks]
    finally:
        for t in tasks:
            t.kill()
    assert [t.returncode for t in tasks] == [0, 0], "\n".join(logs)
    report = json.loads(out.read_text().splitlines()[0])
    assert report["nodes_alive"] == 2, report
    assert report["task_markers"] == [f"{job}/0", f"{job}/1"]  # the driver ran a task on each Ray node
    assert (report["auth_mode"], report["token_mode"]) == ("token", "0o600")
    assert json.loads(logs[0].splitlines()[-1]) == report  # task 0 returns what the driver returned
    assert "Ray cluster up: 2 nodes" in logs[0] and "joining the Ray head" in logs[1]

    assert not marked_processes(f"{job}/", prefix=True), "Ray processes of the job are still running"
    records = sorted(Path(run_dir).glob(f"slurm/{job}/ray.0/node.*.json"))
    assert len(records) == 2
    for path in records:
        record = json.loads(path.read_text())
        assert record["state"] == "done", path
        assert not [p for p in (Proc(**q) for q in record["processes"]) if proc_alive(p)]
        assert not Path(record["temp_dir"]).exists()
