"""AdamW with the paper's decay groups, and its learning-rate schedule."""
from __future__ import annotations

import math

import torch

from .config import TrainConfig
from .model import Transformer


def lr_multiplier(step: int, train: TrainConfig) -> float:
    """Multiplier of the peak lr for the update with 0-based index `step` (0 .. steps-1).

    Linear from warmup_start to 1.0 over warmup_steps, then cosine from 1.0 down to
    final_lr_ratio at the last step (the paper's schedule).
    """
    w, last = train.warmup_steps, train.steps - 1
    if step < w:
        return train.warmup_start + (1.0 - train.warmup_start) * step / w
    if last <= w:
        return 1.0
    progress = min(1.0, (step - w) / (last - w))
    return train.final_lr_ratio + (1.0 - train.final_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(model: Transformer, train: TrainConfig, fused: bool = False) -> torch.optim.AdamW:
    return torch.optim.AdamW(
        model.param_groups(train.weight_decay),
        lr=train.lr * lr_multiplier(0, train),
        betas=(train.beta1, train.beta2),
        eps=train.eps,
        fused=fused or None,
    )


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
