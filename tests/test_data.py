from collections import Counter

import numpy as np
import pytest
import torch

from ray_grok.trial.config import load_config
from ray_grok.trial.data import (
    BatchSampler, TaskDrawError, alpha_split, make_eval_sets, make_task_sets, rectangular_tasks,
)


def rectangles_of(tasks):
    """Group an ordered rectangular draw into its rectangles of 4."""
    return [tasks[i:i + 4] for i in range(0, len(tasks), 4)]


@pytest.mark.parametrize("p,n_id", [(29, 8), (29, 512), (11, 40), (5, 4)])
def test_rectangular_rule_structure_and_counts(p, n_id):
    tasks = rectangular_tasks(p, n_id, np.random.default_rng(1))
    assert len(tasks) == n_id == len(set(tasks))
    for (a, b), (a2, y), (x, b2), (x2, y2) in rectangles_of(tasks):
        assert a == a2 and b == b2 and x == x2 and y == y2  # the 4 corners of one rectangle
        assert x not in (a, b) and y not in (a, b, x)
        assert all(0 <= v < p for v in (a, b, x, y))


def test_rectangular_rule_fails_clearly_when_it_cannot_place_tasks():
    with pytest.raises(TaskDrawError, match="task.n_id=24"):
        rectangular_tasks(5, 24, np.random.default_rng(0), max_tries=2000)


@pytest.mark.parametrize("rule", ["rectangular", "random"])
def test_task_sets(rule):
    cfg = load_config(None, [f"task.rule={rule}", "task.n_id=128", "task.alpha=0.6"])
    s = make_task_sets(cfg.task, seed=3)
    assert len(s.id_tasks) == 128 == len(set(s.id_tasks))
    assert len(s.ood_tasks) == 256 == len(set(s.ood_tasks))
    assert not set(s.id_tasks) & set(s.ood_tasks)
    # train/test inputs disjoint, together all p^2, sized round(p^2 * alpha)
    assert not set(s.train_inputs) & set(s.test_inputs)
    assert set(s.train_inputs) | set(s.test_inputs) == {(x, y) for x in range(29) for y in range(29)}
    assert len(s.train_inputs) == round(841 * 0.6) == 505


def test_task_draw_follows_the_seed_and_split_its_own_seed():
    cfg = load_config(None, ["task.n_id=64"])
    a, b, c = (make_task_sets(cfg.task, seed) for seed in (0, 0, 1))
    assert a.id_tasks == b.id_tasks and a.ood_tasks == b.ood_tasks
    assert a.id_tasks != c.id_tasks
    assert a.train_inputs == c.train_inputs  # the alpha split does not depend on the trial seed
    assert alpha_split(29, 0.6, 1)[0] != a.train_inputs


def check_rows(rows, p, allowed_inputs, tasks_of_row):
    x, y, z = rows[:, 0::3], rows[:, 1::3], rows[:, 2::3]
    a, b = tasks_of_row[:, :1], tasks_of_row[:, 1:]
    assert torch.equal(z, (a * x + b * y) % p)
    allowed = {tuple(t) for t in allowed_inputs}
    assert {(int(u), int(v)) for u, v in zip(x.flatten(), y.flatten())} <= allowed


def test_batches_balanced_one_task_per_row_and_from_train_inputs():
    cfg = load_config(None, ["task.n_id=16", "train.batch_size=64"])
    s = make_task_sets(cfg.task, seed=0)
    sampler = BatchSampler(s, cfg.rows_per_task, cfg.task.n_examples, torch.device("cpu"), seed=0)
    rows = sampler.next()
    assert rows.shape == (64, 96) and rows.dtype == torch.long
    assert Counter(map(tuple, sampler.row_tasks.tolist())) == {t: 4 for t in s.id_tasks}
    check_rows(rows, 29, s.train_inputs, sampler.row_tasks)
    # every row is one task: a row's (x, y, z) triples fit exactly the task assigned to it,
    # and no other pre-training task explains all of them
    for r, (a, b) in zip(rows, sampler.row_tasks.tolist()):
        fits = [t for t in s.id_tasks if all((t[0] * r[i] + t[1] * r[i + 1]) % 29 == r[i + 2] for i in range(0, 96, 3))]
        assert fits == [(a, b)]


def test_shared_batch_inputs_give_every_task_the_same_input_sequences():
    cfg = load_config(None, ["task.n_id=8", "train.batch_size=32"])
    s = make_task_sets(cfg.task, seed=0)
    rows = {}
    for mode in ("shared", "independent"):
        sampler = BatchSampler(s, cfg.rows_per_task, 32, torch.device("cpu"), seed=0, shared=mode == "shared")
        rows[mode] = sampler.next().view(8, 4, 32, 3)  # (task, row of the task, example, x/y/z)
        check_rows(rows[mode].view(32, 96), 29, s.train_inputs, sampler.row_tasks)
    xy = rows["shared"][..., :2]
    # every task sees the 4 sequences of task 0, in the same order; only z differs between tasks
    assert torch.equal(xy, xy[:1].expand_as(xy))
    assert not torch.equal(rows["shared"][..., 2], rows["shared"][:1, ..., 2].expand(8, 4, 32))
    # the 4 rows of one task are not copies of each other, and independent rows are not shared
    assert len({tuple(r.flatten().tolist()) for r in xy[0]}) == 4
    ind = rows["independent"][..., :2]
    assert not torch.equal(ind, ind[:1].expand_as(ind))


def test_sampler_state_round_trip_gives_the_same_batches():
    cfg = load_config(None, ["task.n_id=8", "train.batch_size=16"])
    s = make_task_sets(cfg.task, seed=0)
    one = BatchSampler(s, cfg.rows_per_task, 32, torch.device("cpu"), seed=5)
    one.next()
    state = one.state_dict()
    expected = one.next()
    two = BatchSampler(s, cfg.rows_per_task, 32, torch.device("cpu"), seed=99)
    two.load_state_dict(state)
    assert torch.equal(two.next(), expected)


def test_four_eval_sets_use_their_tasks_and_inputs():
    cfg = load_config(None, ["task.n_id=32"])
    s = make_task_sets(cfg.task, seed=0)
    eval_sets = make_eval_sets(s, rows_per_set=512, n_examples=32, device=torch.device("cpu"), seed=0)
    assert [e.name for e in eval_sets] == ["id_train", "id_test", "ood_train", "ood_test"]
    for es in eval_sets:
        tasks, inputs = s.set_parts(es.name)
        assert es.n_tasks == len(tasks)
        assert Counter(es.task_ids.tolist()) == {i: max(1, 512 // len(tasks)) for i in range(len(tasks))}
        check_rows(es.rows, 29, inputs, torch.tensor(tasks)[es.task_ids])
