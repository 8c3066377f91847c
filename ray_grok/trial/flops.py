"""What a trial costs in model FLOPs, and how long that takes on a CPU: the start banner's warning
of `ray-grok train` and the sweep's cost estimate (sweep/cost.py) share these numbers.

The FLOP count is the usual MFU accounting (benchmarks/throughput.py): dense 6 * 12 * width^2 *
depth per token plus causal attention, for the training steps plus the evaluations (forward only,
four sets of `eval.batches` batches at step 1, every `eval.every` steps and at the end).
"""
from __future__ import annotations

from .config import TrialConfig

# Achieved model FLOP/s of the whole 2-core CI machine, measured by
# `python benchmarks/throughput.py --configs A` (width 128, depth 2, batch 64): 91 GFLOP/s.
# Tiny models run well below it, so CPU times from it are lower bounds.
CPU_MACHINE_GFLOPS = 91.0
CPU_MACHINE_CORES = 2
CPU_GFLOPS_PER_CORE = CPU_MACHINE_GFLOPS / CPU_MACHINE_CORES
CPU_RATE_SOURCE = (f"{CPU_GFLOPS_PER_CORE:g} GFLOP/s per CPU core (benchmarks/throughput.py config A on a "
                   f"{CPU_MACHINE_CORES}-core machine)")


def model_flops_per_step(cfg: TrialConfig) -> float:
    """Forward + backward FLOPs of one training step."""
    w, d, T, B = cfg.model.width, cfg.model.depth, cfg.seq_len, cfg.train.batch_size
    dense = 6 * 12 * w * w * d * B * T
    attention = 3 * 2 * 2 * B * d * T * T * w / 2  # QK^T and AV, causal half, x3 for backward
    return dense + attention


def evaluations(cfg: TrialConfig) -> int:
    """Evaluations of a whole trial: step 1, every eval.every steps, the end (counted once if it
    falls on eval.every)."""
    steps, every = cfg.train.steps, cfg.eval.every
    return 1 + steps // every + (steps % every != 0) - (every == 1)


def evaluation_steps(cfg: TrialConfig) -> float:
    """One evaluation in training steps: forward only (a third of a step) over 4 sets x eval.batches."""
    return 4 * cfg.eval.batches / 3


def trial_flops(cfg: TrialConfig) -> float:
    step = model_flops_per_step(cfg)
    return (cfg.train.steps + evaluations(cfg) * evaluation_steps(cfg)) * step


def cpu_seconds(cfg: TrialConfig, threads: int) -> float:
    """A lower bound of the trial's time on `threads` CPU cores at the measured rate."""
    return trial_flops(cfg) / (CPU_GFLOPS_PER_CORE * 1e9 * max(1, threads))
