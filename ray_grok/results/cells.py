"""The cells of a phase diagram: which trials are seeds of one setting.

A cell is one (model.depth, task.n_id, task.alpha) of the paper's diagram and one value of every
other setting the trials vary in, except the seed. A grid that also sweeps, say, task.rule gives
one diagram per rule; two rules are never counted as extra seeds of one cell. These other keys,
the *facets*, are read off the trials table itself: every config column that takes more than one
value, other than the seed and the runtime settings (device, threads: they do not change the
experiment). In a phase table they are the columns before the three cell keys.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np
import pandas as pd

from ..errors import PhaseError
from .schema import CONFIG_DEFAULTS

CELL_KEYS = ("model.depth", "task.n_id", "task.alpha")
NOT_FACETS = ("seed",)  # and every runtime.* key
# Grid alphas come from float arithmetic (0.1 * 3 = 0.30000000000000004); rounding merges them.
ALPHA_DECIMALS = 6
FLOAT_DIGITS = 12  # other float facets (a learning rate): significant digits, as in trial ids


class Cell(NamedTuple):
    """One point of a phase diagram, and the facet values of its diagram: (("task.rule", "random"),)."""

    depth: int
    n_id: int
    alpha: float
    facets: tuple[tuple[str, Any], ...] = ()

    def label(self) -> str:
        return ", ".join([*(facet_text(k, v) for k, v in self.facets),
                          f"depth {self.depth}", f"n_id {self.n_id}", f"alpha {self.alpha:g}"])


def facet_text(key: str, value: Any) -> str:
    """'rule random', 'lr 0.0001': a facet as titles and labels show it."""
    return f"{key.rsplit('.', 1)[-1]} {value:g}" if isinstance(value, float) else f"{key.rsplit('.', 1)[-1]} {value}"


def facets_text(facets: Sequence[tuple[str, Any]]) -> str:
    return ", ".join(facet_text(k, v) for k, v in facets)


def facet_keys(trials: pd.DataFrame) -> list[str]:
    """The config columns of a trials table, in config order, that key a cell besides CELL_KEYS:
    those that take more than one value, other than the seed and runtime.*."""
    return [k for k in CONFIG_DEFAULTS if k in trials.columns and k not in CELL_KEYS and k not in NOT_FACETS
            and not k.startswith("runtime.") and clean_column(trials[k], k).nunique(dropna=True) > 1]


def table_facets(table: pd.DataFrame) -> list[str]:
    """The facet columns of a phase table: the key columns before the three cell keys."""
    return list(table.columns[:table.columns.get_loc(CELL_KEYS[0])])


def clean_column(values: pd.Series, key: str) -> pd.Series:
    """A key column with one type per value, whatever the reader gave (Parquet partitions come back
    as categories of strings): depth and n_id int, alpha rounded, other numbers as numbers, the rest str."""
    if isinstance(values.dtype, pd.CategoricalDtype):
        values = values.astype(object)
    if key in ("model.depth", "task.n_id"):
        return pd.to_numeric(values).astype(int)
    if key == "task.alpha":
        return pd.to_numeric(values).astype(float).round(ALPHA_DECIMALS)
    if pd.api.types.is_bool_dtype(values):
        return values.astype(bool)
    if not pd.api.types.is_numeric_dtype(values):
        numbers = pd.to_numeric(values, errors="coerce")
        if numbers.isna().any():
            return values.astype(str)
        values = numbers
    if pd.api.types.is_integer_dtype(values):
        return values.astype(int)
    return values.astype(float).map(lambda v: float(f"{v:.{FLOAT_DIGITS}g}"))


def cell_keys(frame: pd.DataFrame, facets: Sequence[str] | None = None) -> pd.DataFrame:
    """The key columns of every row, facets first, then CELL_KEYS, with clean types. `facets`
    default: those of a trials table (`facet_keys`)."""
    facets = facet_keys(frame) if facets is None else list(facets)
    keys = [*facets, *CELL_KEYS]
    absent = [k for k in keys if k not in frame.columns]
    if absent:
        raise PhaseError(f"the trials table lacks columns {absent}; is it a ray-grok results table?")
    return pd.DataFrame({k: clean_column(frame[k], k) for k in keys}, index=frame.index)


def grid_index(keys: pd.DataFrame, grid: Mapping[str, Sequence[Any]] | None) -> pd.MultiIndex:
    """Every cell of the diagrams: the product of the values of each key column, given or observed."""
    grid = dict(grid or {})
    unknown = [k for k in grid if k not in keys.columns]
    if unknown:
        raise PhaseError(f"grid keys must be among {list(keys.columns)}, got {unknown}")
    levels = []
    for key in keys.columns:
        values = clean_column(pd.Series(list(grid[key])), key) if key in grid else keys[key]
        levels.append(sorted(set(values.tolist())))
    return pd.MultiIndex.from_product(levels, names=list(keys.columns))


def matches(column: pd.Series, value: Any) -> pd.Series:
    """Rows of a clean key column equal to `value` (numbers to 9 digits, the rest as text)."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        try:
            return pd.Series(np.isclose(column.astype(float), float(value), rtol=1e-9, atol=0), index=column.index)
        except (TypeError, ValueError):
            return pd.Series(False, index=column.index)
    return column.astype(str) == str(value)


def in_cell(frame: pd.DataFrame, cell: Cell) -> pd.Series:
    """Boolean mask of the rows of a trials or phase table that belong to `cell` (its facets too)."""
    keys = cell_keys(frame, [k for k, _ in cell.facets])
    hit = ((keys["model.depth"] == cell.depth) & (keys["task.n_id"] == cell.n_id)
           & (keys["task.alpha"] == round(cell.alpha, ALPHA_DECIMALS)))
    for key, value in cell.facets:
        hit &= matches(keys[key], value)
    return hit


def find_cell(table: pd.DataFrame, cell: Cell) -> pd.Series:
    """The phase-table row of one cell; PhaseError naming the valid values if it is not in the grid."""
    hit = in_cell(table, cell)
    if not hit.any():
        keys = cell_keys(table, table_facets(table))
        valid = "; ".join(f"{k} in {sorted(set(keys[k].tolist()))}" for k in keys.columns)
        raise PhaseError(f"cell ({cell.label()}) is not in the grid; valid: {valid}")
    return table.loc[hit].iloc[0]


def cell_of(row: Mapping, facets: Sequence[str]) -> Cell:
    """The Cell of a phase-table row."""
    return Cell(int(row["model.depth"]), int(row["task.n_id"]), float(row["task.alpha"]),
                tuple((k, row[k]) for k in facets))


def expand_cell(table: pd.DataFrame, cell: Cell) -> list[Cell]:
    """A cell given without (all) its facets stands for the same point in every diagram that has
    it: one Cell per matching row of the phase table. A cell not in the table fails, naming the
    valid values."""
    find_cell(table, cell)
    facets = table_facets(table)
    if not facets:
        return [cell]
    return [cell_of(row, facets) for row in table.loc[in_cell(table, cell)].to_dict("records")]
