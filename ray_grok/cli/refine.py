"""`ray-grok refine`: a thin command over ray_grok.sweep.refine."""
from __future__ import annotations

from pathlib import Path

import click

from ..errors import ConfigError
from ..sweep.refine import BISECT_AXES, RefineOptions, plan_refinement, report, write_grid
from .results import _rule, rule_options

NEXT_GRID = "next.yaml"  # the default --out, inside RUN_DIR


@click.command("refine")
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seeds", type=int, default=None, metavar="N",
              help="seeds a contested cell should have in total (not added: refining again before the new "
                   "trials have results asks for nothing more)  [default: twice the grid's seeds]")
@click.option("--agreement", type=float, default=RefineOptions.agreement, show_default=True,
              help="a cell is contested when the share of its seeds in its majority phase is below this")
@click.option("--bisect", "bisect", default=None, metavar="|".join(BISECT_AXES),
              help="add midpoints along this axis only  [default: n_id and alpha, those the grid sweeps]")
@rule_options
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help=f"the grid file to write  [default: RUN_DIR/{NEXT_GRID}]")
@click.option("--dry-run", is_flag=True, help="print what would be added and its cost; write nothing")
def refine_cmd(run_dir: Path, seeds: int | None, agreement: float, bisect: str | None, metric: str,
               threshold: float, time: str, out: Path | None, dry_run: bool) -> None:
    """Write the next grid of RUN_DIR from its phase table: more seeds for cells whose seeds
    disagree, and a midpoint between every two neighbouring cells of different phases (geometric
    for n_id, arithmetic for alpha), at every depth where the boundary lies there. Prints what it
    adds, why, and the cost of the new trials. Launching the grid into RUN_DIR extends the run:
    finished trials are kept.

    Reads RUN_DIR/results/trials (`ray-grok aggregate`); the phase rule options are those of
    `ray-grok phases`.

    \b
    Example:
      ray-grok refine runs/laptop --seeds 6 --dry-run
      ray-grok refine runs/laptop && ray-grok launch runs/laptop/next.yaml --out runs/laptop
    """
    options = RefineOptions(seeds=seeds, agreement=agreement, bisect=None if bisect is None else (bisect,),
                            rule=_rule(metric, threshold, time))
    if out is not None and not dry_run and not out.parent.is_dir():  # before any work, not after it
        raise ConfigError(f"refine --out {out}: its directory {out.parent} does not exist")
    out = out if out is not None else run_dir / NEXT_GRID
    refinement = plan_refinement(run_dir, options, out)
    if not (dry_run or refinement.empty):
        write_grid(refinement, out)
    click.echo(report(refinement, out, dry_run))
