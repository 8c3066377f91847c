"""Shared test helpers: tiny configs that train in seconds on a 2-core CPU."""
from __future__ import annotations

import pytest

from ray_grok.trial.config import TrialConfig, load_config

# Two random tasks mod 7, 8 examples a row: a 2-block model memorizes them in a few hundred steps.
TINY = (
    "task.p=7", "task.rule=random", "task.n_id=2", "task.n_ood=8", "task.n_examples=8",
    "model.width=64", "model.heads=2", "model.depth=2",
    "train.batch_size=64", "train.lr=1e-2", "train.warmup_steps=50", "train.weight_decay=0.0",
    "eval.batches=2", "runtime.device=cpu", "runtime.threads=1", "runtime.log_every=50",
)


def tiny_overrides(*extra: str) -> list[str]:
    return [*TINY, *extra]


def tiny_config(*extra: str) -> TrialConfig:
    return load_config(None, tiny_overrides(*extra))


@pytest.fixture
def tiny() -> TrialConfig:
    return tiny_config()
