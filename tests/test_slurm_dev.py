"""The Slurm path on a real Slurm: the single-node test cluster of cluster/dev/slurm-up.sh (CI brings
it up before pytest). A 2-task job runs a 2-node Ray cluster (head + one worker) on one host.
Every test skips, saying why, where there is no usable Slurm.

    sudo cluster/dev/slurm-up.sh && pytest tests/test_slurm_dev.py -v -s
"""
from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import pytest

from ray_grok.cluster.profiles import SlurmProfile, load_profile
from ray_grok.cluster.procs import Proc, marked_processes, proc_alive
from ray_grok.cluster.bootstrap import HEAD_FILE
from ray_grok.cluster.driver import probe_driver
from ray_grok.cluster.slurm import driver_result, submit
from ray_grok.cluster.task_env import rendezvous_dir

ROOT = Path(__file__).resolve().parents[1]
DEV_PROFILE = ROOT / "cluster/dev-slurm.yaml"


def _skip_reason() -> str | None:
    if shutil.which("sinfo") is None or shutil.which("sbatch") is None:
        return "no Slurm here (sinfo/sbatch not on PATH); bring up the test Slurm with `sudo cluster/dev/slurm-up.sh`"
    try:
        out = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%T %G"], capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "sinfo timed out: slurmctld is not answering"
    if out.returncode != 0:
        return f"sinfo failed: {out.stderr.strip()}"
    rows = [line.split() for line in out.stdout.splitlines() if line.strip()]
    if not rows:
        return "no 'debug' partition (cluster/dev-slurm.yaml's); use the test Slurm of cluster/dev/slurm-up.sh"
    if not any(r[0] in ("idle", "mixed") for r in rows):
        return f"no idle Slurm node in partition debug (states: {[r[0] for r in rows]})"
    if not any("gpu" in r[-1] for r in rows):
        return "the debug partition has no GPU gres (slurm-up.sh with FAKE_GPU=1 gives it a fake one)"
    sacct = subprocess.run(["sacct", "-j", "1", "-o", "JobID,State,NodeList", "--parsable2"],
                           capture_output=True, text=True, timeout=20)
    if sacct.returncode != 0:
        return "sacct fails (no accounting database?): put the stand-in cluster/dev/sacct on PATH"
    return None


REASON = _skip_reason()
# one xdist worker runs every test of the Slurm group, one after another: they share the
# machine's test Slurm (tests/test_slurm_dev.py) or its test hosts (tests/test_hosts.py)
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("slurm"),
              pytest.mark.skipif(REASON is not None, reason=REASON or "")]

# Two sweep tests here have a two-host twin in tests/test_hosts.py that asserts everything they do
# across a real network boundary (a 2-node Ray cluster of one Slurm job, every trial once, nothing
# left behind; a time limit's requeue resumed to the end). Where the test hosts are up the twin
# runs instead, saving CI about 3.5 minutes; where they cannot be made (no network namespaces),
# these single-host versions are the Slurm sweep's only real test and run.
from test_hosts import REASON as HOSTS_REASON  # noqa: E402  (after the skip rule it sits beside)

ran_across_two_hosts = pytest.mark.skipif(
    HOSTS_REASON is None, reason="the test hosts are up: tests/test_hosts.py runs this test's two-host twin")


def dev_profile(**changes) -> SlurmProfile:
    profile = load_profile(DEV_PROFILE)
    assert isinstance(profile, SlurmProfile)
    return dataclasses.replace(profile, **changes)


def in_queue(job_id: str) -> bool:
    return bool(subprocess.run(["squeue", "-h", "-j", job_id], capture_output=True, text=True).stdout.strip())


