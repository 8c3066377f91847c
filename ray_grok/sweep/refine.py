"""Refining a sweep: the next grid of a run, from its phase table.

After a first pass a phase diagram is sharp in most cells and uncertain in two kinds of place:
cells whose seeds disagree, and the gap between two neighbouring cells of different phases, where
the boundary lies somewhere unmeasured. `ray-grok refine` writes a grid that adds exactly those
trials, as extra cells (extra.py) on top of the run's own grid, so that `ray-grok launch NEXT.yaml
--out RUN_DIR` extends the run (extend.py): every existing trial keeps its config and its results.

- A contested cell (majority share of its classified seeds below `agreement`) gets more seeds, up
  to `seeds` seeds in total (a total, not an increment: refining twice before the new trials have
  results asks for nothing more). The new seeds are the smallest the cell does not hold yet.
- Between two neighbouring cells of different majority phases along n_id or alpha (all other cell
  keys equal, cells without results skipped) a midpoint is added, with the grid's seeds: the
  geometric mean for n_id (the axis is logarithmic), rounded to the nearest n_id strictly between
  the two that the trial's own rules accept (batch_size a multiple of n_id, multiples of 4 under
  the rectangular rule); the arithmetic mean for alpha, to the 6 decimals the phase table keeps.
  Adjacent integers, or a midpoint already planned and still without results, add nothing, and
  the report says so.

Repeated refine -> launch -> aggregate steps halve every bracket around the boundary (in log n_id,
or in alpha) each time: tests/test_refine.py checks that they converge on a known boundary.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator

import pandas as pd

from ..errors import ConfigError, MissingResultsError, RunDirError
from ..io import atomic_write_text
from ..results.cells import ALPHA_DECIMALS, CELL_KEYS, cell_keys, clean_column, facet_keys, facet_text, table_facets
from ..results.phases import ABBREVIATIONS, MISSING, PhaseRule, phase_table, read_results
from ..results.plan import PLAN_FILE
from ..trial.config import config_from_dict, merge
from .cost import CostEstimate, estimate
from .extra import ExtraCell
from .grid import GridSpec, PlannedTrial, expand
from .grid_text import grid_yaml
from .rundir import GRID_FILE, check_extension, stored_grid

BISECT_AXES = {"n_id": "task.n_id", "alpha": "task.alpha"}  # --bisect name -> config key


@dataclass(frozen=True, kw_only=True)
class RefineOptions:
    """What `ray-grok refine` adds; checked when built, before anything is read."""

    seeds: int | None = None
    """Seeds a contested cell should have in total; None: twice the grid's seeds."""
    agreement: float = 0.75
    """A cell whose majority share of seeds is below this is contested (2 of 3 seeds: 0.67)."""
    bisect: tuple[str, ...] | None = None
    """Axes to add midpoints along, among BISECT_AXES; None: every one of them the grid sweeps."""
    rule: PhaseRule = field(default_factory=PhaseRule)
    """How trials become phases: the same rule `ray-grok phases` is given."""

    def __post_init__(self) -> None:
        s = self.seeds
        if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 1):
            raise ConfigError(f"refine --seeds must be a whole number >= 1 (seeds per contested cell in total), got {s!r}")
        a = self.agreement
        if isinstance(a, bool) or not isinstance(a, (int, float)) or not 0 < a <= 1:
            raise ConfigError(f"refine --agreement must be a number in (0, 1], got {a!r}")
        for axis in self.bisect or ():
            if axis not in BISECT_AXES:
                raise ConfigError(f"refine --bisect must be one of {', '.join(BISECT_AXES)}, got {axis!r}")


@dataclass(frozen=True)
class Addition:
    """Cells added to the grid and why: more seeds of a contested cell, or a midpoint."""
    cell: ExtraCell
    why: str


@dataclass(frozen=True)
class Refinement:
    """The next grid of a run and everything the report says about it."""
    run_dir: Path
    spec: GridSpec  # the run's grid plus the additions, as extra cells
    seeds: tuple[Addition, ...]  # contested cells' new seeds
    midpoints: tuple[Addition, ...]
    skipped: tuple[str, ...]  # a boundary or contested cell that adds nothing, and why
    new: tuple[PlannedTrial, ...]  # the trials a launch of `spec` adds to the run
    cost: CostEstimate
    summary: str  # 'N cells, M contested, B boundaries'

    @property
    def empty(self) -> bool:
        return not self.new


# ---------------------------------------------------------------------------------------------
# The run: its grid, its planned cells and its phase table
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Cell:
    """A cell the run's grid plans: its exact axis values (as the grid writes them) and seeds."""
    coords: dict[str, Any]
    seeds: set[int]


