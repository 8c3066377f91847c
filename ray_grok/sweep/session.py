"""The Ray a sweep runs on: safe settings for a local instance, or a connection to a running
cluster (RAY_ADDRESS, e.g. the one a Slurm job started), and how many trials fit on it at once."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import secrets
from typing import Iterator

from .. import compat
from ..errors import ConfigError, GridError
from ..io import private_dir
from .grid import GridSpec


RAY_SUBDIR = "/ray"  # Ray's temp dir inside ray-grok's private one


def ray_temp_dir() -> str:
    """Ray's temp dir: short (Ray's socket paths under it must fit AF_UNIX's limit), per user
    (not /tmp/ray), and inside a directory only the user can enter (private_temp_dir)."""
    root = (os.environ.get("RAY_GROK_TEMP_DIR") or f"/tmp/rg-{os.getuid()}").rstrip("/")
    most = compat.MAX_RAY_TEMP_DIR - len(RAY_SUBDIR)
    if len(root) > most or not os.path.isabs(root):
        raise ConfigError(f"RAY_GROK_TEMP_DIR must be an absolute path of at most {most} characters (Ray's socket "
                          f"paths under it must fit AF_UNIX's limit), got {root!r} ({len(root)} characters)")
    return root + RAY_SUBDIR


def private_temp_dir() -> str:
    """ray_temp_dir() in a directory of the user's, 0700. Ray makes its own temp dir world-writable
    (0777), sockets included, so only a private parent keeps other users out; another user's
    directory (or a symlink) planted at that well-known path is refused."""
    path = ray_temp_dir()
    private_dir(os.path.dirname(path), "Ray temp dir")
    return path


@contextlib.contextmanager
def scoped_env(values: dict[str, str]) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def ray_env(spec: GridSpec) -> dict[str, str]:
    """Environment for Ray and Tune, set before ray.init and Tuner.fit (children inherit it)."""
    env = {
        # our trial dirs hold metrics and TensorBoard files; Tune's own JSON/CSV/TensorBoard loggers
        # would copy every report (with the config) into RUN_DIR/tune and double the curves
        "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
        # experiment-state snapshots cost O(trials); 'auto' starts at 10 s. Trial dirs are the
        # truth, so a snapshot minutes old loses nothing on resume.
        "TUNE_GLOBAL_CHECKPOINT_S": str(spec.run.state_every_s),
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
        # with verbose=0 the classic reporter prints nothing; the new one still prints a header
        "RAY_AIR_NEW_OUTPUT": "0",
        # a failing trial's traceback goes to its train.log and Tune's error.txt; the console gets
        # one line per failure from the FailureRecorder, not a screen of traceback per attempt
        "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",
        # nothing of a sweep leaves the machine or cluster
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    if "RAY_AUTH_MODE" not in os.environ:
        if os.environ.get("RAY_ADDRESS"):
            raise ConfigError("RAY_ADDRESS is set but RAY_AUTH_MODE is not: set it as the cluster was started "
                              "(token, with RAY_AUTH_TOKEN_PATH pointing at its token file, or disabled)")
        # Ray's gRPC ports listen on every interface even for a local instance, so the local Ray
        # gets token auth with a fresh token that lives only in this process tree's environment
        # (nothing written to ~/.ray, which would switch later `ray start`s to token auth).
        env["RAY_AUTH_MODE"] = "token"
        if not (os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")):
            env["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    return env


@contextlib.contextmanager
def ray_session(spec: GridSpec) -> Iterator[bool]:
    """Ray and Tune's environment (ray_env) and ray.init with safe settings (or a connection to
    RAY_ADDRESS); shut down on exit if we started it. Yields True when Ray runs locally, inside this
    process tree. On exit the environment, and Ray's auth settings read from it, are as before."""
    ray = compat.require("ray")
    with scoped_env(ray_env(spec)):
        if ray.is_initialized():  # the caller manages Ray (tests, notebooks)
            yield False
            return
        try:
            _init(ray, spec)
            yield not os.environ.get("RAY_ADDRESS")
        finally:
            ray.shutdown()
    # a later Ray in this process (a notebook's next launch) must not inherit this one's token
    compat.reload_auth()


def _init(ray, spec: GridSpec) -> None:
    compat.reload_auth()  # ray_env() may have set RAY_AUTH_MODE after Ray was imported
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING)
        return
    num_cpus = os.environ.get("RAY_GROK_NUM_CPUS")
    if num_cpus and not (num_cpus.isascii() and num_cpus.isdigit() and 0 < int(num_cpus) <= 100_000):
        raise ConfigError(f"RAY_GROK_NUM_CPUS must be a whole number of CPUs from 1 to 100000, got {num_cpus!r}")
    compat.init_local(
        private_temp_dir(),
        num_cpus=int(num_cpus) if num_cpus else None,
        include_dashboard=False,  # no web server at all (it would listen on a port)
        object_store_memory=spec.run.object_store_mb * 2**20,  # the default is 30% of RAM in /dev/shm
        log_to_driver=False,  # trial output goes to each trial's train.log, not the console
        logging_level=logging.WARNING,
    )


def concurrent_slots(spec: GridSpec) -> int:
    """How many trials fit at once on the cluster, at most run.max_concurrent; GridError, before
    anything is written, when not even one does."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 0), total.get("GPU", 0)
    slots = math.floor(cpus / spec.resources.cpu + 1e-9)
    if spec.resources.gpu:
        slots = min(slots, math.floor(gpus / spec.resources.gpu + 1e-9))
    if slots < 1:
        where = f"RAY_ADDRESS {os.environ['RAY_ADDRESS']}" if os.environ.get("RAY_ADDRESS") else "this machine"
        raise GridError(
            f"{spec.source}: each trial asks for {spec.resources.cpu:g} CPU and {spec.resources.gpu:g} GPU "
            f"(resources), but the Ray on {where} has {cpus:g} CPUs and {gpus:g} GPUs: no trial can run "
            "here, and nothing was written. Run it where the GPUs are (on Slurm: --cluster PROFILE, "
            "docs/slurm.md), or give a grid that fits (grids/smoke.yaml runs on any CPU)")
    if spec.run.max_concurrent:
        slots = min(slots, spec.run.max_concurrent)
    return slots
