import math

import pytest
import torch

from ray_grok.trial.config import ModelConfig, TrainConfig
from ray_grok.trial.model import Transformer, z_positions
from ray_grok.trial.optim import build_optimizer, lr_multiplier


def small(depth=2, width=64, heads=4):
    return Transformer(ModelConfig(depth=depth, width=width, heads=heads), vocab=29, max_len=95)


def test_shapes_and_z_positions():
    m = small()
    tokens = torch.randint(0, 29, (3, 95))
    assert m(tokens).shape == (3, 95, 29)
    pos = z_positions(32)
    assert pos[:3].tolist() == [1, 4, 7] and pos[-1].item() == 94
    assert torch.allclose(m(tokens, pos), m(tokens)[:, pos], atol=1e-6)


@pytest.mark.parametrize("depth,expected", [(2, 6.3e6), (4, 12.6e6), (6, 18.9e6)])
def test_parameter_counts_match_the_paper(depth, expected):
    m = Transformer(ModelConfig(depth=depth), vocab=29, max_len=95)
    n = sum(p.numel() for p in m.parameters())
    embedding = 29 * 512
    assert abs((n - embedding) - expected) / expected < 0.005, n


def test_causality():
    torch.manual_seed(0)
    m = small()
    tokens = torch.randint(0, 29, (2, 95))
    changed = tokens.clone()
    changed[:, 60] = (changed[:, 60] + 1) % 29
    a, b = m(tokens), m(changed)
    assert torch.allclose(a[:, :60], b[:, :60], atol=1e-6)  # earlier logits unchanged
    assert not torch.allclose(a[:, 60:], b[:, 60:], atol=1e-4)  # later ones do see it


def test_head_is_tied_to_the_embedding_and_no_biases():
    m = small()
    names = [n for n, _ in m.named_parameters()]
    assert not any(n.endswith("bias") and "ln" not in n for n in names)
    assert "head.weight" not in names
    with torch.no_grad():
        m.embed.weight[3].zero_()
    x = torch.randint(0, 29, (1, 10))
    assert torch.all(m(x)[..., 3] == 0)  # the output row of token 3 is the embedding row 3


def test_init_scheme():
    torch.manual_seed(0)
    m = Transformer(ModelConfig(depth=6), vocab=29, max_len=95)
    assert m.blocks[0].attn.qkv.weight.std().item() == pytest.approx(0.02, rel=0.02)
    assert m.blocks[0].mlp.down.weight.std().item() == pytest.approx(0.02 / math.sqrt(12), rel=0.02)


def test_decay_groups():
    m = small()
    opt = build_optimizer(m, TrainConfig())
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 2.0 and no_decay["weight_decay"] == 0.0
    assert any(p is m.embed.weight for p in decay["params"])
    assert all(p.dim() == 1 for p in no_decay["params"]) and len(no_decay["params"]) == 2 * (2 * 2 + 1)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8


def test_schedule_matches_the_spec():
    t = TrainConfig()  # 200k steps, 10k warm-up, 0.01 -> 1.0, cosine to 0.1
    assert lr_multiplier(0, t) == pytest.approx(0.01)
    assert lr_multiplier(5_000, t) == pytest.approx(0.01 + 0.99 * 0.5)
    assert lr_multiplier(10_000, t) == pytest.approx(1.0)
    mid = 10_000 + (199_999 - 10_000) / 2
    assert lr_multiplier(int(mid), t) == pytest.approx(0.55, abs=1e-4)
    assert lr_multiplier(199_999, t) == pytest.approx(0.1)
    other = TrainConfig(steps=1000, warmup_steps=100, warmup_start=0.1, final_lr_ratio=0.0)
    assert lr_multiplier(0, other) == pytest.approx(0.1) and lr_multiplier(999, other) == pytest.approx(0.0)