def _planned(spec: GridSpec, trials: list[PlannedTrial], facets: list[str]) -> dict[tuple, _Cell]:
    """The grid's cells by their phase-table key (facets, depth, n_id, alpha, with clean values)."""
    keys = cell_keys(pd.DataFrame([t.config.flat() for t in trials]), facets)
    names = _axis_names(spec)
    cells: dict[tuple, _Cell] = {}
    for t, key in zip(trials, keys.itertuples(index=False, name=None)):
        cell = cells.setdefault(key, _Cell({k: t.coords[k] for k in names}, set()))
        cell.seeds.add(t.config.seed)
    return cells


def _with_grid_facets(known: pd.DataFrame, results: pd.DataFrame, trials: list[PlannedTrial]
                      ) -> tuple[pd.DataFrame, list[str]]:
    """The phase table's rows keyed by the grid's facets too: a swept key of which the results hold
    one value so far (the other value's trials not done) is no facet of the table, but two cells of
    the grid differ in it, and each addition must name the right one."""
    facets = table_facets(known)
    for key in facet_keys(pd.DataFrame([t.config.flat() for t in trials])):
        if key not in facets and key in results.columns:
            known = known.assign(**{key: clean_column(results[key], key).iloc[0]})
            facets.append(key)
    return known, facets


def _axis_names(spec: GridSpec) -> list[str]:
    return [a.key for a in spec.axes if a.key != "seed"]


def _grid_seeds(spec: GridSpec) -> tuple[int, ...]:
    return spec.seeds or next(tuple(a.values) for a in spec.axes if a.key == "seed")


def _check_run(run_dir: Path) -> None:
    if not (run_dir / PLAN_FILE).is_file() or not (run_dir / GRID_FILE).is_file():
        raise RunDirError(f"RUN_DIR {str(run_dir)!r} is not a ray-grok run directory (no {PLAN_FILE} and "
                          f"{GRID_FILE}): give the --out of a `ray-grok launch`")


def _bisect_axes(spec: GridSpec, options: RefineOptions) -> list[str]:
    swept = {a.key: len(a.values) for a in spec.axes}
    if options.bisect is None:
        return [key for key in BISECT_AXES.values() if key in swept]
    for name in options.bisect:
        if BISECT_AXES[name] not in swept:
            raise ConfigError(f"refine --bisect {name}: {BISECT_AXES[name]} is not an axis of the run's grid "
                              f"(axes: {', '.join(swept) or 'none'}), so no cell can sit between two of its values")
    return [BISECT_AXES[name] for name in options.bisect]


# ---------------------------------------------------------------------------------------------
# What to add
# ---------------------------------------------------------------------------------------------

def plan_refinement(run_dir: Path, options: RefineOptions, out: Path) -> Refinement:
    """The next grid of RUN_DIR (written to OUT by `write_grid`): its contested cells' seeds and
    the midpoints of its boundaries. RunDirError, ConfigError, MissingResultsError for a RUN_DIR
    that is not a run, an axis it does not sweep, or no finished trials."""
    run_dir = Path(run_dir)
    _check_run(run_dir)
    spec = stored_grid(run_dir)
    axes = _bisect_axes(spec, options)
    results = read_results(run_dir, "trials")
    table = phase_table(results, options.rule)
    known = table[table["phase"] != MISSING]
    if known.empty:
        raise MissingResultsError(f"RUN_DIR {run_dir}: no trial has finished yet (results/trials holds none "
                                  "done): nothing to refine; run `ray-grok aggregate` once some are done")
    planned_trials = expand(spec)
    known, facets = _with_grid_facets(known, results, planned_trials)
    keys = [*facets, *CELL_KEYS]
    planned = _planned(spec, planned_trials, facets)
    total = options.seeds or 2 * len(_grid_seeds(spec))

    seeds, skipped = [], []
    for row in known[known["agreement"] < options.agreement].to_dict("records"):
        added, note = _more_seeds(row, keys, planned, total, options.agreement)
        (seeds.append(added) if added else skipped.append(note))
    midpoints, n_boundaries, seen = [], 0, set()
    for axis in axes:
        for lo, hi in _boundaries(known, keys, axis):
            n_boundaries += 1
            added, note = _midpoint(spec, lo, hi, keys, axis, planned)
            if added and (added.cell.coords not in seen):
                seen.add(added.cell.coords)
                midpoints.append(added)
            elif note:
                skipped.append(note)

    next_spec = replace(spec, source=str(out), extra=_merged(spec.extra, [a.cell for a in seeds + midpoints]))
    trials = expand(next_spec)  # validates every new trial config, as a launch would
    if len(trials) > spec.run.max_trials:  # a launch of the written grid would refuse it
        raise ConfigError(
            f"refine would add {len(trials) - len(planned_trials)} trials to the grid's {len(planned_trials)}, "
            f"{len(trials)} in all, over its run.max_trials = {spec.run.max_trials}: launch the run's grid with a "
            "higher run.max_trials (not a change of grid), or refine with fewer --seeds or without --bisect")
    new = check_extension(run_dir, next_spec, trials).new  # and proves the grid extends the run
    contested = int((known["agreement"] < options.agreement).sum())
    summary = (f"{len(known)} cells with results, {contested} contested (agreement < {options.agreement:g}), "
               f"{n_boundaries} boundaries along {' and '.join(k.split('.')[-1] for k in axes) or 'no axis'}")
    # skipped as settled: they will never have a phase, and their cells are decided without them
    current = results[~results["retired"].astype(bool)] if "retired" in results else results
    settled = int(current["status"].astype(str).str.startswith("skipped").sum()) if "status" in current else 0
    waiting = len(planned_trials) - int(known["n_seeds"].sum()) - settled
    if waiting > 0:  # their cells are judged by the seeds that have a phase
        summary += (f"; {waiting} of the grid's {len(planned_trials)} trials have no phase yet (not done, or "
                    "done since the last `ray-grok aggregate`)")
    return Refinement(run_dir, next_spec, tuple(seeds), tuple(midpoints), tuple(skipped), tuple(new),
                      estimate((t.config for t in new), next_spec.resources.gpu), summary)


