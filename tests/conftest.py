"""Shared test helpers: tiny configs that train in seconds on a 2-core CPU, and the `slow` rule.

`pytest -m "not slow"` is the inner loop (well under a minute): every test that trains a model,
starts Ray or starts a subprocess must be marked slow. The rule is enforced, not remembered: in a
test without the mark, starting a process or taking a training step fails the test, saying so.
"""
from __future__ import annotations

import contextlib
import shutil
import subprocess
import tempfile
from typing import Any, Iterator

import pytest

import ray_grok.trial.run
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


@pytest.fixture
def local_ray(monkeypatch):
    """The environment of a Ray the code under test starts for itself: a temp dir of its own, short
    (Ray's socket paths must fit 107 bytes), no auth token, 2 CPUs; the temp dir is removed after."""
    tmp = tempfile.mkdtemp(prefix="rg-", dir="/tmp")
    for k, v in {"RAY_AUTH_MODE": "disabled", "RAY_GROK_TEMP_DIR": tmp, "RAY_GROK_NUM_CPUS": "2"}.items():
        monkeypatch.setenv(k, v)
    yield tmp
    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def _no_slow_work(item: pytest.Item) -> Iterator[None]:
    """Starting a process or training fails a test without the slow mark (fixtures included)."""
    if item.get_closest_marker("slow"):
        yield
        return

    class NoProcess(subprocess.Popen):
        def __init__(self, *args: Any, **kwargs: Any):
            raise AssertionError(f"{item.nodeid} starts a process ({args[0] if args else kwargs.get('args')}): "
                                 "mark it @pytest.mark.slow")

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError(f"{item.nodeid} trains a model: mark it @pytest.mark.slow")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(subprocess, "Popen", NoProcess)  # Ray, submitit, sbatch and every child start here
        mp.setattr(ray_grok.trial.run, "train_step", no_training)
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    with _no_slow_work(item):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    with _no_slow_work(item):
        yield
