"""Cluster profiles, the sbatch text the launcher submits, and the Ray-in-Slurm bootstrap's pure
parts (ports, temp dirs, GPUs, processes): no Slurm and no Ray cluster needed."""
from __future__ import annotations

import dataclasses
import os
import pickle
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ray_grok.cluster.profiles import (
    PORT_CEILING, LocalProfile, ProfileError, RaySettings, SlurmProfile, describe_profile_keys, load_profile,
    parse_time_min, profile_from_dict,
)
from ray_grok.cluster.procs import ENV_MARK, Proc, _stat, marked_processes, proc_alive, spawn, stop_processes
from ray_grok.cluster.bootstrap import write_token
from ray_grok.cluster.layout import (
    NodeLayout, choose_layout, node_layout, port_slots, task_cpus, task_gpus,
)
from ray_grok.cluster.node import ray_env, ray_start_args
from ray_grok.cluster.slurm import RayClusterJob, render_sbatch, slurm_parameters
from ray_grok.cluster.task_env import TaskEnv, job_dir, rendezvous_dir
from ray_grok import compat
from ray_grok.errors import ClusterError

ROOT = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).parent / "golden"
SLURM = {"kind": "slurm", "storage_root": "/shared/runs"}


def write_profile(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "p.yaml"
    path.write_text(textwrap.dedent(text))
    return path


# ---------------------------------------------------------------------------------------------
# Profiles
# ---------------------------------------------------------------------------------------------

def test_shipped_profiles_load():
    assert isinstance(load_profile(ROOT / "cluster/local.yaml"), LocalProfile)
    example = load_profile(ROOT / "cluster/slurm-example.yaml")
    assert isinstance(example, SlurmProfile)
    assert (example.nodes, example.gpus_per_node, example.time_min) == (4, 8, 1440)
    assert dict(example.sbatch_extra) == {"constraint": "a100"}
    dev = load_profile(ROOT / "cluster/dev-slurm.yaml")
    assert (dev.nodes, dev.tasks_per_node, dev.num_tasks, dev.partition) == (1, 2, 2, "debug")
    assert os.path.isabs(dev.storage_root)
    hosts = load_profile(ROOT / "cluster/dev-hosts.yaml")  # one task per host, Ray on the data network
    assert (hosts.nodes, hosts.tasks_per_node, hosts.ray.interface) == (2, 1, "data0")
    assert not hosts.storage_root.startswith("/tmp"), "each test host has its own /tmp"


def test_every_profile_key_of_the_template_is_documented():
    """slurm-example.yaml is the documented template: it names every key a profile may hold."""
    text = (ROOT / "cluster/slurm-example.yaml").read_text()
    for key, _, help_text in describe_profile_keys("slurm"):
        assert f"{key.split('.')[-1]}:" in text, key
        assert help_text, key


@pytest.mark.parametrize("text, message", [
    ("kind: slurm\nstorage_root: /x\nnodez: 2\n",
     "unknown key nodez for kind slurm (did you mean nodes?); valid keys: kind, storage_root, partition"),
    ("kind: slurm\nstorage_root: /x\nray: {port: 1}\n",
     "unknown key ray.port in the ray section (did you mean ray.port_base?); valid keys: ray.object_store_mb, ray.port_base"),
    ("kind: local\nnodes: 2\n", "unknown key nodes for kind local; valid keys: kind, storage_root"),
    ("kind: pbs\n", "kind must be one of ['local', 'slurm'], got 'pbs'"),
    ("kind: slurm\n", "storage_root must be set: an absolute path on a file system every node sees, got ''"),
    ("kind: slurm\nstorage_root: runs\n",
     "storage_root must be an absolute path (on a file system every node sees), got 'runs'"),
    ("kind: slurm\nstorage_root: $RAY_GROK_NOT_SET_ANYWHERE/x\n",
     "uses the unset environment variable $RAY_GROK_NOT_SET_ANYWHERE"),
    ("kind: slurm\nstorage_root: /x\nnodes: 0\n", "nodes must be >= 1, got 0"),
    ("kind: slurm\nstorage_root: /x\nnodes: two\n", "nodes must be an integer, got 'two'"),
    ("kind: slurm\nstorage_root: /x\ntasks_per_node: 0\n", "tasks_per_node must be >= 1, got 0"),
    ("kind: slurm\nstorage_root: /x\ngpus_per_node: -1\n", "gpus_per_node must be >= 0, got -1"),
    ("kind: slurm\nstorage_root: /x\ncpus_per_task: 0\n", "cpus_per_task must be >= 1, got 0"),
    ("kind: slurm\nstorage_root: /x\ntime: soon\n",
     "time must be minutes (90) or [D-]HH:MM:SS ('1:30:00', '2-00:00:00'), got 'soon'"),
    ("kind: slurm\nstorage_root: /x\ntime: 0\n", "time must be minutes (90)"),
    ("kind: slurm\nstorage_root: /x\ntime: 5\nsignal_delay_s: 300\n",
     "signal_delay_s must be less than the time limit (5 min = 300 s), got 300"),
    ("kind: slurm\nstorage_root: /x\nmax_requeues: -1\n", "max_requeues must be >= 0, got -1"),
    ("kind: slurm\nstorage_root: /x\nmem: lots\n", "mem must be a size like 64G, 500M or 128000 (MB), got 'lots'"),
    ("kind: slurm\nstorage_root: /x\npartition: my gpus\n",
     "partition must be a non-empty name without spaces, got 'my gpus'"),
    ("kind: slurm\nstorage_root: /x\nsetup: [1, 2]\n", "setup must be a list of strings, got [1, 2]"),
    ("kind: slurm\nstorage_root: /x\nsbatch_extra: [constraint=a100]\n",
     "sbatch_extra entries must look like '--option=value' or '--flag', got 'constraint=a100'"),
    ("kind: slurm\nstorage_root: /x\nsbatch_extra: {time: 10}\n",
     "sbatch_extra sets --time, which the profile manages: use the profile key time instead"),
    ("kind: slurm\nstorage_root: /x\nsbatch_extra: ['--ntasks=4']\n",
     "sbatch_extra sets --ntasks, which the profile manages: use the profile key tasks_per_node instead"),
    ("kind: slurm\nstorage_root: /x\nsbatch_extra: 3\n", "sbatch_extra must be a mapping {option: value} or a list"),
    ("kind: slurm\nstorage_root: /x\nray: {object_store_mb: 10}\n", "ray.object_store_mb must be >= 80"),
    ("kind: slurm\nstorage_root: /x\nray: {port_base: 80}\n", "ray.port_base must be in [1024, 32512]"),
    ("kind: slurm\nstorage_root: /x\nray: {port_base: 32600}\n", "ray.port_base must be in [1024, 32512]"),
    ("kind: slurm\nstorage_root: /x\ntasks_per_node: 2\nray: {port_base: 32400}\n",
     "ray.port_base must be in [1024, 32256]"),
    ("kind: slurm\nstorage_root: /x\nray: {temp_root: /scratch/local/me/ray}\n",
     "ray.temp_root must be an absolute path of at most 16 characters"),
    ("kind: slurm\nstorage_root: /x\nray: {dashboard: maybe}\n", "ray.dashboard must be true or false, got 'maybe'"),
    ("kind: slurm\nstorage_root: /x\nray: {stop_timeout_s: 0}\n", "ray.stop_timeout_s must be > 0, got 0.0"),
    ("kind: slurm\nstorage_root: /x\nray: 4\n", "ray must be a mapping of its keys, got 4"),
    ("- kind: slurm\n", "a profile must be a mapping of keys, got list"),
    ("kind: slurm\nstorage_root: [/x\n", "not valid YAML"),
])
def test_invalid_profiles_are_refused_naming_file_key_and_value(tmp_path, text, message):
    path = write_profile(tmp_path, text)
    with pytest.raises(ProfileError) as err:
        load_profile(path)
    assert str(err.value).startswith(f"{path}: "), str(err.value)
    assert message in str(err.value)


def test_missing_profile_file(tmp_path):
    with pytest.raises(ProfileError, match="cluster profile .*nope.yaml does not exist"):
        load_profile(tmp_path / "nope.yaml")


@pytest.mark.parametrize("value, minutes", [
    (90, 90), ("90", 90), ("1:30:00", 90), ("24:00:00", 1440), ("30:00", 30), ("30:30", 31), ("0:0:30", 1),
    ("2-00:00:00", 2880), ("1-12", 2160), ("1-00:30", 1470),
])
def test_time_limits_in_minutes(value, minutes):
    assert parse_time_min(value) == minutes


def test_unquoted_hh_mm_ss_stays_a_time(tmp_path):
    """YAML 1.1 reads 01:30:00 as the integer 5400; a profile must not turn it into 5400 minutes."""
    path = write_profile(tmp_path, "kind: slurm\nstorage_root: /x\ntime: 01:30:00\nnodes: 2\n"
                                   "ray: {object_store_mb: 1e3}\n")
    p = load_profile(path)
    assert (p.time, p.time_min, p.nodes, p.ray.object_store_mb) == ("01:30:00", 90, 2, 1000)


def test_sbatch_extra_as_mapping_or_list():
    as_map = profile_from_dict({**SLURM, "sbatch_extra": {"exclusive": True, "constraint": "a100"}})
    as_list = profile_from_dict({**SLURM, "sbatch_extra": ["--exclusive", "--constraint=a100"]})
    assert dict(as_map.sbatch_extra) == dict(as_list.sbatch_extra) == {"exclusive": True, "constraint": "a100"}


def test_storage_root_expands_home_and_variables(monkeypatch):
    monkeypatch.setenv("SCRATCH", "/scratch/me")
    assert profile_from_dict({**SLURM, "storage_root": "${SCRATCH}/rg"}).storage_root == "/scratch/me/rg"
    assert profile_from_dict({**SLURM, "storage_root": "~/rg"}).storage_root == os.path.expanduser("~/rg")


def test_a_profile_changed_in_python_is_checked_like_one_from_a_file():
    p = profile_from_dict({**SLURM, "sbatch_extra": ["--exclusive"], "time": 90})
    assert dataclasses.replace(p, nodes=3).sbatch_extra == p.sbatch_extra == (("exclusive", True),)
    with pytest.raises(ProfileError, match="nodes must be >= 1, got 0"):
        dataclasses.replace(p, nodes=0)
    with pytest.raises(ProfileError, match=r"signal_delay_s must be less than the time limit \(1 min = 60 s\)"):
        dataclasses.replace(p, time="1")
    with pytest.raises(ProfileError, match="ray.temp_root must be an absolute path of at most 16 characters"):
        RaySettings(temp_root="/scratch/local/me/ray")


# ---------------------------------------------------------------------------------------------
# The sbatch text the launcher submits (golden files)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("profile, run_dir", [
    ("slurm-example", "/shared/runs/full"),
    ("dev-slurm", "/shared/runs/smoke"),
    ("dev-hosts", "/var/tmp/ray-grok-hosts/shared/runs/smoke"),
])
def test_sbatch_text_matches_golden(profile, run_dir):
    text = render_sbatch(load_profile(ROOT / f"cluster/{profile}.yaml"), Path(run_dir), python="python3")
    golden = GOLDEN / f"{profile}.sbatch"
    if os.environ.get("RAY_GROK_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file {golden}; create it with RAY_GROK_UPDATE_GOLDEN=1 pytest {__file__}"
    assert text == golden.read_text(), (
        f"the sbatch text for cluster/{profile}.yaml changed; if that is intended, regenerate the golden file with\n"
        f"  RAY_GROK_UPDATE_GOLDEN=1 pytest tests/test_cluster.py -k golden\nand review the diff")


def test_sbatch_text_carries_the_profile():
    text = render_sbatch(load_profile(ROOT / "cluster/slurm-example.yaml"), Path("/shared/runs/full"))
    for line in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gpus-per-node=8",
                 "#SBATCH --cpus-per-task=64", "#SBATCH --time=1440", "#SBATCH --signal=USR2@180",
                 "#SBATCH --requeue", "#SBATCH --partition=gpu", "#SBATCH --constraint=a100",
                 "module load cuda/12.4", "--cpus-per-task=64 python3 -u -m submitit.core._submit"):
        assert line in text, line
    assert "/shared/runs/full/slurm/%j/%j_%t_log.out" in text  # the logs live in the run directory
    assert "--account" not in text and "--qos" not in text  # null keys are left out


