"""One trial of the paper's experiment: build, train, evaluate, checkpoint, resume.

`run_trial(cfg, out_dir)` is the whole public surface; the sweep layer calls it inside a Ray Tune
trainable with a `reporter`. Running it again on the same directory resumes from the last good
checkpoint and ends bit-identical (on CPU) to an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol

import torch
import torch.nn.functional as F

from ..errors import ConfigError, NonFiniteLossError
from ..io import format_duration, write_json
from . import checkpoint as ckpt
from . import console
from .config import TrialConfig
from .data import BatchSampler, EvalSet, TaskSets, make_eval_sets, make_task_sets
from .evaluate import evaluate
from .model import Transformer, z_positions
from .optim import build_optimizer, lr_multiplier, set_lr
from .resume import Progress, latest_state, restore
from .outputs import MetricsLog, NullBoard, TensorBoard, status_record
from .schema import (
    CHECKPOINT_DIR, CONFIG_FILE, DONE, FAILED, INTERRUPTED, METRICS_FILE, RUNNING, SETS, STATUS_FILE, TASKS_FILE,
)
from .trialdir import prepare_dir, read_status, trial_lock


class Reporter(Protocol):
    """Told about every evaluation (the sweep layer forwards it to Ray Tune)."""

    def __call__(self, row: dict, *, checkpointed: bool, step: int) -> None: ...


class Stopper(Protocol):
    """Asked after every evaluation whether the trial ends here (the sweep layer's run.stop,
    sweep/stop.py): ROWS are the trial's evaluations so far, the last one just made. A record (why,
    with the evidence) ends the trial as done at this step; None trains on."""

    def __call__(self, rows: list[dict]) -> dict | None: ...


@dataclass(frozen=True)
class TrialResult:
    """A finished trial (run_trial raises for any other outcome)."""

    step: int
    best_step: int
    best_value: float
    early_stopped: bool
    already_done: bool = False
    stopped: dict | None = None  # why a Stopper ended it (status.json's `stopped`)


# ---------------------------------------------------------------------------------------------
# Building the parts (shared with benchmarks/)
# ---------------------------------------------------------------------------------------------

# runtime.threads = 0 (auto) gives a trial of its own one thread: torch's default of every core
# oversubscribes a busy machine, where a step then takes up to 10x longer (benchmarks/threads.py,
# docs/trial.md); a sweep passes its trials' resources.cpu instead.
AUTO_THREADS = 1


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"runtime.device is {name!r} but no CUDA device is available; use cpu or auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ConfigError(f"runtime.device is {name!r} but only {torch.cuda.device_count()} CUDA devices exist")
    return dev


@dataclass
class TrialParts:
    cfg: TrialConfig
    device: torch.device
    sets: TaskSets
    model: Transformer  # the module whose state is saved
    forward: Callable  # the model or its torch.compile'd wrapper
    optimizer: torch.optim.AdamW
    sampler: BatchSampler
    eval_sets: list[EvalSet]
    positions: torch.Tensor
    autocast: Callable[[], contextlib.AbstractContextManager]


def device_memory(device: torch.device) -> int:
    """Total memory of DEVICE in bytes (the machine's RAM for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(cfg: TrialConfig, device: torch.device) -> None:
    """Refuse, before anything is allocated, a trial whose memory lower bound exceeds its device's
    total memory: it could only end in an out-of-memory kill, on every retry."""
    need, have = cfg.min_memory_bytes(), device_memory(device)
    if need > have:
        raise ConfigError(f"this trial needs at least {need / 2**30:,.1f} GiB of memory ({cfg.size_fields()}) but "
                          f"{device} has {have / 2**30:,.1f} GiB: make the model or the batches smaller")


def build_parts(cfg: TrialConfig, auto_threads: int = AUTO_THREADS) -> TrialParts:
    """Everything a trial trains with. torch gets cfg.runtime.threads threads, or `auto_threads`
    when it is 0 (auto); auto_threads 0 leaves torch's own default (every core)."""
    device = resolve_device(cfg.runtime.device)
    check_fits(cfg, device)
    threads = cfg.runtime.threads or auto_threads
    if threads:
        torch.set_num_threads(threads)
    sets = make_task_sets(cfg.task, cfg.seed)
    torch.manual_seed(cfg.seed)  # model init
    model = Transformer(cfg.model, vocab=cfg.task.p, max_len=cfg.seq_len).to(device)
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    compile_on = cfg.runtime.compile == "on" or (cfg.runtime.compile == "auto" and cuda)
    forward = torch.compile(model) if compile_on else model
    optimizer = build_optimizer(model, cfg.train, fused=cuda)
    # separate streams for batches and evaluation rows, both derived from the trial seed
    sampler = BatchSampler(sets, cfg.rows_per_task, cfg.task.n_examples, device, seed=cfg.seed * 1_000_003 + 1,
                           shared=cfg.task.batch_inputs == "shared")
    eval_rows = cfg.eval.batches * cfg.train.batch_size
    eval_sets = make_eval_sets(sets, eval_rows, cfg.task.n_examples, device, seed=cfg.seed * 1_000_003 + 2)

    def autocast() -> contextlib.AbstractContextManager:
        # bf16 on CUDA as the authors did; fp32 on CPU (bf16 matmuls are slow there)
        return torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()

    return TrialParts(cfg, device, sets, model, forward, optimizer, sampler, eval_sets,
                      z_positions(cfg.task.n_examples, device), autocast)


def forward_backward(parts: TrialParts, batch: torch.Tensor) -> torch.Tensor:
    """Loss on the z positions of `batch` and its gradients; returns the detached loss."""
    with parts.autocast():
        logits = parts.forward(batch[:, :-1], parts.positions)  # (B, n, V): z positions only
    loss = F.cross_entropy(logits.float().flatten(0, 1), batch[:, 1:][:, parts.positions].flatten())
    loss.backward()
    return loss.detach()


def optimizer_step(parts: TrialParts, step: int) -> None:
    """Apply the update with 0-based index `step` at its scheduled learning rate."""
    set_lr(parts.optimizer, parts.cfg.train.lr * lr_multiplier(step, parts.cfg.train))
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)