def wait_until(predicate, timeout: float, what: str, job_id: str | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    if job_id:
        subprocess.run(["scancel", job_id])
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")


def probe_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def assert_no_process_left(run_dir: Path, job_id: str) -> set[int]:
    """Nothing of the job runs any more: no process carries its marker, every PID its tasks
    recorded is gone, the per-job temp dirs are removed. Returns the recorded PIDs."""
    left = marked_processes(f"{job_id}/", prefix=True)
    assert not left, f"processes of job {job_id} still running: {left}"
    records = sorted(run_dir.glob(f"slurm/{job_id}/ray.*/node.*.json"))
    assert records, f"no node records of job {job_id}"
    recorded: set[int] = set()
    for path in records:
        rec = json.loads(path.read_text())
        procs = [Proc(**p) for p in rec["processes"]]
        recorded |= {p.pid for p in procs}
        alive = [p for p in procs if proc_alive(p)]
        assert not alive, f"{path}: recorded processes still alive: {alive}"
        assert not Path(rec["temp_dir"]).exists(), f"{path}: temp dir {rec['temp_dir']} left behind"
    return recorded


@pytest.fixture
def run_dir(tmp_path):
    return tmp_path / "run"


def test_two_task_job_runs_a_two_node_ray_cluster(run_dir):
    t0 = time.time()
    out = run_dir / "probe.jsonl"
    job = submit(dev_profile(), run_dir, functools.partial(probe_driver, out=str(out)))
    wait_until(lambda: not in_queue(job.job_id), 180, "the job to finish", job.job_id)
    report = driver_result(job)
    print(f"\njob {job.job_id}: done in {time.time() - t0:.1f} s; Ray up and probed: {report}")
    assert report["nodes_alive"] == 2
    assert report["task_markers"] == [f"{job.job_id}/0", f"{job.job_id}/1"]  # a task ran on each Ray node
    assert (report["auth_mode"], report["token_mode"]) == ("token", "0o600")
    head = json.loads((rendezvous_dir(run_dir, job.job_id, 0) / HEAD_FILE).read_text())
    assert head["restart"] == 0 and head["address"] == report["address"]
    assert len(assert_no_process_left(run_dir, job.job_id)) >= 6  # gcs, raylets, agents, workers, ...


def test_scancel_mid_job_leaves_no_ray_process_and_a_later_launch_runs(run_dir):
    out = run_dir / "probe.jsonl"
    job = submit(dev_profile(), run_dir, functools.partial(probe_driver, out=str(out), hold_s=600))
    wait_until(lambda: probe_lines(out), 180, "the Ray cluster to come up", job.job_id)
    running = marked_processes(f"{job.job_id}/", prefix=True)
    assert {p.comm for p in running} >= {"gcs_server", "raylet"}
    t0 = time.time()
    subprocess.run(["scancel", job.job_id], check=True)
    wait_until(lambda: not in_queue(job.job_id), 90, "the cancelled job to leave the queue")
    print(f"\njob {job.job_id}: {len(running)} Ray processes; cancelled job gone in {time.time() - t0:.1f} s")
    assert not [p for p in running if proc_alive(p)]
    assert assert_no_process_left(run_dir, job.job_id)
    for path in rendezvous_dir(run_dir, job.job_id, 0).glob("node.*.json"):
        assert json.loads(path.read_text())["state"].startswith("stopped"), path

    again = submit(dev_profile(), run_dir, functools.partial(probe_driver, out=str(out)))
    wait_until(lambda: not in_queue(again.job_id), 180, "the second job to finish", again.job_id)
    assert driver_result(again)["nodes_alive"] == 2
    assert [line["job_id"] for line in probe_lines(out)] == [job.job_id, again.job_id]
    assert_no_process_left(run_dir, again.job_id)


def _log_time(line: str) -> float:
    stamp = re.search(r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+)\)", line).group(1)
    return datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def slurm_record(job_id: str) -> dict[str, str]:
    """What slurmctld records of a job (`scontrol show job`, kept MinJobAge = 300 s after it ends)."""
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def test_time_limit_signal_requeues_the_job_and_it_starts_again(run_dir):
    """A 1-minute limit with the warning 30 s before it (Slurm may send it up to 60 s early, so it
    can come at any point of a start): task 0 checkpoints, requeues, the job starts again with a
    fresh rendezvous; with max_requeues=1 the second warning ends it. Nothing is left behind.

    The requeue is asserted on what Slurm records (its restart count, the final state), not on
    submitit's "Requeued job" log line: on a busy machine the requeue can kill the task before
    that line is written."""
    out = run_dir / "probe.jsonl"
    profile = dev_profile(time="1", signal_delay_s=30, max_requeues=1)
    t0 = time.time()
    job = submit(profile, run_dir, functools.partial(probe_driver, out=str(out), hold_s=600))
    wait_until(lambda: not in_queue(job.job_id), 300, "the job to be requeued once and end", job.job_id)
    record = slurm_record(job.job_id)
    log = (run_dir / f"slurm/{job.job_id}/{job.job_id}_0_log.out").read_text()
    assert record.get("Restarts") == "1", f"{record}\n{log}"  # requeued once, by the checkpoint
    # the second warning ends it: submitit declines a second requeue and exits with an error
    # (FAILED), unless Slurm's own limit kills the task first (TIMEOUT)
    assert record.get("JobState") in ("FAILED", "TIMEOUT"), f"{record}\n{log}"
    assert "not requeued because: timed-out too many times" in log, log
    assert "Calling checkpoint method" in log
    for restart in (0, 1):  # each start ran the bootstrap, with its own rendezvous
        assert (rendezvous_dir(run_dir, job.job_id, restart) / "node.0.json").exists()
    assert not rendezvous_dir(run_dir, job.job_id, 2).exists()
    print(f"\njob {job.job_id}: {record.get('Restarts')} restart, ended {record.get('JobState')}; "
          f"all over in {time.time() - t0:.0f} s")
    assert_no_process_left(run_dir, job.job_id)


