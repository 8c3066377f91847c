"""Tasks, the alpha split, the four evaluation sets and the on-device batch sampler.

A task is (a, b) in Z_p^2 and maps an input (x, y) to z = a*x + b*y mod p. A row is n_examples
examples of one task, flattened to tokens x0 y0 z0 x1 y1 z1 ... The whole data set is a few
thousand integers, so batches are built with tensor ops on the training device: no DataLoader,
no per-example Python.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import TaskDrawError
from .config import TaskConfig, split_sizes
from .schema import SETS


# ---------------------------------------------------------------------------------------------
# Task sets
# ---------------------------------------------------------------------------------------------

def rectangular_tasks(p: int, n_id: int, rng: np.random.Generator, max_tries: int = 200_000) -> list[tuple[int, int]]:
    """n_id tasks in rectangles {(a,b), (a,y'), (x',b), (x',y')}, as the authors drew them.

    x' is not in {a, b} and y' not in {a, b, x'}; a rectangle touching a task already drawn is
    redrawn, so the result is exactly n_id // 4 disjoint rectangles.
    """
    chosen: set[tuple[int, int]] = set()
    order: list[tuple[int, int]] = []
    for _ in range(max_tries):
        if len(order) == n_id:
            return order
        a, b = (int(v) for v in rng.integers(0, p, size=2))
        x = int(rng.choice([v for v in range(p) if v not in (a, b)]))
        y = int(rng.choice([v for v in range(p) if v not in (a, b, x)]))
        rect = [(a, b), (a, y), (x, b), (x, y)]
        if any(t in chosen for t in rect):
            continue
        chosen.update(rect)
        order.extend(rect)
    if len(order) == n_id:
        return order
    raise TaskDrawError(
        f"the rectangular rule placed only {len(order)} of task.n_id={n_id} tasks for p={p} "
        f"in {max_tries} draws; use fewer tasks or task.rule=random"
    )


def random_tasks(p: int, n_id: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """n_id distinct task vectors drawn uniformly from Z_p^2."""
    flat = rng.choice(p * p, size=n_id, replace=False)
    return [(int(i) // p, int(i) % p) for i in flat]


def ood_tasks(p: int, id_tasks: list[tuple[int, int]], n_ood: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """n_ood tasks drawn from those not used for pre-training."""
    used = set(id_tasks)
    rest = [(a, b) for a in range(p) for b in range(p) if (a, b) not in used]
    idx = rng.choice(len(rest), size=n_ood, replace=False)
    return [rest[int(i)] for i in idx]


def alpha_split(p: int, alpha: float, data_seed: int) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    """One permutation of the p^2 inputs (its own seed): first round(p^2 alpha) train, rest test."""
    perm = np.random.default_rng(data_seed).permutation(p * p)
    n_train, _ = split_sizes(p, alpha)
    inputs = [(int(i) // p, int(i) % p) for i in perm]
    return inputs[:n_train], inputs[n_train:]


@dataclass(frozen=True)
class TaskSets:
    """Everything that defines a trial's data, as plain lists (saved to tasks.json)."""

    p: int
    id_tasks: list[tuple[int, int]]
    ood_tasks: list[tuple[int, int]]
    train_inputs: list[tuple[int, int]]
    test_inputs: list[tuple[int, int]]

    def to_json(self) -> dict:
        return {
            "p": self.p,
            "id_tasks": [list(t) for t in self.id_tasks],
            "ood_tasks": [list(t) for t in self.ood_tasks],
            "train_inputs": [list(t) for t in self.train_inputs],
            "test_inputs": [list(t) for t in self.test_inputs],
        }

    def set_parts(self, name: str) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """(tasks, inputs) of one of the four sets."""
        tasks = self.id_tasks if name.startswith("id_") else self.ood_tasks
        inputs = self.train_inputs if name.endswith("_train") else self.test_inputs
        return tasks, inputs


def make_task_sets(task: TaskConfig, seed: int) -> TaskSets:
    """The trial's task draw (seeded by the trial seed) and the shared alpha split (data_seed)."""
    rng = np.random.default_rng([seed, 0x7A5C])  # a stream of its own: init and sampling use others
    if task.rule == "rectangular":
        id_t = rectangular_tasks(task.p, task.n_id, rng)
    else:
        id_t = random_tasks(task.p, task.n_id, rng)
    ood_t = ood_tasks(task.p, id_t, task.n_ood, rng)
    train_in, test_in = alpha_split(task.p, task.alpha, task.data_seed)
    return TaskSets(task.p, id_t, ood_t, train_in, test_in)


# ---------------------------------------------------------------------------------------------
# Rows: tensor ops only
# ---------------------------------------------------------------------------------------------

def build_rows(tasks: torch.Tensor, inputs: torch.Tensor, p: int) -> torch.Tensor:
    """tasks (R, 2), inputs (R, n, 2) -> token rows (R, 3n): x y z per example, z = a x + b y mod p."""
    z = (tasks[:, None, 0] * inputs[..., 0] + tasks[:, None, 1] * inputs[..., 1]) % p  # (R, n)
    return torch.stack((inputs[..., 0], inputs[..., 1], z), dim=-1).flatten(1)


class BatchSampler:
    """Training batches on the device: every batch holds rows_per_task rows of every task.

    Examples in a row are drawn uniformly with replacement from the train inputs. With
    shared=True (the authors' loader) a batch draws rows_per_task input sequences and every task
    gets all of them, so the rows of two tasks differ only in their z tokens; otherwise every row
    draws its own. Its only state is a torch.Generator on the same device, saved in checkpoints so
    a resume draws the same batches as an uninterrupted run.
    """

    def __init__(self, sets: TaskSets, rows_per_task: int, n_examples: int, device: torch.device, seed: int,
                 shared: bool = True):
        self.p = sets.p
        self.n_examples = n_examples
        self.rows_per_task = rows_per_task
        self.shared = shared
        self.inputs = torch.tensor(sets.train_inputs, dtype=torch.long, device=device)  # (N, 2)
        tasks = torch.tensor(sets.id_tasks, dtype=torch.long, device=device)  # (T, 2)
        self.row_tasks = tasks.repeat_interleave(rows_per_task, dim=0)  # (B, 2), fixed
        self.row_task_ids = torch.arange(len(tasks), device=device).repeat_interleave(rows_per_task)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)

    def next(self) -> torch.Tensor:
        """A (B, 3 * n_examples) long tensor of token rows."""
        n_seqs = self.rows_per_task if self.shared else len(self.row_tasks)
        idx = torch.randint(len(self.inputs), (n_seqs, self.n_examples),
                            generator=self.generator, device=self.inputs.device)
        if self.shared:
            # rows are grouped by task (repeat_interleave), so tiling gives row i sequence i % rows_per_task
            idx = idx.repeat(len(self.row_tasks) // self.rows_per_task, 1)
        return build_rows(self.row_tasks, self.inputs[idx], self.p)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])


