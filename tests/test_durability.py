"""A trial survives damage to its files that a crash or a disk fault can leave: a corrupt latest
checkpoint, twice in a row; an empty or unreadable metrics.parquet or status.json next to a good
checkpoint. Each resumes (never fails on every retry) and, where a checkpoint is left, ends
bit-identical to an uninterrupted run."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from conftest import tiny_config
from ray_grok.trial.checkpoint import LATEST, PREVIOUS
from ray_grok.trial.run import run_trial

pytestmark = pytest.mark.slow

CFG = tiny_config("train.steps=200", "eval.every=40", "checkpoint.every=40")


class Stop(Exception):
    pass


def stop_at(last: int):
    """A reporter that stops the trial after its evaluation (and checkpoint) at step LAST."""
    def reporter(row: dict, *, checkpointed: bool, step: int) -> None:
        if step >= last:
            raise Stop

    return reporter


def train(out: Path, until: int | None = None) -> list[str]:
    """run_trial on OUT (stopped after the evaluation at step UNTIL); returns what it echoed."""
    lines: list[str] = []
    if until is None:
        run_trial(CFG, out, echo=lines.append, tensorboard=False)
    else:
        with pytest.raises(Stop):
            run_trial(CFG, out, reporter=stop_at(until), echo=lines.append, tensorboard=False)
    return lines


def corrupt(path: Path) -> None:
    data = path.read_bytes()
    path.unlink()  # a new file: previous.pt may be a second name of the same one
    path.write_bytes(data[: len(data) // 2])


def rows(out: Path) -> list[dict]:
    table = pq.read_table(out / "metrics.parquet").to_pylist()
    return [{k: v for k, v in r.items() if k != "wall_time"} for r in table]


def weights(out: Path) -> dict:
    return torch.load(out / "checkpoints" / LATEST, weights_only=True)["model"]


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference")
    train(out)
    return out


def assert_same_end(out: Path, reference: Path) -> None:
    a, b = weights(out), weights(reference)
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert json.loads((out / "status.json").read_text())["state"] == "done"


def test_a_good_checkpoint_survives_corrupt_resume_save_corrupt_resume(tmp_path, reference):
    out = tmp_path / "trial"
    ckpts = out / "checkpoints"
    train(out, until=120)  # latest 120, previous 80
    corrupt(ckpts / LATEST)
    log = train(out, until=120)  # resumes from previous (80), saves 120 once, stops
    assert any("resuming" in line and "from step 80" in line for line in log), log
    corrupt(ckpts / LATEST)  # the new 120 is damaged too: previous must still be a good one
    log = train(out)
    resumed = [line for line in log if line.startswith("resuming ")]
    assert resumed and "from step 80" in resumed[-1], log  # not from scratch: the good 80 survived
    assert (ckpts / (LATEST + ".unreadable")).exists()  # the damaged file is kept aside, not demoted
    assert_same_end(out, reference)
    assert rows(out) == rows(reference)


@pytest.mark.parametrize("damage", [b"", b"PAR1 not really parquet"], ids=["zero-length", "garbage"])
def test_an_unreadable_metrics_file_next_to_a_good_checkpoint_resumes(tmp_path, reference, damage):
    out = tmp_path / "trial"
    train(out, until=120)
    (out / "metrics.parquet").write_bytes(damage)
    log = train(out)
    said = [line for line in log if "metrics.parquet" in line and "unreadable" in line]
    assert said and "restart" in said[0], log
    assert (out / "metrics.parquet.unreadable").read_bytes() == damage
    assert_same_end(out, reference)
    # the evaluations from the resume step on are the uninterrupted run's
    assert rows(out) == [r for r in rows(reference) if r["step"] > 120]


def test_an_unreadable_status_next_to_a_good_checkpoint_resumes(tmp_path, reference):
    out = tmp_path / "trial"
    train(out, until=120)
    (out / "status.json").write_bytes(b"")
    train(out)
    assert_same_end(out, reference)
    assert rows(out) == rows(reference)
