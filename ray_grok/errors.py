"""Every error ray-grok raises on purpose, under one base class.

A RayGrokError is the user's to fix (a bad key, a busy run directory, a job Slurm refused) and
its message says what and how; the CLI turns it into one line at its edge (ray_grok.cli). Any
other exception is a bug and keeps its traceback. The builtin bases (ValueError, RuntimeError)
stay for callers that caught those before this hierarchy existed.
"""
from __future__ import annotations


class RayGrokError(Exception):
    """Base of every error ray-grok raises on purpose; the message names the field and the value."""


# ---- configuration: the trial config, grid files, cluster profiles -------------------------

class ConfigError(RayGrokError, ValueError):
    """A config key or value is not allowed. The message names the field and the value."""


class GridError(ConfigError):
    """A grid file is not valid; the message names the file, the key and the value."""


class ProfileError(ConfigError):
    """A cluster profile is not valid; the message names the file, the key and the value."""


# ---- one trial --------------------------------------------------------------------------------

class TrialError(RayGrokError, RuntimeError):
    """A trial cannot start or cannot go on; the message says why and what was kept."""


class NonFiniteLossError(TrialError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""


class TaskDrawError(TrialError):
    """The rectangular rule could not place the requested number of tasks."""


# ---- sweeps and their run directories -------------------------------------------------------

class RunDirError(RayGrokError):
    """RUN_DIR cannot be used for this launch (another grid, a live driver, not a sweep directory)."""


class DiskFullError(RunDirError):
    """The file system of RUN_DIR is full (or over quota): the sweep stopped; it resumes once space is back."""


class StateVersionError(RunDirError):
    """RUN_DIR holds state that another ray-grok version wrote and this one cannot read."""


# ---- results ----------------------------------------------------------------------------------

class PhaseError(RayGrokError, ValueError):
    """A phase rule, a results table or a requested cell is not usable; the message says why."""


class MissingResultsError(PhaseError):
    """RUN_DIR has no aggregated results table to read."""


# ---- clusters ---------------------------------------------------------------------------------

class ClusterError(RayGrokError, RuntimeError):
    """The Ray cluster of a job could not be brought up (a node did not start or join)."""


class DriverError(ClusterError):
    """The driver on task 0 raised; the message holds its traceback (it ran in a child process)."""


class SubmitError(ClusterError):
    """Slurm refused the job; the message is sbatch's."""


class CompatError(RayGrokError):
    """An installed Ray or submitit is a version whose private APIs ray-grok was not tested with,
    or a Ray below the security floor (compat.MIN_RAY)."""


class PrivateDirError(RayGrokError):
    """A directory ray-grok trusts (run, job, rendezvous or Ray temp directory: they hold pickles
    that are loaded, tokens, sockets) is a symlink, another user's, or cannot be made private."""