def test_the_sbatch_script_runs_the_same_bootstrap(run_dir):
    run_dir.mkdir(parents=True)
    out = run_dir / "probe.jsonl"
    cmd = ["sbatch", "--parsable", "--nodes=1", "--ntasks-per-node=2", "--cpus-per-task=1", "--gpus-per-node=1",
           "--time=10", f"--output={run_dir}/sbatch-%j.out", str(ROOT / "slurm/ray-grok.sbatch"),
           str(ROOT / "grids/smoke.yaml"), "--profile", str(DEV_PROFILE), "--run-dir", str(run_dir),
           "--driver", "probe", "--arg", f"out={out}"]
    env = {**__import__("os").environ, "RAY_GROK_PYTHON": sys.executable}
    job_id = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env, cwd=ROOT).stdout.strip()
    wait_until(lambda: not in_queue(job_id), 180, "the sbatch job to finish", job_id)
    text = (run_dir / f"sbatch-{job_id}.out").read_text()
    lines = probe_lines(out)
    assert len(lines) == 1 and lines[0]["nodes_alive"] == 2, text
    assert lines[0]["task_markers"] == [f"{job_id}/0", f"{job_id}/1"]
    assert "Ray cluster up: 2 nodes" in text
    assert_no_process_left(run_dir, job_id)


# ---------------------------------------------------------------------------------------------
# The sweep itself on the 2-node Ray of the dev Slurm (needs the sweep layer: ray_grok.sweep)
# ---------------------------------------------------------------------------------------------

SMALL_GRID = """\
# 8 tiny CPU trials of {steps} steps, two at a time: a sweep that a signal can interrupt midway
name: slurm-test
base:
  task: {{p: 11, n_ood: 16, n_examples: 8}}
  model: {{width: 32, heads: 2}}
  train: {{steps: {steps}, batch_size: 32, lr: 3.0e-3, warmup_steps: 30, weight_decay: 0.1}}
  eval: {{every: 250, batches: 2}}
  checkpoint: {{every: 250}}
  runtime: {{device: cpu, log_every: 250}}
axes:
  model.depth: [1, 2]
  task.n_id: [8, 16]
seeds: 2
resources: {{cpu: 1, gpu: 0}}
run: {{max_concurrent: 2, max_failures: 1}}
"""


def _sweep_states(run_dir: Path) -> dict[str, str]:
    from ray_grok.sweep.rundir import trial_states

    return {s.entry.trial_id: s.state for s in trial_states(run_dir)}


