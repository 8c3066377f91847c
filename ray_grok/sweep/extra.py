"""Extra cells of a grid: single points outside the product of its axes.

    extra:                          # expanded after the product, in this order
      - {model.depth: 2, task.n_id: 23, task.alpha: 0.4}              # the grid's seeds
      - {model.depth: 2, task.n_id: 16, task.alpha: 0.6, seeds: [3, 4, 5]}

The product cannot say "three more seeds in this one cell" or "n_id 23, but only at depth 2":
`ray-grok refine` needs both (refine.py), and a person editing its output may want them too. A cell
names a value for every axis but the seed (so its trial configs are as well defined as the
product's) and optionally its seeds (a count or a list, as the top-level `seeds`; by default the
grid's). Its trials get ids and directories exactly as the product's do, so a trial that both the
product and a cell hold (or two cells) is one trial, listed once.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from ..trial.fields import suggest

SEEDS_KEY = "seeds"


@dataclass(frozen=True)
class ExtraCell:
    """One cell outside the product: a value for every axis but the seed, and its seeds."""
    coords: tuple[tuple[str, Any], ...]  # axis key -> value, in the grid's axis order
    seeds: tuple[int, ...]

    def as_dict(self) -> dict[str, Any]:
        """As a grid file writes it: {model.depth: 2, ..., seeds: [0, 1]}."""
        return {**dict(self.coords), SEEDS_KEY: list(self.seeds)}


def parse_extra(raw: Any, axes: Sequence[Any], default_seeds: tuple[int, ...], fail: Callable[[str], None],
                parse_seeds: Callable[[Any, Callable[[str], None]], tuple[int, ...]]) -> tuple[ExtraCell, ...]:
    """The grid's `extra:` list, checked: every cell a mapping that names every axis but the seed,
    once, with single values, and valid seeds (PARSE_SEEDS, the grid's own rule). The trial configs
    are checked later, with the product's, by grid.expand. FAIL raises the grid's error."""
    if raw is None:
        return ()
    names = [a.key for a in axes if a.key != "seed"]
    if not default_seeds:  # seed is an axis: its values are every cell's default
        default_seeds = next(tuple(a.values) for a in axes if a.key == "seed")
    form = "{" + ", ".join([*(f"{k}: VALUE" for k in names), f"{SEEDS_KEY}: [...]"]) + "}"
    if not isinstance(raw, list):
        fail(f"extra must be a list of cells {form}, got {raw!r}")
    cells = []
    for i, cell in enumerate(raw):
        where = f"extra[{i}]"
        if not isinstance(cell, Mapping):
            fail(f"{where} must be a mapping {form}, got {cell!r}")
        for key in cell:
            if key == "seed":  # the one key that reads like an axis here but is not one
                fail(f"{where}.seed: a cell gives its seeds as {SEEDS_KEY} (a count or a list, e.g. "
                     f"{SEEDS_KEY}: [{cell[key]!r}]), got seed: {cell[key]!r}")
            if key != SEEDS_KEY and key not in names:
                hint = suggest(str(key), names)
                fail(f"{where}.{key} is not an axis of this grid{hint} (value {cell[key]!r}); a cell names "
                     f"every axis ({', '.join(names) or 'none'}) and optionally {SEEDS_KEY}")
        for key in names:
            if key not in cell:
                fail(f"{where} lacks {key}: a cell names a value for every axis ({', '.join(names)}), got {dict(cell)!r}")
            if cell[key] is None or isinstance(cell[key], (Mapping, list)):
                fail(f"{where}.{key} must be a single value, got {cell[key]!r}")
        seeds = (parse_seeds(cell[SEEDS_KEY], lambda msg, w=where: fail(f"{w}.{msg}"))
                 if SEEDS_KEY in cell else tuple(default_seeds))
        cells.append(ExtraCell(tuple((k, cell[k]) for k in names), seeds))
    return tuple(cells)


def extra_points(cells: Sequence[ExtraCell], keys: Sequence[str]) -> list[dict[str, Any]]:
    """The grid points of the cells, one per seed, with the keys in the product's order (KEYS,
    'seed' among them), so a point the product holds too gives the same trial."""
    points = []
    for cell in cells:
        values = dict(cell.coords)
        for seed in cell.seeds:
            points.append({k: (seed if k == "seed" else values[k]) for k in keys})
    return points


def extra_count(cells: Sequence[ExtraCell]) -> int:
    """Trials the cells add at most (before the ones the product holds too are merged)."""
    return sum(len(c.seeds) for c in cells)

