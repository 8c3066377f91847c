"""Sweeps end to end on a real local Ray (2 CPUs, token auth off for this private test box, a short
temp dir, a capped object store, no dashboard): the smoke grid, SIGKILL of the driver and resume,
failing trials, the live view, and a run directory whose Tune state ray-grok 0.1.0 wrote.

Each test starts and stops its own Ray; the kill test runs the driver as a subprocess in its own
session and cleans up only the processes of that session.
"""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from ray_grok import __version__
from ray_grok.cli import main
from ray_grok.results.plan import read_plan
from ray_grok.sweep.callbacks import LIVE_TB_DIR
from ray_grok.sweep.launch import launch
from ray_grok.sweep.rundir import prepare, resolve
from ray_grok.sweep.status import format_status, sweep_status

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RAY_TMP = f"/tmp/rgtest-{os.getpid()}"
RAY_ENV = {"RAY_AUTH_MODE": "disabled", "RAY_GROK_TEMP_DIR": RAY_TMP, "RAY_GROK_NUM_CPUS": "2"}

TINY_BASE = {
    "task": {"p": 7, "rule": "random", "n_ood": 8, "n_examples": 8},
    "model": {"width": 32, "heads": 2},
    "train": {"steps": 60, "batch_size": 16, "lr": 3e-3, "warmup_steps": 10},
    "eval": {"every": 20, "batches": 1},
    "checkpoint": {"every": 20},
    "runtime": {"device": "cpu", "log_every": 20},
}


@pytest.fixture(autouse=True, scope="module")
def ray_env():
    mp = pytest.MonkeyPatch()
    for k, v in RAY_ENV.items():
        mp.setenv(k, v)
    yield
    mp.undo()
    shutil.rmtree(RAY_TMP, ignore_errors=True)


def write_grid(path: Path, **sections) -> Path:
    data = {"name": path.stem, "base": TINY_BASE, "resources": {"cpu": 1},
            "run": {"max_concurrent": 2, "max_failures": 1, "object_store_mb": 200}}
    data.update(sections)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def statuses(run_dir: Path) -> dict[str, dict]:
    return {e.trial_id: json.loads((run_dir / e.dir / "status.json").read_text())
            for e in read_plan(run_dir).entries if (run_dir / e.dir / "status.json").exists()}


# ---------------------------------------------------------------------------------------------
# The smoke grid, as a user runs it
# ---------------------------------------------------------------------------------------------

