"""The paper's transformer: GPT-style decoder, RoPE, pre-LN, ReLU MLP, no biases, tied head.

Reads top to bottom in build order: rotary embedding, attention, MLP, block, model. No I/O.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import ModelConfig


class Rotary(nn.Module):
    """Rotary position embedding over the full head dimension (rotate-half layout)."""

    def __init__(self, head_dim: int, max_len: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_len, dtype=torch.float64), inv_freq)  # (T, hd/2)
        angles = torch.cat((angles, angles), dim=-1)  # (T, hd)
        # not persistent: derived from the config, so checkpoints stay small and exact
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, H, T, hd) at positions 0..T-1, or at `positions` (length T) when given."""
        if positions is None:
            cos, sin = self.cos[: x.shape[-2]], self.sin[: x.shape[-2]]
        else:
            cos, sin = self.cos[positions], self.sin[positions]
        cos, sin = cos.to(x.dtype), sin.to(x.dtype)
        x1, x2 = x.chunk(2, dim=-1)
        return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, max_len: int):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width, bias=False)
        self.proj = nn.Linear(cfg.width, cfg.width, bias=False)
        self.rotary = Rotary(cfg.width // cfg.heads, max_len, cfg.rope_theta)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)  # 3 x (B, H, T, hd)
        q, k = self.rotary(q), self.rotary(k)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # scale 1/sqrt(hd) by default
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def forward_at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The output at `positions` only: queries there, keys and values everywhere (B, P, C)."""
        B, T, C = x.shape
        H, hd = self.heads, C // self.heads
        w_q, w_kv = self.qkv.weight.split((C, 2 * C))
        q = F.linear(x[:, positions], w_q).view(B, -1, H, hd).transpose(1, 2)  # (B, H, P, hd)
        k, v = F.linear(x, w_kv).view(B, T, 2, H, hd).permute(2, 0, 3, 1, 4)  # 2 x (B, H, T, hd)
        q, k = self.rotary(q, positions), self.rotary(k)
        causal = positions[:, None] >= torch.arange(T, device=x.device)  # (P, T): query p sees keys <= p
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=causal)
        return self.proj(y.transpose(1, 2).reshape(B, -1, C))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.up = nn.Linear(cfg.width, 4 * cfg.width, bias=False)
        self.down = nn.Linear(4 * cfg.width, cfg.width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.relu(self.up(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, max_len: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width)
        self.attn = Attention(cfg, max_len)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.mlp = MLP(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))

    def forward_at(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """The block's output at `positions` only (B, P, C); the same numbers as forward(x)[:, positions]."""
        x_out = x[:, positions] + self.attn.forward_at(self.ln1(x), positions)
        return x_out + self.mlp(self.ln2(x_out))


class Transformer(nn.Module):
    """Reads token rows[:, :-1]; predicts the next token. The head is tied to the embedding."""

    def __init__(self, cfg: ModelConfig, vocab: int, max_len: int):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(vocab, cfg.width)
        self.blocks = nn.ModuleList(Block(cfg, max_len) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.width)
        self._init_weights()

    def _init_weights(self) -> None:
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                nn.init.normal_(module.weight, mean=0.0, std=self.cfg.init_std)
        # residual branches add up over depth: scale the MLP output projection down (the paper's init)
        for block in self.blocks:
            nn.init.normal_(block.mlp.down.weight, mean=0.0, std=self.cfg.init_std / math.sqrt(2 * self.cfg.depth))

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, vocab), or (B, len(positions), vocab) at those positions only.

        Only the z positions carry loss, so training asks for them alone. Then the last block
        computes its queries, attention output and MLP at those positions only (earlier blocks
        must run everywhere: later layers attend to every position). For depth 2 that removes
        about a quarter of the FLOPs of a step, with the same logits.
        """
        x = self.embed(tokens)  # (B, T, C)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block.forward_at(x, positions) if (i == last and positions is not None) else block(x)
        return F.linear(self.ln_f(x), self.embed.weight)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups: decay on every parameter with 2+ dims (the tied embedding too), none on LayerNorm."""
        decay = [p for p in self.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.parameters() if p.dim() < 2]
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]


def z_positions(n_examples: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Indices into the model's input (row[:-1]) whose next token is a z: 3k + 1, k = 0..n-1."""
    return torch.arange(n_examples, device=device) * 3 + 1
