"""Cluster profiles: where a sweep runs. `cluster/local.yaml` (the default: a local Ray) or a Slurm
allocation (`cluster/slurm-example.yaml`, `cluster/dev-slurm.yaml`), loaded and validated as a whole.

    kind: slurm
    partition: gpu
    nodes: 2                  # one Ray node per Slurm task: head on the first, workers on the rest
    gpus_per_node: 4
    cpus_per_task: 32
    time: "24:00:00"          # or minutes: 1440
    storage_root: /shared/$USER/ray-grok   # run directories live here, seen by every node
    ray: {object_store_mb: 4096}

Every error names the file, the key and the value; an unknown key is listed with the valid ones.
Nothing here imports Ray or submitit.
"""
from __future__ import annotations

import getpass
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Mapping, Union

import yaml

from .. import compat
from ..errors import ConfigError, ProfileError
from ..sweep.rundir import Launch, resolve
from ..io import UniqueKeyLoader, system_dir, yaml_error_line
from ..trial.fields import CONTROL, Checked, coerce, describe, doc, internal, suggest

# Each task's Ray temp dir is ray.temp_root + TASK_TEMP_DIR (cluster/layout.py), and Ray's socket
# paths under it must fit the AF_UNIX limit (compat.MAX_RAY_TEMP_DIR). With a 6-digit uid, an
# array job's id and a 2-digit rank that leaves temp_root 16 characters. It sits in a directory of
# the user's (rgUID, 0700): Ray makes its own temp dir world-writable (0777), sockets included, and
# only a private parent keeps other users of the node out of it.
TASK_TEMP_DIR = "/rg{uid}/{job_id}-{rank}"
MAX_TEMP_ROOT_CHARS = compat.MAX_RAY_TEMP_DIR - len(TASK_TEMP_DIR.format(uid=123456, job_id="123456789_1234", rank=15))
PORT_CEILING = 32768  # Linux hands out ephemeral ports from 32768 up: stay below them
FIXED_PORTS = 16  # per Ray node: GCS, client server, dashboard, agents, node/object manager, ...
MEM_RE = re.compile(r"[0-9]+[KMGT]?B?", re.IGNORECASE)  # fullmatch: '$' would let a trailing newline in
# sbatch options the profile sets itself: give them as profile keys, not in sbatch_extra
LOGS = "ray-grok sets the job's logs itself (RUN_DIR/slurm/JOB)"
REQUEUE = "ray-grok always sets --requeue (the job requeues itself at its time limit, up to max_requeues)"
MANAGED_SBATCH = {  # option -> how to set it instead
    "partition": "partition", "account": "account", "qos": "qos", "nodes": "nodes",
    "ntasks-per-node": "tasks_per_node", "ntasks": "tasks_per_node", "cpus-per-task": "cpus_per_task",
    "gpus-per-node": "gpus_per_node", "mem": "mem", "time": "time", "job-name": "job_name",
    "signal": "signal_delay_s", "output": LOGS, "error": LOGS, "open-mode": LOGS, "requeue": REQUEUE,
    "no-requeue": REQUEUE,  # would undo --requeue
}
# sbatch reads any unambiguous prefix of a long option as the option (--part=gpu is --partition):
# such a prefix of a managed option is refused too, except the real options that are one
REAL_PREFIX_OPTIONS = {"gpus"}  # --gpus (total GPUs), not --gpus-per-node
OPTION_RE = re.compile(r"[a-z][a-z0-9-]*")  # sbatch's long options: lowercase ASCII and dashes


class _ProfileSection(Checked):
    ERROR = ProfileError


