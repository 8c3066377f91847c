"""Durable atomic writes: concurrent writers of one file never rename each other's half-written
file and readers never see a torn one; every file is fsynced before its rename and its directory
after, for checkpoints, status.json and metrics.parquet. Fast: threads, no process."""
from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import pytest
import torch

from ray_grok.io import atomic_path, read_json, write_json
from ray_grok.trial import checkpoint as ckpt
from ray_grok.trial.outputs import MetricsLog, status_record
from ray_grok.trial.schema import METRICS_SCHEMA


def test_concurrent_writers_of_one_file_never_tear_it(tmp_path):
    path = tmp_path / "status.json"
    write_json(path, {"writer": -1, "n": -1})
    errors: list[BaseException] = []
    seen: set[tuple[int, int]] = set()
    stop = threading.Event()

    def writer(i: int) -> None:
        try:
            for n in range(60):
                write_json(path, {"writer": i, "n": n, "pad": "x" * 20_000})
        except BaseException as exc:  # noqa: BLE001 - collected and shown by the assert
            errors.append(exc)

    def reader() -> None:
        while not stop.is_set():
            try:
                data = json.loads(path.read_bytes())
                seen.add((data["writer"], data["n"]))
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
                return

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    watcher = threading.Thread(target=reader)
    watcher.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    stop.set()
    watcher.join()
    assert not errors, f"{len(errors)} errors, first: {errors[0]!r}"
    assert len(seen) > 1  # the reader did read while the writers wrote
    assert read_json(path)["n"] == 59
    assert not [p.name for p in tmp_path.iterdir() if p.name != "status.json"], "temp files left behind"


class Journal:
    """os.fsync and os.replace as they happen: ('fsync', path) and ('replace', src, dst)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        self.events: list[tuple] = []
        fsync, replace = os.fsync, os.replace

        def logged_fsync(fd: int) -> None:
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
            fsync(fd)

        def logged_replace(src, dst, **kw) -> None:
            self.events.append(("replace", str(src), str(dst)))
            replace(src, dst, **kw)

        monkeypatch.setattr(os, "fsync", logged_fsync)
        monkeypatch.setattr(os, "replace", logged_replace)

    def assert_durable(self, final: Path, new_content: bool = True) -> None:
        """FINAL was renamed in from a temp file that was fsynced first (unless it is a new name
        of content fsynced before, as previous.pt is of the old latest.pt), and its directory
        was fsynced after the rename."""
        renames = [i for i, e in enumerate(self.events) if e[0] == "replace" and e[2] == str(final)]
        assert renames, f"{final.name} was not renamed into place: {self.events}"
        i = renames[-1]
        tmp = self.events[i][1]
        if new_content:
            assert ("fsync", tmp) in self.events[:i], f"{final.name}: temp file not fsynced before the rename"
        assert ("fsync", str(final.parent)) in self.events[i + 1:], \
            f"{final.name}: directory not fsynced after the rename"


def test_status_metrics_and_checkpoints_are_fsynced_before_and_after_the_rename(tmp_path, monkeypatch):
    journal = Journal(monkeypatch)
    write_json(tmp_path / "status.json", status_record("running", 1, 10))
    journal.assert_durable(tmp_path / "status.json")

    row = {name: None for name in METRICS_SCHEMA.names} | {"step": 1}
    MetricsLog(tmp_path / "metrics.parquet").append(row)
    journal.assert_durable(tmp_path / "metrics.parquet")

    state = {"step": 1, "model": {"w": torch.zeros(2)}, "optimizer": {}, "sampler": {}, "rng": {}, "config": {}}
    ckpt.save_latest(state, tmp_path / "checkpoints")
    ckpt.save_latest({**state, "step": 2}, tmp_path / "checkpoints")  # the first becomes previous
    ckpt.save_best(state, tmp_path / "checkpoints")
    for name in (ckpt.LATEST, ckpt.BEST):
        journal.assert_durable(tmp_path / "checkpoints" / name)
    journal.assert_durable(tmp_path / "checkpoints" / ckpt.PREVIOUS, new_content=False)
    assert ckpt.load_latest(tmp_path / "checkpoints")["step"] == 2
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == sorted([ckpt.LATEST, ckpt.PREVIOUS, ckpt.BEST])


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    path = tmp_path / "status.json"
    write_json(path, {"n": 1})
    with pytest.raises(RuntimeError, match="disk gone"):
        with atomic_path(path) as tmp:
            tmp.write_text('{"n": 2, "half')
            raise RuntimeError("disk gone")
    assert read_json(path) == {"n": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]
