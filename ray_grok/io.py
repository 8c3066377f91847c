"""Small file helpers every layer uses: atomic writes, JSON, and durations as people read them.

Every file ray-grok writes is written whole to a hidden temp file beside it and renamed into
place, so a reader (or a resume after a kill) never sees half a file. The temp name carries the
writer's PID: two processes writing one file (the driver recording a failure in a trial's
status.json while the trial's worker writes it) never share a temp file.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temp path to write PATH's new content to; renamed onto PATH when the block ends without
    an error, removed when it raises. Hidden (a leading dot), so dataset readers skip it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def read_json_or(path: str | Path, default: Any) -> Any:
    """PATH's JSON, or DEFAULT when the file is missing or not JSON (only a hand-edited file can be
    malformed: the writers are atomic)."""
    try:
        return read_json(path)
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def format_duration(seconds: float | None) -> str:
    """'4m05s' under an hour, '2h17m' under two days, '94 days' above; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    if s >= 2 * 86400:
        return f"{s / 86400:,.0f} days"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
