"""The live cost of `ray-grok status` (sweep/live_cost.py): what is left, at the speed the finished
trials of each depth measured, beside the a-priori FLOP model.

Run directories are built with `prepare` and their trials' status.json written by hand: no training,
no Ray. Every expectation is computed from the trials' configs (trial_flops) and the wall times the
test gives them.
"""
import json
import time
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from ray_grok.cli import main
from ray_grok.io import format_duration, write_json
from ray_grok.results.plan import read_plan
from ray_grok.sweep.cost import DEFAULT_GPU_TFLOPS, estimate
from ray_grok.sweep.live_cost import MEASURED, MODEL, SCALED, amount, cost_lines, speed_ratio
from ray_grok.sweep.rundir import prepare, resolve, write_driver
from ray_grok.sweep.status import format_status, sweep_status
from ray_grok.trial.config import config_from_dict
from ray_grok.trial.flops import CPU_GFLOPS_PER_CORE, trial_flops
from ray_grok.trial.outputs import status_record
from ray_grok.trial.schema import DONE, FAILED, RUNNING

BASE = {
    "task": {"p": 7, "n_id": 8, "rule": "random", "n_ood": 8, "n_examples": 8},
    "model": {"width": 32, "heads": 2},
    "train": {"steps": 60, "batch_size": 16, "warmup_steps": 10},
    "eval": {"every": 20, "batches": 1},
}
STEPS = BASE["train"]["steps"]


def sweep(tmp_path: Path, depths: list[int], seeds: int = 2, resources: dict | None = None) -> Path:
    grid = tmp_path / "cost.yaml"
    grid.write_text(yaml.safe_dump({"name": "cost", "base": BASE, "axes": {"model.depth": depths},
                                    "seeds": seeds, "resources": resources or {"cpu": 2}}))
    launch = resolve(grid, tmp_path / "run", resume=False)
    prepare(launch.run_dir, launch.spec, launch.grid_text, launch.trials)
    return launch.run_dir


def entries(run_dir: Path, depth: int):
    return [e for e in read_plan(run_dir).entries if flops_and_depth(run_dir, e)[1] == depth]


def flops_and_depth(run_dir: Path, entry) -> tuple[float, int]:
    cfg = config_from_dict(json.loads((run_dir / entry.dir / "config.json").read_text()))
    return trial_flops(cfg), cfg.model.depth


def flops(run_dir: Path, entry) -> float:
    return flops_and_depth(run_dir, entry)[0]


def finish(run_dir: Path, entry, wall_time: float, step: int = STEPS) -> None:
    write_json(run_dir / entry.dir / "status.json", status_record(DONE, step, STEPS, wall_time=wall_time))


def at_step(run_dir: Path, entry, step: int, state: str = RUNNING) -> None:
    write_json(run_dir / entry.dir / "status.json", status_record(state, step, STEPS))


def by_depth(cost) -> dict:
    return {d.depth: d for d in cost.depths}