def train_step(parts: TrialParts, step: int) -> torch.Tensor:
    """One optimizer update with 0-based index `step`; returns the (detached) loss on the device."""
    loss = forward_backward(parts, parts.sampler.next())
    optimizer_step(parts, step)
    return loss


def evaluate_all(parts: TrialParts) -> dict:
    """The metrics of the four sets, flat: {id_train_loss, id_train_acc, ..., ood_test_acc_by_shot}."""
    row: dict = {}
    for es in parts.eval_sets:
        m = evaluate(parts.forward, es, parts.positions, parts.cfg.train.batch_size, parts.autocast)
        row.update({f"{es.name}_{k}": v for k, v in m.items()})
    return row


def is_better(value: float, best: float, monitor: str) -> bool:
    if math.isnan(best):
        return not math.isnan(value)
    return value < best if monitor.endswith("_loss") else value > best


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

def run_trial(
    cfg: TrialConfig,
    out: Path | str,
    reporter: Reporter | None = None,
    echo: Callable[[str], None] = print,
    tensorboard: bool = True,
    lock_wait_s: float = 0.0,
    auto_threads: int = AUTO_THREADS,
    stop: Stopper | None = None,
    resume_stopped: bool = False,
) -> TrialResult:
    """Train one trial into `out`, resuming from its last checkpoint if it has one. Refused at
    once (or after lock_wait_s) while another process trains in `out`: two writers of one
    trial's checkpoints and metrics would interleave their steps. `auto_threads`: torch's threads
    when runtime.threads is 0 (a sweep passes the CPUs Ray gave the trial). `stop`: asked after
    each evaluation whether to end the trial there (a sweep's run.stop). `resume_stopped`: a trial
    a Stopper ended trains on from its stop to the end of its schedule (a sweep without run.stop)."""
    out = Path(out)
    with trial_lock(out, wait_s=lock_wait_s):
        return _run_locked(cfg, out, reporter, echo, tensorboard, auto_threads, stop, resume_stopped)