@dataclass(frozen=True, kw_only=True)
class RaySettings(_ProfileSection):
    """How each Ray node inside a Slurm job is started (one Ray node per Slurm task)."""

    SECTION = "ray"
    object_store_mb: int = doc("object store per Ray node in MiB (lives in /dev/shm; Ray's default "
                               "is 30% of RAM); ray-grok passes no large objects", 2048)
    port_base: int = doc("first port of the blocks Ray nodes take (GCS, agents, workers); a block "
                         "is chosen from the job id, so jobs sharing a node do not collide", 20000)
    worker_ports: int = doc("ports per Ray node for worker processes (one per worker)", 240)
    dashboard: bool = doc("start Ray's dashboard on the head, bound to 127.0.0.1 only (reach it "
                          "with an SSH tunnel; needs ray[default])", False)
    temp_root: str = doc(f"node-local root of the per-job Ray temp dirs; at most {MAX_TEMP_ROOT_CHARS} "
                         "characters (Ray's socket paths under it must fit AF_UNIX's limit)", "/tmp")
    interface: str | None = doc("network interface whose IPv4 address Ray nodes announce (e.g. ib0); "
                                "null: the default route's, else the one the hostname resolves to", None)
    join_timeout_s: float = doc("seconds the head waits for every worker to join before failing", 300.0)
    stop_timeout_s: float = doc("seconds Ray gets to stop on exit or SIGTERM before it is killed "
                                "(keep it under Slurm's KillWait, usually 30 s)", 15.0)

    @property
    def ports_per_node(self) -> int:
        return FIXED_PORTS + self.worker_ports

    @classmethod
    def unknown_key(cls, name: str) -> str:
        valid = [k for k, _, _ in describe(cls)]
        return (f"unknown key {cls.key(name)} in the ray section{suggest(cls.key(name), valid)}; "
                f"valid keys: {', '.join(valid)}")

    def check(self) -> None:
        self.need(self.object_store_mb >= 80, "object_store_mb", ">= 80 (Ray's minimum is 75 MiB)")
        self.need(8 <= self.worker_ports <= PORT_CEILING - 1024 - FIXED_PORTS, "worker_ports",
                  f"from 8 to {PORT_CEILING - 1024 - FIXED_PORTS} (a node's ports must fit below {PORT_CEILING})")
        self.need(os.path.isabs(self.temp_root) and len(self.temp_root) <= MAX_TEMP_ROOT_CHARS, "temp_root",
                  f"an absolute path of at most {MAX_TEMP_ROOT_CHARS} characters (Ray's socket paths under "
                  f"it must stay below {compat.AF_UNIX_PATH_MAX} bytes)")
        self.need(self.interface is None or bool(re.fullmatch(r"[\w.:@-]{1,15}", self.interface, re.ASCII)), "interface",
                  "a network interface name like ib0 (or null)")
        self.need(self.join_timeout_s > 0, "join_timeout_s", "> 0")
        self.need(self.stop_timeout_s > 0, "stop_timeout_s", "> 0")


class _Profile(_ProfileSection):
    @classmethod
    def unknown_key(cls, name: str) -> str:
        kind = cls.__dataclass_fields__["kind"].default
        valid = [k for k, _, _ in describe_profile_keys(kind)]
        return f"unknown key {name} for kind {kind}{suggest(name, valid)}; valid keys: {', '.join(valid)}"


@dataclass(frozen=True, kw_only=True)
class LocalProfile(_Profile):
    """Ray on this machine, started by the sweep itself."""

    kind: Literal["local"] = doc("local: a Ray on this machine (the default); slurm: a Slurm job", "local")
    storage_root: str | None = doc("where run directories go (RUN_DIR = storage_root/<grid name>); "
                                   "null: runs/ under the current directory", None)
    source: str = internal("")

    def check(self) -> None:
        self.need(self.storage_root is None or bool(self.storage_root.strip()), "storage_root",
                  "a directory (or null)")
        self.need(self.storage_root is None or not os.path.isabs(self.storage_root) or not system_dir(self.storage_root),
                  "storage_root",
                  "a directory of yours, not / or a system directory (/etc, /usr, ...)")


