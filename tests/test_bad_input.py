"""Bad input is refused fast, naming the field: every case below, in a trial config (a file or
--set), a grid or a cluster profile, makes its `ray-grok` command exit non-zero within 2 seconds
with one line that names the field, the value and what is allowed: no traceback, no hang, nothing
created. The kinds the issue lists: non-finite numbers, negative or oversized seeds, sizes that
cannot fit in memory, primes and counts so large that checking them would hang, device strings
that are not ASCII digits, duplicate YAML keys, a key given nested and dotted, control characters
in strings that reach an sbatch script, abbreviations of managed sbatch options, storage roots
such as /, ranges with non-finite bounds or steps, and absurd trial counts.

Fast: in-process (CliRunner). The slow test at the end runs the slowest kinds as real processes.
"""
from __future__ import annotations

import os
import resource
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ray_grok.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOKE = str(ROOT / "grids" / "smoke.yaml")

GRID = """
name: bad
base: {task: {p: 7, rule: random, n_id: 4, n_ood: 8, n_examples: 4}, model: {width: 16, heads: 2, depth: 1},
       train: {steps: 4, batch_size: 8}, runtime: {device: cpu}}
"""
PROFILE = "kind: slurm\nstorage_root: /tmp/rg-bad-input\n"

# (id, kind, content, words the one line must hold: the field, the value, what is allowed)
#   kind "set": --set arguments of `ray-grok train`; "config": a config file for `train --config`;
#   "grid": a grid file for `launch`; "profile": a cluster profile for `launch --cluster`
CASES = [
    # ---- trial configs ----
    ("lr nan", "set", ["train.lr=nan"], ["train.lr", "nan", "must be a finite number"]),
    ("lr inf", "set", ["train.lr=inf"], ["train.lr", "inf", "must be a finite number"]),
    ("rope_theta .inf", "config", "model: {rope_theta: .inf}", ["model.rope_theta", "inf", "finite number"]),
    ("eps .nan", "config", "train: {eps: .nan}", ["train.eps", "nan", "finite number"]),
    ("negative seed", "set", ["seed=-1"], ["seed must be a seed from 0 to 4294967295", "got -1"]),
    ("oversized seed", "set", ["seed=99999999999"], ["seed must be a seed from 0 to 4294967295", "99999999999"]),
    ("oversized data_seed", "set", ["task.data_seed=4294967296"], ["task.data_seed", "4294967296", "0 to 4294967295"]),
    ("int beyond 64 bits", "set", ["model.depth=1.0e+30"], ["model.depth", "1e+30", "fits in 64 bits"]),
    ("width beyond memory", "set", ["model.width=1000000"],
     ["needs at least", "model.width=1000000", "at most 1,024 GiB is allowed"]),
    ("eval rows beyond memory", "set", ["eval.batches=100000000"], ["eval.batches=100000000", "at most 1,024 GiB"]),
    ("examples beyond memory", "set", ["task.n_examples=10000000"], ["task.n_examples=10000000", "at most 1,024 GiB"]),
    ("a prime too large to test", "set", ["task.p=2305843009213693951"],
     ["task.p must be a prime from 2 to 1021", "2305843009213693951"]),
    ("steps overflow tokens_seen", "set", ["train.steps=1000000000000000"],
     ["train.steps must be at most", "1000000000000000", "64 bits"]),
    ("threads", "set", ["runtime.threads=100000"], ["runtime.threads must be from 0 to 4096", "100000"]),
    ("device: arabic-indic digit", "set", ["runtime.device=cuda:\u0663"],
     ["runtime.device", "cuda:\u0663", "ASCII digits"]),
    ("device: superscript digit", "set", ["runtime.device=cuda:\u00b2"], ["runtime.device", "cuda:\u00b2", "ASCII"]),
    ("duplicate key", "config", "task:\n  alpha: 0.5\n  alpha: 0.7\n", ["'alpha' is given twice (lines 2 and 3)"]),
    ("nested and dotted", "config", "task: {alpha: 0.5}\ntask.alpha: 0.7\n",
     ["task.alpha is given twice (nested and dotted: 0.5 and 0.7)"]),
    ("control character", "config", 'checkpoint: {monitor: "ood_test_acc\\nx"}',
     ["checkpoint.monitor", "without control characters", "ood_test_acc\\nx"]),
    # ---- grids ----
    ("range step nan", "grid", "axes: {task.alpha: {range: {from: 0.2, to: 0.8, step: .nan}}}",
     ["axes.task.alpha.range.step must be a finite number, got nan"]),
    ("range to inf", "grid", "axes: {task.alpha: {range: {from: 0.2, to: .inf, step: 0.1}}}",
     ["axes.task.alpha.range.to must be a finite number, got inf"]),
    ("range from -inf", "grid", "axes: {task.alpha: {range: {from: -.inf, to: 0.8, step: 0.1}}}",
     ["axes.task.alpha.range.from must be a finite number, got -inf"]),
    ("range of a billion", "grid", "axes: {task.alpha: {range: {from: 0.0, to: 1.0, step: 1.0e-9}}}",
     ["axes.task.alpha.range gives 1,000,000,001 values", "at most run.max_trials = 10,000"]),
    ("range of 1e30 integers", "grid", "axes: {eval.every: {range: {from: 1, to: 1000000000000000000000000000000, step: 1}}}",
     ["axes.eval.every.range gives 1,000,000,000,000,000,000,000,000,000,000 values", "at most run.max_trials = 10,000"]),
    ("seeds: a trillion", "grid", "seeds: 1000000000000",
     ["seeds must be a count from 1 to run.max_trials = 10,000, got 1000000000000"]),
    ("negative seed in list", "grid", "seeds: [0, -1]", ["seeds must be", "from 0 to 4294967295", "[0, -1]"]),
    ("oversized seed in list", "grid", "seeds: [1099511627776]", ["seeds", "from 0 to 4294967295", "1099511627776"]),
    ("negative seed axis", "grid", "axes: {seed: [-1, 0]}", ["seed must be a seed from 0 to 4294967295, got -1"]),
    ("absurd trial count", "grid",
     "axes: {train.lr: {range: {from: 0.001, to: 0.03, step: 0.001}}, train.eps: {range: {from: 1.0e-9, to: "
     "3.0e-8, step: 1.0e-9}}, train.weight_decay: {range: {from: 0.0, to: 2.9, step: 0.1}}}\nseeds: 20",
     ["the grid has 540,000 trials (30 x 30 x 30 x 20 seeds)", "at most run.max_trials = 10,000"]),
    ("max_trials below the grid", "grid", "axes: {train.lr: [0.001, 0.002]}\nseeds: 2\nrun: {max_trials: 3}",
     ["the grid has 4 trials (2 x 2 seeds)", "at most run.max_trials = 3"]),
    ("max_trials 0", "grid", "run: {max_trials: 0}", ["run.max_trials must be >= 1, got 0"]),
    ("non-finite base value", "grid", GRID.replace("batch_size: 8}", "batch_size: 8, lr: .inf}"),
     ["train.lr must be a finite number, got inf"]),
    ("nan axis value", "grid", "axes: {task.alpha: [0.5, .nan]}", ["task.alpha must be a finite number, got nan"]),
    ("resources inf", "grid", "resources: {cpu: .inf}", ["resources.cpu must be a finite number, got inf"]),
    ("state_every_s inf", "grid", "run: {state_every_s: .inf}", ["run.state_every_s must be a finite number"]),
    ("duplicate grid key", "grid", "seeds: 2\nseeds: 3", ["'seeds' is given twice"]),
    ("nested and dotted base", "grid", GRID.replace("device: cpu}}", "device: cpu}, model.depth: 3}"),
     ["base.model.depth is given twice (nested and dotted: 1 and 3)"]),
    ("device digit in a grid", "grid", GRID.replace("device: cpu", "device: 'cuda:\u0663'") + "resources: {gpu: 1}\n",
     ["runtime.device", "ASCII digits"]),
    # ---- cluster profiles ----
    ("newline in partition", "profile", 'partition: "gpu\\n#SBATCH --time=1"',
     ["partition must be text without control characters", "gpu\\n#SBATCH --time=1"]),
    ("newline in a setup line", "profile", 'setup: ["module load x\\nrm -rf ~"]',
     ["setup must be text without control characters", "module load x\\nrm -rf ~"]),
    ("newline in an sbatch_extra value", "profile", 'sbatch_extra: {constraint: "a100\\n#SBATCH --time=1"}',
     ["sbatch_extra.constraint must be", "without control characters", "a100\\n#SBATCH --time=1"]),
    ("newline in mem", "profile", 'mem: "64G\\n"', ["mem must be text without control characters", "64G\\n"]),
    ("newline in python", "profile", 'python: "python3\\nrm -rf ~"', ["python must be text without control"]),
    ("--tim", "profile", "sbatch_extra: ['--tim=10']",
     ["sbatch_extra sets --tim, which sbatch reads as --time", "use the profile key time instead"]),
    ("part", "profile", "sbatch_extra: {part: gpu}",
     ["sbatch_extra sets --part, which sbatch reads as --partition", "profile key partition"]),
    ("--cpus-per-t", "profile", "sbatch_extra: ['--cpus-per-t=4']",
     ["sets --cpus-per-t, which sbatch reads as --cpus-per-task", "profile key cpus_per_task"]),
    ("no-requeue", "profile", "sbatch_extra: {no-requeue: true}",
     ["sets --no-requeue: ray-grok always sets --requeue"]),
    ("short option", "profile", "sbatch_extra: {J: x}", ["sbatch_extra option names must be sbatch's long options",
                                                          "'J'"]),
    ("storage root /", "profile", "storage_root: /", ["storage_root must be a directory of yours, not /", "got '/'"]),
    ("storage root /etc", "profile", "storage_root: /etc/ray-grok", ["storage_root", "not / or a system directory",
                                                                     "/etc/ray-grok"]),
    ("join timeout inf", "profile", "ray: {join_timeout_s: .inf}", ["ray.join_timeout_s must be a finite number"]),
    ("interface digit", "profile", "ray: {interface: 'eth\u0663'}", ["ray.interface", "eth\u0663", "interface name"]),
    ("duplicate profile key", "profile", "nodes: 2\nnodes: 4", ["'nodes' is given twice"]),
    ("tasks beyond the ports", "profile", "tasks_per_node: 10000", ["tasks_per_node must be at most 124", "10000"]),
    ("time inf", "profile", "time: .inf", ["time must be minutes (90)", "inf"]),
]


