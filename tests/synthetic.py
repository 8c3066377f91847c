"""Synthetic results tables with the exact schema of ray_grok.schema, for tests and benchmarks.

No model is trained: every trial is given the four last-position accuracies of a phase (or explicit
ones) at its early-stopping step and at the end, and every other metric is derived from them the
way a real run relates them, so the tables are self-consistent:
  - acc_by_shot rises from chance (1/p) at 0 shots to acc_last at n_examples - 1 shots, most of the
    way by about a third of the examples (paper Fig. 1c); acc is its mean; loss is -log(acc).
  - a curves row at best_step equals the trial's best_* columns, the last row its final_* columns.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from ray_grok.trial.config import TrialConfig
from ray_grok.results.phases import PHASES
from ray_grok.trial.schema import DONE, EVAL_COLUMNS, METRICS_COLUMNS, SETS

HIGH, LOW = 0.95, 0.06  # LOW minus any jitter here stays near chance (1/29 = 0.034)
# Which sets a run of each phase fits, in SETS order (id_train, id_test, ood_train, ood_test).
# In the paper's o.o.d. memorization region (large n_id, small alpha) id_test is not fitted either.
PHASE_FITS = {
    "not fitted": (False, False, False, False),
    "id memorization": (True, False, False, False),
    "id generalization": (True, True, False, False),
    "ood memorization": (True, False, True, False),
    "ood generalization": (True, True, True, True),
}
BASE_CONFIG = TrialConfig().flat()
TRIAL_COLUMNS = (
    ("trial_id", "status", "retired", "steps_done", "wall_time", "best_step")
    + tuple(BASE_CONFIG)
    + tuple(f"final_{m}" for m in EVAL_COLUMNS)
    + tuple(f"best_{m}" for m in EVAL_COLUMNS)
    + tuple(f"{kind}_{m}" for m in ("ood_test_acc", "ood_test_acc_last") for kind in ("peak", "peak_step", "drop"))
)
CURVES_COLUMNS = ("trial_id",) + METRICS_COLUMNS

FIG1B_N_ID = (8, 16, 32, 64, 128, 256, 512)
FIG1B_ALPHA = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# The last seed of this cell lands in another phase, so the Fig. 1b sweep also exercises the vote.
FIG1B_DISSENT = {(128, 0.4): "id memorization"}


def fig1b_depth6_phase(n_id: int, alpha: float) -> str:
    """Paper Fig. 1b (depth 6), its phases as read off the figure."""
    if n_id >= 256:
        return "ood generalization" if alpha >= (0.4 if n_id == 256 else 0.3) - 1e-9 else "ood memorization"
    id_gen_from = {32: 0.7, 64: 0.6, 128: 0.4}.get(n_id)
    if id_gen_from is not None and alpha >= id_gen_from - 1e-9:
        return "id generalization"
    return "id memorization"


FIG1B_DEPTH6 = {(n, a): fig1b_depth6_phase(n, a) for n in FIG1B_N_ID for a in FIG1B_ALPHA}
# At depth 6 o.o.d. generalization is transient: at the end ood_test has decayed, ood_train not.
FIG1B_DEPTH6_FINAL = {c: ("ood memorization" if p == "ood generalization" else p) for c, p in FIG1B_DEPTH6.items()}


def accuracies(phase: str, high: float = HIGH, low: float = LOW) -> tuple[float, float, float, float]:
    """Last-position accuracies (SETS order) of a clean run of `phase`."""
    return tuple(high if fit else low for fit in PHASE_FITS[phase])  # type: ignore[return-value]


def by_shot_profile(n_examples: int) -> np.ndarray:
    """Shape of a k-shot curve: 0 at k = 0, 1 at k = n - 1, about 0.95 by k = n / 3."""
    k = np.arange(n_examples)
    shape = 1.0 - np.exp(-k / max(n_examples / 10.0, 1e-9))
    return shape / shape[-1] if n_examples > 1 else np.ones(1)


def trial(
    depth: int = 6,
    n_id: int = 512,
    alpha: float = 0.6,
    seed: int = 0,
    *,
    best: str | Sequence[float] = "ood generalization",
    final: str | Sequence[float] | None = None,
    status: str = DONE,
    best_step: int = 50_000,
) -> dict:
    """One trial's specification for `trials_frame`: a phase name or four acc_last values per time."""
    def acc(x: str | Sequence[float]) -> tuple[float, ...]:
        return accuracies(x) if isinstance(x, str) else tuple(float(v) for v in x)

    return {"depth": depth, "n_id": n_id, "alpha": alpha, "seed": seed, "status": status,
            "best_step": best_step, "best": acc(best), "final": acc(best if final is None else final)}