def _time(key: str, value: Any) -> str:
    """A time limit as text: minutes may come as a number (checked by parse_time_min like text)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return coerce(key, value, str, ProfileError)


def _sbatch_extra(key: str, value: Any) -> tuple[tuple[str, Any], ...]:
    """{option: value} or ['--option=value', '--flag'] -> ((option, value), ...), options without '--'."""
    pairs: list[tuple[str, Any]] = []
    if value is None:
        return ()
    if isinstance(value, tuple) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        pairs = list(value)  # already parsed (dataclasses.replace builds the profile again)
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if not isinstance(k, str) or not k:
                raise ProfileError(f"{key} option names must be strings, got {k!r}")
            if not (isinstance(v, (str, int, float)) or v is True):
                raise ProfileError(f"{key}.{k} must be a string, a number or true (a flag), got {v!r}")
            pairs.append((k.lstrip("-"), v))
    elif isinstance(value, (list, tuple)):
        for item in value:
            if not isinstance(item, str) or not item.startswith("--") or len(item) < 3:
                raise ProfileError(f"{key} entries must look like '--option=value' or '--flag', got {item!r}")
            name, eq, val = item[2:].partition("=")
            pairs.append((name, val if eq else True))
    else:
        raise ProfileError(f"{key} must be a mapping {{option: value}} or a list of '--option=value', got {value!r}")
    for name, value in pairs:
        option = name.replace("_", "-")
        if not OPTION_RE.fullmatch(option):
            raise ProfileError(f"{key} option names must be sbatch's long options (lowercase letters, digits and "
                               f"dashes, e.g. constraint), got {name!r}")
        managed = sorted(m for m in MANAGED_SBATCH if m.startswith(option))
        if option in MANAGED_SBATCH:
            managed = [option]
        elif option in REAL_PREFIX_OPTIONS:
            managed = []
        if managed:
            reads = "" if managed == [option] else f", which sbatch reads as --{' or --'.join(managed)}"
            instead = MANAGED_SBATCH[managed[0]]
            if " " in instead:  # an option ray-grok sets itself
                raise ProfileError(f"{key} sets --{option}{reads}: {instead}")
            raise ProfileError(f"{key} sets --{option}{reads}, which the profile manages: use the profile key "
                               f"{instead} instead")
        text = value if isinstance(value, str) else str(value)
        if CONTROL.search(text) or (isinstance(value, float) and not math.isfinite(value)):
            raise ProfileError(f"{key}.{option} must be a finite number or text without control characters "
                               f"(it becomes an #SBATCH line), got {value!r}")
    return tuple(pairs)


@dataclass(frozen=True, kw_only=True)
class SlurmProfile(_Profile):
    """One Slurm job of `nodes` x `tasks_per_node` tasks; task 0 runs the Ray head and the sweep driver."""

    kind: Literal["slurm"] = doc("local: a Ray on this machine (the default); slurm: a Slurm job", "slurm")
    storage_root: str = doc("absolute path on a file system every node sees; RUN_DIR = "
                            "storage_root/<grid name>; ~ and $VARS are expanded on the login node", "")
    partition: str | None = doc("sbatch --partition (null: the cluster's default)", None)
    account: str | None = doc("sbatch --account", None)
    qos: str | None = doc("sbatch --qos", None)
    nodes: int = doc("nodes in the job (sbatch --nodes)", 1)
    tasks_per_node: int = doc("Slurm tasks (= Ray nodes) per node; 1 on real clusters, 2 to try a "
                              "2-node Ray on one machine", 1)
    gpus_per_node: int = doc("GPUs per node (sbatch --gpus-per-node); split between the node's tasks", 0)
    cpus_per_task: int = doc("CPUs per task (sbatch --cpus-per-task); Ray's --num-cpus", 1)
    mem: str | None = doc("memory per node (sbatch --mem), e.g. 64G; null: the partition's default", None)
    time: str = doc("time limit: minutes (90) or [D-]HH:MM:SS ('1-00:00:00'); the job checkpoints and "
                    "requeues itself before it", "60", convert=_time)
    signal_delay_s: int = doc("seconds before the time limit when Slurm warns the job (USR2); Slurm may "
                              "signal up to 60 s earlier", 120)
    max_requeues: int = doc("how many times the job requeues itself at its time limit", 10)
    setup: tuple[str, ...] = doc("shell lines run before the tasks start (module load, environment "
                                 "activation)", ())
    sbatch_extra: tuple[tuple[str, Any], ...] = doc(
        "more sbatch options: a mapping {option: value} (true for a flag, e.g. exclusive: true) or a "
        "list of '--option=value' strings; options the profile sets itself are refused", (), convert=_sbatch_extra)
    python: str | None = doc("command that runs Python on the nodes (null: the interpreter running "
                            "ray-grok on the login node)", None)
    job_name: str = doc("sbatch --job-name", "ray-grok")
    ray: RaySettings = doc("", factory=RaySettings)
    source: str = internal("")

    @property
    def time_min(self) -> int:
        return parse_time_min(self.time)

    @property
    def num_tasks(self) -> int:
        return self.nodes * self.tasks_per_node

    def check(self) -> None:
        need = self.need
        need(bool(self.storage_root), "storage_root", "set: an absolute path on a file system every node sees")
        need(os.path.isabs(self.storage_root), "storage_root", "an absolute path (on a file system every node sees)")
        need(not system_dir(self.storage_root), "storage_root",
             "a directory of yours, not / or a system directory (/etc, /usr, ...)")
        for name in ("partition", "account", "qos", "job_name"):
            value = getattr(self, name)
            need(value is None or bool(value and not re.search(r"\s", value)), name, "a non-empty name without spaces")
        need(self.nodes >= 1, "nodes", ">= 1")
        need(self.tasks_per_node >= 1, "tasks_per_node", ">= 1")
        need(self.gpus_per_node >= 0, "gpus_per_node", ">= 0")
        need(self.cpus_per_task >= 1, "cpus_per_task", ">= 1")
        need(self.mem is None or bool(MEM_RE.fullmatch(self.mem)), "mem", "a size like 64G, 500M or 128000 (MB)")
        try:
            minutes = parse_time_min(self.time)
        except ValueError:
            minutes = 0
        need(minutes > 0, "time", "minutes (90) or [D-]HH:MM:SS ('1:30:00', '2-00:00:00')")
        need(self.signal_delay_s >= 0, "signal_delay_s", ">= 0")
        need(self.signal_delay_s < minutes * 60, "signal_delay_s",
             f"less than the time limit ({minutes} min = {minutes * 60} s)")
        need(self.max_requeues >= 0, "max_requeues", ">= 0")
        need(self.python is None or bool(self.python.strip()), "python", "a command (or null)")
        most = (PORT_CEILING - 1024) // self.ray.ports_per_node
        need(self.tasks_per_node <= most, "tasks_per_node", f"at most {most} (each task's Ray node takes a block of "
             f"{self.ray.ports_per_node} ports, and they must fit between 1024 and {PORT_CEILING})")
        room = PORT_CEILING - self.tasks_per_node * self.ray.ports_per_node
        self.ray.need(1024 <= self.ray.port_base <= room, "port_base",
                      f"in [1024, {room}] (tasks_per_node x {self.ray.ports_per_node} ports per Ray node must "
                      f"fit below {PORT_CEILING}, where ephemeral ports start)")


Profile = Union[LocalProfile, SlurmProfile]


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------

class _ProfileLoader(UniqueKeyLoader):
    """YAML 1.1 reads an unquoted 01:30:00 as the base-60 integer 5400; a time limit must stay text.
    A key given twice is refused (UniqueKeyLoader)."""


_ProfileLoader.yaml_implicit_resolvers = {
    ch: [(tag, rx) for tag, rx in resolvers if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:float")]
    for ch, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ProfileLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0x[0-9a-fA-F_]+|[-+]?(?:0|[1-9][0-9_]*))$"),
    list("-+0123456789"))
_ProfileLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)"
               r"|\.[0-9_]+(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))

KINDS: dict[str, type] = {"local": LocalProfile, "slurm": SlurmProfile}


def parse_time_min(value: str | int) -> int:
    """A Slurm time limit in whole minutes (rounded up): 90, '90', '1:30:00', '2-00:00:00', '30:00'
    (sbatch reads M:SS as minutes:seconds) or '1-12' (days-hours). Raises ValueError."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, int):
        minutes = value
    else:
        text = str(value).strip()
        if text.isdigit():
            minutes = int(text)
        else:
            m = re.fullmatch(r"(\d+)-(\d+)(?::(\d+))?(?::(\d+))?", text)  # D-H[:M[:S]]
            if m:
                d, h, mi, s = (int(g) if g else 0 for g in m.groups())
            else:
                parts = text.split(":")
                if not all(p.isdigit() for p in parts) or len(parts) not in (2, 3):
                    raise ValueError(value)
                d = 0
                h, mi, s = ([0] if len(parts) == 2 else []) + [int(p) for p in parts]  # M:S or H:M:S
            minutes = d * 1440 + h * 60 + mi + (1 if s else 0)
    if minutes < 1:
        raise ValueError(value)
    return minutes


