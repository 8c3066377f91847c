"""A plain implementation of the same transformer, for an equal-config speed comparison.

Written in the common nanoGPT style that research code (the authors' included) follows: the head
runs at every position and the loss is masked to the z positions, RoPE angles are recomputed on
every call in the interleaved layout, and q, k, v are split and transposed one by one. Same
sizes, same FLOPs of the blocks, same optimizer; only the implementation differs.
"""
from __future__ import annotations

import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def rotate_interleaved(x: torch.Tensor, theta: float) -> torch.Tensor:
    T, d = x.shape[-2], x.shape[-1]
    freqs = 1.0 / theta ** (torch.arange(0, d, 2, device=x.device).float() / d)
    angles = torch.outer(torch.arange(T, device=x.device).float(), freqs).repeat_interleave(2, dim=-1)
    pairs = x.unflatten(-1, (d // 2, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return x * angles.cos() + rotated * angles.sin()


class Block(nn.Module):
    def __init__(self, width: int, heads: int, theta: float):
        super().__init__()
        self.heads, self.theta = heads, theta
        self.ln_1, self.ln_2 = nn.LayerNorm(width), nn.LayerNorm(width)
        self.to_qkv = nn.Linear(width, 3 * width, bias=False)
        self.o = nn.Linear(width, width, bias=False)
        self.c_fc = nn.Linear(width, 4 * width, bias=False)
        self.c_proj = nn.Linear(4 * width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.to_qkv(self.ln_1(x)).split(C, dim=2)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        q, k = rotate_interleaved(q, self.theta), rotate_interleaved(k, self.theta)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.o(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.c_proj(F.relu(self.c_fc(self.ln_2(x))))


class ReferenceModel(nn.Module):
    def __init__(self, vocab: int, width: int, depth: int, heads: int, theta: float):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.h = nn.ModuleList(Block(width, heads, theta) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx)
        for block in self.h:
            x = block(x)
        return self.lm_head(self.ln_f(x))


def reference_step_time(cfg, parts, steps: int) -> float:
    """Seconds per training step of the reference model on the same batches and device."""
    m = cfg.model
    model = ReferenceModel(cfg.task.p, m.width, m.depth, m.heads, m.rope_theta).to(parts.device)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2),
                            weight_decay=cfg.train.weight_decay)
    mask = torch.zeros(cfg.seq_len, dtype=torch.bool, device=parts.device)
    mask[parts.positions] = True

    def step() -> None:
        batch = parts.sampler.next()
        with parts.autocast():
            logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.float()[:, mask].flatten(0, 1), batch[:, 1:][:, mask].flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    if parts.device.type == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    if parts.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t) / steps
