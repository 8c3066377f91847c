"""The previous results tables as a cache, so a re-aggregation re-reads only the trials that changed.

aggregate.py reads the trials in chunks (plan order) and writes each chunk's curves as its own file.
RUN_DIR/results/.cache/index.json records, per chunk, a key (each trial's id, its retired flag and
the stamps of its config.json, status.json and metrics.parquet, taken before they were read), its number of curves
rows and the stamp of its curves file, plus the stamp of the trials table. The next aggregation
keeps a chunk whose key and curves file are unchanged: its rows of `trials` come from the previous
table and its curves file is left alone, instead of reading hundreds of small files and writing
them again.

A stamp is (inode, mtime_ns, size): every trial file is replaced by a rename (ray_grok.io), so a
rewrite gets a new inode even within one mtime tick or at the same size. Anything that does not
match (no index, another trials table, another schema, a curves file replaced or missing) falls
back to reading the trial files: the cache makes aggregation faster, never different.
"""
from __future__ import annotations

import json
import os
from concurrent.futures import Executor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..io import atomic_write_text
from ..trial.schema import CONFIG_FILE, METRICS_FILE, STATUS_FILE
from .plan import PlanEntry

INDEX = Path(".cache") / "index.json"
VERSION = 3  # 3: a trial's key holds its retired flag
PART = "part-0.parquet"
TRIAL_FILES = (CONFIG_FILE, STATUS_FILE, METRICS_FILE)


def chunk_file(start: int) -> str:
    """The curves file of the chunk whose first trial is at plan index START."""
    return f"part-{start:07d}.parquet"


def file_stamp(path: str | Path) -> list[int] | None:
    try:
        return _stamp(os.stat(path))
    except FileNotFoundError:
        return None


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_mtime_ns, st.st_size]


def chunk_key(run_dir: str, entries: Sequence[PlanEntry], pool: Executor) -> list:
    """[trial_id, retired, stamp of each of TRIAL_FILES] per trial (lists, as they come back from
    JSON): retiring a trial changes its row though none of its files changed."""
    return list(pool.map(partial(_trial_key, run_dir), entries))


def _trial_key(run_dir: str, entry: PlanEntry) -> list:
    out = os.path.join(run_dir, entry.dir)
    return [entry.trial_id, entry.retired] + [file_stamp(os.path.join(out, name)) for name in TRIAL_FILES]


@dataclass(frozen=True)
class Chunk:
    start: int  # index in the plan of its first trial
    key: list | None  # None: never reused (a trial's metrics could not be read)
    rows: int  # its rows in `curves`
    curves: list[int] | None  # stamp of its curves file; None when it has no rows (and no file)


@dataclass(frozen=True)
class Kept:
    trials: pa.Table  # the chunk's rows of the previous trials table
    rows: int


def save_index(results: Path, chunks: list[Chunk], trials_stamp: list[int] | None) -> None:
    (results / INDEX).parent.mkdir(exist_ok=True)
    index = {"version": VERSION, "trials": trials_stamp,
             "chunks": [{"start": c.start, "key": c.key, "rows": c.rows, "curves": c.curves} for c in chunks]}
    atomic_write_text(results / INDEX, json.dumps(index))  # not indented: 10,000 keys


class Previous:
    """The previous trials table and what the index says of each chunk."""

    def __init__(self, chunks: dict[int, Chunk], trials: pa.Table | None = None):
        self.chunks, self.trials = chunks, trials

    @classmethod
    def open(cls, results: Path, trials_schema: pa.Schema) -> Previous:
        try:
            index = json.loads((results / INDEX).read_text())
            if index.get("version") != VERSION:
                return cls({})
            with open(results / "trials" / PART, "rb") as f:
                # the stamp of the open file, not of the path: another aggregation may replace it meanwhile
                if _stamp(os.fstat(f.fileno())) != index["trials"]:
                    return cls({})
                trials = pq.read_table(f)
            if not trials.schema.equals(trials_schema):
                return cls({})
            chunks = {c["start"]: Chunk(**c) for c in index["chunks"]}
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
            return cls({})
        return cls(chunks, trials)

    def chunk(self, start: int, entries: Sequence[PlanEntry], key: list, curves_file: Path) -> Kept | None:
        """The chunk as the previous aggregation left it, if its key and its curves file are unchanged."""
        c = self.chunks.get(start)
        if c is None or c.key is None or c.key != key or file_stamp(curves_file) != c.curves:
            return None
        trials = self.trials.slice(start, len(entries))
        if trials.column("trial_id").to_pylist() != [e.trial_id for e in entries]:
            return None
        return Kept(trials, c.rows)