def trials_frame(specs: Iterable[dict], *, n_examples: int = 32, p: int = 29, steps: int = 200_000) -> pd.DataFrame:
    """A trials table (columns exactly TRIAL_COLUMNS) from `trial(...)` specifications."""
    specs = list(specs)
    return _trials_from_arrays(
        depth=np.array([s["depth"] for s in specs]), n_id=np.array([s["n_id"] for s in specs]),
        alpha=np.array([s["alpha"] for s in specs], dtype=float), seed=np.array([s["seed"] for s in specs]),
        best=np.array([s["best"] for s in specs], dtype=float).reshape(-1, 4),
        final=np.array([s["final"] for s in specs], dtype=float).reshape(-1, 4),
        status=np.array([s["status"] for s in specs], dtype=object),
        best_step=np.array([s["best_step"] for s in specs]),
        n_examples=n_examples, p=p, steps=steps,
    )


def _set_metrics(prefix: str, last: np.ndarray, n_examples: int, p: int, by_shot: bool = True) -> dict[str, object]:
    """{prefix}{metric} for every metric in EVAL_COLUMNS, from (N, 4) last-position accuracies.

    by_shot=False gives None for the list columns (the scalars are the same either way).
    """
    chance = 1.0 / p
    profile = by_shot_profile(n_examples)
    cols: dict[str, object] = {}
    for j, s in enumerate(SETS):
        x = last[:, j]
        acc = chance + (x - chance) * profile.mean()  # the mean of the by-shot curve; NaN stays NaN
        cols[f"{prefix}{s}_loss"] = -np.log(np.clip(acc, 1e-6, 1.0))
        cols[f"{prefix}{s}_acc"] = acc
        cols[f"{prefix}{s}_acc_last"] = x
        cols[f"{prefix}{s}_acc_by_shot"] = chance + (x[:, None] - chance) * profile if by_shot else None
    return {prefix + m: cols[prefix + m] for m in EVAL_COLUMNS}  # the schema's column order


