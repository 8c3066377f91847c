"""Faults a long sweep meets, survived on a real local Ray: a Ray worker killed mid-trial (not the
driver), and a disk that fills up mid-sweep (a small tmpfs, mounted as root).

Each test runs the driver as `ray-grok launch` in a session of its own and cleans up only that
session's processes."""
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

import pyarrow.parquet as pq
import pytest
import torch
import yaml

from ray_grok.results.plan import read_plan
from ray_grok.trial.config import config_from_dict
from ray_grok.trial.run import run_trial

pytestmark = pytest.mark.slow

RAY_TMP = f"/tmp/rgflt-{os.getpid()}"
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_GROK_TEMP_DIR": RAY_TMP, "RAY_GROK_NUM_CPUS": "2"}
BASE = {"task": {"p": 7, "rule": "random", "n_id": 2, "n_ood": 8, "n_examples": 8},
        "model": {"width": 64, "heads": 2, "depth": 2},
        "train": {"steps": 1200, "batch_size": 64, "lr": 1e-2, "warmup_steps": 50, "weight_decay": 0.0},
        "eval": {"every": 100, "batches": 2}, "checkpoint": {"every": 100},
        "runtime": {"device": "cpu", "threads": 1, "log_every": 100}}


@pytest.fixture(autouse=True, scope="module")
def ray_temp():
    yield
    shutil.rmtree(RAY_TMP, ignore_errors=True)


def write_grid(path: Path, base: dict, seeds: int, max_failures: int) -> Path:
    path.write_text(yaml.safe_dump({"name": path.stem, "base": base, "seeds": seeds, "resources": {"cpu": 1},
                                    "run": {"max_concurrent": 2, "max_failures": max_failures,
                                            "object_store_mb": 100}}, sort_keys=False))
    return path


def start_driver(grid: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ray_grok.cli", "launch", str(grid), "--out", str(out)],
                            env={**os.environ, **RAY_ENV}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def end_session(proc: subprocess.Popen) -> None:
    """SIGKILL (by PID) whatever of the driver's session is left: the driver, its Ray, its workers."""
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[3]) == proc.pid:
                    os.kill(int(d.name), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, f"the driver ended before {what}:\n{proc.communicate()[0]}"
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def status(trial: Path) -> dict:
    try:
        return json.loads((trial / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def metric_rows(trial: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in pq.read_table(trial / "metrics.parquet").to_pylist()]


def test_a_killed_ray_worker_is_retried_from_its_checkpoint_and_ends_as_an_uninterrupted_run(tmp_path):
    grid = write_grid(tmp_path / "kill.yaml", BASE, seeds=1, max_failures=2)
    out = tmp_path / "run"
    driver = start_driver(grid, out)
    try:
        trial = None

        def midway() -> bool:
            nonlocal trial
            if trial is None and (out / "plan.json").exists():
                trial = out / read_plan(out).entries[0].dir
            return trial is not None and status(trial).get("step", 0) >= 300 and (trial / "train.log").exists()

        wait_for(midway, 300, "the trial to pass step 300", driver)
        worker = int(re.search(r"\(pid (\d+),", (trial / "train.log").read_text()).group(1))
        assert worker != driver.pid
        killed_at = status(trial)["step"]
        os.kill(worker, signal.SIGKILL)  # the worker, mid-trial; the driver goes on
        log, _ = driver.communicate(timeout=600)
    finally:
        end_session(driver)
    assert driver.returncode == 0, log
    assert "failed (attempt 1), retrying" in log, log
    train_log = (trial / "train.log").read_text()
    resumed = re.findall(r"resuming .* from step (\d+)", train_log)
    assert "attempt 2" in train_log and resumed, train_log
    assert 200 <= int(resumed[-1]) <= killed_at, (resumed, killed_at)  # from its checkpoint, not from scratch
    assert json.loads((trial / "attempts.json").read_text())["attempts"] == 2

    reference = tmp_path / "reference"  # the same config, uninterrupted
    run_trial(config_from_dict(json.loads((trial / "config.json").read_text())), reference,
              echo=lambda line: None, tensorboard=False)
    assert status(trial)["state"] == "done" and status(trial)["step"] == 1200
    assert metric_rows(trial) == metric_rows(reference)
    a, b = (torch.load(d / "checkpoints" / "latest.pt", weights_only=True)["model"] for d in (trial, reference))
    assert all(torch.equal(a[k], b[k]) for k in b)


# ---------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs (root only): room for the sweep below (about 20 MiB), until a filler takes the rest."""
    if os.getuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root (and mount); the full-disk test runs where it can")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path) -> Path:
    """Take every free byte of DISK; returns the filler, whose removal gives the space back."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 65536)
    except OSError as exc:
        assert exc.errno == 28, exc
    finally:
        os.close(fd)
    return filler


def assert_every_current_file_is_whole(run_dir: Path) -> None:
    """Every file under its real name reads whole, and no temp file is left beside one. (Tune's
    own files under RUN_DIR/tune and TensorBoard's append-only event logs are not ray-grok's.)"""
    checked = 0
    for path in run_dir.rglob("*"):
        rel = path.relative_to(run_dir).as_posix()
        if not path.is_file() or rel.startswith("tune/") or ".tfevents." in path.name:
            continue
        assert not re.search(r"\.(tmp|link)$", path.name), f"temp file left: {rel}"
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".parquet":
            pq.read_table(path)
        elif path.suffix == ".pt":
            torch.load(path, weights_only=True)
        checked += 1
    assert checked > 20, checked


def test_a_full_disk_mid_sweep_stops_with_a_clear_error_and_resumes_once_space_is_back(small_disk, tmp_path):
    base = {**BASE, "train": {**BASE["train"], "steps": 400}}
    grid = write_grid(tmp_path / "full.yaml", base, seeds=6, max_failures=1)
    out = small_disk / "run"
    driver = start_driver(grid, out)
    try:
        def two_done() -> bool:
            return sum(status(p.parent).get("state") == "done" for p in out.glob("trials/*/status.json")) >= 2

        wait_for(two_done, 600, "two trials to finish", driver)
        filler = fill(small_disk)
        log, _ = driver.communicate(timeout=600)
    finally:
        end_session(driver)
    assert driver.returncode == 1, log
    assert "Traceback" not in log, log
    error = log.strip().splitlines()[-1]
    assert error.startswith(f"Error: the file system of {out} is full (") and "No space left on device" in error, log
    assert "run the same command to resume" in error
    assert_every_current_file_is_whole(out)

    filler.unlink()  # space is back
    again = subprocess.run([sys.executable, "-m", "ray_grok.cli", "launch", str(grid), "--out", str(out)],
                           env={**os.environ, **RAY_ENV}, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "6 done, 0 errored, 0 unfinished" in again.stdout, again.stdout
    trials = pq.read_table(out / "results" / "trials").to_pylist()
    assert sorted(t["trial_id"] for t in trials) == sorted(read_plan(out).ids)  # each once
    assert {t["status"] for t in trials} == {"done"}
    assert_every_current_file_is_whole(out)