def _submit_sweep(run_dir: Path, grid: Path, **profile_changes):
    from ray_grok.cluster.driver import prepare_sweep, sweep_driver

    prepare_sweep(grid, run_dir)  # on the login node, before the job writes into RUN_DIR
    return submit(dev_profile(**profile_changes), run_dir, functools.partial(sweep_driver, grid=str(grid)))


def _assert_every_trial_once(run_dir: Path, untouched: dict[str, float]) -> None:
    """Every planned trial is in the results exactly once, done; its curve has no repeated step;
    trials finished before an interruption were not run again (their metrics file is unchanged)."""
    import pandas as pd

    from ray_grok.results.plan import read_plan

    plan = read_plan(run_dir)
    trials = pd.read_parquet(run_dir / "results/trials")
    assert sorted(trials["trial_id"]) == sorted(e.trial_id for e in plan.entries)
    assert set(trials["status"]) == {"done"}
    for e in plan.entries:
        steps = pd.read_parquet(run_dir / e.dir / "metrics.parquet")["step"]
        assert steps.is_unique and steps.max() == e.steps, e.trial_id
    for e in plan.entries:
        if e.trial_id in untouched:
            assert (run_dir / e.dir / "metrics.parquet").stat().st_mtime == untouched[e.trial_id], e.trial_id


def _metrics_mtimes(run_dir: Path, states: dict[str, str]) -> dict[str, float]:
    from ray_grok.results.plan import read_plan

    return {e.trial_id: (run_dir / e.dir / "metrics.parquet").stat().st_mtime
            for e in read_plan(run_dir).entries if states[e.trial_id] == "done"}