def test_each_depth_runs_at_the_speed_its_finished_trials_measured(tmp_path):
    run = sweep(tmp_path, [1, 2], seeds=3)
    cores = 2
    (a, a2, a3), (b, b2, b3) = entries(run, 1), entries(run, 2)
    finish(run, a, 3.0)
    finish(run, a2, 5.0)
    finish(run, b, 6.0, step=STEPS // 2)  # stopped early: half its steps were trained
    cost = sweep_status(run).cost
    assert cost.unit == "CPU core" and cost.per_trial == cores
    d1, d2 = by_depth(cost)[1], by_depth(cost)[2]
    rate1 = (flops(run, a) + flops(run, a2)) / ((3.0 + 5.0) * cores)
    rate2 = flops(run, b) / 2 / (6.0 * cores)
    assert (d1.source, d1.done, d1.left) == (MEASURED, 2, 1) and d1.rate == pytest.approx(rate1)
    assert (d2.source, d2.done, d2.left) == (MEASURED, 1, 2) and d2.rate == pytest.approx(rate2)
    assert rate1 != pytest.approx(rate2)  # the depths are told apart
    assert d1.hours_left == pytest.approx(flops(run, a3) / rate1 / 3600)
    assert d2.hours_left == pytest.approx((flops(run, b2) + flops(run, b3)) / rate2 / 3600)
    assert cost.hours_left == pytest.approx(d1.hours_left + d2.hours_left)
    assert cost.trial_seconds_left == pytest.approx(cost.hours_left * 3600 / cores)
    pooled = (flops(run, a) + flops(run, a2) + flops(run, b) / 2) / ((3.0 + 5.0 + 6.0) * cores)
    assert cost.measured == pytest.approx(pooled)
    # the FLOP model prices the same FLOPs at its assumed rate, as cost.estimate does for a dry run
    left = [a3, b2, b3]
    model = estimate((config_from_dict(json.loads((run / e.dir / "config.json").read_text())) for e in left), 0)
    assert cost.model_hours_left == pytest.approx(model.cpu_core_hours)


def test_running_trials_count_from_their_step_and_errored_ones_not_at_all(tmp_path):
    run = sweep(tmp_path, [1], seeds=4)
    done, running, failed, pending = entries(run, 1)
    finish(run, done, 6.0)
    at_step(run, running, 40)
    at_step(run, failed, 20, FAILED)
    d = by_depth(sweep_status(run).cost)[1]
    rate = flops(run, done) / (6.0 * 2)
    left = flops(run, running) * (STEPS - 40) / STEPS + flops(run, pending)
    assert d.left == 2 and d.flops_left == pytest.approx(left)
    assert d.hours_left == pytest.approx(left / rate / 3600)


def test_a_depth_with_no_finished_trial_is_scaled_by_flops_from_the_nearest_measured_depth(tmp_path):
    run = sweep(tmp_path, [1, 2, 4], seeds=2)
    (a, _), deep = entries(run, 1), entries(run, 4)
    finish(run, a, 2.0)
    cost = sweep_status(run).cost
    rate1 = flops(run, a) / (2.0 * 2)
    for depth in (2, 4):
        d = by_depth(cost)[depth]
        assert (d.source, d.scaled_from, d.done, d.rate) == (SCALED, 1, 0, pytest.approx(rate1))
        assert d.hours_left == pytest.approx(sum(flops(run, e) for e in entries(run, depth)) / rate1 / 3600)
    text = "\n".join(cost_lines(cost, 0))
    assert "depth 4: none done: scaled by FLOPs from depth 1's" in text

    finish(run, deep[0], 30.0)  # now depth 2 is nearer to depth 1 than to depth 4, 4 is measured
    cost = sweep_status(run).cost
    assert (by_depth(cost)[2].source, by_depth(cost)[2].scaled_from) == (SCALED, 1)
    assert by_depth(cost)[4].source == MEASURED
    assert by_depth(cost)[4].rate == pytest.approx(flops(run, deep[0]) / (30.0 * 2))


def test_with_no_finished_trial_the_flop_model_stands_in_and_says_so(tmp_path):
    gpus = 0.5
    run = sweep(tmp_path, [1, 2], seeds=2, resources={"cpu": 1, "gpu": gpus})
    at_step(run, entries(run, 2)[0], 15)
    st = sweep_status(run)
    cost = st.cost
    assert cost.unit == "GPU" and cost.per_trial == gpus and cost.measured is None
    assert {d.source for d in cost.depths} == {MODEL}
    assert all(d.rate == DEFAULT_GPU_TFLOPS * 1e12 for d in cost.depths)
    assert cost.hours_left == pytest.approx(cost.model_hours_left)
    left = sum(flops(run, e) for e in read_plan(run).entries) - flops(run, entries(run, 2)[0]) * 15 / STEPS
    assert cost.hours_left == pytest.approx(left / (DEFAULT_GPU_TFLOPS * 1e12) / 3600)
    text = format_status(st)
    assert "by the FLOP model (no trial has finished yet" in text and "GPU-" in text
    assert "slower than" not in text and "faster than" not in text


def test_gpu_hours_are_wall_hours_times_the_gpus_of_a_trial(tmp_path):
    gpus = 0.25
    run = sweep(tmp_path, [2], seeds=2, resources={"cpu": 1, "gpu": gpus})
    a, b = entries(run, 2)
    wall = 7.0
    finish(run, a, wall)
    cost = sweep_status(run).cost
    # b has the same FLOPs as a, so it costs what a cost: its wall time on its share of a GPU
    assert cost.hours_left == pytest.approx(wall * gpus / 3600 * flops(run, b) / flops(run, a))
    assert cost.trial_seconds_left == pytest.approx(wall * flops(run, b) / flops(run, a))


@pytest.mark.parametrize("factor", [2.5, 0.25])
def test_the_text_says_how_far_measured_and_assumed_speed_differ(tmp_path, factor):
    run = sweep(tmp_path, [1], seeds=3)
    a, b, c = entries(run, 1)
    assumed = CPU_GFLOPS_PER_CORE * 1e9
    finish(run, a, flops(run, a) / (assumed / factor) / 2)  # 2 cores per trial
    at_step(run, b, 30)
    write_driver(run, "running", time.time())  # a live driver: the time left is shared by the running
    st = sweep_status(run)
    text = format_status(st)
    word = "slower" if factor > 1 else "faster"
    shown = factor if factor > 1 else 1 / factor
    assert f"measured {shown:.1f}x {word} than the FLOP model assumed" in text
    assert (f"({assumed / factor / 1e9:.3g} GFLOP/s per CPU core achieved vs {assumed / 1e9:.3g} GFLOP/s "
            "assumed)") in text
    assert st.cost.hours_left == pytest.approx(st.cost.model_hours_left * factor)
    assert f"; the FLOP model says {amount(st.cost.model_hours_left, 'CPU core')}" in text
    assert f"{format_duration(st.cost.trial_seconds_left)} with 1 trial at once" in text
    assert "depth 1: 1 done at" in text and "; 2 left, " in text
    result = CliRunner().invoke(main, ["status", str(run)])
    assert result.exit_code == 0 and f"{shown:.1f}x {word}" in result.output


def test_a_finished_sweep_has_nothing_left_and_still_gives_its_speed(tmp_path):
    run = sweep(tmp_path, [1, 2], seeds=1)
    for e in read_plan(run).entries:
        finish(run, e, 4.0)
    st = sweep_status(run)
    assert st.cost.hours_left == 0 and all(d.source == MEASURED and d.left == 0 for d in st.cost.depths)
    lines = cost_lines(st.cost, 0)
    assert lines[0] == "  cost left: nothing left to train" and all(line.strip() for line in lines)
    assert "than the FLOP model assumed" in lines[1] and "the FLOP model says" not in lines[1]


def test_speed_ratio_near_one_says_as_fast():
    assert speed_ratio(1.0, 1.02) == "measured about as fast as the FLOP model assumed"
    assert speed_ratio(1.0, 1.5).startswith("measured 1.5x slower")


def test_status_works_without_the_grid_or_a_trial_config(tmp_path):
    run = sweep(tmp_path, [1], seeds=2)
    a, b = entries(run, 1)
    (run / b.dir / "config.json").unlink()
    finish(run, a, 1.0)
    cost = sweep_status(run).cost
    assert cost.unread == 1 and by_depth(cost)[1].left == 0
    assert "1 trials without a readable config.json not counted" in format_status(sweep_status(run))
    for grid in ("resources: {cpu: 0}\n", "resources: lots\n", "- a list\n", None):
        if grid is None:
            (run / "grid.yaml").unlink()
        else:
            (run / "grid.yaml").write_text(grid)
        st = sweep_status(run)
        assert st.cost is None and "cost left" not in format_status(st) and st.counts[DONE] == 1, grid