def test_smoke_grid_end_to_end(tmp_path):
    out = tmp_path / "smoke"
    result = CliRunner().invoke(main, ["launch", str(ROOT / "grids" / "smoke.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "done 32/32" in result.output and "errored 0" in result.output  # the live view

    plan = read_plan(out)
    trials = pd.read_parquet(out / "results" / "trials")
    assert sorted(trials["trial_id"]) == sorted(plan.ids)  # every trial exactly once
    assert set(trials["status"]) == {"done"} and set(trials["steps_done"]) == {400}
    for col in ("model.depth", "task.n_id", "task.alpha", "task.rule", "seed"):
        assert trials[col].nunique() == 2
    curves = pd.read_parquet(out / "results" / "curves")
    assert (curves.groupby("trial_id").size() == 9).all()  # steps 1, 50, ..., 400
    assert not curves.duplicated(["trial_id", "step"]).any()

    # TensorBoard: one run per trial named by its coordinates, with its hparams; none from Tune;
    # plus the sweep-level run of live phase diagrams
    events = sorted(out.rglob("events.out.tfevents*"))
    assert {p.parent.relative_to(out).as_posix() for p in events} == {e.dir for e in plan.entries} | {LIVE_TB_DIR}
    from tensorboard.backend.event_processing import event_multiplexer

    mux = event_multiplexer.EventMultiplexer(size_guidance={"images": 0})
    mux.AddRunsFromDirectory(str(out))
    mux.Reload()
    assert set(mux.Runs()) == {e.dir for e in plan.entries} | {LIVE_TB_DIR}
    assert "trials/depth=1/n_id=4/alpha=0.2/rule=rectangular/seed=0" in mux.Runs()
    assert set(mux.PluginRunToTagToContent("hparams")) == {e.dir for e in plan.entries}
    live = mux.Images(LIVE_TB_DIR, "phases/rule=random/depth=2")  # the rule axis: a diagram per rule
    assert live[-1].step == 32 and live[-1].width > 200  # the last diagram has every trial
    assert len({i.step for i in live}) >= 2  # and it filled in while the sweep ran

    status = CliRunner().invoke(main, ["status", str(out)])
    assert status.exit_code == 0 and "done 32 |" in status.output and "errored 0" in status.output

    # launching again: nothing is trained, the tables are rewritten with the same rows
    before = statuses(out)
    again = CliRunner().invoke(main, ["launch", str(ROOT / "grids" / "smoke.yaml"), "--out", str(out)])
    assert again.exit_code == 0, again.output
    assert statuses(out) == before
    assert len(pd.read_parquet(out / "results" / "trials")) == 32


# ---------------------------------------------------------------------------------------------
# SIGKILL of the driver mid-sweep, then resume
# ---------------------------------------------------------------------------------------------

def session_pids(sid: int) -> list[int]:
    """Processes of session SID (the driver, its Ray daemons and workers; nobody else's)."""
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid:  # fields after the name: state ppid pgrp session ...
                pids.append(int(d.name))
    return pids


def reap_session(sid: int, grace_s: float = 20.0) -> list[int]:
    """Wait for session SID to empty; SIGKILL (by PID) what is left after the grace period."""
    deadline = time.time() + grace_s
    while session_pids(sid) and time.time() < deadline:
        time.sleep(0.5)
    left = session_pids(sid)
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return left


def run_driver(grid: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ray_grok.cli", "launch", str(grid), "--out", str(out)],
                            env={**os.environ, **RAY_ENV}, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_killed_sweep_resumes_without_retraining_finished_trials(tmp_path):
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 800},
            "eval": {"every": 100, "batches": 1}, "checkpoint": {"every": 100}}
    grid = write_grid(tmp_path / "kill.yaml", base=base, axes={"model.depth": [1, 2], "task.n_id": [4, 8]},
                      seeds=2)
    out = tmp_path / "run"
    driver = run_driver(grid, out)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        if (out / "plan.json").exists():
            st = statuses(out)
            done = [t for t, s in st.items() if s["state"] == "done"]
            mid = [t for t, s in st.items() if s["state"] == "running" and s["step"] >= 100]
            if len(done) >= 2 and mid:
                break
        assert driver.poll() is None, driver.stdout.read()
    else:
        pytest.fail("no trials finished within 120 s")
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    finished_before = {t: s for t, s in statuses(out).items() if s["state"] == "done"}
    plan = read_plan(out)
    dirs = {e.trial_id: out / e.dir for e in plan.entries}
    metrics_mtime = {t: (dirs[t] / "metrics.parquet").stat().st_mtime_ns for t in finished_before}
    reap_session(driver.pid)
    assert not session_pids(driver.pid), "Ray processes of the killed driver are left"

    st = sweep_status(out)
    assert not st.alive and st.counts["interrupted"] >= 1 and st.counts["done"] >= 2
    assert "resume with" in format_status(st)

    again = run_driver(grid, out)
    output, _ = again.communicate(timeout=180)
    assert again.returncode == 0, output
    assert "resuming kill" in output
    assert not reap_session(again.pid, grace_s=30), "Ray processes left after a normal exit"

    trials = pd.read_parquet(out / "results" / "trials")
    assert sorted(trials["trial_id"]) == sorted(plan.ids) and set(trials["status"]) == {"done"}
    curves = pd.read_parquet(out / "results" / "curves")
    assert not curves.duplicated(["trial_id", "step"]).any()
    assert (curves.groupby("trial_id").size() == 9).all()  # 1, 100, ..., 800: none lost or doubled
    # finished trials were not trained again: their files are untouched
    after = statuses(out)
    for t, s in finished_before.items():
        assert after[t] == s
        assert (dirs[t] / "metrics.parquet").stat().st_mtime_ns == metrics_mtime[t]
    # an interrupted trial continued from its own checkpoint
    logs = "".join((d / "train.log").read_text() for d in dirs.values())
    assert "from step" in logs and "resuming" in logs


# ---------------------------------------------------------------------------------------------
# Ctrl-C, and a grid that cannot run here
# ---------------------------------------------------------------------------------------------

def test_ctrl_c_stops_the_sweep_with_ray_groks_resume_advice_only(tmp_path):
    """SIGINT to the driver's process group, as a terminal's Ctrl-C sends it: the driver stops,
    says the same command resumes, and Tune's own advice (Tuner.restore) is not shown; the
    interrupted trials say so in their status.json, and the same command then finishes them."""
    base = {**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 800},
            "eval": {"every": 100, "batches": 1}, "checkpoint": {"every": 100}}
    grid = write_grid(tmp_path / "intr.yaml", base=base, axes={"model.depth": [1, 2], "task.n_id": [4, 8]})
    out = tmp_path / "run"
    driver = run_driver(grid, out)
    deadline = time.time() + 120
    while time.time() < deadline:
        time.sleep(0.2)
        if (out / "plan.json").exists() and any(s["state"] == "running" and s["step"] >= 100
                                                for s in statuses(out).values()):
            break
        assert driver.poll() is None, driver.stdout.read()
    else:
        pytest.fail("no trial got to step 100 within 120 s")
    os.killpg(driver.pid, signal.SIGINT)
    output, _ = driver.communicate(timeout=120)
    reap_session(driver.pid)
    assert driver.returncode == 1, output
    assert "Tuner.restore" not in output and "Resume experiment" not in output, output
    assert "trials unfinished: the same command resumes the sweep" in output, output
    st = sweep_status(out)
    assert st.counts["interrupted"] >= 1 and "resume with" in format_status(st)
    again = run_driver(grid, out)
    output, _ = again.communicate(timeout=180)
    assert again.returncode == 0, output
    assert f"the phase diagrams: ray-grok phases {out}" in output
    assert {s["state"] for s in statuses(out).values()} == {"done"}
    reap_session(again.pid)


def test_a_grid_that_cannot_run_here_is_refused_before_anything_is_written(tmp_path):
    """As grids/full.yaml (a GPU per trial) on a machine without GPUs: the run directory is not
    even created (it used to be refused after writing every trial's directory)."""
    base = {**TINY_BASE, "runtime": {**TINY_BASE["runtime"], "device": "auto"}}
    grid = write_grid(tmp_path / "gpus.yaml", base=base, axes={"model.depth": [1, 2], "task.n_id": [2]},
                      resources={"cpu": 1, "gpu": 64})
    out = tmp_path / "run"
    result = CliRunner().invoke(main, ["launch", str(grid), "--out", str(out)])
    assert result.exit_code == 1
    assert "each trial asks for 1 CPU and 64 GPU (resources), but the Ray on this machine has 2 CPUs" in result.output
    assert "nothing was written" in result.output and "Traceback" not in result.output
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Failing trials: retried up to max_failures, then errored with the message; others finish
# ---------------------------------------------------------------------------------------------

def test_failing_trial_is_retried_then_errored_while_others_finish(tmp_path):
    # lr 1e12 makes the loss non-finite within 10 steps: a real failure, not an injected one
    train = {k: v for k, v in TINY_BASE["train"].items() if k != "lr"}
    base = {**TINY_BASE, "task": {**TINY_BASE["task"], "n_id": 4}, "train": train,
            "runtime": {"device": "cpu", "log_every": 10}}
    grid = write_grid(tmp_path / "nan.yaml", base=base, axes={"train.lr": [3e-3, 1e12], "model.depth": [1, 2]},
                      seeds=1)
    out = tmp_path / "run"
    messages: list[str] = []
    outcome = launch(resolve(grid, out, resume=False), echo=messages.append)
    assert outcome.counts == {"done": 2, "failed": 2}
    assert outcome.errored == 2
    plan = read_plan(out)
    bad = [e for e in plan.entries if e.coords["train.lr"] == 1e12]
    for e in bad:
        attempts = json.loads((out / e.dir / "attempts.json").read_text())
        assert attempts["attempts"] == 2  # max_failures = 1: one retry
        status = json.loads((out / e.dir / "status.json").read_text())
        assert status["state"] == "failed" and "non-finite" in status["error"]
    assert any("errored after" in m and "non-finite" in m for m in messages)

    result = CliRunner().invoke(main, ["status", str(out)])
    assert result.exit_code == 0
    assert "done 2" in result.output and "errored 2" in result.output
    assert "non-finite" in result.output and bad[0].trial_id in result.output

    trials = pd.read_parquet(out / "results" / "trials").set_index("trial_id")
    assert (trials.loc[[e.trial_id for e in bad], "status"] == "failed").all()

    # a resumed sweep retries the errored trials (and only them); the CLI exits non-zero
    done_before = {t: s for t, s in statuses(out).items() if s["state"] == "done"}
    result = CliRunner().invoke(main, ["launch", str(grid), "--out", str(out)])
    assert result.exit_code == 1 and "2 trials errored" in result.output
    for e in bad:
        assert json.loads((out / e.dir / "attempts.json").read_text())["attempts"] >= 3
    assert {t: s for t, s in statuses(out).items() if s["state"] == "done"} == done_before


def test_fractional_gpus_pack_two_trials_on_one_gpu(tmp_path):
    """resources.gpu 0.5 on a Ray node with one GPU: two trials run at the same time, both on GPU 0.
    The GPU is declared to Ray (this machine has none) and the trials train on the CPU: what is
    checked is Ray's placement, which is all ray-grok adds for GPUs beyond the device choice."""
    import ray

    from ray_grok.sweep.session import concurrent_slots

    grid = write_grid(tmp_path / "frac.yaml", axes={"task.n_id": [8], "seed": [0, 1]}, resources={"cpu": 1, "gpu": 0.5},
                      base={**TINY_BASE, "train": {**TINY_BASE["train"], "steps": 400},
                            "runtime": {**TINY_BASE["runtime"], "device": "auto"}})  # cpu: no CUDA here
    plan = resolve(grid, tmp_path / "run", resume=False)
    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, _temp_dir=RAY_TMP, object_store_memory=100 * 2**20)
    try:
        assert concurrent_slots(plan.spec) == 2
        outcome = launch(plan, echo=lambda line: None)
    finally:
        ray.shutdown()
    assert outcome.complete, outcome
    spans = []
    for e in read_plan(plan.run_dir).entries:
        header = (plan.run_dir / e.dir / "train.log").read_text().splitlines()[0]
        assert "GPUs 0)" in header, header  # Ray gave the trial GPU 0
        start = time.mktime(time.strptime(header.split(" at ")[1][:19], "%Y-%m-%d %H:%M:%S"))
        end = json.loads((plan.run_dir / e.dir / "status.json").read_text())["updated"]
        spans.append((start, end))
    (s0, e0), (s1, e1) = spans
    assert s0 < e1 and s1 < e0, f"the two trials did not overlap: {spans}"


