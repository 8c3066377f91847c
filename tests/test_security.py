"""No open door: Ray at or above the security floor, dependency floors past known deserialization
CVEs, private (0700, our own, no symlink) run, job, rendezvous and Ray temp directories, and
every listening port of ray-grok's local Ray and of its Slurm-style head on loopback or refusing a
client without the token, with usage stats off in every Ray process."""
from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest

from listening import accepts_token, listeners, refuses_without_token
from ray_grok import compat, io
from ray_grok.cluster.bootstrap import _clean_leftovers, task_dirs
from ray_grok.cluster.layout import node_layout
from ray_grok.cluster.procs import descendants, marked_processes
from ray_grok.cluster.profiles import RaySettings
from ray_grok.cluster.task_env import TaskEnv
from ray_grok.errors import CompatError, PrivateDirError
from ray_grok.sweep.rundir import resolve, run_lock
from ray_grok.sweep.session import private_temp_dir

ROOT = Path(__file__).resolve().parents[1]
NOBODY = 65534
as_root = pytest.mark.skipif(os.getuid() != 0, reason="giving a directory to another user needs root")


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ---------------------------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def fresh_require():
    compat.require.cache_clear()
    yield
    compat.require.cache_clear()


@pytest.mark.parametrize("version", ["2.51.0", "2.54.9", "1.13.1"])
def test_a_ray_below_the_security_floor_is_refused_even_when_untested_versions_are_allowed(
        fresh_require, monkeypatch, version):
    import ray

    monkeypatch.setattr(ray, "__version__", version)
    monkeypatch.setenv(compat.UNTESTED_OK, "1")
    with pytest.raises(CompatError, match=rf"needs Ray >= 2\.55 \(token authentication from 2\.52, per-node temp "
                                          rf"dirs from 2\.55\), and this is Ray {version}"):
        compat.require("ray")


def test_dependency_floors_are_past_the_known_cves_and_match_the_tested_ray():
    from packaging.requirements import Requirement

    deps = {r.name: r for r in map(Requirement, tomllib.loads((ROOT / "pyproject.toml").read_text())
                                   ["project"]["dependencies"])}
    vulnerable = {"torch": "2.5.1",  # torch.load(weights_only=True) runs code (CVE-2025-32434)
                  "pyarrow": "14.0.0",  # IPC/Parquet deserialization runs code (CVE-2023-47248)
                  "ray": "2.54.0"}  # below compat.MIN_RAY
    for name, version in vulnerable.items():
        assert not deps[name].specifier.contains(version), f"{name} {deps[name].specifier} allows {version}"
    assert deps["torch"].specifier.contains("2.6.0") and deps["pyarrow"].specifier.contains("14.0.1")
    assert deps["ray"].specifier.contains(compat.TESTED["ray"] + ".0")


# ---------------------------------------------------------------------------------------------
# Private directories
# ---------------------------------------------------------------------------------------------

def test_a_private_dir_is_created_0700_and_a_loose_one_tightened(tmp_path):
    made = io.private_dir(tmp_path / "a" / "b", "run directory")
    assert mode(made) == 0o700
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    loose.chmod(0o755)
    io.private_dir(loose, "run directory")
    assert mode(loose) == 0o700


def test_a_symlinked_private_dir_is_refused(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link").symlink_to(target)
    with pytest.raises(PrivateDirError, match=r"run directory .*/link is a symlink; it must be a real directory"):
        io.private_dir(tmp_path / "link", "run directory")


@as_root
def test_another_users_dir_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o700)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(PrivateDirError, match=rf"theirs is owned by uid {NOBODY} .*not by you"):
        io.private_dir(theirs, "run directory")


def test_a_failed_chmod_is_an_error_not_ignored(tmp_path, monkeypatch):
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o755)

    def refuse(path, mode, **kw):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "chmod", refuse)
    with pytest.raises(PrivateDirError, match=r"has mode 0o755 and chmod 0700 failed \(Operation not permitted\)"):
        io.private_dir(loose, "rendezvous directory")


def test_the_run_directory_is_created_private(tmp_path):
    grid = ROOT / "grids" / "smoke.yaml"
    plan = resolve(grid, tmp_path / "runs" / "smoke", resume=False)
    with run_lock(plan.run_dir, "launch"):
        pass
    assert mode(plan.run_dir) == 0o700


def test_job_and_rendezvous_directories_are_private_and_ours(tmp_path):
    env = TaskEnv.local("4242", 0, 1)
    job = tmp_path / "run" / "slurm" / "4242"
    job.mkdir(parents=True)
    job.chmod(0o755)  # as submitit creates it
    rdir = task_dirs(tmp_path / "run", env)
    assert rdir == job / "ray.0" and mode(job) == 0o700 and mode(rdir) == 0o700
    if os.getuid() == 0:
        os.chown(rdir, NOBODY, NOBODY)
        with pytest.raises(PrivateDirError, match="rendezvous directory .* is owned by uid 65534"):
            task_dirs(tmp_path / "run", env)


