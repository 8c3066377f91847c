"""Typed trial configuration: one frozen dataclass per concern, loaded from YAML plus dotted overrides.

Every default is the paper's value (He et al. 2024); nothing else in ray-grok may assume those
values. A config checks itself when it is built (fields.Checked), however it is built, and every
error names the field, the bad value and what is allowed.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from ..errors import ConfigError
from ..io import UniqueKeyLoader, yaml_error_line
from .fields import INT64_MAX, Checked, describe, doc, suggest
from .schema import SCALAR_EVAL_COLUMNS


class _Section(Checked):
    @classmethod
    def unknown_key(cls, name: str) -> str:
        valid = [k for k in VALID_KEYS if k.startswith(f"{cls.SECTION}.")] or list(VALID_KEYS)
        return unknown_key_message(cls.key(name), valid)


@dataclass(frozen=True, kw_only=True)
class TaskConfig(_Section):
    SECTION = "task"
    p: int = doc("prime modulus; tokens are the residues 0..p-1", 29)
    n_id: int = doc("number of pre-training (in-distribution) tasks (a, b)", 512)
    alpha: float = doc("fraction of the p^2 inputs (x, y) used for pre-training, in (0, 1)", 0.6)
    rule: Literal["rectangular", "random"] = doc(
        "how pre-training tasks are drawn: rectangles of 4 tasks (the paper) or uniformly", "rectangular")
    n_ood: int = doc("number of held-out o.o.d. tasks, drawn from the tasks not used for pre-training", 256)
    n_examples: int = doc("examples (x, y, z) per sequence; a row is 3 * n_examples tokens", 32)
    batch_inputs: Literal["shared", "independent"] = doc(
        "training rows' inputs: shared = every task in a batch gets the same input sequences, only z "
        "differs (the authors' loader); independent = drawn per row", "shared")
    data_seed: int = doc("seed of the alpha split of the inputs (the same for every trial)", 0)

    def check(self) -> None:
        p, need = self.p, self.need
        # the bound first: a trial enumerates the p^2 inputs and tasks, and testing a huge p for
        # primality would itself take forever
        need(2 <= p <= MAX_P, "p", f"a prime from 2 to {MAX_P} (a trial enumerates the p^2 inputs and tasks)")
        need(is_prime(p), "p", "a prime (the tasks live in Z_p)")
        need(p >= 5 or self.rule != "rectangular", "p",
             "at least 5 under the rectangular rule (a rectangle needs 4 distinct residues)")
        need(0.0 < self.alpha < 1.0, "alpha", "in (0, 1)")
        n_train, n_test = split_sizes(p, self.alpha)
        need(n_train >= 1 and n_test >= 1, "alpha", f"such that round({p}^2 * alpha) leaves train and test "
             f"inputs (gives {n_train} train, {n_test} test)")
        need(self.n_examples >= 1, "n_examples", ">= 1")
        need(self.n_ood >= 1, "n_ood", ">= 1 (the o.o.d. sets need tasks)")
        need(self.n_ood < p * p, "n_ood", f"< p^2 = {p * p}")
        left = p * p - self.n_ood
        need(self.n_id >= 1, "n_id", ">= 1")
        need(self.n_id <= left, "n_id", f"<= p^2 - n_ood = {p}^2 - {self.n_ood} = {left} (tasks left after "
             "the o.o.d. ones)")
        need(0 <= self.data_seed <= MAX_SEED, "data_seed", f"a seed from 0 to {MAX_SEED}")
        need(self.rule != "rectangular" or self.n_id % 4 == 0, "n_id",
             "a multiple of 4 under the rectangular rule (tasks come in rectangles of 4)")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(_Section):
    SECTION = "model"
    depth: int = doc("number of transformer blocks", 6)
    width: int = doc("residual stream width (d_model)", 512)
    heads: int = doc("attention heads; width / heads is the head dimension", 4)
    rope_theta: float = doc("RoPE base frequency", 10000.0)
    init_std: float = doc("std of the normal init of every Linear weight and the embedding", 0.02)

    def check(self) -> None:
        for name in ("depth", "width", "heads"):
            self.need(getattr(self, name) >= 1, name, ">= 1")
        self.need(self.width % self.heads == 0, "width", f"divisible by model.heads = {self.heads}")
        self.need((self.width // self.heads) % 2 == 0, "width",
                  f"such that width / heads is even (RoPE rotates pairs), heads = {self.heads}")
        self.need(self.rope_theta > 0, "rope_theta", "> 0")
        self.need(self.init_std > 0, "init_std", "> 0")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(_Section):
    SECTION = "train"
    steps: int = doc("optimizer steps", 200_000)
    batch_size: int = doc("rows per batch; must be a multiple of task.n_id (same rows per task)", 1024)
    lr: float = doc("peak learning rate", 1.5e-4)
    warmup_steps: int = doc("linear warm-up steps", 10_000)
    warmup_start: float = doc("learning-rate multiplier at step 0 (linear to 1.0 over warm-up)", 0.01)
    final_lr_ratio: float = doc("learning-rate multiplier at the last step (cosine from 1.0)", 0.1)
    weight_decay: float = doc("AdamW weight decay on every parameter with 2+ dims (not LayerNorm)", 2.0)
    beta1: float = doc("AdamW beta1", 0.9)
    beta2: float = doc("AdamW beta2", 0.98)
    eps: float = doc("AdamW epsilon", 1e-8)

    def check(self) -> None:
        need = self.need
        need(self.steps >= 1, "steps", ">= 1")
        need(self.batch_size >= 1, "batch_size", ">= 1")
        need(self.lr > 0, "lr", "> 0")
        need(self.warmup_steps >= 0, "warmup_steps", ">= 0")
        need(0 < self.warmup_start <= 1, "warmup_start", "in (0, 1]")
        need(0 <= self.final_lr_ratio <= 1, "final_lr_ratio", "in [0, 1]")
        need(self.weight_decay >= 0, "weight_decay", ">= 0")
        need(0 <= self.beta1 < 1, "beta1", "in [0, 1)")
        need(0 <= self.beta2 < 1, "beta2", "in [0, 1)")
        need(self.eps > 0, "eps", "> 0")


@dataclass(frozen=True, kw_only=True)
class EvalConfig(_Section):
    SECTION = "eval"
    every: int = doc("evaluate every this many steps (also at step 1 and at the end)", 1000)
    batches: int = doc("evaluation rows per set = batches * train.batch_size, fixed for the whole run", 16)

    def check(self) -> None:
        self.need(self.every >= 1, "every", ">= 1")
        self.need(self.batches >= 1, "batches", ">= 1")


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig(_Section):
    SECTION = "checkpoint"
    every: int = doc("save the 'latest' checkpoint every this many steps (and at the end)", 1000)
    monitor: str = doc("metric that picks the 'best' checkpoint (maximized, or minimized if a loss)",
                       "ood_test_acc_last")
    patience: int = doc("stop after this many evaluations without a better monitor value; 0 = never", 0)

    def check(self) -> None:
        self.need(self.every >= 1, "every", ">= 1")
        self.need(self.monitor in SCALAR_EVAL_COLUMNS, "monitor", f"one of {list(SCALAR_EVAL_COLUMNS)}")
        self.need(self.patience >= 0, "patience", ">= 0 (0 = no early stop)")


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig(_Section):
    SECTION = "runtime"
    device: str = doc("auto | cpu | cuda | cuda:N (auto = cuda if available)", "auto")
    compile: Literal["auto", "on", "off"] = doc("torch.compile the model (auto = on for CUDA only)", "auto")
    log_every: int = doc("print progress every this many steps", 100)
    threads: int = doc("CPU threads for torch; 0 = auto: 1 for `ray-grok train`, resources.cpu in a sweep "
                       "(more threads than idle cores slow a step down up to 10x: benchmarks/threads.py)", 0)

    def check(self) -> None:
        # ASCII digits only: str.isdigit() also takes '٣' and '²', which torch.device cannot read
        self.need(bool(re.fullmatch(r"auto|cpu|cuda|cuda:[0-9]{1,3}", self.device)), "device",
                  "one of auto, cpu, cuda, cuda:N (N in ASCII digits, below 1000)")
        self.need(self.log_every >= 1, "log_every", ">= 1")
        self.need(0 <= self.threads <= MAX_THREADS, "threads", f"from 0 to {MAX_THREADS} (0 = torch's default)")


@dataclass(frozen=True, kw_only=True)
class TrialConfig(_Section):
    seed: int = doc("trial seed: task draw, o.o.d. tasks, init, batch sampling", 0)
    task: TaskConfig = doc("", factory=TaskConfig)
    model: ModelConfig = doc("", factory=ModelConfig)
    train: TrainConfig = doc("", factory=TrainConfig)
    eval: EvalConfig = doc("", factory=EvalConfig)
    checkpoint: CheckpointConfig = doc("", factory=CheckpointConfig)
    runtime: RuntimeConfig = doc("", factory=RuntimeConfig)

    def check(self) -> None:
        self.need(0 <= self.seed <= MAX_SEED, "seed", f"a seed from 0 to {MAX_SEED}")
        self.train.need(self.train.batch_size % self.task.n_id == 0, "batch_size",
                        f"a multiple of task.n_id = {self.task.n_id} (every batch holds the same rows of every task)")
        most = INT64_MAX // (self.train.batch_size * self.seq_len)
        self.train.need(self.train.steps <= most, "steps", f"at most {most} (tokens_seen = steps x batch_size x "
                        "(3 x n_examples - 1) must fit in 64 bits)")
        need = self.min_memory_bytes()
        if need > MAX_TRIAL_BYTES:
            raise ConfigError(
                f"this trial needs at least {need / 2**30:,.0f} GiB of memory ({self.size_fields()}); at most "
                f"{MAX_TRIAL_BYTES // 2**30:,} GiB is allowed: make the model or the batches smaller")

    def min_memory_bytes(self) -> int:
        """A lower bound on the memory one trial needs on its device, from its sizes alone (nothing
        is allocated): weights, gradients and AdamW's two moments in fp32; the MLP's hidden layer
        of every block for one batch, kept for the backward pass (bf16 at least); the four
        evaluation sets (int64 tokens). Attention and the rest come on top."""
        m, t = self.model, self.task
        params = t.p * m.width + m.depth * (12 * m.width ** 2 + 2 * m.width) + m.width
        mlp_hidden = self.train.batch_size * self.seq_len * m.depth * 4 * m.width
        eval_tokens = 4 * self.eval.batches * self.train.batch_size * 3 * t.n_examples
        return 16 * params + 2 * mlp_hidden + 8 * eval_tokens

    def size_fields(self) -> str:
        """The keys that set a trial's memory, with their values, for messages."""
        return (f"model.depth={self.model.depth}, model.width={self.model.width}, train.batch_size="
                f"{self.train.batch_size}, task.n_examples={self.task.n_examples}, eval.batches={self.eval.batches}")

    # ---- derived quantities (no I/O) ----
    @property
    def seq_len(self) -> int:
        """Tokens the model reads: a row of 3 * n_examples minus the last."""
        return 3 * self.task.n_examples - 1

    @property
    def rows_per_task(self) -> int:
        return self.train.batch_size // self.task.n_id

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def flat(self) -> dict[str, Any]:
        """{dotted key: value} for every field, e.g. {'task.p': 29, ...}."""
        return flatten(self.to_dict())

    def config_hash(self, exclude_runtime: bool = True) -> str:
        """Stable id of the experiment: runtime settings (device, compile, ...) do not change it."""
        d = self.to_dict()
        if exclude_runtime:
            d.pop("runtime")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


