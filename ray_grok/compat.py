"""What ray-grok relies on beyond public contracts, in one place.

1. Private APIs of Ray and submitit. Each goes through a function here, which imports the package
   through `require`: a version outside the series ray-grok was tested with (TESTED) is refused
   with a clear error before any private name is touched, instead of an AttributeError deep in a
   job. RAY_GROK_UNTESTED_OK=1 lets an untested version run anyway (then run the test suite).
2. Ray's socket-path layout, from which every limit on a Ray temp dir is derived.
3. The module paths that ray-grok 0.1.0 (a flat package) wrote into pickles: Tune's experiment
   state (tuner.pkl, the search state) and submitit's job, and the `python -m` path of its Slurm
   task. They resolve to today's objects (LEGACY), so a run directory or a queued job from 0.1.0
   goes on where it stopped.

Nothing here imports Ray or submitit at module level: `import ray_grok` stays cheap.
"""
from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.util
import os
import pickle
import sys
import warnings
from pathlib import Path
from typing import Any

from .errors import CompatError

# ---------------------------------------------------------------------------------------------
# 1. Versions and private APIs
# ---------------------------------------------------------------------------------------------

TESTED = {"ray": "2.60", "submitit": "1.5"}  # the major.minor series ray-grok was tested with
# Below this no Ray runs, even with RAY_GROK_UNTESTED_OK: token authentication of every gRPC and
# HTTP port exists from Ray 2.52, per-node temp dirs (--temp-dir on a worker node) from 2.55.
MIN_RAY = (2, 55)
PRIVATE = {
    "ray": "ray._raylet (Config, AuthenticationTokenLoader, GcsClient), Tuner._local_tuner, "
           "ray.init(_temp_dir=...), `python -m ray.scripts.scripts start`, Tune's state files",
    "submitit": "submitit.slurm.slurm (_make_sbatch_string, SlurmJobEnvironment), submitit.core._submit, "
                "submitit.core.utils.FailedJobError",
}
UNTESTED_OK = "RAY_GROK_UNTESTED_OK"


@functools.cache
def require(package: str) -> Any:
    """Import PACKAGE (ray or submitit), refusing a version outside its tested series."""
    module = importlib.import_module(package)
    version = getattr(module, "__version__", "?")
    if package == "ray" and _major_minor(version) < MIN_RAY:
        floor = ".".join(map(str, MIN_RAY))
        raise CompatError(f"ray-grok needs Ray >= {floor} (token authentication from 2.52, per-node temp dirs "
                          f"from 2.55), and this is Ray {version}: pip install 'ray[tune]=={TESTED['ray']}.*'")
    if ".".join(version.split(".")[:2]) != TESTED[package]:
        from . import __version__

        message = (f"ray-grok {__version__} uses private APIs of {package} ({PRIVATE[package]}) and was "
                   f"tested with {package} {TESTED[package]}.x; this is {package} {version}")
        if not os.environ.get(UNTESTED_OK):
            raise CompatError(f"{message}. Install a tested version (pip install '{package}=={TESTED[package]}.*'), "
                              f"or set {UNTESTED_OK}=1 to try this one and run the test suite")
        warnings.warn(f"{message}; trying it anyway ({UNTESTED_OK} is set)", stacklevel=2)
    return module


def _major_minor(version: str) -> tuple[int, int]:
    """(2, 60) for '2.60.0'; (0, 0) for a version that does not start with two numbers."""
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1])
    except (IndexError, ValueError):
        return (0, 0)


# ---- Ray ----

def reload_auth() -> None:
    """Make Ray re-read RAY_AUTH_MODE and the token (RAY_AUTH_TOKEN or its file) from the environment.
    Ray reads them into its C++ config when first imported, which may be before ray-grok set them,
    and caches the token: a token left from an earlier Ray in this process (a notebook, the test
    suite) would go with every request to a later Ray, and one started without auth never runs an actor."""
    require("ray")
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def init_local(temp_dir: str, **kwargs: Any) -> Any:
    """ray.init of a local instance whose files (and sockets) live under TEMP_DIR."""
    return require("ray").init(_temp_dir=temp_dir, **kwargs)


