"""One evaluation function for all four sets: loss, accuracy, last-position and per-shot accuracy."""
from __future__ import annotations

import contextlib
from typing import Callable

import torch
import torch.nn.functional as F

from .data import EvalSet


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    es: EvalSet,
    positions: torch.Tensor,
    chunk_rows: int,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict[str, float | list[float]]:
    """Metrics of one set, averaged per task, then over tasks (every task weighs the same).

    Returns {loss, acc, acc_last, acc_by_shot}: acc is the mean over the n z positions,
    acc_last the last position (n-1 shots), acc_by_shot the accuracy at each position k.
    """
    n = len(positions)
    dev = es.rows.device
    loss_sum = torch.zeros(es.n_tasks, device=dev, dtype=torch.float64)
    correct = torch.zeros(es.n_tasks, n, device=dev, dtype=torch.float64)
    rows_per_task = torch.zeros(es.n_tasks, device=dev, dtype=torch.float64)
    was_training = model.training
    model.eval()
    for start in range(0, len(es.rows), chunk_rows):
        rows = es.rows[start:start + chunk_rows]
        tids = es.task_ids[start:start + chunk_rows]
        with autocast():
            logits = model(rows[:, :-1], positions)  # (R, n, V)
        targets = rows[:, 1:][:, positions]  # (R, n): the z tokens
        loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none").view(-1, n)
        loss_sum.index_add_(0, tids, loss.mean(1).double())
        correct.index_add_(0, tids, (logits.argmax(-1) == targets).double())
        rows_per_task.index_add_(0, tids, torch.ones_like(tids, dtype=torch.float64))
    model.train(was_training)
    by_shot = (correct / rows_per_task[:, None]).mean(0)  # per task, then over tasks
    return {
        "loss": (loss_sum / rows_per_task).mean().item(),
        "acc": by_shot.mean().item(),
        "acc_last": by_shot[-1].item(),
        "acc_by_shot": by_shot.tolist(),
    }