MAX_P = 1021  # the largest prime below 1024: p^2 ~ 1M inputs and tasks, enumerated as a trial starts
MAX_SEED = 2**32 - 1  # numpy's seed range; the samplers' seeds derived from it still fit torch's
MAX_THREADS = 4096
# A trial whose memory lower bound passes this cannot run anywhere ray-grok runs: refused when the
# config is read, before anything is allocated (run_trial also checks it against its device).
MAX_TRIAL_BYTES = 2**40  # 1 TiB


def is_prime(n: int) -> bool:
    return n >= 2 and all(n % d for d in range(2, math.isqrt(n) + 1))


def split_sizes(p: int, alpha: float) -> tuple[int, int]:
    """(train inputs, test inputs) of the alpha split of the p^2 inputs."""
    n_train = round(p * p * alpha)
    return n_train, p * p - n_train


# ---------------------------------------------------------------------------------------------
# Keys: the public, dotted view of the config tree
# ---------------------------------------------------------------------------------------------

def describe_keys() -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every config key, in declaration order."""
    return describe(TrialConfig)


VALID_KEYS = tuple(k for k, _, _ in describe_keys())
# the top keys of a grid file (sweep/grid.py): a config file that has them is a grid given by mistake
GRID_KEYS = {"base", "axes", "seeds", "resources", "run"}


def unknown_key_message(key: str, valid: list[str] | tuple[str, ...] = VALID_KEYS) -> str:
    """'unknown config key task.nid (did you mean task.n_id?); valid keys: ...'."""
    return f"unknown config key {key}{suggest(key, VALID_KEYS)}; valid keys: {', '.join(valid)}"


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'task': {'alpha': 0.6}} -> {'task.alpha': 0.6}. A key given both nested and dotted
    ({'task': {'alpha': 0.5}, 'task.alpha': 0.7}) is refused: which one wins would be a guess."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        items = flatten(v, f"{prefix}{k}.") if isinstance(v, Mapping) else {f"{prefix}{k}": v}
        for key, value in items.items():
            if key in out:
                raise ConfigError(f"{key} is given twice (nested and dotted: {out[key]!r} and {value!r}); "
                                  "give each key once")
            out[key] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = v
    return out


def merge(base: Mapping[str, Any], flat_overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Nested base mapping with dotted overrides applied on top."""
    return unflatten({**flatten(base), **flat_overrides})


