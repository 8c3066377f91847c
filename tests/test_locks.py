"""One writer at a time: one driver per run directory, one trainer per trial directory, and no
second Slurm job while it cannot be told that the first one ended.

The fast tests take the lock in this process (a flock is per open file, so a second open in the
same process conflicts like another process would); the slow ones start two real commands."""
from __future__ import annotations

import contextlib

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import tiny_overrides
from ray_grok import io
from ray_grok.errors import RunDirError, TrialError
from ray_grok.sweep import launch as launch_module
from ray_grok.sweep.rundir import SLURM_JOBS_FILE, SWEEP_FILE, prepare, resolve, run_lock

ROOT = Path(__file__).resolve().parents[1]
HOST = socket.gethostname()
GRID = {
    "name": "locks",
    "base": {"task": {"p": 7, "rule": "random", "n_ood": 8, "n_examples": 8},
             "model": {"width": 32, "heads": 2, "depth": 1},
             "train": {"steps": 40, "batch_size": 16, "lr": 3e-3, "warmup_steps": 5},
             "eval": {"every": 20, "batches": 1}, "checkpoint": {"every": 20},
             "runtime": {"device": "cpu", "threads": 1, "log_every": 20}},
    "axes": {"task.n_id": [2, 4]},
    "resources": {"cpu": 1},
    "run": {"max_concurrent": 2, "max_failures": 0, "object_store_mb": 200},
}


