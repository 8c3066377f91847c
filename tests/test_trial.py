"""End-to-end trials on the CPU: learning, exact resume after SIGKILL, corrupt checkpoints, outputs."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from conftest import tiny_config, tiny_overrides
from ray_grok.trial.checkpoint import LATEST, PREVIOUS
from ray_grok.trial.schema import METRICS_COLUMNS
from ray_grok.errors import NonFiniteLossError, TrialError
from ray_grok.trial.run import run_trial

pytestmark = pytest.mark.slow

# long enough to be killed in the middle, checkpointing often so there is something to resume
RESUME = ("train.steps=400", "eval.every=40", "checkpoint.every=40")


def train_cmd(out: Path, *overrides: str) -> list[str]:
    args = [sys.executable, "-m", "ray_grok.cli", "train", "--out", str(out)]
    for o in tiny_overrides(*overrides):
        args += ["--set", o]
    return args


def metric_rows(out: Path) -> list[dict]:
    rows = pq.read_table(out / "metrics.parquet").to_pylist()
    for r in rows:
        r.pop("wall_time")  # the only column that may differ between runs
    return rows


def weights(out: Path, name: str = LATEST) -> dict:
    return torch.load(out / "checkpoints" / name, weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """An uninterrupted run, in a subprocess like the interrupted ones."""
    out = tmp_path_factory.mktemp("reference")
    subprocess.run(train_cmd(out, *RESUME), check=True, capture_output=True)
    return out


def kill_midway(out: Path, at_step: int) -> None:
    """Start a trial, SIGKILL it once a checkpoint after `at_step` exists."""
    proc = subprocess.Popen(train_cmd(out, *RESUME), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = out / "status.json"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if status.exists() and (out / "checkpoints" / PREVIOUS).exists():
            try:
                if json.loads(status.read_text())["step"] >= at_step:
                    break
            except (json.JSONDecodeError, KeyError):
                pass  # caught mid-rename: read again
        time.sleep(0.05)
    assert proc.poll() is None, "the trial finished before it could be killed; make RESUME longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert json.loads(status.read_text())["state"] == "running"


def assert_same_as(out: Path, reference: Path) -> None:
    assert metric_rows(out) == metric_rows(reference)
    a, b = weights(out), weights(reference)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((out / "status.json").read_text())["state"] == "done"


def test_tiny_config_learns(tmp_path):
    result = run_trial(tiny_config("train.steps=300", "eval.every=100"), tmp_path, echo=lambda s: None)
    rows = pq.read_table(tmp_path / "metrics.parquet").to_pylist()
    assert [r["step"] for r in rows] == [1, 100, 200, 300]
    chance = 1 / 7
    assert rows[0]["id_train_acc"] < 0.35
    assert rows[-1]["id_train_acc"] > 0.5 > 3 * chance
    assert result.step == 300 and json.loads((tmp_path / "status.json").read_text())["state"] == "done"


def test_killed_trial_resumes_bit_identical(tmp_path, reference):
    out = tmp_path / "trial"
    kill_midway(out, at_step=120)
    done = subprocess.run(train_cmd(out, *RESUME), check=True, capture_output=True, text=True)
    assert "resuming" in done.stdout
    assert_same_as(out, reference)


def test_truncated_latest_checkpoint_falls_back_to_previous(tmp_path, reference):
    out = tmp_path / "trial"
    kill_midway(out, at_step=120)
    latest = out / "checkpoints" / LATEST
    data = latest.read_bytes()
    latest.unlink()  # truncate a copy: previous.pt may be a second name of the same file
    latest.write_bytes(data[: len(data) // 2])
    prev_step = torch.load(out / "checkpoints" / PREVIOUS, weights_only=True)["step"]
    done = subprocess.run(train_cmd(out, *RESUME), check=True, capture_output=True, text=True)
    assert "unreadable" in done.stderr
    assert f"resuming {out} from step {prev_step}" in done.stdout
    assert_same_as(out, reference)


def test_trial_directory_layout(reference):
    cfg = json.loads((reference / "config.json").read_text())
    assert cfg["task"]["p"] == 7 and cfg["train"]["steps"] == 400
    tasks = json.loads((reference / "tasks.json").read_text())
    assert len(tasks["id_tasks"]) == 2 and len(tasks["ood_tasks"]) == 8
    assert len(tasks["train_inputs"]) + len(tasks["test_inputs"]) == 49
    table = pq.read_table(reference / "metrics.parquet")
    assert tuple(table.column_names) == METRICS_COLUMNS
    rows = table.to_pylist()
    assert [r["step"] for r in rows] == [1] + list(range(40, 401, 40))
    assert all(len(r["ood_test_acc_by_shot"]) == 8 for r in rows)
    assert all(r["ood_test_acc_last"] == r["ood_test_acc_by_shot"][-1] for r in rows)
    assert rows[-1]["tokens_seen"] == 400 * 64 * 23
    best = torch.load(reference / "checkpoints" / "best.pt", weights_only=True)
    status = json.loads((reference / "status.json").read_text())
    assert best["step"] == status["best_step"]
    assert best["metrics"]["ood_test_acc_last"] == max(r["ood_test_acc_last"] for r in rows)


def test_tensorboard_scalars_read_back(reference):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(reference))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for s in ("id_train", "id_test", "ood_train", "ood_test"):
        for m in ("loss", "acc", "acc_last"):
            assert f"{s}/{m}" in tags
    steps = [e.step for e in acc.Scalars("ood_test/acc_last")]
    assert steps == [1] + list(range(40, 401, 40))
    values = [e.value for e in acc.Scalars("id_train/acc")]
    expected = [r["id_train_acc"] for r in pq.read_table(reference / "metrics.parquet").to_pylist()]
    assert values == pytest.approx(expected, rel=1e-6)
    assert "train/loss" in tags and "train/lr" in tags
    # the hparams plugin's data: the trial's config keys and the metrics shown across trials
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    assert start.session_start_info.hparams["model.depth"].number_value == 2
    assert start.session_start_info.hparams["task.rule"].string_value == "random"
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"])
    assert "best/ood_test_acc_last" in [m.name.tag for m in experiment.experiment.metric_infos]


def test_finished_trial_says_so(reference):
    again = subprocess.run(train_cmd(reference, *RESUME), check=True, capture_output=True, text=True)
    assert "already finished" in again.stdout


def test_existing_dir_with_another_config_is_refused(reference):
    with pytest.raises(TrialError, match=r"different config.*train.steps: 400 -> 500"):
        run_trial(tiny_config("train.steps=500", "eval.every=40", "checkpoint.every=40"), reference)


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    import ray_grok.trial.run as trial

    real_step = trial.train_step

    def diverging_step(parts, step):
        loss = real_step(parts, step)
        if step >= 25:  # weights go bad after the checkpoint at step 20
            with torch.no_grad():
                parts.model.embed.weight.fill_(float("nan"))
            return loss * float("nan")
        return loss

    monkeypatch.setattr(trial, "train_step", diverging_step)
    out = tmp_path / "trial"
    cfg = tiny_config("train.steps=300", "checkpoint.every=20", "runtime.log_every=10", "eval.every=20")
    with pytest.raises(NonFiniteLossError, match=r"between step 20 and step 30.*last good checkpoint \(step 20\)"):
        run_trial(cfg, out, echo=lambda s: None)
    status = json.loads((out / "status.json").read_text())
    assert status["state"] == "failed" and "non-finite" in status["error"]
    kept = torch.load(out / "checkpoints" / LATEST, weights_only=True)
    assert kept["step"] == 20 and all(torch.isfinite(v).all() for v in kept["model"].values())
    # resuming starts again from that checkpoint, not from the poisoned weights
    monkeypatch.setattr(trial, "train_step", real_step)
    messages = []
    run_trial(cfg, out, echo=messages.append)
    assert messages[0] == f"resuming {out} from step 20"


def test_a_real_divergence_is_caught(tmp_path):
    bad = tiny_config("train.steps=100", "train.lr=1e12", "train.warmup_steps=0", "runtime.log_every=10")
    with pytest.raises(NonFiniteLossError, match="between step 1 and step 10; no checkpoint was saved yet"):
        run_trial(bad, tmp_path, echo=lambda s: None)


def test_patience_stops_early_and_keeps_the_best(tmp_path, monkeypatch):
    import ray_grok.trial.run as trial

    real_eval = trial.evaluate_all
    calls = []

    def peaking_eval(parts):
        # o.o.d. accuracy that peaks at the 3rd evaluation, then decays (a transient peak)
        row = real_eval(parts)
        calls.append(1)
        row["ood_test_acc_last"] = [0.1, 0.3, 0.6, 0.5, 0.4, 0.3, 0.2][len(calls) - 1]
        return row

    monkeypatch.setattr(trial, "evaluate_all", peaking_eval)
    cfg = tiny_config("train.steps=1000", "eval.every=10", "checkpoint.patience=3")
    result = run_trial(cfg, tmp_path, echo=lambda s: None)
    assert result.early_stopped and result.step == 50  # evals at 1, 10, 20 (best), 30, 40, 50
    assert (result.best_step, result.best_value) == (20, 0.6)
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert best["step"] == 20 and best["metrics"]["ood_test_acc_last"] == 0.6
    assert torch.load(tmp_path / "checkpoints" / LATEST, weights_only=True)["step"] == 50
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["state"] == "done" and status["early_stopped"] is True


def test_banner_and_first_step_time_come_before_any_progress_line(tmp_path):
    messages: list[str] = []
    run_trial(tiny_config("train.steps=30", "eval.every=10", "runtime.log_every=10"), tmp_path, echo=messages.append)
    banner, first = messages[0], messages[1]
    assert banner.startswith("device cpu with 1 thread | ") and " parameters | 30 steps of 64 rows" in banner
    assert "4 evaluations (every 10 steps)" in banner
    assert first.startswith("step 1 took ") and "29 steps and 4 evaluations left take about" in first
    assert messages[2].startswith("step 10/30") and not any("warning" in m for m in messages)


def test_ctrl_c_marks_the_trial_interrupted_and_the_same_command_resumes_it(tmp_path, reference):
    """SIGINT (Ctrl-C): status.json says interrupted with the step to resume from, the message names
    the command, no traceback; that command then ends bit-identical to an uninterrupted run."""
    out = tmp_path / "trial"
    proc = subprocess.Popen(train_cmd(out, *RESUME), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoints" / PREVIOUS).exists():
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the trial finished before it could be interrupted; make RESUME longer"
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    status = json.loads((out / "status.json").read_text())
    saved = torch.load(out / "checkpoints" / LATEST, weights_only=True)["step"]
    assert status["state"] == "interrupted" and status["resume_step"] == saved and status["step"] >= saved
    assert f"interrupted at step {status['step']:,} of 400" in stderr
    assert f"continues from its last checkpoint, step {saved:,}: ray-grok train --out {out}" in stderr
    assert "Traceback" not in stderr + stdout
    done = subprocess.run(train_cmd(out, *RESUME), check=True, capture_output=True, text=True)
    assert f"resuming {out} from step {saved}" in done.stdout
    assert_same_as(out, reference)