def test_slurm_parameters_are_valid_for_submitit():
    params = slurm_parameters(profile_from_dict({**SLURM, "account": "proj", "qos": "high", "mem": "64G",
                                                 "gpus_per_node": 2}), Path("/r"))
    assert set(params) <= compat.sbatch_parameter_names()
    assert (params["account"], params["qos"], params["mem"], params["gpus_per_node"]) == ("proj", "high", "64G", 2)


# ---------------------------------------------------------------------------------------------
# Ray inside Slurm: ports, temp dirs, resources, environment
# ---------------------------------------------------------------------------------------------

def _ports(layout: NodeLayout) -> set[int]:
    return set(layout.ports)


def test_two_jobs_on_a_node_get_disjoint_ports_and_temp_dirs():
    ray = RaySettings()
    a, b = (node_layout(job, 0, 1, ray, uid=1000) for job in ("41234", "41235"))
    assert not _ports(a) & _ports(b)
    assert a.temp_dir != b.temp_dir
    assert a.gcs != b.gcs


def test_the_tasks_of_one_job_on_a_node_never_share_a_block():
    ray = RaySettings(worker_ports=64)
    for job in ("1", "77", "123456789", "123_4"):
        head, worker = (node_layout(job, rank, 2, ray, uid=0) for rank in (0, 1))
        assert not _ports(head) & _ports(worker)
        assert head.temp_dir != worker.temp_dir