def _label(row: dict, keys: list[str], leave_out: str | None = None) -> str:
    return ", ".join(facet_text(k, row[k]) for k in keys if k != leave_out)


def _phase_text(row: dict) -> str:
    """'OG' or 'OG 2/3'."""
    text = ABBREVIATIONS[row["phase"]]
    if row["agreement"] < 1:
        text += f" {round(row['agreement'] * row['n_seeds'])}/{row['n_seeds']}"
    return text


def _more_seeds(row: dict, keys: list[str], planned: dict[tuple, _Cell], total: int, agreement: float
                ) -> tuple[Addition | None, str]:
    key = tuple(row[k] for k in keys)
    where = f"{_label(row, keys)}: {_phase_text(row)} (agreement {row['agreement']:.2f} < {agreement:g})"
    if key not in planned:
        return None, f"{where}: not a cell of the run's grid (results older than its grid?), left alone"
    cell = planned[key]
    if len(cell.seeds) >= total:
        return None, f"{where}: has {len(cell.seeds)} seeds planned already (--seeds {total}), nothing added"
    new = tuple(_free_seeds(cell.seeds, total - len(cell.seeds)))
    why = f"{where}: {len(cell.seeds)} -> {total} seeds, adds seeds {', '.join(map(str, new))}"
    return Addition(_extra(cell.coords, new), why), ""


def _free_seeds(used: set[int], count: int) -> Iterator[int]:
    seed = 0
    while count:
        if seed not in used:
            yield seed
            count -= 1
        seed += 1


def _extra(coords: dict[str, Any], seeds: tuple[int, ...]) -> ExtraCell:
    return ExtraCell(tuple(coords.items()), tuple(seeds))


def _boundaries(known: pd.DataFrame, keys: list[str], axis: str) -> Iterator[tuple[dict, dict]]:
    """Pairs of neighbouring cells with results along AXIS, every other key equal, whose majority
    phases differ."""
    others = [k for k in keys if k != axis]
    groups = known.groupby(others, sort=True) if others else [((), known)]
    for _, line in groups:
        rows = line.sort_values(axis).to_dict("records")
        for lo, hi in zip(rows, rows[1:]):
            if lo["phase"] != hi["phase"]:
                yield lo, hi


def _midpoint(spec: GridSpec, lo: dict, hi: dict, keys: list[str], axis: str, planned: dict[tuple, _Cell]
              ) -> tuple[Addition | None, str]:
    short = axis.split(".")[-1]
    where = (f"{_label(lo, keys, axis)}: {short} {lo[axis]:g} ({_phase_text(lo)}) | "
             f"{hi[axis]:g} ({_phase_text(hi)})")
    lo_key = tuple(lo[k] for k in keys)
    if lo_key not in planned:
        return None, f"{where}: not cells of the run's grid (results older than its grid?), left alone"
    base = planned[lo_key].coords
    value, why_not = (_n_id_between(spec, base, int(lo[axis]), int(hi[axis])) if axis == "task.n_id"
                      else _alpha_between(spec, base, float(lo[axis]), float(hi[axis])))
    if value is None:
        return None, f"{where}: no midpoint, {why_not}"
    clean = round(value, ALPHA_DECIMALS) if axis == "task.alpha" else value
    key = tuple(clean if k == axis else lo[k] for k in keys)
    if key in planned:
        return None, f"{where}: midpoint {short} {value:g} is planned already and has no results yet"
    mean = "geometric" if axis == "task.n_id" else "arithmetic"
    note = f"; {why_not}" if why_not else ""
    return Addition(_extra({**base, axis: value}, _grid_seeds(spec)),
                    f"{where}: adds {short} {value:g} ({mean} midpoint{note})"), ""


