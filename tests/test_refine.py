"""The grid's extra cells (sweep/extra.py): single points outside the product of the axes.

Fast: grids are loaded and expanded, nothing runs.
"""
from __future__ import annotations

import pytest
import yaml

from ray_grok.errors import GridError
from ray_grok.sweep.grid import expand, grid_from_dict, load_grid

BASE = {"task": {"p": 29, "rule": "random", "n_ood": 8, "n_examples": 8},
        "model": {"width": 32, "heads": 2}, "train": {"steps": 100, "batch_size": 40320},
        "runtime": {"device": "cpu"}}


# ---------------------------------------------------------------------------------------------
# The grid's extra cells
# ---------------------------------------------------------------------------------------------

GRID = {"name": "g", "base": BASE, "axes": {"model.depth": [1, 2], "task.n_id": [16, 32], "task.alpha": [0.5]},
        "seeds": 2}


def test_extra_cells_add_trials_named_as_the_products_and_merge_with_it():
    product = expand(grid_from_dict(GRID))
    extra = [{"model.depth": 2, "task.n_id": 24, "task.alpha": 0.5},  # the grid's seeds
             {"model.depth": 1, "task.n_id": 16, "task.alpha": 0.5, "seeds": [1, 2, 3]}]  # seed 1: in the product
    trials = expand(grid_from_dict({**GRID, "extra": extra}))
    assert trials[:len(product)] == product
    added = [(t.coords["model.depth"], t.coords["task.n_id"], t.coords["seed"]) for t in trials[len(product):]]
    assert added == [(2, 24, 0), (2, 24, 1), (1, 16, 2), (1, 16, 3)]
    assert trials[-1].dir == "trials/depth=1/n_id=16/alpha=0.5/seed=3"
    # a point the product holds is the product's trial: the same id whichever part lists it
    seed3 = expand(grid_from_dict({**GRID, "seeds": [0, 1, 2, 3]}))
    assert trials[-1].trial_id in {t.trial_id for t in seed3}


@pytest.mark.parametrize("extra, message", [
    ({"model.depth": 1}, "extra must be a list of cells {model.depth: VALUE, task.n_id: VALUE, task.alpha: VALUE"),
    ([3], "extra[0] must be a mapping"),
    ([{"model.depth": 1, "task.n_id": 24}], "extra[0] lacks task.alpha: a cell names a value for every axis"),
    ([{"model.depth": 1, "task.n_id": 24, "task.alpha": 0.5, "task.p": 31}],
     "extra[0].task.p is not an axis of this grid"),
    ([{"model.depth": 1, "task.n_id": 24, "task.alfa": 0.5}],
     "extra[0].task.alfa is not an axis of this grid (did you mean task.alpha?)"),
    ([{"model.depth": 1, "task.n_id": [24], "task.alpha": 0.5}], "extra[0].task.n_id must be a single value, got [24]"),
    ([{"model.depth": 1, "task.n_id": 24, "task.alpha": 0.5, "seeds": 0}], "extra[0].seeds must be a count from 1"),
    ([{"model.depth": 1, "task.n_id": 24, "task.alpha": 1.5}],
     "trial depth=1 n_id=24 alpha=1.5 seed=0 (extra): task.alpha must be in (0, 1), got 1.5"),
    ([{"model.depth": 1, "task.n_id": 23, "task.alpha": 0.5}], "(extra): train.batch_size must be a multiple of"),
])
def test_bad_extra_cells_are_refused_naming_the_file_key_and_value(tmp_path, extra, message):
    path = tmp_path / "g.yaml"
    path.write_text(yaml.safe_dump({**GRID, "extra": extra}, sort_keys=False))
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value)


def test_extra_cells_count_toward_max_trials():
    extra = [{"model.depth": 1, "task.n_id": 24, "task.alpha": 0.5, "seeds": 5}]
    with pytest.raises(GridError, match=r"the grid has 13 trials \(2 x 2 x 1 x 2 seeds \+ 5 extra\)"):
        grid_from_dict({**GRID, "extra": extra, "run": {"max_trials": 12}})