def test_consecutive_jobs_collide_only_after_a_full_cycle_of_blocks():
    ray = RaySettings()
    groups = port_slots(ray)
    blocks = {node_layout(str(1000 + i), 0, 1, ray).base for i in range(groups)}
    assert len(blocks) == groups  # every one of `groups` consecutive jobs has its own block
    assert node_layout("1000", 0, 1, ray).base == node_layout(str(1000 + groups), 0, 1, ray).base


def test_layout_stays_below_the_ephemeral_ports_and_keeps_the_worker_range_apart():
    ray = RaySettings(port_base=20000, worker_ports=240)
    for job in range(0, 500, 7):
        for rank in (0, 1):
            layout = node_layout(str(job), rank, 2, ray)
            assert 20000 <= layout.base and layout.max_worker < PORT_CEILING
            assert max(layout.fixed_ports(head=True)) < layout.min_worker
            assert layout.max_worker - layout.min_worker + 1 == 240


def test_shift_moves_to_another_block_when_ports_are_taken():
    ray = RaySettings()
    assert node_layout("5", 0, 1, ray, shift=1).base == node_layout("6", 0, 1, ray).base


def test_temp_dir_is_short_enough_for_ray_sockets():
    layout = node_layout("123456789_1234", 3, 4, RaySettings(temp_root="/tmp/abcdefghijk"), uid=123456)
    assert len(layout.temp_dir) <= compat.MAX_RAY_TEMP_DIR
    assert len(layout.temp_dir) + len("/session_2026-11-22_08-25-37_127898_12345/sockets/plasma_store") < 107