def _trials_from_arrays(*, depth, n_id, alpha, seed, best, final, status, best_step,
                        n_examples: int, p: int, steps: int) -> pd.DataFrame:
    """Vectorized core of every trials table here: one row per element of the arrays."""
    n = len(depth)
    cols: dict[str, object] = {
        "trial_id": [f"d{d}_n{k}_a{a:g}_s{s}" for d, k, a, s in zip(depth, n_id, alpha, seed)],
        "status": status,
        "retired": np.zeros(n, dtype=bool),
        "steps_done": np.where(status == DONE, steps, steps // 2),
        "wall_time": np.full(n, 3600.0),
        "best_step": best_step,
    }
    config = {k: [v] * n for k, v in BASE_CONFIG.items()}
    config.update({"model.depth": depth, "task.n_id": n_id, "task.alpha": alpha, "seed": seed,
                   "task.p": np.full(n, p), "task.n_examples": np.full(n, n_examples),
                   "train.steps": np.full(n, steps)})
    cols.update(config)
    for prefix, last in (("final_", final), ("best_", best)):
        metrics = _set_metrics(prefix, last, n_examples, p)
        for name, value in metrics.items():
            # by-shot cells are Python lists of floats, as pyarrow reads list<double> back to pylist
            cols[name] = value.tolist() if name.endswith("by_shot") else value
    for m in ("ood_test_acc", "ood_test_acc_last"):  # the curve of fig1b_depth6_curves peaks at best_step
        peak = np.fmax(cols[f"best_{m}"], cols[f"final_{m}"])
        cols[f"peak_{m}"], cols[f"peak_step_{m}"], cols[f"drop_{m}"] = peak, best_step, peak - cols[f"final_{m}"]
    frame = pd.DataFrame(cols)
    assert tuple(frame.columns) == TRIAL_COLUMNS
    return frame


def fig1b_depth6_trials(seeds: int = 3, jitter: float = 0.03, rng: int = 0) -> pd.DataFrame:
    """The depth-6 sweep of Fig. 1b: 7 n_id x 7 alpha cells x `seeds` seeds.

    Accuracies jitter around HIGH/LOW (never near 0.5); o.o.d. generalization is transient (ood_test
    decays below 0.5 by the end); with 3+ seeds the cells of FIG1B_DISSENT get one dissenting seed.
    """
    gen = np.random.default_rng(rng)
    specs = []
    for (n_id, alpha), phase in FIG1B_DEPTH6.items():
        for s in range(seeds):
            p = FIG1B_DISSENT.get((n_id, alpha), phase) if seeds >= 3 and s == seeds - 1 else phase
            best = np.array(accuracies(p)) + gen.uniform(-jitter, jitter, 4)
            final = best.copy()
            if p == "ood generalization":
                final[3] = 0.2 + gen.uniform(-jitter, jitter)
            specs.append(trial(6, n_id, alpha, s, best=best, final=final, best_step=40_000 + 1000 * s))
    return trials_frame(specs)


def sweep_trials(n_trials: int, *, depths: Sequence[int] = (2, 4, 6), flip: float = 0.1, rng: int = 0) -> pd.DataFrame:
    """`n_trials` trials over depths x FIG1B_N_ID x FIG1B_ALPHA cells, seeds filling the rest.

    Every depth follows the Fig. 1b layout; a fraction `flip` of trials lands in a random phase so
    cells disagree, and about 1% fail, as in a real sweep.
    """
    gen = np.random.default_rng(rng)
    cells = np.array(list(itertools.product(depths, FIG1B_N_ID, FIG1B_ALPHA)), dtype=float)
    idx = np.arange(n_trials)
    cell = cells[idx % len(cells)]
    phase = np.array([FIG1B_DEPTH6[(int(n), round(a, 1))] for n, a in cells[:, 1:]])[idx % len(cells)]
    flipped = gen.random(n_trials) < flip
    phase[flipped] = gen.choice(PHASES, flipped.sum())
    fits = np.array([PHASE_FITS[p] for p in PHASES])[[PHASES.index(p) for p in phase]]
    best = np.where(fits, HIGH, LOW) + gen.uniform(-0.03, 0.03, (n_trials, 4))
    final = best.copy()
    final[:, 3] = np.where(phase == "ood generalization", 0.2, best[:, 3])
    best_step = 1000 * gen.integers(40, 199, n_trials)  # well inside the 200k-step run
    status = np.where(gen.random(n_trials) < 0.01, "failed", DONE).astype(object)
    return _trials_from_arrays(
        depth=cell[:, 0].astype(int), n_id=cell[:, 1].astype(int), alpha=cell[:, 2], seed=idx // len(cells),
        best=best, final=final, status=status, best_step=best_step, n_examples=32, p=29, steps=200_000)


def _arrow_lists(values: np.ndarray) -> pd.arrays.ArrowExtensionArray:
    """(R, n) floats as a list<double> column without one Python object per row (2M rows fit)."""
    rows, n = values.shape
    offsets = pa.array(np.arange(0, rows * n + 1, n, dtype=np.int32))
    return pd.arrays.ArrowExtensionArray(pa.ListArray.from_arrays(offsets, pa.array(values.ravel())))


def curves_frame(trials: pd.DataFrame, n_evals: int, *, by_shot: bool = True) -> pd.DataFrame:
    """A curves table (columns exactly CURVES_COLUMNS): `n_evals` evaluations per trial.

    Evaluations at step 1 and every steps/(n_evals-1) steps. Each accuracy rises smoothly from
    chance to its best_* value at best_step (snapped to the grid), then moves linearly to final_*.
    by_shot=False leaves the list columns empty (None) where only scalars matter.
    """
    n_tr = len(trials)
    steps_total = int(trials["train.steps"].iloc[0])
    p, n_examples = int(trials["task.p"].iloc[0]), int(trials["task.n_examples"].iloc[0])
    grid = np.linspace(0, steps_total, n_evals).round().astype(np.int64)
    grid[0] = 1
    best_i = np.clip(np.searchsorted(grid, trials["best_step"].to_numpy()), 1, n_evals - 1)[:, None]
    i = np.arange(n_evals)[None, :]
    rise = np.clip(i / best_i, 0, 1) ** 2 * (3 - 2 * np.clip(i / best_i, 0, 1))  # smoothstep, 1 at best
    after = np.clip((i - best_i) / np.maximum(n_evals - 1 - best_i, 1), 0, 1)  # 0 at best, 1 at end
    chance = 1.0 / p
    cols: dict[str, object] = {
        "trial_id": np.repeat(trials["trial_id"].to_numpy(), n_evals),
        "step": np.tile(grid, n_tr),
    }
    last = np.stack([
        np.where(i <= best_i, chance + (b - chance) * rise, b + (f - b) * after).ravel()
        for b, f in ((trials[f"best_{s}_acc_last"].to_numpy()[:, None],
                      trials[f"final_{s}_acc_last"].to_numpy()[:, None]) for s in SETS)
    ], axis=1)  # (trials * evals, 4)
    for name, value in _set_metrics("", last, n_examples, p, by_shot).items():
        if name.endswith("by_shot"):
            value = _arrow_lists(value) if by_shot else pd.Series([None] * len(last), dtype=object)
        cols[name] = value
    cols["lr"] = np.tile(np.linspace(1.5e-4, 1.5e-5, n_evals), n_tr)
    cols["tokens_seen"] = np.tile(grid * 1024 * 95, n_tr)
    cols["wall_time"] = np.tile(np.linspace(0, 3600, n_evals), n_tr)
    frame = pd.DataFrame(cols)
    assert tuple(frame.columns) == CURVES_COLUMNS
    return frame


def sweep(n_trials: int, n_evals: int, *, by_shot: bool = True, rng: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(trials, curves) of a synthetic sweep of `n_trials` x `n_evals` evaluations (the benchmark)."""
    trials = sweep_trials(n_trials, rng=rng)
    return trials, curves_frame(trials, n_evals, by_shot=by_shot)


def write_run_dir(root: Path, trials, curves) -> Path:
    """A sweep directory on disk with one trial directory per synthetic trial (config.json,
    status.json, metrics.parquet), as `ray-grok aggregate` finds it after a sweep."""
    import pyarrow.parquet as pq

    from ray_grok.trial.config import unflatten
    from ray_grok.io import write_json
    from ray_grok.trial.outputs import METRICS_WRITE_OPTIONS
    from ray_grok.trial.schema import METRICS_SCHEMA

    cfg_cols = [c for c in trials.columns if "." in c or c == "seed"]
    entries = []
    by_trial = curves.groupby("trial_id", sort=False)
    for rec in trials[["trial_id", "best_step", "steps_done", *cfg_cols]].to_dict("records"):
        out = root / "trials" / rec["trial_id"]
        out.mkdir(parents=True)
        write_json(out / "config.json", unflatten({k: rec[k] for k in cfg_cols}))
        write_json(out / "status.json", {"state": "done", "step": int(rec["steps_done"]),
                                         "best_step": int(rec["best_step"]), "wall_time": 1.0})
        rows = by_trial.get_group(rec["trial_id"])
        # as MetricsLog writes it: its write options, no pandas metadata
        table = pa.Table.from_pandas(rows[list(METRICS_SCHEMA.names)], schema=METRICS_SCHEMA, preserve_index=False)
        pq.write_table(table.replace_schema_metadata(None), out / "metrics.parquet", **METRICS_WRITE_OPTIONS)
        entries.append({"trial_id": rec["trial_id"], "dir": f"trials/{rec['trial_id']}", "coords": {},
                        "steps": int(rec["steps_done"])})
    write_json(root / "plan.json", {"name": "bench", "trials": entries})
    return root