def _driver(cluster) -> None:
    """A picklable driver that is never run."""


def test_the_job_directory_is_made_private_right_after_submission(tmp_path, monkeypatch):
    from ray_grok.cluster import slurm
    from ray_grok.cluster.profiles import profile_from_dict

    class Job:
        job_id = "4242"

    class Executor:
        def submit(self, job):
            folder = tmp_path / "run" / "slurm" / "4242"
            folder.mkdir(parents=True)
            folder.chmod(0o755)  # what submitit leaves, with the job's pickle in it
            return Job()

    monkeypatch.setattr(slurm, "executor", lambda profile, run_dir: Executor())
    profile = profile_from_dict({"kind": "slurm", "storage_root": str(tmp_path)})
    slurm.submit(profile, tmp_path / "run", _driver)
    assert [mode(p) for p in (tmp_path / "run", tmp_path / "run" / "slurm", tmp_path / "run" / "slurm" / "4242")] \
        == [0o700] * 3


@pytest.fixture
def short_tmp() -> Path:
    """A directory short enough for Ray temp dirs under it (pytest's tmp_path is too long)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="rgs-", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_a_local_ray_temp_dir_that_is_a_symlink_or_not_ours_is_refused(short_tmp, monkeypatch):
    target = short_tmp / "planted"
    target.mkdir()
    link = short_tmp / "rg"
    link.symlink_to(target)
    monkeypatch.setenv("RAY_GROK_TEMP_DIR", str(link))
    with pytest.raises(PrivateDirError, match="Ray temp dir .* is a symlink"):
        private_temp_dir()
    monkeypatch.setenv("RAY_GROK_TEMP_DIR", str(short_tmp / "mine"))
    assert private_temp_dir() == f"{short_tmp}/mine/ray" and mode(short_tmp / "mine") == 0o700
    if os.getuid() == 0:
        monkeypatch.setenv("RAY_GROK_TEMP_DIR", str(target))
        os.chown(target, NOBODY, NOBODY)
        with pytest.raises(PrivateDirError, match=f"Ray temp dir {target} is owned by uid {NOBODY}"):
            private_temp_dir()


def test_a_slurm_tasks_ray_temp_dir_that_is_a_symlink_is_refused_and_left_alone(tmp_path):
    env = TaskEnv.local("4243", 0, 1)
    layout = node_layout(env.job_id, env.local_rank, env.tasks_per_node, RaySettings())
    target = tmp_path / "planted"
    target.mkdir()
    (target / "keep").write_text("theirs")
    Path(layout.temp_dir).parent.mkdir(mode=0o700, exist_ok=True)
    Path(layout.temp_dir).symlink_to(target)
    try:
        with pytest.raises(PrivateDirError, match="Ray temp dir .* is a symlink"):
            _clean_leftovers(env, layout)
        assert (target / "keep").read_text() == "theirs"
    finally:
        os.unlink(layout.temp_dir)
    _clean_leftovers(env, layout)  # ours: emptied, in a private root
    try:
        assert mode(Path(layout.temp_dir)) == 0o700 and not os.listdir(layout.temp_dir)
        assert mode(Path(layout.temp_dir).parent) == 0o700
    finally:
        os.rmdir(layout.temp_dir)


# ---------------------------------------------------------------------------------------------
# Listening sockets of a running Ray
# ---------------------------------------------------------------------------------------------

def usage_stats_of(pids: list[int]) -> dict[int, str | None]:
    """RAY_USAGE_STATS_ENABLED in the environment of each process (None when unset). Ray's agents
    set their process title over the start of their environment block, so for a process whose
    block starts with NUL bytes the environment it inherited is its parent's."""
    def environ(pid: int) -> bytes:
        return Path(f"/proc/{pid}/environ").read_bytes()

    out = {}
    for pid in pids:
        try:
            block = environ(pid)
            if block.startswith(b"\0"):  # overwritten by a process title
                block = environ(int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]))
        except OSError:
            continue
        out[pid] = next((v.split(b"=", 1)[1].decode() for v in block.split(b"\0")
                         if v.startswith(b"RAY_USAGE_STATS_ENABLED=")), None)
    return out


def assert_no_open_door(pids: list[int], token: str) -> None:
    """PIDS are Ray's processes (and a driver's started as a process of its own)."""
    socks = listeners(pids)
    assert len(socks) >= 3, f"expected Ray's GCS, raylet and workers to listen: {socks}"
    open_doors = []
    for s in socks:
        if s.loopback:
            continue
        refused, answer = refuses_without_token(s)
        if not refused:
            open_doors.append(f"{s}: {answer}")
    assert not open_doors, "listening ports that let a client in without the token:\n" + "\n".join(open_doors)
    # and the probes do reach past authentication with the token, so the refusals mean what they say
    assert any(accepts_token(s, token) for s in socks if not s.loopback)
    stats = usage_stats_of(pids)
    assert stats and set(stats.values()) == {"0"}, f"usage stats not off in every Ray process: {stats}"