# ---------------------------------------------------------------------------------------------
# A run directory of ray-grok 0.1.0: its Tune state names 0.1.0's module paths
# ---------------------------------------------------------------------------------------------

# what 0.1.0 pickled into tuner.pkl and Tune's search state, by today's path
NAMES_0_1_0 = {b"cray_grok.sweep.launch\ntune_dirname\n": b"cray_grok.sweep\n_tune_dirname\n",
               b"cray_grok.sweep.callbacks\nPlaceholder\n": b"cray_grok.sweep\nSweepProgress\n"}


def rewrite_tune_state(experiment: Path, names: dict[bytes, bytes]) -> None:
    """Tune's pickles in EXPERIMENT, with the class and function paths NAMES maps renamed (pickle
    protocol 3 names them as text lines)."""
    import ray.cloudpickle as cloudpickle

    for path in [experiment / "tuner.pkl", *experiment.glob("basic-variant-state-*.json")]:
        data = cloudpickle.dumps(cloudpickle.loads(path.read_bytes()), protocol=3)
        assert any(new in data for new in names), path
        for new, old in names.items():
            data = data.replace(new, old)
        path.write_bytes(data)


def start_over(run_dir: Path, trial_dir: str) -> None:
    """The trial in TRIAL_DIR has not run yet: what a resume has left to do."""
    for name in ("status.json", "metrics.parquet", "attempts.json", "checkpoints"):
        path = run_dir / trial_dir / name
        shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def test_a_run_dir_of_0_1_0_resumes_and_an_unreadable_tune_state_says_what_to_do(tmp_path):
    grid = write_grid(tmp_path / "old.yaml", axes={"task.n_id": [4, 8]}, seeds=1,
                      run={"max_concurrent": 2, "max_failures": 0, "object_store_mb": 200})
    plan = resolve(grid, tmp_path / "run", resume=False)
    out, redo = plan.run_dir, plan.trials[1]
    # a first launch leaves one trial errored in Tune's state: a file stands where its checkpoints go
    prepare(out, plan.spec, plan.grid_text, plan.trials)
    (out / redo.dir / "checkpoints").write_text("not a directory")
    assert launch(plan, echo=lambda line: None).counts == {"done": 1, "failed": 1}
    experiment = out / "tune" / "sweep"

    # as 0.1.0 left it: its module paths in Tune's state, no version in sweep.json
    (out / redo.dir / "checkpoints").unlink()
    rewrite_tune_state(experiment, NAMES_0_1_0)
    driver = json.loads((out / "sweep.json").read_text())
    (out / "sweep.json").write_text(json.dumps({k: v for k, v in driver.items() if k != "version"}))
    result = CliRunner().invoke(main, ["launch", "--resume", "--out", str(out)])
    assert result.exit_code == 0, result.output  # Tune restored its state and retried the errored trial
    assert "resuming old" in result.output and "2 done, 0 errored, 0 unfinished" in result.output
    assert json.loads((out / "sweep.json").read_text())["version"] == __version__

    # a state that names a path no ray-grok has: refused, naming the version that wrote it
    rewrite_tune_state(experiment, {b"cray_grok.sweep.launch\ntune_dirname\n": b"cray_grok.gone\ntune_dirname\n"})
    result = CliRunner().invoke(main, ["launch", "--resume", "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    for words in (f"holds Ray Tune's state as ray-grok {__version__} wrote it, which ray-grok {__version__} "
                  "cannot read (tuner.pkl: ModuleNotFoundError: No module named 'ray_grok.gone')",
                  f"mv {out / 'tune'} {out / 'tune'}-{__version__} && ray-grok launch --resume --out {out}"):
        assert words in " ".join(result.output.split()), result.output
    # and what it says to do works: the sweep goes on from its trial directories
    start_over(out, redo.dir)
    shutil.move(out / "tune", f"{out / 'tune'}-{__version__}")
    result = CliRunner().invoke(main, ["launch", "--resume", "--out", str(out)])
    assert result.exit_code == 0 and "2 done, 0 errored, 0 unfinished" in result.output, result.output
    assert json.loads((out / redo.dir / "status.json").read_text())["state"] == "done"
