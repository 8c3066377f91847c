"""Atomic checkpoints: 'latest' (everything to continue exactly) with one fallback, and 'best'.

A checkpoint is written to a temp file, fsynced and renamed into place, and the directory fsynced
(ray_grok.io.atomic_path), so neither a kill nor a power cut leaves a half-written file under a
real name. The previous 'latest' is kept as 'previous': if 'latest' is truncated or corrupt anyway
(a disk fault, a copy gone wrong), loading falls back to it.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable

import torch

from ..io import atomic_path, temp_name
from .schema import UNREADABLE

log = logging.getLogger(__name__)

LATEST, PREVIOUS, BEST = "latest.pt", "previous.pt", "best.pt"
REQUIRED_KEYS = ("step", "model", "optimizer", "sampler", "rng", "config")


def save_latest(state: dict, ckpt_dir: Path) -> None:
    """Write `state` as latest; the old latest becomes previous."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    latest = ckpt_dir / LATEST
    with atomic_path(latest) as tmp:  # fsynced, renamed in, the directory fsynced
        torch.save(state, tmp)
        if latest.exists():
            # previous becomes a second name of the old latest, so that latest.pt exists at every
            # moment: renaming it away first left an instant where a kill found only previous.pt
            link = temp_name(ckpt_dir / PREVIOUS, "link")
            try:
                os.link(latest, link)
                os.replace(link, ckpt_dir / PREVIOUS)
            except OSError:  # a file system without hard links: the plain rename
                link.unlink(missing_ok=True)
                os.replace(latest, ckpt_dir / PREVIOUS)


def save_best(state: dict, ckpt_dir: Path) -> None:
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(ckpt_dir / BEST) as tmp:
        torch.save(state, tmp)


def _try_load(path: Path, note: Callable[[str], None]) -> dict | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, bad pickle, I/O error: all mean "unusable"
        note(f"checkpoint {path} is unreadable ({type(exc).__name__}: {' '.join(str(exc).split())})")
        return None
    missing = [k for k in REQUIRED_KEYS if not isinstance(state, dict) or k not in state]
    if missing:
        note(f"checkpoint {path} lacks {missing}")
        return None
    return state


def load_latest(ckpt_dir: Path, set_aside: bool = False, note: Callable[[str], None] | None = None) -> dict | None:
    """The newest readable 'latest' state (latest, else previous), or None if there is none.

    set_aside (for a resume): an unreadable file is renamed NAME.unreadable. Otherwise the next
    save_latest would make the corrupt latest 'previous', over the only good checkpoint, and a
    second fault would leave none; now previous stays the good one until a new latest exists."""
    def say(message: str) -> None:
        log.warning(message)
        if note is not None:
            note(message)

    for name in (LATEST, PREVIOUS):
        path = ckpt_dir / name
        if not path.exists():
            continue
        state = _try_load(path, say)
        if state is not None:
            if name != LATEST:
                say(f"resuming from {path} (step {state['step']})")
            return state
        if set_aside:
            os.replace(path, path.with_name(path.name + UNREADABLE))
            say(f"moved it to {path.name + UNREADABLE}; trying the checkpoint before it")
    return None