def write_grid(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "locks.yaml"
    path.write_text(yaml.safe_dump({**GRID, **changes}, sort_keys=False))
    return path


@pytest.fixture
def no_fit(monkeypatch) -> list:
    """launch() without Ray: Ray's start is skipped and Tuner.fit is replaced by a note that it was reached."""
    calls: list = []
    monkeypatch.setattr(launch_module, "_ray", lambda spec: contextlib.nullcontext({}))
    monkeypatch.setattr(launch_module, "_fit", lambda launch, echo: calls.append(launch.run_dir) or {})
    return calls


def test_a_second_holder_is_refused_at_once_naming_the_first(tmp_path):
    def busy(holder: dict) -> RuntimeError:
        return RuntimeError(io.describe_holder(holder))

    with io.hold_lock(tmp_path / ".lock", "launch", busy) as locked:
        assert locked
        t0 = time.monotonic()
        with pytest.raises(RuntimeError) as err:
            with io.hold_lock(tmp_path / ".lock", "launch", busy):
                pass
        assert time.monotonic() - t0 < 1.0
    assert f"ray-grok launch on host {HOST} (pid {os.getpid()}" in str(err.value)
    with io.hold_lock(tmp_path / ".lock", "launch", busy) as locked:  # released with its block
        assert locked


def test_a_second_launch_is_refused_at_once_while_a_driver_holds_the_run_dir(tmp_path, no_fit):
    plan = resolve(write_grid(tmp_path), tmp_path / "run", resume=False)
    with run_lock(plan.run_dir, "launch"):
        t0 = time.monotonic()
        with pytest.raises(RunDirError) as err:
            launch_module.launch(plan, echo=lambda line: None)
        assert time.monotonic() - t0 < 2.0
    assert not no_fit, "a second driver started Tune"
    message = str(err.value)
    assert f"{plan.run_dir} is in use by ray-grok launch on host {HOST} (pid {os.getpid()}" in message
    assert "\n" not in message


def test_a_requeued_slurm_job_takes_over_without_waiting_for_the_heartbeat(tmp_path, no_fit, monkeypatch):
    """The job's earlier start wrote a fresh heartbeat on another node and was killed by the
    requeue: its lock died with it, so the requeued start goes on at once."""
    plan = resolve(write_grid(tmp_path), tmp_path / "run", resume=False)
    with run_lock(plan.run_dir, "prepare"):
        prepare(plan.run_dir, plan.spec, plan.grid_text, plan.trials)
    io.write_json(plan.run_dir / SWEEP_FILE, {"state": "running", "host": "node-7", "pid": 4321, "job_id": "4242",
                                             "started": time.time() - 600, "updated": time.time(),
                                             "heartbeat_s": 10.0})
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    launch_module.launch(plan, echo=lambda line: None)
    assert no_fit == [plan.run_dir]


def test_without_file_locks_the_heartbeat_decides(tmp_path, no_fit, monkeypatch):
    def no_flock(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(io.fcntl, "flock", no_flock)
    plan = resolve(write_grid(tmp_path), tmp_path / "run", resume=False)
    launch_module.launch(plan, echo=lambda line: None)  # no lock, no heartbeat: goes on
    beat = {"state": "running", "host": "node-7", "pid": 4321, "job_id": "4242", "started": time.time(),
            "updated": time.time(), "heartbeat_s": 10.0}
    io.write_json(plan.run_dir / SWEEP_FILE, beat)
    monkeypatch.setenv("SLURM_JOB_ID", "5000")
    with pytest.raises(RunDirError, match="being run by a driver on node-7 .*no locks"):
        launch_module.launch(plan, echo=lambda line: None)
    io.write_json(plan.run_dir / SWEEP_FILE, beat)
    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # the same job, requeued
    launch_module.launch(plan, echo=lambda line: None)
    assert no_fit == [plan.run_dir, plan.run_dir]


# ---------------------------------------------------------------------------------------------
# squeue failing is not "no job"
# ---------------------------------------------------------------------------------------------

def fake_squeue(monkeypatch, rc: int = 0, out: str = "", err: str = "", raises: BaseException | None = None):
    from ray_grok.cluster import slurm

    def run(cmd, **kwargs):
        assert cmd[0] == "squeue"
        if raises is not None:
            raise raises
        return subprocess.CompletedProcess(cmd, rc, out, err)

    monkeypatch.setattr(slurm.subprocess, "run", run)


@pytest.mark.parametrize("answer, expected", [
    ({"rc": 0, "out": "RUNNING\n"}, True),
    ({"rc": 0, "out": ""}, False),
    ({"rc": 1, "err": "slurm_load_jobs error: Invalid job id specified\n"}, False),
])
def test_squeue_answers(monkeypatch, tmp_path, answer, expected):
    from ray_grok.cluster.slurm import in_queue

    fake_squeue(monkeypatch, **answer)
    assert in_queue("41", tmp_path) is expected


@pytest.mark.parametrize("answer, why", [
    ({"rc": 1, "err": "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"},
     "squeue exited with code 1 (slurm_load_jobs error: Unable to contact slurm controller (connect failure))"),
    ({"raises": FileNotFoundError("squeue")}, "squeue is not on PATH"),
    ({"raises": subprocess.TimeoutExpired(["squeue"], 60)}, "squeue failed"),
])
def test_a_duplicate_job_check_that_cannot_run_refuses(monkeypatch, tmp_path, answer, why):
    from ray_grok.cluster import slurm
    from ray_grok.cluster.profiles import profile_from_dict

    profile = profile_from_dict({"kind": "slurm", "storage_root": str(tmp_path)})
    plan = resolve(write_grid(tmp_path), tmp_path / "run", resume=False)
    with run_lock(plan.run_dir, "prepare"):
        prepare(plan.run_dir, plan.spec, plan.grid_text, plan.trials)
    (plan.run_dir / SLURM_JOBS_FILE).parent.mkdir(exist_ok=True)
    (plan.run_dir / SLURM_JOBS_FILE).write_text(json.dumps({"job_id": "41", "profile": "p", "submitted": 1}) + "\n")
    monkeypatch.setattr(slurm, "executor", lambda profile, run_dir: None)
    monkeypatch.setattr(slurm, "submit", lambda *a: pytest.fail("a second job was submitted"))
    fake_squeue(monkeypatch, **answer)
    with pytest.raises(RunDirError) as err:
        slurm.launch_sweep(profile, plan)
    assert f"cannot tell whether job 41 of {plan.run_dir} is still queued or running: {why}" in str(err.value)
    assert "nothing was submitted" in str(err.value)


# ---------------------------------------------------------------------------------------------
# Two real commands
# ---------------------------------------------------------------------------------------------

RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_GROK_TEMP_DIR": f"/tmp/rglk-{os.getpid()}", "RAY_GROK_NUM_CPUS": "2"}


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@pytest.fixture
def ray_temp():
    yield
    shutil.rmtree(RAY_ENV["RAY_GROK_TEMP_DIR"], ignore_errors=True)


@pytest.mark.slow
def test_two_launches_a_second_apart_one_runs_the_other_is_refused_at_once(tmp_path, ray_temp):
    grid = write_grid(tmp_path)
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "ray_grok.cli", "launch", str(grid), "--out", str(out)]
    env = {**os.environ, **RAY_ENV}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(1.0)
        t0 = time.monotonic()
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
        assert first.poll() is None, "the first launch ended before the second one started; make it longer"
        assert second.returncode == 1, second.stdout + second.stderr
        message = second.stderr.strip()
        assert message.count("\n") == 0 and "Traceback" not in message, message
        assert f"is in use by ray-grok launch on host {HOST} (pid {first.pid}" in message, message
        assert took < 10.0, f"the refusal took {took:.1f} s"  # interpreter and imports, on a shared machine
        log, _ = first.communicate(timeout=600)
    finally:
        first.kill()
    assert first.returncode == 0, log
    assert "2 done, 0 errored, 0 unfinished" in log


@pytest.mark.slow
def test_two_trainers_on_one_trial_directory_the_second_is_refused_at_once(tmp_path):
    out = tmp_path / "trial"
    cmd = [sys.executable, "-m", "ray_grok.cli", "train", "--out", str(out), "--no-tensorboard"]
    for o in tiny_overrides("train.steps=400", "eval.every=100", "checkpoint.every=100"):
        cmd += ["--set", o]
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_for(lambda: (out / "status.json").exists() or first.poll() is not None, 120, "the first trainer to start")
        assert first.poll() is None, "the first trainer ended before the second one started; make it longer"
        t0 = time.monotonic()
        second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        took = time.monotonic() - t0
        assert second.returncode == 1, second.stdout + second.stderr
        message = second.stderr.strip()
        assert message.count("\n") == 0 and "Traceback" not in message, message
        assert f"{out} is in use by ray-grok train on host {HOST} (pid {first.pid}" in message, message
        assert took < 10.0, f"the refusal took {took:.1f} s"
        log, _ = first.communicate(timeout=300)
    finally:
        first.kill()
    assert first.returncode == 0, log
    status = json.loads((out / "status.json").read_text())
    assert (status["state"], status["step"]) == ("done", 400)
