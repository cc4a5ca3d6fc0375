"""Projection adapters: map encoder tokens (B, N, D_enc) into the LLM's embedding space (B, N, D_llm).

Widths are never configured by hand: the model builder passes ``in_dim`` from the encoder and
``out_dim`` from the LLM's hidden size. Per-token projectors keep the token count N; an adapter that
changes it (``PerceiverResampler``: N -> num_queries) says so through ``num_output_tokens``, which the
builder reads to size the prompt's placeholder runs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LinearProjector(nn.Module):
    """One linear map per token (LLaVA-1.0 style)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D_enc) -> (B, N, D_llm)"""
        return self.proj(tokens)


class MLPProjector(nn.Module):
    """Two linear maps with a GELU between them (LLaVA-1.5 ``mlp2x_gelu``)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int | None = None) -> None:
        super().__init__()
        hidden_dim = hidden_dim or out_dim
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, out_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D_enc) -> (B, N, D_llm)"""
        return self.net(tokens)


def num_output_tokens(adapter: nn.Module, num_input_tokens: int) -> int:
    """LLM tokens ``adapter`` makes of ``num_input_tokens`` encoder tokens (per-token projectors keep the count)."""
    count = getattr(adapter, "num_output_tokens", None)
    return count(num_input_tokens) if count is not None else num_input_tokens


def sinusoidal_positions(num_positions: int, dim: int, device: torch.device | None = None) -> torch.Tensor:
    """Fixed sine/cosine position codes (Vaswani et al. 2017): sin in even, cos in odd channels. (N, dim)"""
    positions = torch.arange(num_positions, dtype=torch.float32, device=device)[:, None]  # (N, 1)
    freqs = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim))
    angles = positions * freqs  # (N, ceil(dim / 2))
    codes = torch.zeros(num_positions, dim, device=device)
    codes[:, 0::2] = torch.sin(angles)
    codes[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return codes


class PerceiverLayer(nn.Module):
    """One resampler block: the latents cross-attend to [tokens; latents], then a feed-forward.

    Keys and values come from the encoder tokens concatenated with the latents themselves (Flamingo),
    so the queries also see each other, the job of BLIP-2's Q-Former self-attention. Pre-norm residuals.
    """

    def __init__(self, dim: int, num_heads: int, ff_mult: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"Resampler width {dim} is not divisible by num_heads={num_heads}; set adapter.hidden_dim or adapter.num_heads")
        self.num_heads = num_heads
        self.norm_tokens = nn.LayerNorm(dim)
        self.norm_latents = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_kv = nn.Linear(dim, 2 * dim, bias=False)
        self.to_out = nn.Linear(dim, dim, bias=False)
        self.ff = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, ff_mult * dim, bias=False), nn.GELU(), nn.Linear(ff_mult * dim, dim, bias=False)
        )

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        """(B, L, d) -> (B, h, L, d / h)"""
        return t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

    def forward(self, tokens: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """tokens (B, N, d), latents (B, Q, d) -> latents (B, Q, d)"""
        normed = self.norm_latents(latents)
        context = torch.cat([self.norm_tokens(tokens), normed], dim=1)  # (B, N + Q, d)
        q = self.to_q(normed)  # (B, Q, d)
        k, v = self.to_kv(context).chunk(2, dim=-1)  # (B, N + Q, d) each
        attended = F.scaled_dot_product_attention(self._heads(q), self._heads(k), self._heads(v))  # (B, h, Q, d / h)
        latents = latents + self.to_out(attended.transpose(1, 2).flatten(2))
        return latents + self.ff(latents)


class PerceiverResampler(nn.Module):
    """A fixed number of learned queries cross-attend to the encoder tokens (Flamingo's Perceiver Resampler).

    (B, N, D_enc) -> (B, num_queries, D_llm) whatever N is, so the LLM reads ``num_queries`` tokens per
    signal: many ViT patches become few tokens, and the prompt length no longer follows the encoder.

    Args:
        in_dim: encoder token width (from the encoder).
        out_dim: LLM hidden size (from the LLM).
        num_queries: learned queries = tokens handed to the LLM per signal.
        depth: resampler blocks.
        num_heads: attention heads; must divide the resampler width.
        hidden_dim: resampler width; None: ``in_dim`` (resample at the encoder's width, then one linear
            map into the LLM, as BLIP-2 does: the LLM's width, often 2-4k, enters only that last map).
        ff_mult: feed-forward expansion factor.
        positional: add fixed sinusoidal codes of the token index to the encoder tokens. Attention is
            blind to order: without codes the output is invariant to permuting the encoder tokens, and
            the ECG encoder's time-pooled tokens do not carry their position themselves.
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_queries: int,
        depth: int,
        num_heads: int,
        hidden_dim: int | None = None,
        ff_mult: int = 4,
        positional: bool = True,
    ) -> None:
        super().__init__()
        hidden_dim = hidden_dim or in_dim
        self.num_queries = num_queries
        self.positional = positional
        self.input_proj = nn.Linear(in_dim, hidden_dim) if hidden_dim != in_dim else nn.Identity()
        # Unit scale, like the layer-normed tokens they are compared with.
        self.queries = nn.Parameter(torch.randn(num_queries, hidden_dim))
        self.layers = nn.ModuleList(PerceiverLayer(hidden_dim, num_heads, ff_mult) for _ in range(depth))
        self.norm_out = nn.LayerNorm(hidden_dim)
        self.proj_out = nn.Linear(hidden_dim, out_dim)

    def num_output_tokens(self, num_input_tokens: int) -> int:
        """LLM tokens per signal: ``num_queries``, whatever the encoder gives."""
        return self.num_queries

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, N, D_enc) -> (B, num_queries, D_llm)"""
        x = self.input_proj(tokens)  # (B, N, d)
        if self.positional:
            x = x + sinusoidal_positions(x.shape[1], x.shape[2], x.device).to(x.dtype)
        latents = self.queries.expand(x.shape[0], -1, -1)  # (B, Q, d)
        for layer in self.layers:
            latents = layer(x, latents)
        return self.proj_out(self.norm_out(latents))