def test_a_too_long_temp_dir_is_refused():
    with pytest.raises(ClusterError, match="shorten ray.temp_root"):
        node_layout("123456789_123456789_123456789", 0, 1, RaySettings(temp_root="/tmp/abcdefghijk"), uid=1)


def test_choose_layout_skips_a_block_whose_ports_are_taken():
    import socket

    env = TaskEnv(job_id="31337", restart=0, rank=0, num_tasks=1, node=0, num_nodes=1, local_rank=0,
                  hostname="h", hostnames=("h",))
    ray = RaySettings()
    first = node_layout(env.job_id, 0, 1, ray)
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", first.gcs))
        except OSError:
            pytest.skip(f"port {first.gcs} is in use on this machine")
        s.listen()
        chosen = choose_layout(env, ray, head=True)
    assert chosen.base != first.base


@pytest.mark.parametrize("environ, tasks, expected", [
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 1, [["0", "1", "2", "3"]]),
    ({"CUDA_VISIBLE_DEVICES": "0,1,2,3"}, 2, [["0", "2"], ["1", "3"]]),
    ({"CUDA_VISIBLE_DEVICES": "0"}, 2, [["0"], []]),  # the dev Slurm's one fake GPU: the head gets it
    ({"SLURM_GPUS_ON_NODE": "2"}, 2, [["0"], ["1"]]),
    ({"CUDA_VISIBLE_DEVICES": "3", "SLURM_GPUS_PER_TASK": "1"}, 2, [["3"], ["3"]]),  # each task's own already
    ({"CUDA_VISIBLE_DEVICES": ""}, 1, [[]]),
    ({}, 2, [[], []]),
])
def test_gpus_are_dealt_out_to_the_tasks_of_a_node(environ, tasks, expected):
    assert [task_gpus(rank, tasks, environ) for rank in range(tasks)] == expected


