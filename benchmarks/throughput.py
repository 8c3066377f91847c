"""Training throughput of one trial: steps/s, tokens/s, the split of step time, and MFU on CUDA.

    python benchmarks/throughput.py                 # CPU: configs A and B; CUDA: the paper's d2/d4/d6
    python benchmarks/throughput.py --configs A --steps 30 --reference

The split times each phase of a step on its own (synchronizing the device between phases):
batch building (the on-device sampler), forward+backward, optimizer, and evaluation amortized
over `eval.every` steps at the paper's cadence. `--reference` also times a plain implementation
of the same model in the usual nanoGPT style (logits at every position and a masked loss, RoPE
recomputed per call), on the same machine in the same run, for an equal-config comparison.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the reference model beside this file

from ray_grok.trial.config import load_config  # noqa: E402
from ray_grok.trial.flops import model_flops_per_step  # noqa: E402
from ray_grok.trial.run import build_parts, evaluate_all, forward_backward, optimizer_step  # noqa: E402

CPU_CONFIGS = {
    "A": ["model.width=128", "model.depth=2", "model.heads=4", "train.batch_size=64", "task.n_id=64", "task.alpha=0.6"],
    "B": ["model.width=512", "model.depth=2", "model.heads=4", "train.batch_size=64", "task.n_id=64", "task.alpha=0.6"],
}
GPU_CONFIGS = {f"paper-d{d}": [f"model.depth={d}", "task.n_id=512", "task.alpha=0.6"] for d in (2, 4, 6)}
# dense bf16 peak (no sparsity), for MFU
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, n: int) -> float:
    """Mean seconds per call of fn() over n calls."""
    sync(device)
    t = time.perf_counter()
    for _ in range(n):
        fn()
    sync(device)
    return (time.perf_counter() - t) / n


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def measure(name: str, overrides: list[str], steps: int, reference: bool) -> dict:
    cfg = load_config(None, overrides)
    parts = build_parts(cfg, auto_threads=0)  # runtime.threads 0: torch's default, every core
    dev = parts.device
    for s in range(3):  # warm-up (and compilation, when on)
        forward_backward(parts, parts.sampler.next())
        optimizer_step(parts, s)

    batch = parts.sampler.next()
    t_batch = timed(parts.sampler.next, dev, steps)
    t_fb = timed(lambda: forward_backward(parts, batch), dev, steps)
    parts.optimizer.zero_grad(set_to_none=True)
    forward_backward(parts, batch)  # grads present, as in a real step
    t_opt = timed(lambda: (parts.optimizer.step()), dev, steps)
    parts.optimizer.zero_grad(set_to_none=True)

    def full_step(state={"s": 0}):
        forward_backward(parts, parts.sampler.next())
        optimizer_step(parts, state["s"])
        state["s"] += 1

    t_step = timed(full_step, dev, steps)
    t_eval = timed(lambda: evaluate_all(parts), dev, 1)
    tokens = cfg.train.batch_size * cfg.seq_len
    eval_share = t_eval / (t_eval + cfg.eval.every * t_step)
    out = {
        "config": name, "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(), "width": cfg.model.width, "depth": cfg.model.depth,
        "batch": cfg.train.batch_size, "compile": cfg.runtime.compile,
        "s_per_step": t_step, "steps_per_s": 1 / t_step, "tokens_per_s": tokens / t_step,
        "batch_build_s": t_batch, "fwd_bwd_s": t_fb, "optimizer_s": t_opt,
        "batch_share": t_batch / t_step, "eval_s": t_eval, "eval_share_at_paper_cadence": eval_share,
        "model_gflops_per_s": model_flops_per_step(cfg) / t_step / 1e9,
    }
    peak = peak_flops(dev)
    if peak:
        out["mfu"] = model_flops_per_step(cfg) / t_step / peak
    if reference:
        from reference_model import reference_step_time

        out["reference_s_per_step"] = reference_step_time(cfg, parts, steps)
        out["speedup_vs_reference"] = out["reference_s_per_step"] / t_step
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="*", help="names among A, B, paper-d2, paper-d4, paper-d6")
    ap.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    ap.add_argument("--reference", action="store_true", help="also time the plain nanoGPT-style step")
    ap.add_argument("--set", dest="extra", action="append", default=[], help="extra config override")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    cuda = torch.cuda.is_available()
    table = {**CPU_CONFIGS, **GPU_CONFIGS}
    names = args.configs or (list(GPU_CONFIGS) if cuda else list(CPU_CONFIGS))
    results = []
    for name in names:
        device = ["runtime.device=cuda"] if cuda and name.startswith("paper") else ["runtime.device=cpu"]
        r = measure(name, table[name] + device + args.extra, args.steps, args.reference)
        results.append(r)
        line = (f"{name}: {r['s_per_step']:.4f} s/step, {r['tokens_per_s']:,.0f} tok/s, "
                f"{r['model_gflops_per_s']:.0f} model GFLOP/s | batch {100 * r['batch_share']:.2f}% "
                f"fwd+bwd {r['fwd_bwd_s']:.4f}s opt {r['optimizer_s']:.4f}s "
                f"eval {100 * r['eval_share_at_paper_cadence']:.2f}% of training at eval.every")
        if "mfu" in r:
            line += f" | MFU {100 * r['mfu']:.1f}%"
        if "reference_s_per_step" in r:
            line += f" | reference {r['reference_s_per_step']:.4f} s/step ({r['speedup_vs_reference']:.2f}x)"
        print(line, flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