def describe_profile_keys(kind: str = "slurm") -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) of every key a profile of this kind may hold."""
    return describe(KINDS[kind])


def _expand_path(key: str, value: str) -> str:
    """~ and $VAR / ${VAR}; USER falls back to the login name (unset in some batch and CI shells)."""
    env = {"USER": getpass.getuser(), **os.environ}
    missing: list[str] = []

    def var(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in env:
            missing.append(name)
            return m.group(0)
        return env[name]

    expanded = os.path.expanduser(re.sub(r"\$(?:\{(\w+)\}|(\w+))", var, value))
    if missing:
        raise ProfileError(f"{key} uses the unset environment variable ${missing[0]}: {value!r}")
    return expanded


def profile_from_dict(data: Mapping[str, Any], source: str = "<profile>") -> Profile:
    """Build and check a profile from a mapping (what a cluster/*.yaml file holds); every error
    names SOURCE, the key and the value."""
    try:
        if not isinstance(data, Mapping):
            raise ProfileError(f"a profile must be a mapping of keys, got {type(data).__name__}")
        kind = data.get("kind", "local")
        if kind not in KINDS:
            raise ProfileError(f"kind must be one of {list(KINDS)}, got {kind!r}")
        data = {k: v for k, v in data.items() if not (k == "ray" and v is None)}  # ray: null = the defaults
        if isinstance(data.get("storage_root"), str):
            data["storage_root"] = _expand_path("storage_root", data["storage_root"])
        return KINDS[kind].from_mapping(data, source=source)
    except ConfigError as exc:
        raise ProfileError(f"{source}: {exc}") from None


def load_profile(path: str | Path) -> Profile:
    """Read and check a cluster/*.yaml profile; errors name the file, the key and the value."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"cluster profile {path} does not exist")
    try:
        data = yaml.load(path.read_text(), Loader=_ProfileLoader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer of more than 4300 digits
        raise ProfileError(f"{path}: not valid YAML: {yaml_error_line(exc)}") from None
    return profile_from_dict(data if data is not None else {}, str(path))


def runs_root(profile: Profile) -> Path:
    """Where run directories go under this profile: storage_root, else runs/ here."""
    return Path(profile.storage_root) if profile.storage_root else Path("runs")


def run_dir_for(profile: Profile, name: str) -> Path:
    """The run directory of a grid named `name` under this profile's storage root."""
    return (runs_root(profile) / name).resolve()


def plan_for(profile: Profile, grid: Path | None, out: Path | None, resume: bool) -> Launch:
    """The sweep to launch under this profile: RUN_DIR is OUT, else storage_root/<grid name>."""
    return resolve(grid, out, resume, root=runs_root(profile))
