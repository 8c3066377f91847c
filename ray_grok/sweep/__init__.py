"""Sweeps on Ray Tune: grid files, the run directory, the Ray session, the trainable, the driver's
callbacks, launch and resume, status and cost. Runs trials through ray_grok.trial and writes the
results tables through ray_grok.results."""
from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # ray_grok.sweep was a module in ray-grok 0.1.0, whose pickles (Tune's tuner.pkl and search
    # state in RUN_DIR/tune) refer to its names; they resolve to today's objects (compat.LEGACY)
    from ..compat import legacy_attribute

    return legacy_attribute(__name__, name)
