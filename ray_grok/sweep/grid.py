"""Grid files: a base config, axes to sweep, seeds, resources per trial and run settings.

    name: smoke                      # optional; default: the file name without .yaml
    base: {task: {p: 11}}            # any trial config keys, nested or dotted
    axes:                            # dotted config key -> values
      model.depth: [1, 2]                                   # an explicit list
      task.n_id: {pow2: {from: 8, to: 32}}                  # 8, 16, 32
      task.alpha: {range: {from: 0.4, to: 0.7, step: 0.3}}  # 0.4, 0.7 (both ends included)
    seeds: 2                         # seeds 0 and 1; or an explicit list [0, 3]
    resources: {cpu: 1, gpu: 0}      # per trial; fractional GPUs share one device
    run: {max_concurrent: 2, max_failures: 2}
    # run: {settle: majority, phase_rule: {threshold: 0.5}}  # skip the seeds of settled cells
    # run: {stop: ood_chance, stop_after: 2}  # end trials at chance o.o.d. far past others' generalization
    extra: [{model.depth: 2, task.n_id: 24, task.alpha: 0.6, seeds: [3, 4]}]  # cells beyond the product (extra.py)

Everything is checked when the file is loaded, before any trial starts: unknown keys (listed with
the valid ones), wrong types, and every expanded trial config by the trial's own rules
(`config.validate`). Every error names the grid file, the key and the value.

A trial's identity is derived from its resolved config: `trial_id` is a readable name built from
its grid coordinates plus the first 8 hex digits of `TrialConfig.config_hash()`, e.g.
`d4-n256-a0.6-s1-3f2a9c1e`; its directory is nested by coordinates,
`trials/depth=4/n_id=256/alpha=0.6/seed=1`, so TensorBoard names its curves by them.
"""
from __future__ import annotations

import itertools
import math
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml

from ..errors import ConfigError, GridError
from ..io import UniqueKeyLoader, yaml_error_line
from ..trial.config import MAX_SEED, VALID_KEYS, TrialConfig, config_from_dict, flatten, merge
from ..trial.fields import Checked, describe, doc, suggest
from .phase_rule import PhaseRuleSettings
from .axes import axis_values
from .extra import ExtraCell, extra_count, extra_points, parse_extra


# ---------------------------------------------------------------------------------------------
# The parts of a grid
# ---------------------------------------------------------------------------------------------

class _GridSection(Checked):
    ERROR = GridError

    @classmethod
    def unknown_key(cls, name: str) -> str:
        listing = ", ".join(f"{k.removeprefix(cls.SECTION + '.')} (default {d!r}: {h})" for k, d, h in describe(cls))
        hint = suggest(cls.key(name), [k for k, _, _ in describe(cls)])
        return f"unknown key {cls.key(name)}{hint}; valid keys: {listing}"


@dataclass(frozen=True, kw_only=True)
class Resources(_GridSection):
    SECTION = "resources"
    cpu: float = doc("CPUs per trial (also torch's thread count when runtime.threads is 0)", 1.0)
    gpu: float = doc("GPUs per trial; a fraction (0.25) packs several trials onto one GPU", 0.0)

    def check(self) -> None:
        self.need(self.cpu > 0, "cpu", "> 0")
        self.need(self.gpu >= 0 and (self.gpu <= 1 or float(self.gpu).is_integer()), "gpu",
                  ">= 0, and a whole number above 1 (Ray's rule)")

    def as_ray(self) -> dict[str, float]:
        return {"cpu": self.cpu, "gpu": self.gpu}