def _run_locked(cfg: TrialConfig, out: Path, reporter: Reporter | None, echo: Callable[[str], None],
                tensorboard: bool, auto_threads: int, stop: Stopper | None = None,
                resume_stopped: bool = False) -> TrialResult:
    status = read_status(out)
    train_on = resume_stopped and bool(status and status.get("stopped"))
    if status and status.get("state") == DONE and (out / CONFIG_FILE).exists() and not train_on:
        prepare_dir(cfg, out)  # still refuse a different config
        echo(f"trial in {out} is already finished (step {status['step']}); nothing to do")
        return TrialResult(status["step"], status.get("best_step", -1), status.get("best_value", float("nan")),
                           status.get("early_stopped", False), True, status.get("stopped"))
    check_fits(cfg, resolve_device(cfg.runtime.device))  # before config.json: a smaller config may follow
    prepare_dir(cfg, out)
    parts = build_parts(cfg, auto_threads)
    if not (out / TASKS_FILE).exists():  # derived from the config: written once, and not worth an fsync
        write_json(out / TASKS_FILE, parts.sets.to_json(), durable=False)
    ckpt_dir = out / CHECKPOINT_DIR
    metrics = MetricsLog(out / METRICS_FILE, echo=echo)

    progress = Progress()
    state = ckpt.load_latest(ckpt_dir, set_aside=True, note=echo)
    if state is not None:
        progress = restore(parts, state)
        echo(f"resuming {out} from step {progress.step}")
        if resume_stopped and progress.stopped is not None:
            echo(f"it was stopped there ({progress.stopped.get('reason', 'by a sweep')}); it trains on to step "
                 f"{cfg.train.steps}")
            progress.stopped = None
    echo(console.banner(cfg, parts.device, sum(p.numel() for p in parts.model.parameters())))
    warning = console.size_warning(cfg, parts.device)
    if warning:
        echo(warning)
    metrics.truncate_after(progress.step)
    board = TensorBoard(out, purge_step=progress.step + 1 if progress.step else None) if tensorboard else NullBoard()
    if progress.step == 0:
        board.hparams(cfg.flat(), [f"best/{cfg.checkpoint.monitor}", "best/step"]
                      + [f"{s}/acc_last" for s in SETS])
    write_json(out / STATUS_FILE, status_record(RUNNING, progress.step, cfg.train.steps))

    try:
        _loop(parts, progress, metrics, board, ckpt_dir, out, reporter, echo, stop)
    except NonFiniteLossError as exc:
        write_json(out / STATUS_FILE, status_record(FAILED, progress.step, cfg.train.steps, error=str(exc)))
        raise
    except KeyboardInterrupt:  # Ctrl-C: say so on disk, so nothing reads "running" forever
        saved = ckpt.load_latest(ckpt_dir)
        write_json(out / STATUS_FILE, status_record(
            INTERRUPTED, progress.step, cfg.train.steps, best_step=progress.best_step,
            best_value=progress.best_value, resume_step=saved["step"] if saved else 0))
        raise
    finally:
        board.close()
    stopped = progress.stopped
    result = TrialResult(progress.step, progress.best_step, progress.best_value, progress.early_stopped,
                         stopped=stopped)
    write_json(out / STATUS_FILE, status_record(
        DONE, progress.step, cfg.train.steps, best_step=progress.best_step, best_value=progress.best_value,
        early_stopped=progress.early_stopped, wall_time=progress.elapsed,
        **({"stopped": stopped} if stopped is not None else {})))
    echo(f"done: step {progress.step}, best {cfg.checkpoint.monitor} {progress.best_value:.4f} "
         f"at step {progress.best_step}" + (" (early stop)" if progress.early_stopped else "")
         + (f" (stopped: {stopped.get('reason', 'by the sweep')})" if stopped is not None else ""))
    return result


