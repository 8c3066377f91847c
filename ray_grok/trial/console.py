"""What `run_trial` tells a person before and just after its first step: a start banner (device,
threads, parameters, steps), a warning when a GPU-sized trial is about to run on a CPU, and the
first step's measured time with the ETA it implies. A paper-sized trial takes about 30 s a step on
a CPU, and its first evaluation minutes more: without these lines it would print nothing for that
long.
"""
from __future__ import annotations

import torch

from ..io import format_duration
from .config import TrialConfig
from .flops import CPU_RATE_SOURCE, cpu_seconds, evaluation_steps, evaluations

# A CPU trial whose lower-bound time exceeds this is "sized for a GPU" and gets a warning.
GPU_SIZED_S = 24 * 3600.0
# Trial settings that run in minutes on a laptop CPU (the README's CPU example).
CPU_EXAMPLE = "ray-grok train --out runs/cpu --config configs/cpu-trial.yaml"


def banner(cfg: TrialConfig, device: torch.device, parameters: int) -> str:
    """One line: where the trial runs and how big it is, printed before the first step."""
    threads = torch.get_num_threads()
    where = f"device {device}" + (f" with {threads} thread{'s' * (threads != 1)}" if device.type == "cpu" else "")
    return (f"{where} | {parameters:,} parameters | {cfg.train.steps:,} steps of {cfg.train.batch_size:,} "
            f"rows | {evaluations(cfg)} evaluations (every {cfg.eval.every:,} steps) | progress every "
            f"{cfg.runtime.log_every:,} steps")


def size_warning(cfg: TrialConfig, device: torch.device) -> str | None:
    """A warning when the trial would take more than GPU_SIZED_S on this CPU, else None."""
    if device.type != "cpu":
        return None
    threads = torch.get_num_threads()
    seconds = cpu_seconds(cfg, threads)
    if seconds < GPU_SIZED_S:
        return None
    return (f"warning: this trial is sized for a GPU: at least {format_duration(seconds)} on {threads} CPU "
            f"thread(s) at {CPU_RATE_SOURCE}. On a CPU, try a smaller one: {CPU_EXAMPLE}")


def first_step(cfg: TrialConfig, seconds: float, step: int) -> str:
    """The measured time of this process's first step and the ETA of the rest at that rate,
    the evaluations included (each one is 4 sets x eval.batches forward passes)."""
    left_steps = cfg.train.steps - step
    left_evals = max(0, evaluations(cfg) - _evaluations_done(cfg, step - 1))
    eta = seconds * (left_steps + left_evals * evaluation_steps(cfg))
    return (f"step {step:,} took {seconds:.2f} s (the first step includes warm-up); at that rate the "
            f"{left_steps:,} steps and {left_evals} evaluations left take about {format_duration(eta)}")


def _evaluations_done(cfg: TrialConfig, step: int) -> int:
    """Evaluations of steps 1..step (step 1 and every eval.every steps; the end is after `step`)."""
    if step < 1:
        return 0
    every = cfg.eval.every
    return 1 + step // every - (every == 1)