@dataclass(frozen=True, kw_only=True)
class RunSettings(_GridSection):
    SECTION = "run"
    max_concurrent: int = doc("trials running at once; 0 = as many as the resources allow", 0)
    max_failures: int = doc("retries of a failing trial before it is marked errored", 2)
    state_every_s: float = doc("seconds between snapshots of Tune's experiment state (trial dirs are the truth)",
                               60.0)
    object_store_mb: int = doc("cap of a local Ray's object store (ray-grok passes no large objects)", 256)
    max_trials: int = doc("a grid with more trials is refused before it is expanded (a typo in an axis can "
                          "make millions); raise it if you mean it", 10_000)
    settle: Literal["off", "majority"] = doc(
        "majority: a cell's pending seeds are skipped once its finished seeds' majority phase (under "
        "run.phase_rule) can no longer change (docs/sweeps.md, Settle); a later launch without it runs them",
        "off")
    stop: Literal["off", "ood_chance"] = doc(
        "ood_chance: end a trial once its ood_test stayed at chance past stop_after x the step where another "
        "trial of its depth first generalized o.o.d. (docs/sweeps.md, Stop); never without such a trial", "off")
    stop_after: float = doc("run.stop's horizon, in multiples of that step", 2.0)
    phase_rule: PhaseRuleSettings = doc("the phase rule settle and stop classify by", factory=PhaseRuleSettings)

    def check(self) -> None:
        self.need(self.max_trials >= 1, "max_trials", ">= 1")
        self.need(self.stop_after >= 1, "stop_after", ">= 1 (a trial is stopped only past the step others took)")
        self.need(self.max_concurrent >= 0, "max_concurrent", ">= 0 (0 = as many as fit)")
        self.need(self.max_failures >= 0, "max_failures", ">= 0")
        self.need(self.state_every_s > 0, "state_every_s", "> 0")
        self.need(self.object_store_mb >= 80, "object_store_mb", ">= 80 (Ray's minimum is about 75 MB)")


@dataclass(frozen=True)
class Axis:
    key: str
    values: tuple[Any, ...]


@dataclass(frozen=True)
class GridSpec:
    name: str
    source: str  # the file it came from, for messages
    base: dict[str, Any]  # dotted keys
    axes: tuple[Axis, ...]
    seeds: tuple[int, ...]
    resources: Resources
    run: RunSettings
    description: str = ""
    extra: tuple[ExtraCell, ...] = ()  # cells outside the product, expanded after it (extra.py)

    def canonical(self) -> dict[str, Any]:
        """What defines the experiment and how it runs: equal for two files that differ only in
        comments, layout or name."""
        return {
            "base": dict(sorted(self.base.items())),
            "axes": [[a.key, list(a.values)] for a in self.axes],
            "seeds": list(self.seeds),
            "resources": self.resources.as_ray(),
            # max_trials is a guard, not how the sweep runs: raising it is not a change of grid
            "run": {k: v for k, v in asdict(self.run).items() if k != "max_trials"},
            **({"extra": [c.as_dict() for c in self.extra]} if self.extra else {}),
        }


@dataclass(frozen=True)
class PlannedTrial:
    trial_id: str
    dir: str  # relative to the run directory, e.g. trials/depth=4/n_id=256/alpha=0.6/seed=1
    coords: dict[str, Any]  # swept key -> value, seed last
    config: TrialConfig


TOP_KEYS = ("name", "description", "base", "axes", "seeds", "resources", "run", "extra")
# short ids for the paper's axes; other keys use their last dotted component
ID_ABBREV = {"model.depth": "d", "task.n_id": "n", "task.alpha": "a", "seed": "s"}


# ---------------------------------------------------------------------------------------------
# Loading and validation
# ---------------------------------------------------------------------------------------------

def load_grid(path: str | Path) -> GridSpec:
    path = Path(path)
    if not path.is_file():
        raise GridError(f"grid file {path} does not exist")
    return grid_from_dict(read_grid_yaml(path), source=str(path), default_name=path.stem)


def read_grid_yaml(path: Path) -> Any:
    """A grid file's YAML; a key given twice, or YAML that does not parse, is one line naming it."""
    try:
        return yaml.load(path.read_text(), Loader=UniqueKeyLoader)  # noqa: S506 (a SafeLoader)
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: an integer of more than 4300 digits
        raise GridError(f"{path}: not valid YAML: {yaml_error_line(exc)}") from None