@pytest.mark.slow
def test_the_local_ray_listens_only_on_loopback_or_behind_the_token(monkeypatch, request):
    from ray_grok.sweep.grid import grid_from_dict
    from ray_grok.sweep.session import ray_session

    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS", "RAY_USAGE_STATS_ENABLED"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RAY_GROK_TEMP_DIR", f"/tmp/rgsec-{os.getpid()}")
    spec = grid_from_dict({"name": "sec", "base": {"runtime": {"device": "cpu"}}, "run": {"object_store_mb": 100}})
    root = Path(f"/tmp/rgsec-{os.getpid()}")
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    with ray_session(spec):
        import ray

        token = os.environ["RAY_AUTH_TOKEN"]
        # Ray made its own temp dir world-writable; the directory around it keeps others out
        assert mode(root / "ray") == 0o777 and mode(root) == 0o700

        @ray.remote(num_cpus=0)
        def pid() -> int:
            return os.getpid()

        ray.get(pid.remote())  # a worker, listening as workers do
        assert_no_open_door([p.pid for p in descendants(os.getpid())], token)
        # this process is the driver: its environment as Ray reads it (/proc shows the one it started with)
        assert os.environ["RAY_USAGE_STATS_ENABLED"] == "0"
        assert not [s for s in listeners([os.getpid()]) if not s.loopback and not refuses_without_token(s)[0]]


HEAD = """
import functools, sys
from pathlib import Path
from ray_grok.cluster.bootstrap import run_task
from ray_grok.cluster.driver import probe_driver
from ray_grok.cluster.profiles import RaySettings
from ray_grok.cluster.task_env import TaskEnv

job, run_dir, out = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
ray = RaySettings(object_store_mb=100, worker_ports=32, join_timeout_s=180)
run_task(functools.partial(probe_driver, out=out, hold_s=600), run_dir=run_dir, ray=ray,
         env=TaskEnv.local(job, 0, num_tasks=1))
"""


@pytest.mark.slow
def test_the_slurm_style_head_listens_only_on_loopback_or_behind_the_token(tmp_path):
    job = str(710000 + os.getpid() % 100000)
    run_dir, out = tmp_path / "run", tmp_path / "probe.jsonl"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_USAGE"))}
    task = subprocess.Popen([sys.executable, "-c", HEAD, job, str(run_dir), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        while not (out.exists() and out.read_text().strip()):
            assert task.poll() is None, task.communicate()[0]
            assert time.time() < deadline, "the head did not come up"
            time.sleep(0.5)
        report = json.loads(out.read_text().splitlines()[0])
        assert report["auth_mode"] == "token"
        token = (run_dir / "slurm" / job / "ray.0" / "token").read_text().strip()
        pids = sorted({p.pid for p in marked_processes(f"{job}/", prefix=True)}
                      | {p.pid for p in descendants(task.pid)})
        assert_no_open_door(pids, token)
        assert mode(run_dir / "slurm" / job) == 0o700 and mode(run_dir / "slurm" / job / "ray.0") == 0o700
        node = json.loads((run_dir / "slurm" / job / "ray.0" / "node.0.json").read_text())
        assert mode(Path(node["temp_dir"]).parent) == 0o700  # Ray's own dir in it is 0777
    finally:
        task.terminate()
        try:
            task.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            task.kill()
    assert not marked_processes(f"{job}/", prefix=True)


@pytest.mark.slow
def test_a_later_ray_without_auth_runs_after_a_token_ray_in_the_same_process(monkeypatch, request):
    """Ray caches the token of the first authenticated Ray in a process; a later local Ray started
    with RAY_AUTH_MODE=disabled (a notebook's second launch, the test suite) got it on every request,
    and none of its actors ever ran. ray_session makes Ray forget it."""
    from ray_grok.sweep.grid import grid_from_dict
    from ray_grok.sweep.session import ray_session

    for key in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS"):
        monkeypatch.delenv(key, raising=False)
    root = Path(f"/tmp/rgsec2-{os.getpid()}")
    monkeypatch.setenv("RAY_GROK_TEMP_DIR", str(root))
    request.addfinalizer(lambda: shutil.rmtree(root, ignore_errors=True))
    spec = grid_from_dict({"name": "sec", "base": {"runtime": {"device": "cpu"}}, "run": {"object_store_mb": 100}})
    import ray

    @ray.remote(num_cpus=0)
    class Probe:
        def pid(self) -> int:
            return os.getpid()

    with ray_session(spec):
        assert os.environ["RAY_AUTH_MODE"] == "token"
        assert ray.get(Probe.remote().pid.remote(), timeout=120) > 0
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    # a Ray the caller starts itself (the test suite, a notebook), then ray-grok's own again
    ray.init(num_cpus=1, include_dashboard=False, _temp_dir=str(root / "ray"), object_store_memory=100 * 2**20)
    try:
        assert ray.get(Probe.remote().pid.remote(), timeout=120) > 0
    finally:
        ray.shutdown()
    with ray_session(spec):
        assert ray.get(Probe.remote().pid.remote(), timeout=120) > 0
