"""The values of one grid axis: an explicit list, {range: {from, to, step}} or {pow2: {from, to}},
expanded and checked (finite bounds, whole steps, at most run.max_trials values). FAIL raises the
grid's error with the file's name."""
from __future__ import annotations

import math
from typing import Any, Mapping


def axis_values(key: str, spec: Any, fail, most: int) -> tuple[Any, ...]:
    forms = "a list of values, {range: {from, to, step}} or {pow2: {from, to}}"
    if isinstance(spec, list):
        values = list(spec)
    elif isinstance(spec, Mapping) and len(spec) == 1 and next(iter(spec)) in ("range", "pow2"):
        kind, args = next(iter(spec.items()))
        want = ("from", "to", "step") if kind == "range" else ("from", "to")
        if not isinstance(args, Mapping) or set(args) != set(want):
            fail(f"axes.{key}.{kind} must be a mapping with keys {', '.join(want)}, got {args!r}")
        for k in want:
            if isinstance(args[k], bool) or not isinstance(args[k], (int, float)) or not math.isfinite(args[k]):
                fail(f"axes.{key}.{kind}.{k} must be a finite number, got {args[k]!r}")
        values = _range(key, args, fail, most) if kind == "range" else _pow2(key, args, fail)
    else:
        fail(f"axes.{key} must be {forms}, got {spec!r}")
    if not values:
        fail(f"axes.{key} has no values")
    for v in values:
        if isinstance(v, (Mapping, list)):
            fail(f"axes.{key} values must be single values, got {v!r}")
    if len({repr(v) for v in values}) != len(values):
        fail(f"axes.{key} lists a value twice: {values!r}")
    return tuple(values)


def _range(key: str, args: Mapping, fail, most: int) -> list:
    start, stop, step = args["from"], args["to"], args["step"]
    if step <= 0:
        fail(f"axes.{key}.range.step must be > 0, got {step!r}")
    if stop < start:
        fail(f"axes.{key}.range.to must be >= from, got from {start!r} to {stop!r}")
    ints = all(isinstance(v, int) for v in (start, stop, step))
    steps = (stop - start) // step if ints else (stop - start) / step  # counted before any value is built
    if not steps + 1 <= most:  # also catches the inf of a step far below the span
        count = f"{steps + 1:,}" if ints else f"{steps + 1:,.0f}"
        fail(f"axes.{key}.range gives {count} values (from {start!r} to {stop!r} step {step!r}); "
             f"a grid has at most run.max_trials = {most:,} trials")
    n = round(steps)
    if abs(start + n * step - stop) > 1e-9 * max(1.0, abs(stop)):
        fail(f"axes.{key}.range: to - from must be a whole number of steps, got from {start!r} "
             f"to {stop!r} step {step!r}")
    # rounding keeps 0.2 + 3 * 0.1 == 0.5, so ids and directories read as the grid does
    return [start + i * step if ints else round(start + i * step, 12) for i in range(n + 1)]


def _pow2(key: str, args: Mapping, fail) -> list:
    start, stop = args["from"], args["to"]
    if not (isinstance(start, int) and isinstance(stop, int)) or start < 1:
        fail(f"axes.{key}.pow2 from and to must be integers >= 1, got from {start!r} to {stop!r}")
    ratio = stop // start  # integers all the way: a float ratio overflows for a huge 'to'
    if stop < start or stop % start or ratio & (ratio - 1):
        fail(f"axes.{key}.pow2.to must be from times a power of two, got from {start} to {stop}")
    return [start << i for i in range(ratio.bit_length())]