def grid_from_dict(data: Any, source: str = "<grid>", default_name: str = "grid") -> GridSpec:
    def fail(msg: str) -> None:
        raise GridError(f"{source}: {msg}")

    if not isinstance(data, Mapping):
        fail(f"a grid must be a mapping with keys {', '.join(TOP_KEYS)}, got {type(data).__name__}")
    unknown = [k for k in data if k not in TOP_KEYS]
    if unknown:
        hint = suggest(str(unknown[0]), TOP_KEYS)
        if not hint and str(unknown[0]) in {k.split(".")[0] for k in VALID_KEYS}:
            hint = f" (trial settings such as {unknown[0]}: go under base:)"
        fail(f"unknown key {unknown[0]!r}{hint}; valid keys: {', '.join(TOP_KEYS)}")

    name = data.get("name", default_name)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        fail(f"name must be letters, digits, '.', '_' or '-' (it names the run directory), got {name!r}")
    description = data.get("description", "")
    if not isinstance(description, str):
        fail(f"description must be a string, got {description!r}")

    base_raw = data.get("base") or {}
    if not isinstance(base_raw, Mapping):
        fail(f"base must be a mapping of trial config keys, got {base_raw!r}")
    try:
        base = flatten(base_raw)
    except ConfigError as exc:
        fail(f"base.{exc}")
    for key in base:
        if key not in VALID_KEYS:
            fail(f"unknown config key base.{key}{suggest(key, VALID_KEYS)}; valid keys: {', '.join(VALID_KEYS)}")

    # the run section first: its max_trials bounds everything counted below, before it is built
    run = _section(RunSettings, data.get("run") or {}, fail)
    resources = _section(Resources, data.get("resources") or {}, fail)
    axes_raw = data.get("axes") or {}
    if not isinstance(axes_raw, Mapping):
        fail(f"axes must be a mapping of config key -> values, got {axes_raw!r}")
    axes = []
    for key, spec in axes_raw.items():
        if not isinstance(key, str) or key not in VALID_KEYS:
            fail(f"unknown config key axes.{key}{suggest(str(key), VALID_KEYS)}; valid keys: {', '.join(VALID_KEYS)}")
        if key in base:
            fail(f"{key} is both in base ({base[key]!r}) and in axes: set it in one place")
        axes.append(Axis(key, axis_values(key, spec, fail, run.max_trials)))

    seeds = _seeds(data.get("seeds", 1), "seed" in axes_raw, fail, run.max_trials)
    extra = parse_extra(data.get("extra"), axes, seeds, fail, lambda v, f: _seeds(v, False, f, run.max_trials))
    count = math.prod(len(a.values) for a in axes) * max(1, len(seeds)) + extra_count(extra)
    if count > run.max_trials:  # counted, not expanded: a typo in an axis can make millions
        fail(f"the grid has {count:,} trials ({' x '.join(str(len(a.values)) for a in axes) or '1'}"
             f"{f' x {len(seeds)} seeds' if seeds else ''}{f' + {extra_count(extra)} extra' if extra else ''}); at most run.max_trials = {run.max_trials:,} is allowed "
             "(raise run.max_trials if you mean it)")

    spec = GridSpec(name=name, source=source, base=base, axes=tuple(axes), seeds=seeds,
                    resources=resources, run=run, description=description, extra=extra)
    expand(spec)  # validates every trial config now, before anything starts
    return spec


def _seeds(value: Any, seed_is_axis: bool, fail, most: int) -> tuple[int, ...]:
    if seed_is_axis:
        if value != 1:
            fail("seed is an axis and seeds is set too: use one of them")
        return ()
    if isinstance(value, bool):
        fail(f"seeds must be a count (>= 1) or a list of seeds, got {value!r}")
    if isinstance(value, int):
        if not 1 <= value <= most:  # before range(): seeds: 1e12 must not be built
            fail(f"seeds must be a count from 1 to run.max_trials = {most:,}, got {value!r}")
        return tuple(range(value))
    if isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool)
                                                  and 0 <= s <= MAX_SEED for s in value):
        if len(set(value)) != len(value):
            fail(f"seeds lists a seed twice: {value!r}")
        return tuple(value)
    fail(f"seeds must be a count (>= 1) or a non-empty list of seeds from 0 to {MAX_SEED}, got {value!r}")
    raise AssertionError  # unreachable: fail raises


def _section(cls: type[_GridSection], data: Any, fail) -> Any:
    if not isinstance(data, Mapping):
        fail(f"{cls.SECTION} must be a mapping with keys {', '.join(k.split('.')[-1] for k, _, _ in describe(cls))}, "
             f"got {data!r}")
    try:
        return cls.from_mapping(data)
    except ConfigError as exc:
        fail(str(exc))


# ---------------------------------------------------------------------------------------------
# Expansion: the trials of a grid, their ids and directories
# ---------------------------------------------------------------------------------------------