def test_cpus_come_from_the_allocation():
    assert task_cpus({"SLURM_CPUS_PER_TASK": "12"}, 2) == 12
    assert task_cpus({}, 1) == len(os.sched_getaffinity(0))


def test_ray_start_arguments():
    ray = RaySettings(object_store_mb=512)
    layout = node_layout("7", 0, 1, ray)
    head = ray_start_args(layout, ray, "10.0.0.1", 8, 2, None)
    assert {"--head", "--block", f"--port={layout.gcs}", "--include-dashboard=false", "--num-cpus=8",
            "--num-gpus=2", f"--object-store-memory={512 * 2**20}", f"--temp-dir={layout.temp_dir}",
            "--node-ip-address=10.0.0.1", f"--min-worker-port={layout.min_worker}"} <= set(head)
    with_dashboard = ray_start_args(layout, dataclasses.replace(ray, dashboard=True), "10.0.0.1", 8, 2, None)
    assert {"--include-dashboard=true", "--dashboard-host=127.0.0.1"} <= set(with_dashboard)
    worker = ray_start_args(layout, ray, "10.0.0.2", 8, 0, "10.0.0.1:20000")
    assert "--address=10.0.0.1:20000" in worker and "--head" not in worker
    assert not any(a.startswith(("--port=", "--include-dashboard")) for a in worker)