def ray_grok(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """The `ray-grok` command, as a user runs it on a login node."""
    return subprocess.run([sys.executable, "-c", "from ray_grok.cli import main; main()", *args],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def submitted_job_id(out: str) -> str:
    m = re.search(r"submitted Slurm job (\d+)", out)
    assert m, out
    return m.group(1)


@ran_across_two_hosts
def test_smoke_grid_runs_on_the_two_node_ray_of_a_slurm_job(run_dir):
    t0 = time.time()
    res = ray_grok("launch", "grids/smoke.yaml", "--cluster", str(DEV_PROFILE), "--out", str(run_dir), "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    job_id = submitted_job_id(res.stdout)
    assert f"ray-grok status {run_dir}" in res.stdout and "'complete': True" in res.stdout, res.stdout
    log = (run_dir / f"slurm/{job_id}/{job_id}_0_log.out").read_text()
    print(f"\njob {job_id}: smoke grid through `ray-grok launch --cluster --wait` in {time.time() - t0:.0f} s")
    assert "Ray cluster up: 2 nodes" in log
    worker = json.loads((rendezvous_dir(run_dir, job_id, 0) / "node.1.json").read_text())
    assert any(p["comm"].startswith("ray::") and p["comm"] != "ray::IDLE" for p in worker["processes"]), \
        "no trial ran on the worker's Ray node"
    _assert_every_trial_once(run_dir, {})
    assert_no_process_left(run_dir, job_id)


# A real time limit of 2 minutes with the warning 45 s before it. slurmctld checks time limits every
# 30 s and warns at the first check that finds under signal_delay_s + 30 s left, so every start of
# the job is warned 45-75 s after it begins (measured on the dev Slurm: 43-64 s for 1-2 minute
# limits, as this rule predicts). A start spends ~10 s bringing Ray up and Tune; then 2 trials run
# at a time. TIME_LIMIT_STEPS sizes the sweep: the first depth-1 trials of 4,000 steps are done
# 20-35 s after the start, before any warning, and the whole sweep needs 80-120 s of training,
# more than one start gets, so the warning lands mid-sweep. The rest takes one or two more starts
# (about 90 s each: up to 75 s, the stop, ~20 s until Slurm starts the job again); three on a
# machine busy with other work (the test then takes ~4.5 min instead of ~3.5).
TIME_LIMIT = dict(time="2", signal_delay_s=45, max_requeues=4)
TIME_LIMIT_STEPS = 4000


@ran_across_two_hosts
def test_time_limit_warning_mid_sweep_requeues_and_the_sweep_completes(run_dir, tmp_path):
    """A short real time limit: Slurm warns the job (USR2) mid-sweep, the driver stops (Tune saves
    its state), the job requeues itself, starts again and resumes until the sweep completes; no
    trial is lost or run twice, and a trial once done is never written again."""
    grid = tmp_path / "grid.yaml"
    grid.write_text(SMALL_GRID.format(steps=TIME_LIMIT_STEPS))
    t0 = time.time()
    job = _submit_sweep(run_dir, grid, **TIME_LIMIT)
    log_path = run_dir / f"slurm/{job.job_id}/{job.job_id}_0_log.out"
    done_at: dict[str, float] = {}  # trial -> mtime of its metrics when first seen done
    at_requeue: dict[str, str] = {}  # trial states when the first requeue is in the log

    def watch() -> bool:
        states = _sweep_states(run_dir)
        for trial, mtime in _metrics_mtimes(run_dir, states).items():
            done_at.setdefault(trial, mtime)
        if not at_requeue and log_path.exists() and "Requeued job" in log_path.read_text():
            at_requeue.update(states)
        return not in_queue(job.job_id)

    wait_until(watch, 420, "the job to requeue at its time limit and finish the sweep", job.job_id)
    log = log_path.read_text()
    starts = [_log_time(line) for line in log.splitlines() if "Starting with JobEnvironment" in line]
    warned = [_log_time(line) for line in log.splitlines() if "Caught signal SIGUSR2" in line]
    requeues = log.count("Requeued job")
    print(f"\njob {job.job_id}: {requeues} requeue(s) at the time limit, warned "
          f"{[round(w - s) for s, w in zip(starts, warned)]} s after each start; "
          f"first requeue with {list(at_requeue.values()).count('done')}/{len(at_requeue)} trials done; "
          f"sweep complete {time.time() - t0:.0f} s after submission")
    assert 1 <= requeues <= TIME_LIMIT["max_requeues"] and len(starts) == requeues + 1, log
    assert "Job has timed out" in log and "timed-out too many times" not in log, log
    assert 0 < list(at_requeue.values()).count("done") < len(at_requeue), at_requeue  # warned mid-sweep
    assert driver_result(job)["complete"]
    _assert_every_trial_once(run_dir, done_at)
    assert_no_process_left(run_dir, job.job_id)


def test_scancel_mid_sweep_leaves_nothing_and_a_later_launch_resumes(run_dir, tmp_path):
    grid = tmp_path / "grid.yaml"
    grid.write_text(SMALL_GRID.format(steps=1000))
    launch = ("launch", str(grid), "--cluster", str(DEV_PROFILE), "--out", str(run_dir))
    res = ray_grok(*launch)
    assert res.returncode == 0, res.stdout + res.stderr
    job_id = submitted_job_id(res.stdout)
    again = ray_grok(*launch)  # a second driver on the same sweep would run trials twice
    assert again.returncode != 0 and f"job {job_id} is still queued or running" in again.stderr, again.stderr
    wait_until(lambda: list(_sweep_states(run_dir).values()).count("done") >= 2, 240,
               "two trials to finish", job_id)
    done_before = _metrics_mtimes(run_dir, _sweep_states(run_dir))
    subprocess.run(["scancel", job_id], check=True)
    wait_until(lambda: not in_queue(job_id), 90, "the cancelled job to leave the queue")
    assert_no_process_left(run_dir, job_id)  # Ray daemons and trial workers alike

    res = ray_grok("launch", "--resume", "--out", str(run_dir), "--cluster", str(DEV_PROFILE), "--wait")
    assert res.returncode == 0, res.stdout + res.stderr
    _assert_every_trial_once(run_dir, done_before)
    assert_no_process_left(run_dir, submitted_job_id(res.stdout))
