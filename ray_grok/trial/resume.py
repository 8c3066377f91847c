"""What a trial's 'latest' checkpoint holds besides the files, so a resumed run ends bit-identical
(on CPU) to an uninterrupted one: the loop's Progress, the model, optimizer and sampler states, and
torch's random generators."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from .run import TrialParts


@dataclass
class Progress:
    """What the loop carries between steps besides the model: saved in every 'latest' checkpoint."""

    step: int = 0
    best_value: float = float("nan")
    best_step: int = -1
    evals_since_best: int = 0
    early_stopped: bool = False
    elapsed: float = 0.0  # training wall time before this process
    # why a Stopper ended the trial (its record): saved with the stop step's checkpoint, so a trial
    # killed before status.json said done ends there again on resume instead of training on
    stopped: dict | None = None


def capture_rng() -> dict:
    # the loop draws only from torch: the sampler's own generator (saved with the sampler) and the
    # global generators saved here; numpy/python random are used only before training (task draw)
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def latest_state(parts: TrialParts, progress: Progress) -> dict:
    return {
        "step": progress.step,
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "sampler": parts.sampler.state_dict(),
        "rng": capture_rng(),
        "progress": dataclasses.asdict(progress),
        "config": parts.cfg.to_dict(),
    }


def restore(parts: TrialParts, state: dict) -> Progress:
    parts.model.load_state_dict(state["model"])
    parts.optimizer.load_state_dict(state["optimizer"])
    parts.sampler.load_state_dict(state["sampler"])
    restore_rng(state["rng"])
    return Progress(**state["progress"])