def _config_error(spec: GridSpec, coords: dict[str, Any]) -> str | None:
    """Why the trial rules refuse a cell (its first seed stands for all), or None."""
    try:
        config_from_dict(merge({}, {**spec.base, **coords, "seed": _grid_seeds(spec)[0]}))
    except ConfigError as exc:
        return str(exc)
    return None


def _n_id_between(spec: GridSpec, base: dict, lo: int, hi: int) -> tuple[int | None, str]:
    """The valid n_id strictly between LO and HI nearest to their geometric mean."""
    if hi - lo < 2:
        return None, f"{lo} and {hi} are adjacent integers"
    mean = math.sqrt(lo * hi)
    refused = None  # the rounded mean's refusal, when it is refused
    for n in sorted(range(lo + 1, hi), key=lambda n: (abs(n - mean), n)):  # the rounded mean first
        error = _config_error(spec, {**base, "task.n_id": n})
        if error is None:
            return n, ("" if refused is None else f"{refused[0]} is refused: {refused[1]}")
        refused = refused or (n, error)
    return None, f"no n_id between {lo} and {hi} is valid here, e.g. {refused[0]}: {refused[1]}"


def _alpha_between(spec: GridSpec, base: dict, lo: float, hi: float) -> tuple[float | None, str]:
    mid = round((lo + hi) / 2, ALPHA_DECIMALS)
    if not lo < mid < hi:
        return None, f"{lo:g} and {hi:g} are as close as the phase table tells apart ({ALPHA_DECIMALS} decimals)"
    error = _config_error(spec, {**base, "task.alpha": mid})
    return (None, f"alpha {mid:g} is refused: {error}") if error else (mid, "")


def _merged(old: tuple[ExtraCell, ...], new: list[ExtraCell]) -> tuple[ExtraCell, ...]:
    """The grid's extra cells with NEW added: seeds of a cell listed already join its entry."""
    cells = {c.coords: list(c.seeds) for c in old}
    for c in new:
        seeds = cells.setdefault(c.coords, [])
        seeds += [s for s in c.seeds if s not in seeds]
    return tuple(ExtraCell(coords, tuple(seeds)) for coords, seeds in cells.items())


# ---------------------------------------------------------------------------------------------
# The report and the grid file
# ---------------------------------------------------------------------------------------------

def report(ref: Refinement, out: Path, dry_run: bool) -> str:
    """What refine adds and why, the cost of the new trials, and what to run next."""
    lines = [f"refine {ref.run_dir}: {ref.summary}"]
    if ref.seeds:
        lines += ["more seeds, for cells whose seeds disagree:", *(f"  {a.why}" for a in ref.seeds)]
    if ref.midpoints:
        lines += ["midpoints, between neighbouring cells of different phases:", *(f"  {a.why}" for a in ref.midpoints)]
    if ref.skipped:
        lines += ["adds nothing:", *(f"  {s}" for s in ref.skipped)]
    if ref.empty:
        lines.append("nothing to add: no contested cell short of seeds, no boundary with room for a midpoint"
                     + ("" if dry_run else f"; {out} not written"))
        return "\n".join(lines)
    lines.append(f"next grid: {len(ref.new)} new trials; cost: {ref.cost.summary()}")
    launch = f"ray-grok launch {out} --out {ref.run_dir}"
    lines.append(f"nothing was written (--dry-run); without it: {out}, then {launch}" if dry_run
                 else f"wrote {out}; read or edit it, then: {launch}")
    return "\n".join(lines)


def grid_file_text(ref: Refinement) -> str:
    """The next grid as a file: a header that says where it comes from and what it costs, the
    grid, and a comment on every extra cell refine added."""
    header = [f"the next grid of {ref.run_dir}, written by `ray-grok refine` from {ref.run_dir / GRID_FILE}",
              f"{ref.summary}",
              f"adds {len(ref.new)} trials, {ref.cost.summary()}",
              f"run it: ray-grok launch {ref.spec.source} --out {ref.run_dir}"]
    why = {a.cell.coords: a.why for a in ref.seeds + ref.midpoints}
    return grid_yaml(ref.spec, header, why)


def write_grid(ref: Refinement, out: Path) -> None:
    atomic_write_text(Path(out), grid_file_text(ref))
