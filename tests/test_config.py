import dataclasses

import pytest
import yaml

from ray_grok.errors import ConfigError
from ray_grok.trial.config import (
    VALID_KEYS, ModelConfig, TaskConfig, TrainConfig, TrialConfig, config_from_dict, describe_keys, load_config,
    parse_override,
)


def test_defaults_are_the_papers():
    c = TrialConfig()
    assert (c.task.p, c.task.n_ood, c.task.n_examples, c.task.rule, c.task.data_seed) == (29, 256, 32, "rectangular", 0)
    assert (c.model.width, c.model.heads, c.model.rope_theta, c.model.init_std) == (512, 4, 10000.0, 0.02)
    t = c.train
    assert (t.steps, t.batch_size, t.lr, t.warmup_steps) == (200_000, 1024, 1.5e-4, 10_000)
    assert (t.warmup_start, t.final_lr_ratio, t.weight_decay) == (0.01, 0.1, 2.0)
    assert (t.beta1, t.beta2, t.eps) == (0.9, 0.98, 1e-8)
    assert (c.eval.every, c.eval.batches) == (1000, 16)
    assert c.checkpoint.monitor == "ood_test_acc_last"
    assert c.seq_len == 95


def test_a_config_built_in_python_is_checked_like_one_from_a_file():
    with pytest.raises(ConfigError, match=r"task.alpha must be in \(0, 1\), got 1.5"):
        TaskConfig(alpha=1.5)
    with pytest.raises(ConfigError, match="train.batch_size must be a multiple of task.n_id = 48"):
        TrialConfig(task=TaskConfig(n_id=48), train=TrainConfig(batch_size=100))
    with pytest.raises(ConfigError, match="model.width must be divisible by model.heads = 3, got 512"):
        dataclasses.replace(TrialConfig().model, heads=3)
    with pytest.raises(ConfigError, match="model.depth must be an integer, got 'two'"):
        ModelConfig(depth="two")
    # values are coerced as from YAML: a whole float for an int, a nested mapping for a section
    cfg = TrialConfig(model=ModelConfig(depth=2.0), task={"n_id": 64})
    assert type(cfg.model.depth) is int and cfg.model.depth == 2 and cfg.task == TaskConfig(n_id=64)


def test_yaml_file_plus_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text(yaml.safe_dump({"task": {"p": 31, "n_id": 64}, "model": {"depth": 2}}))
    c = load_config(f, ["task.alpha=0.7", "train.lr=1e-3", "runtime.compile=false", "seed=3"])
    assert (c.task.p, c.task.n_id, c.task.alpha, c.model.depth, c.seed) == (31, 64, 0.7, 2, 3)
    assert c.train.lr == 1e-3 and c.runtime.compile == "off"
    assert c.model.width == 512  # untouched keys keep their defaults


def test_every_key_is_described_with_help():
    rows = describe_keys()
    assert [k for k, _, _ in rows] == list(VALID_KEYS)
    assert all(help_text for _, _, help_text in rows)
    for key in ("task.p", "task.n_id", "task.alpha", "task.rule", "task.n_ood", "task.data_seed", "model.depth",
                "model.width", "model.heads", "train.steps", "train.batch_size", "train.lr", "train.warmup_steps",
                "train.weight_decay", "eval.every", "seed", "runtime.device", "runtime.compile"):
        assert key in VALID_KEYS


def test_round_trip_through_dict():
    c = load_config(None, ["task.n_id=64", "model.depth=4"])
    assert config_from_dict(c.to_dict()) == c
    assert c.config_hash() == config_from_dict(c.to_dict()).config_hash()
    # runtime settings do not change the experiment's identity
    assert load_config(None, ["task.n_id=64", "model.depth=4", "runtime.device=cpu"]).config_hash() == c.config_hash()
    assert load_config(None, ["task.n_id=64", "model.depth=2"]).config_hash() != c.config_hash()


INVALID = [
    # (overrides, words the message must contain)
    (["task.p=30"], ["task.p", "30", "prime"]),
    (["task.alpha=1.5"], ["task.alpha", "1.5", "(0, 1)"]),
    (["task.alpha=0"], ["task.alpha", "0"]),
    (["task.n_id=600"], ["task.n_id", "600", "585"]),
    (["task.n_id=30"], ["task.n_id", "30", "multiple of 4"]),
    (["task.n_id=48", "train.batch_size=100"], ["train.batch_size", "100", "48"]),
    (["model.width=500", "model.heads=3"], ["model.width", "500", "heads"]),
    (["model.depth=0"], ["model.depth", "0"]),
    (["train.steps=0"], ["train.steps", "0"]),
    (["train.steps=-5"], ["train.steps", "-5"]),
    (["runtime.device=tpu"], ["runtime.device", "tpu"]),
    (["task.rule=square"], ["task.rule", "square", "rectangular"]),
    (["task.n_ood=0"], ["task.n_ood", "0"]),
    (["train.lr=abc"], ["train.lr", "abc"]),
    (["model.depth=2.5"], ["model.depth", "2.5", "integer"]),
    (["checkpoint.monitor=ood_acc"], ["checkpoint.monitor", "ood_acc", "ood_test_acc_last"]),
    (["eval.every=0"], ["eval.every", "0"]),
    (["task.nid=8"], ["task.nid", "task.n_id"]),  # unknown key lists the valid ones
    (["bogus"], ["bogus", "KEY=VALUE"]),
]


@pytest.mark.parametrize("overrides,words", INVALID, ids=[" ".join(o) for o, _ in INVALID])
def test_invalid_configs_are_rejected_naming_the_field(overrides, words):
    with pytest.raises(ConfigError) as exc:
        load_config(None, overrides)
    for word in words:
        assert word in str(exc.value)


def test_unknown_key_in_yaml_names_the_file_and_key(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("model:\n  layers: 4\n")
    with pytest.raises(ConfigError, match=r"bad.yaml.*model.layers.*model.depth"):
        load_config(f)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("/nonexistent/c.yaml")


def test_override_values_are_read_as_yaml():
    assert parse_override("task.alpha=0.25") == ("task.alpha", 0.25)
    assert parse_override("task.rule=random") == ("task.rule", "random")
    assert parse_override("runtime.compile=true") == ("runtime.compile", True)
