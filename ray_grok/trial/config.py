"""Typed trial configuration: one frozen dataclass per concern, loaded from YAML plus dotted overrides.

Every default is the paper's value (He et al. 2024, see SPEC.md); nothing else in ray-grok may
assume those values. A config is validated as a whole before any work starts, and every error
names the field, the bad value and what is allowed.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from ..errors import ConfigError

SETS = ("id_train", "id_test", "ood_train", "ood_test")
SET_METRICS = ("loss", "acc", "acc_last")


def doc(text: str, default: Any) -> Any:
    """A dataclass field with a default and a help text (shown by `ray-grok config`)."""
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True, kw_only=True)
class TaskConfig:
    p: int = doc("prime modulus; tokens are the residues 0..p-1", 29)
    n_id: int = doc("number of pre-training (in-distribution) tasks (a, b)", 512)
    alpha: float = doc("fraction of the p^2 inputs (x, y) used for pre-training, in (0, 1)", 0.6)
    rule: Literal["rectangular", "random"] = doc(
        "how pre-training tasks are drawn: rectangles of 4 tasks (the paper) or uniformly", "rectangular"
    )
    n_ood: int = doc("number of held-out o.o.d. tasks, drawn from the tasks not used for pre-training", 256)
    n_examples: int = doc("examples (x, y, z) per sequence; a row is 3 * n_examples tokens", 32)
    batch_inputs: Literal["shared", "independent"] = doc(
        "training rows' inputs: shared = every task in a batch gets the same input sequences, only z "
        "differs (the authors' loader); independent = drawn per row", "shared"
    )
    data_seed: int = doc("seed of the alpha split of the inputs (the same for every trial)", 0)


@dataclass(frozen=True, kw_only=True)
class ModelConfig:
    depth: int = doc("number of transformer blocks", 6)
    width: int = doc("residual stream width (d_model)", 512)
    heads: int = doc("attention heads; width / heads is the head dimension", 4)
    rope_theta: float = doc("RoPE base frequency", 10000.0)
    init_std: float = doc("std of the normal init of every Linear weight and the embedding", 0.02)


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
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


@dataclass(frozen=True, kw_only=True)
class EvalConfig:
    every: int = doc("evaluate every this many steps (also at step 1 and at the end)", 1000)
    batches: int = doc("evaluation rows per set = batches * train.batch_size, fixed for the whole run", 16)


@dataclass(frozen=True, kw_only=True)
class CheckpointConfig:
    every: int = doc("save the 'latest' checkpoint every this many steps (and at the end)", 1000)
    monitor: str = doc("metric that picks the 'best' checkpoint (maximized, or minimized if a loss)",
                       "ood_test_acc_last")
    patience: int = doc("stop after this many evaluations without a better monitor value; 0 = never", 0)


@dataclass(frozen=True, kw_only=True)
class RuntimeConfig:
    device: str = doc("auto | cpu | cuda | cuda:N (auto = cuda if available)", "auto")
    compile: Literal["auto", "on", "off"] = doc("torch.compile the model (auto = on for CUDA only)", "auto")
    log_every: int = doc("print progress every this many steps", 100)
    threads: int = doc("CPU threads for torch (0 = torch's default)", 0)


@dataclass(frozen=True, kw_only=True)
class TrialConfig:
    seed: int = doc("trial seed: task draw, o.o.d. tasks, init, batch sampling", 0)
    task: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    # ---- derived quantities (no I/O) ----
    @property
    def seq_len(self) -> int:
        """Tokens the model reads: a row of 3 * n_examples minus the last."""
        return 3 * self.task.n_examples - 1

    @property
    def rows_per_task(self) -> int:
        return self.train.batch_size // self.task.n_id

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def flat(self) -> dict[str, Any]:
        """{dotted key: value} for every field, e.g. {'task.p': 29, ...}."""
        return flatten(self.to_dict())

    def config_hash(self, exclude_runtime: bool = True) -> str:
        """Stable id of the experiment: runtime settings (device, compile, ...) do not change it."""
        d = self.to_dict()
        if exclude_runtime:
            d.pop("runtime")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


# ---------------------------------------------------------------------------------------------
# Keys: the public, dotted view of the config tree
# ---------------------------------------------------------------------------------------------

def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, v in flat.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = v
    return out


def _fields(cls: type) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(cls)}


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    # cached: resolving annotations costs more than building the config (aggregation builds thousands)
    return typing.get_type_hints(cls)


def describe_keys() -> list[tuple[str, Any, str]]:
    """(dotted key, default, help) for every config key, in declaration order."""
    rows: list[tuple[str, Any, str]] = []
    default = TrialConfig()

    def walk(cls: type, obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(cls):
            val = getattr(obj, f.name)
            if dataclasses.is_dataclass(val):
                walk(type(val), val, f"{prefix}{f.name}.")
            else:
                rows.append((f"{prefix}{f.name}", val, f.metadata.get("help", "")))

    walk(TrialConfig, default, "")
    return rows


VALID_KEYS = tuple(k for k, _, _ in describe_keys())


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """Check one leaf value against its annotation; allow int for float and YAML bools for on/off."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if isinstance(value, bool) and "on" in choices:
            value = "on" if value else "off"
        if value not in choices:
            raise ConfigError(f"{key} must be one of {list(choices)}, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):
            # YAML 1.1 reads '1e-3' (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {hint!r} for {key}")  # a bug in this file, not user input


def _build(cls: type, data: Mapping[str, Any], prefix: str) -> Any:
    fields_ = _fields(cls)
    hints = _hints(cls)
    unknown = [k for k in data if k not in fields_]
    if unknown:
        valid = [k for k in VALID_KEYS if k.startswith(prefix)] or list(VALID_KEYS)
        raise ConfigError(
            f"unknown config key {prefix}{unknown[0]!s}; valid keys: {', '.join(valid)}"
        )
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        hint = hints[name]
        key = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, Mapping):
                raise ConfigError(f"{key} must be a mapping of its keys, got {value!r}")
            kwargs[name] = _build(hint, value, key + ".")
        else:
            kwargs[name] = _coerce(key, value, hint)
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any]) -> TrialConfig:
    """Build and validate a TrialConfig from a nested mapping (partial: missing keys take defaults)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"a config must be a mapping of keys, got {type(data).__name__}")
    cfg = _build(TrialConfig, data, "")
    validate(cfg)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """'task.alpha=0.6' -> ('task.alpha', 0.6); the value is read as YAML (numbers, bools, strings)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like KEY=VALUE, e.g. task.alpha=0.6")
    key, raw = text.split("=", 1)
    key = key.strip()
    if key not in VALID_KEYS:
        raise ConfigError(f"unknown config key {key}; valid keys: {', '.join(VALID_KEYS)}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else raw
    except yaml.YAMLError:
        value = raw
    return key, value


def merge(base: Mapping[str, Any], flat_overrides: Mapping[str, Any]) -> dict[str, Any]:
    """Nested base mapping with dotted overrides applied on top."""
    merged = flatten(base)
    merged.update(flat_overrides)
    return unflatten(merged)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = (),
                base: Mapping[str, Any] | None = None) -> TrialConfig:
    """`base` (a nested mapping, e.g. a stored config) < YAML file < 'KEY=VALUE' overrides -> validated TrialConfig."""
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        loaded = yaml.safe_load(path.read_text()) or {}
        if not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping of keys, got {type(loaded).__name__}")
        bad = [k for k in flatten(loaded) if k not in VALID_KEYS]
        if bad:
            raise ConfigError(f"{path}: unknown config key {bad[0]}; valid keys: {', '.join(VALID_KEYS)}")
        data = merge(data, flatten(loaded))
    flat_over = dict(parse_override(o) for o in overrides)
    return config_from_dict(merge(data, flat_over))