def expand(spec: GridSpec) -> list[PlannedTrial]:
    """Every trial of the grid, seeds outermost (a partial sweep covers the whole diagram with
    fewer seeds first), then the axes in file order, then the extra cells' trials that the product
    does not hold. Each config is validated here."""
    keys = [a.key for a in spec.axes]
    if not spec.seeds:  # seed is an axis
        value_lists = [a.values for a in spec.axes]
        seed_first = False
    else:
        keys.append("seed")
        value_lists = [a.values for a in spec.axes] + [spec.seeds]
        seed_first = True
    short = _short_names(keys)
    order = ([len(keys) - 1] + list(range(len(keys) - 1))) if seed_first else list(range(len(keys)))

    points = [dict(zip((keys[i] for i in order), combo)) for combo in itertools.product(*(value_lists[i] for i in order))]
    n_product = len(points)
    points += extra_points(spec.extra, keys)
    trials, seen_ids, seen_dirs = [], set(), set()
    for n, values in enumerate(points):
        coords = {k: values[k] for k in keys}
        label = " ".join(f"{short[k]}={_fmt(v)}" for k, v in coords.items()) + (" (extra)" if n >= n_product else "")
        try:
            cfg = config_from_dict(merge({}, {**spec.base, **coords}))
        except ConfigError as exc:
            raise GridError(f"{spec.source}: trial {label}: {exc}") from exc
        flat = cfg.flat()
        coords = {k: flat[k] for k in keys}  # as the config reads them: YAML's '1.0e12' string is a float
        trial = PlannedTrial(_trial_id(coords, cfg), _trial_dir(coords, short), coords, cfg)
        if n >= n_product and trial.trial_id in seen_ids:  # an extra cell's trial held already: the same trial
            continue
        if trial.trial_id in seen_ids or trial.dir in seen_dirs:
            raise GridError(f"{spec.source}: trial {label} repeats another trial; are two axis values equal?")
        seen_ids.add(trial.trial_id)
        seen_dirs.add(trial.dir)
        trials.append(trial)
    _check_device(spec, trials)
    return trials


def _check_device(spec: GridSpec, trials: list[PlannedTrial]) -> None:
    for t in trials:
        dev = t.config.runtime.device
        if spec.resources.gpu == 0 and dev.startswith("cuda"):
            raise GridError(f"{spec.source}: runtime.device is {dev!r} but resources.gpu is 0: "
                            "give trials a GPU or use device cpu/auto")
        if spec.resources.gpu > 0 and dev == "cpu":
            raise GridError(f"{spec.source}: resources.gpu is {spec.resources.gpu} but runtime.device is "
                            "'cpu': the GPU would sit idle; use device auto")
        if spec.resources.gpu > 0 and dev.startswith("cuda:") and dev != "cuda:0":
            raise GridError(f"{spec.source}: runtime.device is {dev!r}; Ray shows each trial only its own "
                            "GPU(s), numbered from 0: use auto or cuda")


def _short_names(keys: list[str]) -> dict[str, str]:
    """Last dotted component (depth, n_id, ...) unless two swept keys share it."""
    last = [k.rsplit(".", 1)[-1] for k in keys]
    return {k: (s if last.count(s) == 1 else k) for k, s in zip(keys, last)}


def _fmt(value: Any) -> str:
    """A value as it appears in ids and paths: 0.6, 0.00015, 1e+12 (12 significant digits; two
    values that print alike are caught as repeated trials)."""
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = f"{value:.12g}"
    else:
        text = str(value)
    return re.sub(r"[^A-Za-z0-9._+-]", "_", text)


def _trial_id(coords: Mapping[str, Any], cfg: TrialConfig) -> str:
    parts = []
    for key, value in coords.items():
        if key in ID_ABBREV:
            parts.append(f"{ID_ABBREV[key]}{_fmt(value)}")
        elif isinstance(value, str):
            parts.append(_fmt(value))
        else:
            parts.append(f"{key.rsplit('.', 1)[-1]}{_fmt(value)}")
    parts.append(cfg.config_hash()[:8])
    return "-".join(parts)


def _trial_dir(coords: Mapping[str, Any], short: Mapping[str, str]) -> str:
    return "/".join(["trials"] + [f"{short[k]}={_fmt(v)}" for k, v in coords.items()])


def describe_axes(spec: GridSpec) -> str:
    """'model.depth [2, 4, 6] x task.n_id [8, ..., 512] (7) x seeds 10' for messages."""
    def values(vs: tuple) -> str:
        if len(vs) <= 4:
            return f"[{', '.join(_fmt(v) for v in vs)}]"
        return f"[{_fmt(vs[0])}, {_fmt(vs[1])}, ..., {_fmt(vs[-1])}] ({len(vs)})"
    parts = [f"{a.key} {values(a.values)}" for a in spec.axes]
    if spec.seeds:
        parts.append(f"seeds {len(spec.seeds)}" if spec.seeds == tuple(range(len(spec.seeds)))
                     else f"seeds {values(spec.seeds)}")
    return (" x ".join(parts) or "one trial") + (f" + {len(spec.extra)} extra cells" if spec.extra else "")