# ---------------------------------------------------------------------------------------------
# Loading: mappings, files and KEY=VALUE overrides
# ---------------------------------------------------------------------------------------------

def config_from_dict(data: Mapping[str, Any]) -> TrialConfig:
    """Build and check a TrialConfig from a nested mapping (partial: missing keys take defaults)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of keys, got {type(data).__name__}")
    return TrialConfig.from_mapping(data)


def parse_override(text: str) -> tuple[str, Any]:
    """'task.alpha=0.6' -> ('task.alpha', 0.6); the value is read as YAML (numbers, bools, strings)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like KEY=VALUE, e.g. task.alpha=0.6")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key not in VALID_KEYS:
        raise ConfigError(unknown_key_message(key))
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return key, value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: Mapping[str, Any] | None = None) -> TrialConfig:
    """`base` (a nested mapping, e.g. a stored config) < YAML file < 'KEY=VALUE' overrides -> checked TrialConfig."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.load(path.read_text(), Loader=UniqueKeyLoader) or {}  # noqa: S506 (a SafeLoader)
        except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer of more than 4300 digits
            raise ConfigError(f"{path}: not valid YAML: {yaml_error_line(exc)}") from None
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
        if GRID_KEYS & set(loaded) and not set(loaded) <= set(TrialConfig.__dataclass_fields__):
            raise ConfigError(
                f"{path} is a grid file (keys {', '.join(k for k in loaded if k in GRID_KEYS)}), not a trial "
                f"config: run it with `ray-grok launch {path}`; its trial settings are the ones under "
                "`base:` plus one value of each axis")
        try:
            flat = flatten(loaded)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        bad = [k for k in flat if k not in VALID_KEYS]
        if bad:
            raise ConfigError(f"{path}: {unknown_key_message(bad[0])}")
        data = merge(data, flat)
    return config_from_dict(merge(data, dict(parse_override(o) for o in overrides)))