def test_ray_processes_get_token_auth_and_the_marker(tmp_path):
    base = {"RAY_AUTH_TOKEN": "from-the-user", "RAY_ADDRESS": "elsewhere:6379", "PATH": "/bin"}
    env = ray_env(tmp_path / "token", "42/1", ["1"], RaySettings(stop_timeout_s=15), base=base)
    assert env["RAY_AUTH_MODE"] == "token" and env["RAY_AUTH_TOKEN_PATH"] == str(tmp_path / "token")
    assert "RAY_AUTH_TOKEN" not in env and "RAY_ADDRESS" not in env
    assert env[ENV_MARK] == "42/1" and env["CUDA_VISIBLE_DEVICES"] == "1"
    assert float(env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"]) < 15


def test_token_file_is_private_and_fresh(tmp_path):
    path = write_token(tmp_path / "token")
    first = path.read_text()
    assert path.stat().st_mode & 0o777 == 0o600 and len(first) == 64
    assert write_token(path).read_text() != first


def test_rendezvous_is_fresh_per_job_start():
    assert rendezvous_dir(Path("/r"), "12", 0) != rendezvous_dir(Path("/r"), "12", 1)
    assert rendezvous_dir(Path("/r"), "12", 1).parent == job_dir(Path("/r"), "12") == Path("/r/slurm/12")


# ---------------------------------------------------------------------------------------------
# Processes: found by marker, stopped by PID
# ---------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_marked_processes_are_found_and_stopped(tmp_path):
    marker = f"test{os.getpid()}/0"
    # a child that ignores SIGTERM, and a grandchild: both must be found and stopped
    code = "import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); " \
           "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, ENV_MARK: marker})
    try:
        for _ in range(100):
            found = marked_processes(marker)
            if len(found) == 2:
                break
            import time

            time.sleep(0.05)
        assert len(found) == 2
        assert marked_processes(marker.split("/")[0] + "/", prefix=True) == found
        assert marked_processes(marker.split("/")[0]) == []  # exact match unless prefix
        left = stop_processes(found, grace_s=0.5, keep={proc.pid})
        assert left == []
        assert not any(proc_alive(p) for p in found)
    finally:
        proc.kill()
        proc.wait()


def test_a_reused_pid_is_not_taken_for_the_recorded_process():
    me = _stat(os.getpid())
    assert proc_alive(Proc(os.getpid(), me[2], me[3]))
    assert not proc_alive(Proc(os.getpid(), me[2] + 1, me[3]))


@pytest.mark.slow
def test_spawned_children_ignore_the_time_limit_warning():
    proc = spawn([sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGUSR2) == signal.SIG_IGN)"],
                    dict(os.environ), stdout=subprocess.PIPE, text=True)
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == "True"
    assert signal.getsignal(signal.SIGUSR2) != signal.SIG_IGN  # the parent keeps its own handler


# ---------------------------------------------------------------------------------------------
# The submitit job object
# ---------------------------------------------------------------------------------------------

def _noop_driver(cluster):
    return cluster.nodes


def test_job_requeues_itself_with_the_same_call(tmp_path):
    import cloudpickle
    from submitit.helpers import DelayedSubmission

    job = RayClusterJob(tmp_path, RaySettings(), _noop_driver, checkpoint_s=5)
    again = job.checkpoint()
    assert isinstance(again, DelayedSubmission) and again.function is job
    copy = pickle.loads(cloudpickle.dumps(job))
    assert (copy.run_dir, copy.ray, copy.checkpoint_s) == (str(tmp_path), RaySettings(), 5)


def test_submit_without_slurm_says_what_is_missing(tmp_path, monkeypatch):
    import shutil

    from ray_grok.cluster import slurm

    monkeypatch.setattr(shutil, "which", lambda name: None)
    with pytest.raises(ProfileError, match="needs sbatch and srun on PATH .*cluster/dev/slurm-up.sh"):
        slurm.submit(profile_from_dict(SLURM), tmp_path, _noop_driver)


# ---------------------------------------------------------------------------------------------
# `ray-grok launch --cluster` without a Slurm (the real submission: tests/test_slurm_dev.py)
# ---------------------------------------------------------------------------------------------

def _launch(*args: str):
    from click.testing import CliRunner

    from ray_grok.cli import main

    return CliRunner().invoke(main, ["launch", *args])


def test_dry_run_with_a_slurm_profile_prints_the_trials_and_the_job(tmp_path):
    profile = write_profile(tmp_path, f"""
        kind: slurm
        storage_root: {tmp_path}/store
        partition: gpu
        nodes: 3
        gpus_per_node: 4
        """)
    res = _launch(str(ROOT / "grids/full.yaml"), "--cluster", str(profile), "--dry-run")
    assert res.exit_code == 0, res.output
    assert "1,470 trials" in res.output or "1470 trials" in res.output, res.output
    assert f"run directory {tmp_path}/store/full" in res.output
    assert "#SBATCH --nodes=3" in res.output and "#SBATCH --gpus-per-node=4" in res.output
    assert not (tmp_path / "store").exists()  # a dry run creates nothing