def command(kind: str, content, tmp_path: Path) -> list[str]:
    out = str(tmp_path / "out")
    if kind == "set":
        return ["train", "--out", out] + [a for o in content for a in ("--set", o)]
    path = tmp_path / f"{kind}.yaml"
    if kind == "config":
        path.write_text(content + "\n")
        return ["train", "--out", out, "--config", str(path)]
    if kind == "grid":  # a fragment added to GRID, or a whole grid (starting with its name)
        path.write_text(content if content.lstrip().startswith("name:") else GRID + content + "\n")
        return ["launch", str(path), "--out", out, "--dry-run"]
    text = PROFILE + content + "\n"
    if content.startswith("storage_root:"):
        text = "kind: slurm\n" + content + "\n"
    path.write_text(text)
    return ["launch", SMOKE, "--out", out, "--cluster", str(path), "--dry-run"]


def test_there_are_at_least_40_cases_across_the_three_kinds_of_file():
    kinds = {"set": "config", "config": "config", "grid": "grid", "profile": "profile"}
    counts = {k: sum(1 for c in CASES if kinds[c[1]] == k) for k in ("config", "grid", "profile")}
    assert len(CASES) >= 40 and min(counts.values()) >= 10, counts


@pytest.mark.parametrize("why, kind, content, words", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_one_line_within_2_seconds(tmp_path, why, kind, content, words):
    args = command(kind, content, tmp_path)
    t0 = time.monotonic()
    result = CliRunner().invoke(main, args)
    took = time.monotonic() - t0
    output = result.output.strip()
    assert result.exit_code != 0, f"{why}: accepted:\n{output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        f"{why}: {type(result.exception).__name__}: {result.exception}"
    assert output.startswith("Error: ") and "\n" not in output, f"{why}: not one line:\n{output}"
    for word in words:
        assert word in output, f"{why}: {word!r} not in {output!r}"
    assert took < 2.0, f"{why}: refused after {took:.2f} s"
    assert not (tmp_path / "out").exists(), f"{why}: the output directory was created"


# ---------------------------------------------------------------------------------------------
# As real processes: the interpreter, the imports and the refusal
# ---------------------------------------------------------------------------------------------

SLOWEST = ["a prime too large to test", "width beyond memory", "range of a billion", "range of 1e30 integers",
           "seeds: a trillion", "absurd trial count", "duplicate key", "newline in partition", "storage root /"]


@pytest.mark.slow
@pytest.mark.parametrize("why", SLOWEST)
def test_as_a_process_the_refusal_takes_under_2_seconds(tmp_path, why):
    """The wall time of a process on this shared 2-core machine depends on its neighbours, so the
    2 s are held against the CPU time it used (what it costs) and the wall time against a looser
    bound that still catches a hang."""
    _, kind, content, words = next(c for c in CASES if c[0] == why)
    args = [sys.executable, "-m", "ray_grok.cli", *command(kind, content, tmp_path)]
    t0 = time.monotonic()
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _child_cpu()
    out, err = proc.communicate(timeout=60)
    took = time.monotonic() - t0
    cpu = _child_cpu()
    assert proc.returncode == 1, out + err
    line = err.strip()
    assert line.startswith("Error: ") and "\n" not in line, line
    assert all(w in line for w in words), line
    assert cpu < 2.0, f"{why}: {cpu:.2f} s of CPU"
    assert took < 10.0, f"{why}: {took:.2f} s wall"


_SEEN = [0.0]


def _child_cpu() -> float:
    """CPU seconds (user + system) of the children reaped since the last call."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    total = r.ru_utime + r.ru_stime
    spent, _SEEN[0] = total - _SEEN[0], total
    return spent


def test_a_trial_beyond_its_devices_memory_is_refused_before_anything_is_allocated(tmp_path):
    """Under the 1 TiB any config may ask for, but more than this machine has: refused when the
    trial starts, before the model or the data exist, and before its config is stored (so the same
    directory takes a smaller config)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    out = tmp_path / "trial"
    args = ["train", "--out", str(out), "--set", "runtime.device=cpu", "--set", "model.width=8192",
            "--set", "model.depth=24"]
    assert ram < 400 * 2**30, "this machine is too large for the case: raise model.depth"
    t0 = time.monotonic()
    result = CliRunner().invoke(main, args)
    output = result.output.strip()
    assert result.exit_code == 1 and "\n" not in output, output
    assert output.startswith("Error: this trial needs at least") and "model.width=8192" in output, output
    assert f"but cpu has {ram / 2**30:,.1f} GiB" in output, output
    assert time.monotonic() - t0 < 2.0
    assert not (out / "config.json").exists()


def test_a_profile_case_is_only_refused_for_its_own_reason(tmp_path):
    """The profile every profile case starts from, and the grid every grid case starts from, are
    accepted: each refusal above is the case's own."""
    good_profile = tmp_path / "p.yaml"
    good_profile.write_text(PROFILE)
    result = CliRunner().invoke(main, ["launch", SMOKE, "--out", str(tmp_path / "o"), "--cluster",
                                       str(good_profile), "--dry-run"])
    assert result.exit_code == 0, result.output
    good_grid = tmp_path / "g.yaml"
    good_grid.write_text(textwrap.dedent(GRID))
    result = CliRunner().invoke(main, ["launch", str(good_grid), "--out", str(tmp_path / "o"), "--dry-run"])
    assert result.exit_code == 0, result.output
