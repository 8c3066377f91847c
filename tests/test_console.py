"""What `ray-grok train` tells a person before training: the GPU-size warning and the ETA arithmetic
(the banner itself is checked on a real trial in test_trial.py)."""
from pathlib import Path

import torch

from conftest import tiny_config
from ray_grok.trial.config import TrialConfig, load_config
from ray_grok.trial.console import CPU_EXAMPLE, first_step, size_warning
from ray_grok.trial.flops import evaluations

ROOT = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


def test_a_gpu_sized_trial_on_a_cpu_is_warned_with_a_cpu_sized_example():
    warning = size_warning(load_config(None, ["model.depth=2"]), CPU)
    assert warning is not None and warning.startswith("warning: this trial is sized for a GPU: at least ")
    assert " days on " in warning and CPU_EXAMPLE in warning
    assert size_warning(TrialConfig(), torch.device("cuda")) is None  # a GPU is what it is sized for
    assert size_warning(tiny_config(), CPU) is None


def test_the_cpu_example_of_the_warning_exists_and_is_cpu_sized():
    path = ROOT / CPU_EXAMPLE.split("--config ")[1]
    cfg = load_config(path)
    assert cfg.runtime.device == "cpu" and size_warning(cfg, CPU) is None


def test_evaluations_count_step_1_every_eval_every_and_the_end_once():
    counts = {(20, 10): 3, (25, 10): 4, (20, 1): 20, (200_000, 1000): 201}
    for (steps, every), n in counts.items():
        assert evaluations(load_config(None, [f"train.steps={steps}", f"eval.every={every}"])) == n


def test_first_step_eta_counts_the_steps_and_evaluations_left():
    cfg = load_config(None, ["train.steps=1000", "eval.every=100", "eval.batches=3"])
    # 999 steps + 11 evaluations of 4 sets x 3 batches forward (4 step-equivalents each) at 10 ms
    assert first_step(cfg, 0.01, 1).endswith("the 999 steps and 11 evaluations left take about 0m10s")
    # resumed from step 500, whose evaluation is done: those of 600, ..., 1000 are left
    assert "the 499 steps and 5 evaluations left" in first_step(cfg, 0.01, 501)
