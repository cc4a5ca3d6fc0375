"""Projection adapters: map encoder tokens (B, N, D_enc) into the LLM's embedding space (B, N, D_llm).

Widths are never configured by hand: the model builder passes ``in_dim`` from the encoder and
``out_dim`` from the LLM's hidden size.
"""

from __future__ import annotations

import torch
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
