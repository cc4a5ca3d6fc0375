"""A test-only encoder for the test-only ``labs`` modality: a small MLP from lab values to tokens.

It exists to prove that a modality the core has never heard of trains, checkpoints, restores and answers
(tests/test_third_modality.py); nothing outside tests/third_modality names it.
"""

from __future__ import annotations

import torch
from torch import nn


class LabsEncoder(nn.Module):
    """Lab values and which were measured -> ``num_tokens`` tokens of width ``width``.

    Args:
        num_analytes: how many lab values a record holds (A).
        width: token width (``out_dim``).
        num_tokens: tokens per record.
    """

    def __init__(self, num_analytes: int, width: int, num_tokens: int) -> None:
        super().__init__()
        self.out_dim, self.num_tokens = width, num_tokens
        self.net = nn.Sequential(nn.Linear(2 * num_analytes, width), nn.GELU(), nn.Linear(width, num_tokens * width))

    def example_input(self, batch_size: int) -> dict[str, torch.Tensor]:
        """An input of the kind ``forward`` takes: (B, A) values, all measured."""
        analytes = self.net[0].in_features // 2
        return {"values": torch.randn(batch_size, analytes), "measured": torch.ones(batch_size, analytes, dtype=torch.bool)}

    def forward(self, values: torch.Tensor, measured: torch.Tensor) -> torch.Tensor:
        """(M, A) standardised values and (M, A) bool -> (M, num_tokens, width)."""
        features = torch.cat([values * measured, measured.to(values.dtype)], dim=-1)  # (M, 2A)
        return self.net(features).view(values.shape[0], self.num_tokens, self.out_dim)
