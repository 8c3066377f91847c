"""A grid written back as a grid file, for a person to read and edit before launching it.

`ray-grok refine` builds its next grid as a GridSpec (the run's grid plus extra cells). Written
here, it loads back (grid.load_grid) as the same grid: the same base, axes as explicit lists of the
exact values (so every trial keeps its id), seeds, resources, run settings, and one line per extra
cell with a comment saying why it is there. Comments of the original file are not kept: the
original stays in RUN_DIR/grid.yaml.
"""
from __future__ import annotations

from dataclasses import asdict
from typing import Any, Mapping, Sequence

import yaml

from ..trial.config import unflatten
from .extra import ExtraCell
from .grid import GridSpec


def _flow(value: Any) -> str:
    """One YAML value on one line: {model.depth: 2, task.n_id: 23, seeds: [0, 1]}."""
    # inside a list: a lone scalar would be dumped as a document ("2\n...")
    return yaml.safe_dump([value], default_flow_style=True, sort_keys=False, width=10**9).strip()[1:-1]


def _seeds(seeds: Sequence[int]) -> Any:
    """A count where the seeds are 0..n-1 (as a person writes them), else the list."""
    return len(seeds) if tuple(seeds) == tuple(range(len(seeds))) else list(seeds)


def grid_yaml(spec: GridSpec, header: Sequence[str] = (), why: Mapping[tuple, str] | None = None) -> str:
    """SPEC as a grid file: HEADER as comment lines first; WHY: a comment per extra cell (by its coords)."""
    why = why or {}
    top: dict[str, Any] = {"name": spec.name}
    if spec.description:
        top["description"] = spec.description
    top["base"] = unflatten(spec.base)
    top["axes"] = {a.key: list(a.values) for a in spec.axes}
    if spec.seeds:  # else seed is an axis
        top["seeds"] = _seeds(spec.seeds)
    top["resources"] = spec.resources.as_ray()
    top["run"] = asdict(spec.run)  # nested settings (phase_rule) as mappings, as a grid file gives them
    lines = [f"# {h}" for h in header]
    for key, value in top.items():  # one section a block, short mappings and lists on one line
        lines.append(_block(key, value))
    if spec.extra:
        lines.append("extra:")
        lines += [_cell_line(c, why.get(c.coords, "")) for c in spec.extra]
    return "\n".join(lines) + "\n"


def _block(key: str, value: Any) -> str:
    if isinstance(value, Mapping) and value:
        inner = "\n".join(f"  {_flow(k)}: {_flow(v)}" for k, v in value.items())
        return f"{key}:\n{inner}"
    return f"{key}: {_flow(value)}"


def _cell_line(cell: ExtraCell, why: str) -> str:
    return f"  - {_flow(cell.as_dict())}" + (f"  # {why}" if why else "")