def live_nodes(address: str) -> tuple[int, float, float]:
    """(live nodes, CPUs, GPUs) of the cluster whose GCS is at ADDRESS, without connecting a driver."""
    require("ray")
    from ray._raylet import GcsClient

    alive = 0  # GcsNodeInfo.state of a live node
    info = GcsClient(address=address).get_all_node_info(timeout=5)
    live = [n for n in info.values() if n.state == alive]
    return (len(live), sum(n.resources_total.get("CPU", 0.0) for n in live),
            sum(n.resources_total.get("GPU", 0.0) for n in live))


def ray_start_command() -> list[str]:
    """`ray start` run by this interpreter (the `ray` script may not be on PATH in a batch job)."""
    require("ray")
    return [sys.executable, "-m", "ray.scripts.scripts", "start"]


def set_callbacks(tuner: Any, callbacks: list) -> None:
    """A restored Tuner carries the callbacks pickled at the first launch: give it these instead."""
    require("ray")
    tuner._local_tuner.get_run_config().callbacks = callbacks


TUNE_RESULTS_LOGGER = "ray.tune.analysis.experiment_analysis"  # warns per trial without result.json
# tune.run's logger: after Ctrl-C it advises "Resume experiment with: Tuner.restore(...)", which
# is not how a ray-grok sweep resumes (the same `ray-grok launch` command does)
TUNE_RUN_LOGGER = "ray.tune.tune"
TUNE_RESUME_ADVICE = ("Resume experiment with", "Resume training with")


def tune_terminated(experiment: Path) -> set[str]:
    """The trial ids (config["trial_id"]) that Tune's saved EXPERIMENT holds as finished
    (TERMINATED): Tuner.restore does not run them again, whatever their directories say."""
    from ray.tune import ExperimentAnalysis

    require("ray")
    return {t.config.get("trial_id") for t in ExperimentAnalysis(str(experiment)).trials if t.status == "TERMINATED"}


