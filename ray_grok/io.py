"""Small file helpers every layer uses: durable atomic writes, JSON, YAML that refuses a key given
twice, private directories, one-writer locks, and durations as people read them.

Atomic writes. Every file ray-grok writes is written whole to a hidden temp file beside it,
fsynced, renamed into place, and the directory fsynced, so a reader (or a resume after a kill or
a power cut) sees the old file or the new one, never half of one. The temp name carries the
writer's process and thread: two writers of one file (the driver recording a failure in a
trial's status.json while the trial's worker writes it, or two threads) never share a temp file,
so neither renames the other's half-written one.

Locks. `hold_lock` takes an OS-level lock (flock) on a file and keeps it while its block runs;
the kernel drops it when the process dies, however it dies, so a crashed holder never blocks the
next one. The holder writes who it is into the file, and a refused writer says so.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import socket
import stat
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import yaml

from .errors import PrivateDirError

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


FULL = (errno.ENOSPC, errno.EDQUOT)
FULL_TEXT = ("No space left on device", "Disk quota exceeded")  # as a remote error's text shows them


def disk_full(exc: BaseException | str | None) -> bool:
    """EXC (or anything in its chain), or an error's text, says the file system is full."""
    if isinstance(exc, str):
        return any(t in exc for t in FULL_TEXT)
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (isinstance(exc, OSError) and exc.errno in FULL) or any(t in str(exc) for t in FULL_TEXT):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def disk_full_line(exc: BaseException | str) -> str:
    """The line of an error (a remote traceback's, say) that says the disk is full, shortened."""
    texts = [exc] if isinstance(exc, str) else []
    while not isinstance(exc, str) and exc is not None:
        texts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__ or exc.__context__
    lines = [ln.strip() for t in texts for ln in t.splitlines() if any(f in ln for f in FULL_TEXT)]
    return (lines[-1] if lines else " ".join(str(texts[0]).split()))[:200]


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
# YAML: every key once
# ---------------------------------------------------------------------------------------------

class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A mapping of a YAML file gives one key twice (YAML keeps the last one silently)."""


class UniqueKeyLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses a key given twice in one mapping: `alpha: 0.5` then
    `alpha: 0.7` is a typo or a merge gone wrong, and which one wins would be a guess."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise DuplicateKeyError(None, None, f"key {key!r} is given twice (lines {seen[key]} and {line}); "
                                        "give each key once", key_node.start_mark)
            if isinstance(key, (str, int, float, bool)):
                seen[key] = line
        return super().construct_mapping(node, deep)


def yaml_error_line(exc: Exception) -> str:
    """A YAML error as one line: 'key 'alpha' is given twice (lines 2 and 3); ... (line 3, column 1)'."""
    problem = getattr(exc, "problem", None) or str(exc)
    mark = getattr(exc, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    if isinstance(exc, DuplicateKeyError):
        where = ""  # the problem names both lines
    return " ".join(f"{problem}{where}".split())


# ---------------------------------------------------------------------------------------------
# Private directories
# ---------------------------------------------------------------------------------------------

def private_dir(path: str | Path, what: str) -> Path:
    """PATH as a directory only this user can enter (0700), created if missing (its parents as
    the umask says). An existing one must be a real directory owned by this user; a looser mode
    is tightened. A foreign owner, a symlink or a failed chmod is a PrivateDirError: these
    directories hold pickles that ray-grok loads, tokens and sockets."""
    error = PrivateDirError
    path = Path(path)
    with contextlib.suppress(FileExistsError):
        path.parent.mkdir(parents=True, exist_ok=True)
        os.mkdir(path, 0o700)
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise error(f"{what} {path} cannot be created: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise error(f"{what} {path} is {'a symlink' if stat.S_ISLNK(st.st_mode) else 'not a directory'}; "
                    "it must be a real directory of yours")
    if st.st_uid != os.getuid():
        raise error(f"{what} {path} is owned by uid {st.st_uid} ({_user(st.st_uid)}), not by you "
                    f"(uid {os.getuid()}): use a directory of your own")
    if stat.S_IMODE(st.st_mode) & 0o077:
        try:
            os.chmod(path, 0o700)
        except OSError as exc:
            raise error(f"{what} {path} has mode {oct(stat.S_IMODE(st.st_mode))} and chmod 0700 failed "
                        f"({exc.strerror}); it must be private (0700)") from None
    return path


# a run or trial directory there would put ray-grok's files (pickles, tokens) among the system's
SYSTEM_DIRS = {"bin", "boot", "dev", "etc", "lib", "lib32", "lib64", "libx32", "proc", "sbin", "sys", "usr"}


def system_dir(path: str | Path) -> bool:
    """/ itself, or a path in one of the system's directories (/etc, /usr, ...)."""
    parts = os.path.normpath(os.path.abspath(path)).split(os.sep)
    return parts[1] == "" or parts[1] in SYSTEM_DIRS


def _user(uid: int) -> str:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_name
    except (KeyError, ImportError):
        return "unknown user"


# ---------------------------------------------------------------------------------------------
# One writer at a time
# ---------------------------------------------------------------------------------------------

NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # the file system offers no flock


def holder_record(role: str) -> dict[str, Any]:
    """Who takes a lock: host, process, Slurm job (a requeued job keeps its id), when, as what."""
    return {"role": role, "host": socket.gethostname(), "pid": os.getpid(),
            "job_id": os.environ.get("SLURM_JOB_ID"), "restart": os.environ.get("SLURM_RESTART_COUNT"),
            "since": time.time()}


def describe_holder(holder: dict[str, Any]) -> str:
    """'ray-grok launch on host h1 (pid 123, Slurm job 456, since 2026-11-30 12:03:44)'."""
    if not holder:
        return "another process (its record is being written)"
    job = f", Slurm job {holder['job_id']}" if holder.get("job_id") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["since"])) if holder.get("since") else "?"
    return f"ray-grok {holder.get('role', '?')} on host {holder.get('host', '?')} (pid {holder.get('pid', '?')}{job}, since {since})"


def read_holder(path: str | Path) -> dict[str, Any]:
    held = read_json_or(path, {})
    return held if isinstance(held, dict) else {}


@contextlib.contextmanager
def hold_lock(path: str | Path, role: str, busy: Callable[[dict[str, Any]], Exception],
              wait_s: float = 0.0) -> Iterator[bool]:
    """Hold an exclusive flock on PATH (created 0600) while the block runs; yields True. Refused
    at once (or after wait_s) with busy(holder record) while another process holds it. Yields
    False, holding nothing, where the file system has no locks (the caller falls back to what it
    can check). The file descriptor is not inherited, so a child left running cannot keep it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        deadline, supported = time.monotonic() + wait_s, True
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise busy(read_holder(path)) from None
                time.sleep(0.2)
            except OSError as exc:
                if exc.errno not in NO_LOCKS:
                    raise
                supported = False
                break
        if supported:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder_record(role)) + "\n").encode(), 0)
        yield supported
    finally:
        os.close(fd)  # releases the lock


# ---------------------------------------------------------------------------------------------

def format_duration(seconds: float | None) -> str:
    """'4m05s' under an hour, '2h17m' under two days, '94 days' above; '?' when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    if s >= 2 * 86400:
        return f"{s / 86400:,.0f} days"
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