def test_launch_on_slurm_without_sbatch_fails_before_creating_the_run_dir(tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "which", lambda name: None)
    profile = write_profile(tmp_path, f"kind: slurm\nstorage_root: {tmp_path}/store\n")
    res = _launch(str(ROOT / "grids/smoke.yaml"), "--cluster", str(profile))
    assert res.exit_code == 1 and "needs sbatch and srun on PATH" in res.output, res.output
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_launch_says_why_sbatch_refused_the_job(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {"sbatch": "echo 'sbatch: error: Batch job submission failed: Unable to contact slurm "
                                 "controller (connect failure)' >&2; exit 1",
                       "srun": "exit 0", "squeue": "exit 1"}.items():
        (bin_dir / name).write_text(f"#!/bin/sh\n{text}\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    profile = write_profile(tmp_path, f"kind: slurm\nstorage_root: {tmp_path}/store\n")
    res = _launch(str(ROOT / "grids/smoke.yaml"), "--cluster", str(profile))
    assert res.exit_code == 1, res.output
    assert "sbatch refused the job" in res.output and "Unable to contact slurm controller" in res.output
    assert "Traceback" not in res.output


def test_launch_with_a_bad_profile_names_the_key(tmp_path):
    profile = write_profile(tmp_path, f"kind: slurm\nstorage_root: {tmp_path}\nnodez: 2\n")
    res = _launch(str(ROOT / "grids/smoke.yaml"), "--cluster", str(profile), "--dry-run")
    assert res.exit_code == 1 and "unknown key nodez" in res.output and "valid keys:" in res.output, res.output


def test_wait_needs_a_slurm_profile():
    res = _launch(str(ROOT / "grids/smoke.yaml"), "--cluster", str(ROOT / "cluster/local.yaml"), "--wait")
    assert res.exit_code == 2 and "--wait is for a Slurm" in res.output, res.output


def test_local_profile_storage_root_chooses_the_run_dir(tmp_path):
    profile = write_profile(tmp_path, f"kind: local\nstorage_root: {tmp_path}/runs\n")
    res = _launch(str(ROOT / "grids/smoke.yaml"), "--cluster", str(profile), "--dry-run")
    assert res.exit_code == 0, res.output
    assert str(tmp_path / "runs" / "smoke") in res.output, res.output


def test_status_names_the_slurm_job_and_the_resume_command(tmp_path):
    from ray_grok.sweep.rundir import prepare, resolve
    from ray_grok.sweep.status import format_status, sweep_status

    plan = resolve(ROOT / "grids/smoke.yaml", tmp_path / "run", resume=False)
    prepare(plan.run_dir, plan.spec, plan.grid_text, plan.trials)
    (plan.run_dir / "slurm").mkdir()
    (plan.run_dir / "slurm/jobs.jsonl").write_text('{"job_id": "41", "profile": "cluster/a.yaml", "submitted": 1}\n'
                                                   '{"job_id": "42", "profile": "cluster/b.yaml", "submitted": 2}\n')
    text = format_status(sweep_status(plan.run_dir))
    assert "2 job(s) submitted, the last 42 with cluster/b.yaml" in text, text
    assert f"ray-grok launch --resume --out {plan.run_dir} --cluster cluster/b.yaml" in text, text


def test_task_env_outside_slurm_is_an_error(monkeypatch):
    for key in ("SUBMITIT_EXECUTOR", "SLURM_JOB_ID"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(ClusterError, match="not inside a Slurm job"):
        TaskEnv.current()


def test_task_env_from_the_slurm_environment(monkeypatch):
    monkeypatch.delenv("SUBMITIT_EXECUTOR", raising=False)
    for key, value in {"SLURM_JOB_ID": "77", "SLURM_NTASKS": "4", "SLURM_JOB_NUM_NODES": "2", "SLURM_NODEID": "1",
                       "SLURM_PROCID": "3", "SLURM_LOCALID": "1", "SLURM_JOB_NODELIST": "gpu[01-02]",
                       "SLURM_RESTART_COUNT": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("SLURM_ARRAY_JOB_ID", raising=False)
    env = TaskEnv.current()
    assert (env.job_id, env.restart, env.rank, env.num_tasks) == ("77", 2, 3, 4)
    assert (env.tasks_per_node, env.local_rank) == (2, 1)
    assert env.hostnames == ("gpu01", "gpu02") and env.marker == "77/1"
