"""The previous results tables as a cache, so a re-aggregation re-reads only the trials that changed.

aggregate.py reads the trials in chunks (plan order) and writes each chunk's curves as one row group.
RUN_DIR/results/.cache/index.json records, per chunk, a key (each trial's id and the stamps of its
config.json, status.json and metrics.parquet, taken before they were read) and the chunk's row
group, plus the stamps of the two tables it describes. The next aggregation takes a chunk whose key
is unchanged from those tables (its slice of `trials`, its row group of `curves`) instead of from
hundreds of small files. The sweep driver re-aggregates every few finished trials (live phase
diagrams), when most chunks are unchanged.

A stamp is (inode, mtime_ns, size): every trial file is replaced by a rename (outputs.py), so a
rewrite gets a new inode even within one mtime tick or at the same size. Anything that does not
match (no index, other tables, another schema) falls back to reading the trial files: the cache
makes aggregation faster, never different.
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

from .outputs import atomic_write_text
from .rundir import PlanEntry
from .schema import CONFIG_FILE, METRICS_FILE, STATUS_FILE

INDEX = Path(".cache") / "index.json"
VERSION = 1
PART = "part-0.parquet"
TRIAL_FILES = (CONFIG_FILE, STATUS_FILE, METRICS_FILE)


def file_stamp(path: str | Path) -> list[int] | None:
    try:
        return _stamp(os.stat(path))
    except FileNotFoundError:
        return None


def _stamp(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_mtime_ns, st.st_size]


def chunk_key(run_dir: str, entries: Sequence[PlanEntry], pool: Executor) -> list:
    """[trial_id, stamp of each of TRIAL_FILES] per trial (lists, as they come back from JSON)."""
    return list(pool.map(partial(_trial_key, run_dir), entries))


def _trial_key(run_dir: str, entry: PlanEntry) -> list:
    out = os.path.join(run_dir, entry.dir)
    return [entry.trial_id] + [file_stamp(os.path.join(out, name)) for name in TRIAL_FILES]


@dataclass(frozen=True)
class Chunk:
    start: int  # index in the plan of its first trial
    key: list | None  # None: never reused (a trial's metrics could not be read)
    row_group: int | None  # its row group in `curves`; None when it has no curves rows


def save_index(results: Path, chunks: list[Chunk], trials_stamp: list[int], curves_stamp: list[int]) -> None:
    (results / INDEX).parent.mkdir(exist_ok=True)
    index = {"version": VERSION, "trials": trials_stamp, "curves": curves_stamp,
             "chunks": [{"start": c.start, "key": c.key, "row_group": c.row_group} for c in chunks]}
    atomic_write_text(results / INDEX, json.dumps(index))  # not indented: 10,000 keys


class Previous:
    """The previous tables, held open while the new ones are written beside them."""

    def __init__(self, chunks: dict[int, Chunk], trials: pa.Table | None = None,
                 curves: pq.ParquetFile | None = None, files: tuple = ()):
        self.chunks, self.trials, self.curves, self._files = chunks, trials, curves, files

    @classmethod
    def open(cls, results: Path, trials_schema: pa.Schema, curves_schema: pa.Schema) -> Previous:
        try:
            index = json.loads((results / INDEX).read_text())
            if index.get("version") != VERSION:
                return cls({})
            files = open(results / "trials" / PART, "rb"), open(results / "curves" / PART, "rb")
        except (OSError, ValueError):
            return cls({})
        try:
            # stamps of the open files, not of the paths: another aggregation may replace them meanwhile
            if [_stamp(os.fstat(f.fileno())) for f in files] != [index["trials"], index["curves"]]:
                raise ValueError("the tables are not the ones the index describes")
            trials, curves = pq.read_table(files[0]), pq.ParquetFile(files[1])
            if not (trials.schema.equals(trials_schema) and curves.schema_arrow.equals(curves_schema)):
                raise ValueError("the tables were written with another schema")
            chunks = {c["start"]: Chunk(**c) for c in index["chunks"]}
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException):
            for f in files:
                f.close()
            return cls({})
        return cls(chunks, trials, curves, files)

    def chunk(self, start: int, entries: Sequence[PlanEntry], key: list) -> tuple[pa.Table, pa.Table] | None:
        """The chunk's rows of (trials, curves) if its key is unchanged, else None."""
        c = self.chunks.get(start)
        if c is None or c.key is None or c.key != key:
            return None
        trials = self.trials.slice(start, len(entries))
        if trials.column("trial_id").to_pylist() != [e.trial_id for e in entries]:
            return None
        if c.row_group is None:
            return trials, self.curves.schema_arrow.empty_table()
        return trials, self.curves.read_row_group(c.row_group)

    def __enter__(self) -> Previous:
        return self

    def __exit__(self, *exc) -> None:
        for f in self._files:
            f.close()