def unreadable_tune_state(experiment: Path) -> str | None:
    """Why Tune could not unpickle the state it saved in EXPERIMENT (tuner.pkl, its search state),
    or None when it can (or there is none). Checked before Tuner.restore, whose own error would be
    a traceback."""
    tuner = experiment / "tuner.pkl"  # tuner_internal._TUNER_PKL
    if not tuner.exists():
        return None
    cloudpickle = require("ray").cloudpickle
    search = sorted(experiment.glob("basic-variant-state-*.json"))  # BasicVariantGenerator.CKPT_FILE_TMPL
    for path in [tuner, *search[-1:]]:
        try:
            cloudpickle.loads(path.read_bytes())
        except (ImportError, AttributeError, TypeError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            return f"{path.name}: {type(exc).__name__}: {exc}"
    return None


# Ray puts a node's sockets at TEMP_DIR/session_<date>_<time>_<microseconds>_<pid>/sockets/plasma_store
# (ray/_private/node.py), and an AF_UNIX path holds at most 107 bytes: every Ray temp dir ray-grok
# makes (a local one, or one per Slurm task) must fit in what is left with the longest PID.
AF_UNIX_PATH_MAX = 107
RAY_SOCKET_SUFFIX = "/session_2026-11-22_08-25-37_127898_4194304/sockets/plasma_store"
MAX_RAY_TEMP_DIR = AF_UNIX_PATH_MAX - len(RAY_SOCKET_SUFFIX)  # 43 characters


# ---- submitit ----

SUBMIT_MODULE = "submitit.core._submit"  # what submitit's sbatch script runs on every task


def make_sbatch_string(command: str, folder: Path, **parameters: Any) -> str:
    """The sbatch script submitit writes for these SlurmExecutor parameters."""
    from submitit.slurm.slurm import _make_sbatch_string

    require("submitit")
    return _make_sbatch_string(command=command, folder=folder, **parameters)


def sbatch_parameter_names() -> set[str]:
    """Every parameter SlurmExecutor.update_parameters accepts."""
    from submitit.slurm.slurm import _get_default_parameters

    require("submitit")
    return set(_get_default_parameters())


def slurm_job_environment(through_submitit: bool) -> Any:
    """This task's Slurm environment (rank, nodes, job id): submitit's job environment under
    submitit, its Slurm reader directly under a plain sbatch + srun."""
    submitit = require("submitit")
    if through_submitit:
        return submitit.JobEnvironment()
    from submitit.slurm.slurm import SlurmJobEnvironment

    return SlurmJobEnvironment()


def submit_refused() -> type[Exception]:
    """What submitit raises when sbatch refuses a job (no controller, a bad partition, ...)."""
    return require("submitit").core.utils.FailedJobError


# ---------------------------------------------------------------------------------------------
# 3. ray-grok 0.1.0's names in pickles and on `python -m`
# ---------------------------------------------------------------------------------------------

LEGACY_VERSION = "0.1.0"  # the one version that recorded no version in its run directories
LEGACY = {  # 0.1.0 module -> {name its pickles hold: where that object lives now}
    "ray_grok.sweep": {  # tuner.pkl and Tune's search state (trial_dirname_creator, callbacks)
        "_tune_dirname": "ray_grok.sweep.launch:tune_dirname",
        "SweepProgress": "ray_grok.sweep.callbacks:Placeholder",
    },
    "ray_grok.slurm": {"RayClusterJob": "ray_grok.cluster.slurm:RayClusterJob"},  # submitit's job
    "ray_grok.ray_cluster": {  # the driver in submitit's job and in driver.pkl
        "RayCluster": "ray_grok.cluster.driver:RayCluster",
        "sweep_driver": "ray_grok.cluster.driver:sweep_driver",
        "probe_driver": "ray_grok.cluster.driver:probe_driver",
    },
    # ray_grok.cluster.RaySettings (in submitit's job) is a public name of the cluster package
}
# `python -m ray_grok.ray_cluster task|driver ...`: the command line of 0.1.0's sbatch script (a
# queued or requeued job runs the script it was submitted with) and of its driver child
LEGACY_MAIN = {"ray_grok.ray_cluster": (
    "import sys\n"
    "if sys.argv[1:2] == ['driver']:\n"
    "    from ray_grok.cluster.driver import main\n"
    "    sys.exit(main(sys.argv[2:]))\n"
    "from ray_grok.cli import main\n"
    "main(prog_name='python -m ray_grok.ray_cluster')\n")}


def legacy_attribute(module: str, name: str) -> Any:
    """The object 0.1.0 called MODULE.NAME, for a pickle that refers to it by that path."""
    target = LEGACY.get(module, {}).get(name)
    if target is None:
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    path, _, attr = target.partition(":")
    return getattr(importlib.import_module(path), attr)


class _LegacyModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports 0.1.0's removed modules (ray_grok.slurm, ray_grok.ray_cluster) as aliases whose
    names resolve on first use. It is the last finder on sys.meta_path, so it is asked only for
    modules no file provides (ray_grok.sweep, now a package, answers for itself)."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        return importlib.util.spec_from_loader(name, self) if name in LEGACY else None

    def create_module(self, spec: Any) -> None:
        return None  # the default module object

    def exec_module(self, module: Any) -> None:
        module.__getattr__ = functools.partial(legacy_attribute, module.__name__)

    def get_code(self, name: str) -> Any:  # runpy: `python -m ray_grok.ray_cluster`
        if name not in LEGACY_MAIN:
            raise ImportError(f"{name} was a module of ray-grok {LEGACY_VERSION}; it cannot be run")
        return compile(LEGACY_MAIN[name], f"<{name}: ray-grok {LEGACY_VERSION}'s path>", "exec")


def install_legacy_modules() -> None:
    if not any(isinstance(f, _LegacyModules) for f in sys.meta_path):
        sys.meta_path.append(_LegacyModules())
