"""Small file helpers every layer uses: durable atomic writes, JSON, and durations as people read them.

Atomic writes. Every file ray-grok writes is written whole to a hidden temp file beside it,
fsynced, renamed into place, and the directory fsynced, so a reader (or a resume after a kill or
a power cut) sees the old file or the new one, never half of one. The temp name carries the
writer's process and thread: two writers of one file (the driver recording a failure in a
trial's status.json while the trial's worker writes it, or two threads) never share a temp file,
so neither renames the other's half-written one.
"""
from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import threading
from pathlib import Path
from typing import Any, Iterator

# ---------------------------------------------------------------------------------------------
# Durable atomic writes
# ---------------------------------------------------------------------------------------------


def _fsync_path(path: Path, directory: bool = False) -> None:
    flags = os.O_RDONLY | (os.O_DIRECTORY if directory else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    except OSError as exc:  # some file systems cannot fsync a directory: the rename is all they offer
        if not (directory and exc.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF)):
            raise
    finally:
        os.close(fd)


def temp_name(path: Path, suffix: str = "tmp") -> Path:
    """A hidden name beside PATH that no other writer (process or thread) uses at the same time."""
    return path.with_name(f".{path.name}.{os.getpid()}-{threading.get_native_id()}.{suffix}")


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = True) -> Iterator[Path]:
    """A temp path to write PATH's new content to. When the block ends without an error it is
    fsynced (durable), renamed onto PATH and the directory fsynced; when it raises (a full disk,
    a kill) it is removed and PATH keeps its old content. Hidden, so dataset readers skip it."""
    path = Path(path)
    tmp = temp_name(path)
    try:
        yield tmp
        if durable:
            _fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:  # the rename itself is only durable once the directory entry is on disk
        _fsync_path(path.parent, directory=True)


def atomic_write_text(path: str | Path, text: str, durable: bool = True) -> None:
    with atomic_path(path, durable) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any, durable: bool = True) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n", durable)


def read_json(path: str | Path) -> Any:
    with open(path, "rb") as f:
        return json.loads(f.read())


def read_json_or(path: str | Path, default: Any) -> Any:
    """PATH's JSON, or DEFAULT when the file is missing or not JSON (only a hand-edited or
    externally damaged file can be malformed: the writers are atomic)."""
    try:
        return read_json(path)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return default


# ---------------------------------------------------------------------------------------------

def format_duration(seconds: float | None) -> str:
    """'4m05s' under an hour, '2h17m' above; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