# ---------------------------------------------------------------------------------------------
# Validation: every rule the trial relies on, checked before any work
# ---------------------------------------------------------------------------------------------

def is_prime(n: int) -> bool:
    if n < 2:
        return False
    return all(n % d for d in range(2, math.isqrt(n) + 1))


def metric_names() -> tuple[str, ...]:
    """Names a checkpoint monitor may use: {set}_{loss|acc|acc_last}."""
    return tuple(f"{s}_{m}" for s in SETS for m in SET_METRICS)


def split_sizes(p: int, alpha: float) -> tuple[int, int]:
    """(train inputs, test inputs) of the alpha split of the p^2 inputs."""
    n_train = round(p * p * alpha)
    return n_train, p * p - n_train


def validate(cfg: TrialConfig) -> None:
    t, m, tr = cfg.task, cfg.model, cfg.train

    def fail(key: str, value: Any, allowed: str) -> None:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")

    if not is_prime(t.p):
        fail("task.p", t.p, "a prime (the tasks live in Z_p)")
    if t.p < 5 and t.rule == "rectangular":
        fail("task.p", t.p, "at least 5 under the rectangular rule (a rectangle needs 4 distinct residues)")
    if not 0.0 < t.alpha < 1.0:
        fail("task.alpha", t.alpha, "in (0, 1)")
    n_train, n_test = split_sizes(t.p, t.alpha)
    if n_train < 1 or n_test < 1:
        fail("task.alpha", t.alpha, f"such that round({t.p}^2 * alpha) leaves train and test inputs "
             f"(gives {n_train} train, {n_test} test)")
    if t.n_examples < 1:
        fail("task.n_examples", t.n_examples, ">= 1")
    if t.n_ood < 1:
        fail("task.n_ood", t.n_ood, ">= 1 (the o.o.d. sets need tasks)")
    if t.n_ood >= t.p * t.p:
        fail("task.n_ood", t.n_ood, f"< p^2 = {t.p * t.p}")
    left = t.p * t.p - t.n_ood
    if t.n_id < 1:
        fail("task.n_id", t.n_id, ">= 1")
    if t.n_id > left:
        fail("task.n_id", t.n_id, f"<= p^2 - n_ood = {t.p}^2 - {t.n_ood} = {left} (tasks left after the o.o.d. ones)")
    if t.rule == "rectangular" and t.n_id % 4:
        fail("task.n_id", t.n_id, "a multiple of 4 under the rectangular rule (tasks come in rectangles of 4)")
    if m.depth < 1:
        fail("model.depth", m.depth, ">= 1")
    if m.width < 1:
        fail("model.width", m.width, ">= 1")
    if m.heads < 1:
        fail("model.heads", m.heads, ">= 1")
    if m.width % m.heads:
        fail("model.width", m.width, f"divisible by model.heads = {m.heads}")
    elif (m.width // m.heads) % 2:
        fail("model.width", m.width, f"such that width / heads is even (RoPE rotates pairs), heads = {m.heads}")
    if m.rope_theta <= 0:
        fail("model.rope_theta", m.rope_theta, "> 0")
    if m.init_std <= 0:
        fail("model.init_std", m.init_std, "> 0")
    if tr.steps < 1:
        fail("train.steps", tr.steps, ">= 1")
    if tr.batch_size < 1:
        fail("train.batch_size", tr.batch_size, ">= 1")
    if tr.batch_size % t.n_id:
        fail("train.batch_size", tr.batch_size,
             f"a multiple of task.n_id = {t.n_id} (every batch holds the same rows of every task)")
    if tr.lr <= 0:
        fail("train.lr", tr.lr, "> 0")
    if tr.warmup_steps < 0:
        fail("train.warmup_steps", tr.warmup_steps, ">= 0")
    if not 0 < tr.warmup_start <= 1:
        fail("train.warmup_start", tr.warmup_start, "in (0, 1]")
    if not 0 <= tr.final_lr_ratio <= 1:
        fail("train.final_lr_ratio", tr.final_lr_ratio, "in [0, 1]")
    if tr.weight_decay < 0:
        fail("train.weight_decay", tr.weight_decay, ">= 0")
    for key, beta in (("train.beta1", tr.beta1), ("train.beta2", tr.beta2)):
        if not 0 <= beta < 1:
            fail(key, beta, "in [0, 1)")
    if tr.eps <= 0:
        fail("train.eps", tr.eps, "> 0")
    if cfg.eval.every < 1:
        fail("eval.every", cfg.eval.every, ">= 1")
    if cfg.eval.batches < 1:
        fail("eval.batches", cfg.eval.batches, ">= 1")
    if cfg.checkpoint.every < 1:
        fail("checkpoint.every", cfg.checkpoint.every, ">= 1")
    if cfg.checkpoint.monitor not in metric_names():
        fail("checkpoint.monitor", cfg.checkpoint.monitor, f"one of {list(metric_names())}")
    if cfg.checkpoint.patience < 0:
        fail("checkpoint.patience", cfg.checkpoint.patience, ">= 0 (0 = no early stop)")
    dev = cfg.runtime.device
    if not (dev in ("auto", "cpu", "cuda") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        fail("runtime.device", dev, "one of auto, cpu, cuda, cuda:N")
    if cfg.runtime.log_every < 1:
        fail("runtime.log_every", cfg.runtime.log_every, ">= 1")
    if cfg.runtime.threads < 0:
        fail("runtime.threads", cfg.runtime.threads, ">= 0")