@dataclass(frozen=True)
class EvalSet:
    """Fixed evaluation rows of one set, and the task index of each row (for per-task averages)."""

    name: str
    rows: torch.Tensor  # (R, 3n) long
    task_ids: torch.Tensor  # (R,) long, in 0..n_tasks-1
    n_tasks: int


def make_eval_sets(sets: TaskSets, rows_per_set: int, n_examples: int, device: torch.device, seed: int) -> list[EvalSet]:
    """The four evaluation sets, drawn once so curves are comparable across steps.

    Each set gets the same number of rows of each of its tasks (at least one), every example of a
    row from the set's inputs.
    """
    gen = torch.Generator(device="cpu")
    gen.manual_seed(seed)
    out = []
    for name in SETS:
        tasks_l, inputs_l = sets.set_parts(name)
        tasks = torch.tensor(tasks_l, dtype=torch.long)
        inputs = torch.tensor(inputs_l, dtype=torch.long)
        per_task = max(1, rows_per_set // len(tasks))
        task_ids = torch.arange(len(tasks)).repeat_interleave(per_task)
        idx = torch.randint(len(inputs), (len(task_ids), n_examples), generator=gen)
        rows = build_rows(tasks[task_ids], inputs[idx], sets.p)
        out.append(EvalSet(name, rows.to(device), task_ids.to(device), len(tasks)))
    return out