def _loop(parts: TrialParts, progress: Progress, metrics: MetricsLog, board, ckpt_dir: Path, out: Path,
          reporter: Reporter | None, echo: Callable[[str], None], stop: Stopper | None = None) -> None:
    """Train to the end of the schedule, an early stop, or a Stopper's record (progress.stopped)."""
    cfg = parts.cfg
    steps, tokens_per_step = cfg.train.steps, cfg.train.batch_size * cfg.seq_len
    t_start = time.perf_counter() - progress.elapsed
    window_t, window_step = time.perf_counter(), progress.step
    last_checked = progress.step
    loss_sum = torch.zeros((), device=parts.device)
    bad = torch.zeros((), dtype=torch.bool, device=parts.device)
    last_eval: dict = metrics.rows[-1] if metrics.rows else {}
    parts.model.train()

    def check_finite(done: int) -> None:
        # one device sync per check, not per step: on CUDA a per-step .item() stalls the pipeline
        nonlocal last_checked
        if bad.item():
            good = ckpt.load_latest(ckpt_dir)
            kept = f"the last good checkpoint (step {good['step']}) is kept" if good else "no checkpoint was saved yet"
            raise NonFiniteLossError(
                f"training loss became non-finite between step {last_checked} and step {done}; {kept} in "
                f"{ckpt_dir}. Lower train.lr or check the config.")
        last_checked = done

    first = progress.step + 1  # this process's first step: timed for the ETA in the banner's wake
    while progress.step < steps and not progress.early_stopped and progress.stopped is None:
        t_step = time.perf_counter()
        loss = train_step(parts, progress.step)
        progress.step += 1
        done = progress.step
        if done == first:
            if parts.device.type == "cuda":
                torch.cuda.synchronize(parts.device)
            echo(console.first_step(cfg, time.perf_counter() - t_step, done))
        loss_sum += loss
        bad |= ~torch.isfinite(loss)

        is_eval = done == 1 or done % cfg.eval.every == 0 or done == steps
        is_ckpt = done % cfg.checkpoint.every == 0 or done == steps
        is_log = done % cfg.runtime.log_every == 0 or done == steps
        if is_eval or is_ckpt or is_log:
            check_finite(done)
        progress.elapsed = time.perf_counter() - t_start

        if is_eval:
            last_eval = _evaluate_and_record(parts, progress, metrics, board, ckpt_dir, done, tokens_per_step)
            if cfg.checkpoint.patience and progress.evals_since_best >= cfg.checkpoint.patience:
                progress.early_stopped = True
                is_ckpt = True
            if stop is not None and done < steps and not progress.early_stopped:
                progress.stopped = stop(metrics.rows)
                is_ckpt = is_ckpt or progress.stopped is not None  # the model it ends with stays on disk
            write_json(out / STATUS_FILE, status_record(RUNNING, done, steps, best_step=progress.best_step,
                                                        best_value=progress.best_value))
        if is_ckpt:
            progress.elapsed = time.perf_counter() - t_start
            ckpt.save_latest(latest_state(parts, progress), ckpt_dir)
        if is_eval and reporter is not None:
            reporter(last_eval, checkpointed=is_ckpt, step=done)
        if is_log:
            now = time.perf_counter()
            rate = (done - window_step) / max(now - window_t, 1e-9)
            mean_loss = loss_sum.item() / max(done - window_step, 1)
            board.scalars({"train/loss": mean_loss, "train/lr": parts.optimizer.param_groups[0]["lr"],
                           "train/tokens_per_s": rate * tokens_per_step}, done)
            accs = " ".join(f"{s} {last_eval.get(f'{s}_acc', float('nan')):.3f}" for s in SETS)
            echo(f"step {done}/{steps} loss {mean_loss:.4f} | acc {accs} | "
                 f"{rate * tokens_per_step:,.0f} tok/s | ETA {format_duration((steps - done) / max(rate, 1e-9))}")
            window_t, window_step = now, done
            loss_sum.zero_()
    if progress.early_stopped:
        echo(f"early stop at step {progress.step}: no better {cfg.checkpoint.monitor} "
             f"in {cfg.checkpoint.patience} evaluations")
    if progress.stopped is not None:
        echo(f"stopped at step {progress.step} of {steps}: {progress.stopped.get('why', progress.stopped)}")


def _evaluate_and_record(parts: TrialParts, progress: Progress, metrics: MetricsLog, board, ckpt_dir: Path,
                         done: int, tokens_per_step: int) -> dict:
    cfg = parts.cfg
    row = {"step": done, **evaluate_all(parts),
           "lr": parts.optimizer.param_groups[0]["lr"], "tokens_seen": done * tokens_per_step,
           "wall_time": progress.elapsed}
    metrics.append(row)
    value = row[cfg.checkpoint.monitor]
    if is_better(value, progress.best_value, cfg.checkpoint.monitor):
        progress.best_value, progress.best_step, progress.evals_since_best = value, done, 0
        ckpt.save_best({"step": done, "model": parts.model.state_dict(), "metrics": row,
                        "monitor": cfg.checkpoint.monitor, "config": cfg.to_dict()}, ckpt_dir)
    else:
        progress.evals_since_best += 1
    scalars = {f"{s}/{m}": row[f"{s}_{m}"] for s in SETS for m in ("loss", "acc", "acc_last")}
    scalars[f"best/{cfg.checkpoint.monitor}"] = progress.best_value
    scalars["best/step"] = progress.best_step
    board.scalars(scalars, done)
    board.flush()
    return row
