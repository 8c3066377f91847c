"""ray_grok.compat: the versions of Ray and submitit ray-grok was tested with, the limit on Ray's
temp dirs, and ray-grok 0.1.0's names in pickles and on `python -m`, so that a run directory or a
queued job of 0.1.0 goes on. The resume of a real 0.1.0 Tune state is in test_sweep.py."""
from __future__ import annotations

import dataclasses
import importlib
import pickle
import subprocess
import sys

import pytest

from ray_grok import compat
from ray_grok.cluster.driver import sweep_driver
from ray_grok.cluster.profiles import RaySettings
from ray_grok.cluster.slurm import RayClusterJob
from ray_grok.errors import CompatError, ConfigError
from ray_grok.sweep.session import ray_temp_dir


@pytest.fixture
def fresh_require():
    compat.require.cache_clear()
    yield
    compat.require.cache_clear()


def test_the_installed_versions_are_the_tested_ones(fresh_require):
    for package, series in compat.TESTED.items():
        assert compat.require(package).__version__.startswith(series + "."), package


def test_an_untested_version_is_refused_naming_it_unless_allowed(fresh_require, monkeypatch):
    import submitit

    monkeypatch.setattr(submitit, "__version__", "1.9.0")
    with pytest.raises(CompatError, match=r"tested with submitit 1\.5\.x; this is submitit 1\.9\.0\. Install a tested "
                                          r"version .*RAY_GROK_UNTESTED_OK=1"):
        compat.require("submitit")
    monkeypatch.setenv(compat.UNTESTED_OK, "1")
    with pytest.warns(UserWarning, match="trying it anyway"):
        assert compat.require("submitit") is submitit


def test_ray_temp_dirs_fit_the_socket_path_limit(monkeypatch):
    # Ray's temp dir is RAY_GROK_TEMP_DIR/ray (the private directory around it: test_security.py)
    at_limit = "/tmp/" + "x" * (compat.MAX_RAY_TEMP_DIR - len("/ray") - 5)
    assert len(at_limit + "/ray" + compat.RAY_SOCKET_SUFFIX) == compat.AF_UNIX_PATH_MAX
    monkeypatch.setenv("RAY_GROK_TEMP_DIR", at_limit)
    assert ray_temp_dir() == at_limit + "/ray"
    monkeypatch.setenv("RAY_GROK_TEMP_DIR", at_limit + "x")
    with pytest.raises(ConfigError, match=f"at most {compat.MAX_RAY_TEMP_DIR - 4} characters .*"
                                          f"\\({compat.MAX_RAY_TEMP_DIR - 3} characters\\)"):
        ray_temp_dir()


LEGACY_NAMES = [(module, name) for module, names in compat.LEGACY.items() for name in names]


@pytest.mark.parametrize("module, name", LEGACY_NAMES, ids=[f"{m}.{n}" for m, n in LEGACY_NAMES])
def test_a_name_pickled_by_0_1_0_resolves_to_todays_object(module, name):
    path, _, attr = compat.LEGACY[module][name].partition(":")
    loaded = pickle.loads(f"c{module}\n{name}\n.".encode())  # how a pickle refers to a class or function
    assert loaded is getattr(importlib.import_module(path), attr)


def test_an_unknown_name_of_a_0_1_0_module_is_an_attribute_error():
    with pytest.raises(AttributeError, match="'submit' on <module 'ray_grok.slurm'"):
        pickle.loads(b"cray_grok.slurm\nsubmit\n.")


def test_the_submitit_job_of_0_1_0_loads_with_its_fields(tmp_path):
    job = RayClusterJob(tmp_path, RaySettings(object_store_mb=512), sweep_driver, checkpoint_s=42)
    data = pickle.dumps(job, protocol=2)  # protocols up to 3 name classes as text lines
    for new, old in ((b"ray_grok.cluster.slurm\nRayClusterJob", b"ray_grok.slurm\nRayClusterJob"),
                     (b"ray_grok.cluster.profiles\nRaySettings", b"ray_grok.cluster\nRaySettings"),
                     (b"ray_grok.cluster.driver\nsweep_driver", b"ray_grok.ray_cluster\nsweep_driver")):
        assert new in data
        data = data.replace(new, old)
    old_job = pickle.loads(data)
    assert isinstance(old_job, RayClusterJob) and old_job.driver is sweep_driver
    assert (old_job.run_dir, old_job.checkpoint_s) == (str(tmp_path), 42)
    assert old_job.ray == RaySettings(object_store_mb=512) and dataclasses.is_dataclass(old_job.ray)
    assert old_job.checkpoint().function is old_job  # requeues itself as 0.1.0's did


@pytest.mark.slow
def test_the_task_command_of_0_1_0_runs_todays(tmp_path):
    """A job queued with 0.1.0's sbatch script runs `python -m ray_grok.ray_cluster task ...`."""
    out = subprocess.run([sys.executable, "-m", "ray_grok.ray_cluster", "task", "--help"], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "Usage: python -m ray_grok.ray_cluster task" in out.stdout and "--profile" in out.stdout
