"""The trial directory as a whole: one trainer at a time in it, its stored config (a directory
holds one experiment), and its status, read without trusting that nothing outside ray-grok
damaged it. No torch: `ray-grok train` checks a directory before importing it."""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Iterator

from ..errors import RayGrokError, TrialError
from ..io import describe_holder, hold_lock, read_json, system_dir, write_json
from .config import TrialConfig, config_from_dict
from .schema import CONFIG_FILE, LOCK_FILE, STATUS_FILE

log = logging.getLogger(__name__)


@contextlib.contextmanager
def trial_lock(out: Path, wait_s: float = 0.0) -> Iterator[None]:
    """Hold OUT's lock while the block runs (OUT is created): refused at once (or after wait_s)
    while another process trains in OUT, naming it. Two writers of one trial's checkpoints and
    metrics would interleave their steps."""
    if system_dir(out):
        raise TrialError(f"a trial directory must be a directory of yours, not / or a system directory "
                         f"(/etc, /usr, ...), got {str(out)!r}")
    out.mkdir(parents=True, exist_ok=True)

    def busy(holder: dict) -> TrialError:
        return TrialError(f"{out} is in use by {describe_holder(holder)}: one trainer per trial directory; "
                          "wait for it to end or stop it, then run this again")

    with hold_lock(out / LOCK_FILE, "train", busy, wait_s=wait_s):
        yield


def prepare_dir(cfg: TrialConfig, out: Path) -> None:
    """Create DIR with config.json, or check that an existing DIR holds this same experiment."""
    out.mkdir(parents=True, exist_ok=True)
    stored = stored_config(out)
    if stored is not None and stored.config_hash() != cfg.config_hash():
        diff = [f"{k}: {v!r} -> {cfg.flat()[k]!r}" for k, v in stored.flat().items()
                if not k.startswith("runtime.") and cfg.flat()[k] != v]
        raise TrialError(f"{out} holds a trial with a different config ({'; '.join(diff)}); "
                         "use another --out or the stored config")
    if stored is None or stored != cfg:  # runtime keys may change on resume; otherwise nothing to write
        write_json(out / CONFIG_FILE, cfg.to_dict())


def read_status(out: Path) -> dict | None:
    """status.json, or None when there is none. An unreadable one (damaged outside ray-grok: its
    writes are atomic) is None too, with a warning: the checkpoints say where the trial is, and
    failing here would fail every retry."""
    path = out / STATUS_FILE
    try:
        status = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); the trial goes on from its checkpoints", path, exc)
        return None
    return status if isinstance(status, dict) else None


def stored_config(out: Path) -> TrialConfig | None:
    """The config stored in OUT (None when there is none); an unreadable one is refused, naming it."""
    path = out / CONFIG_FILE
    try:
        data = read_json(path)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TrialError(f"{path} is unreadable ({' '.join(str(exc).split())}): it defines the trial; "
                         "restore it or start the trial in another directory") from None
    try:
        return config_from_dict(data)
    except RayGrokError as exc:
        raise TrialError(f"{path} does not hold a valid config: {exc}") from None

