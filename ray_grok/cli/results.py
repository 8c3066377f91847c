"""`ray-grok phases` and `ray-grok plot`: thin commands over ray_grok.results.phases and .plots."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click
import yaml

from ..errors import PhaseError
from ..results.phases import (
    Cell, PhaseRule, format_phase_table, format_time_point_changes, phase_table, read_results, time_point_changes,
)

DEFAULT_RULE = PhaseRule()


def rule_options(command: Callable) -> Callable:
    """--metric, --threshold, --time: the three PhaseRule fields, defaults from PhaseRule."""
    options = [
        click.option("--metric", type=click.Choice(["acc_last", "acc"]), default=DEFAULT_RULE.metric,
                     show_default=True,
                     help="accuracy that decides 'fits': last position (n-1 shots) or mean over positions"),
        click.option("--threshold", type=float, default=DEFAULT_RULE.threshold, show_default=True,
                     help="a set fits when its accuracy >= this; chance is 1/p (0.034 for p = 29, 0.091 "
                          "for p = 11), printed with the table and the figures for the run's p"),
        click.option("--time", type=click.Choice(["auto", "best", "final"]), default=DEFAULT_RULE.time,
                     show_default=True,
                     help="read accuracies at the early-stopping step (best), at the end (final), or at "
                          "the early-stopping step only where ood_test fits there, else at the end (auto)"),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _rule(metric: str, threshold: float, time: str) -> PhaseRule:
    try:
        return PhaseRule(metric=metric, threshold=threshold, time=time)  # type: ignore[arg-type]
    except PhaseError as exc:
        raise click.BadParameter(str(exc)) from exc


class CellType(click.ParamType):
    """DEPTH,N_ID,ALPHA[,KEY=VALUE...], e.g. 6,256,0.6 or 2,16,0.4,task.rule=random."""

    name = "depth,n_id,alpha[,key=value]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Cell:
        if isinstance(value, Cell):
            return value
        parts = str(value).split(",")
        try:
            if len(parts) < 3 or any("=" not in p for p in parts[3:]):
                raise ValueError
            facets = tuple((k.strip(), yaml.safe_load(v)) for k, _, v in (p.partition("=") for p in parts[3:]))
            return Cell(int(parts[0]), int(parts[1]), float(parts[2]), facets)
        except (ValueError, yaml.YAMLError):
            self.fail(f"{value!r} is not DEPTH,N_ID,ALPHA[,KEY=VALUE...] (e.g. 6,256,0.6 or "
                      "2,16,0.4,task.rule=random)", param, ctx)


@click.command("phases")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@rule_options
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path),
              help="also write the phase table (one row per cell, with counts and the rule) as CSV")
@click.option("--parquet", "parquet_path", type=click.Path(dir_okay=False, path_type=Path),
              help="also write the phase table as Parquet")
@click.option("--compare-times", is_flag=True,
              help="also list the cells whose phase changes when the same rule reads another time point")
def phases_cmd(run_dir: Path, metric: str, threshold: float, time: str,
               csv_path: Path | None, parquet_path: Path | None, compare_times: bool) -> None:
    """Print the phase table of RUN_DIR per depth (and per value of any other swept setting but the
    seed): rows alpha, columns n_id, the majority phase of each cell over its seeds ("OG 2/3" where
    2 of 3 seeds agree), and the missing cells.

    Reads RUN_DIR/results/trials (written by `ray-grok aggregate`).

    \b
    Example:
      ray-grok phases runs/smoke --threshold 0.9 --time final --csv runs/smoke/phases.csv
      ray-grok phases runs/laptop --compare-times
    """
    rule = _rule(metric, threshold, time)
    trials = read_results(run_dir, "trials")
    table = phase_table(trials, rule)
    click.echo(format_phase_table(table, rule))
    if compare_times:
        click.echo("\n" + format_time_point_changes(time_point_changes(trials, rule), rule, len(table)))
    if csv_path is not None:
        table.to_csv(csv_path, index=False)
        click.echo(f"wrote {csv_path}")
    if parquet_path is not None:
        table.to_parquet(parquet_path, index=False)
        click.echo(f"wrote {parquet_path}")


@click.command("plot")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              help="directory for the figures  [default: RUN_DIR/plots]")
@click.option("--format", "fmt", type=click.Choice(["png", "svg", "pdf"]), default="png", show_default=True,
              help="figure file format (SVG and PDF keep text editable)")
@rule_options
@click.option("--cell", "cells", type=CellType(), multiple=True,
              help="cell for the k-shot and training-curve figures, DEPTH,N_ID,ALPHA, plus KEY=VALUE for "
                   "another swept setting (repeatable; without it, the cell of every diagram); default: per "
                   "diagram the cell with the highest ood_test accuracy")
def plot_cmd(run_dir: Path, out_dir: Path | None, fmt: str, metric: str, threshold: float, time: str,
             cells: tuple[Cell, ...]) -> None:
    """Write the figures of RUN_DIR: a phase diagram per depth (and per value of any other swept
    setting but the seed), accuracy heat maps of the four sets, the transience of o.o.d.
    generalization, k-shot curves and training curves of chosen cells; print their paths.

    Reads RUN_DIR/results/trials and RUN_DIR/results/curves (written by `ray-grok aggregate`).

    \b
    Example:
      ray-grok plot runs/smoke
      ray-grok plot runs/smoke --format pdf --cell 2,16,0.7,task.rule=random
    """
    from ..results.plots import plot_run  # matplotlib: only for this command

    rule = _rule(metric, threshold, time)
    paths = plot_run(run_dir, out_dir, rule, fmt, list(cells) or None)  # type: ignore[arg-type]
    for path in paths:
        click.echo(str(path))
