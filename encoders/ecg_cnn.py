"""A 1D residual CNN that turns a 12-lead ECG (B, 12, T) into a fixed number of tokens (B, N, D).

The design follows the 1D ResNets that do well on PTB-XL (Strodthoff et al. 2021, resnet1d):
a wide stem, residual blocks that halve time, then adaptive average pooling to N tokens. Pooling
keeps each token a summary of one stretch of the recording (10 s / N), so beat density — the
heart rate — is directly visible in every token.
"""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock1d(nn.Module):
    """Two convolutions with a skip connection; ``stride`` downsamples time."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        pad = kernel_size // 2
        self.body = nn.Sequential(
            nn.Conv1d(in_ch, out_ch, kernel_size, stride=stride, padding=pad, bias=False),
            nn.BatchNorm1d(out_ch),
            nn.ReLU(inplace=True),
            nn.Conv1d(out_ch, out_ch, kernel_size, padding=pad, bias=False),
            nn.BatchNorm1d(out_ch),
        )
        self.skip = (
            nn.Identity()
            if in_ch == out_ch and stride == 1
            else nn.Sequential(nn.Conv1d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm1d(out_ch))
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, T) -> (B, C_out, T / stride)"""
        return self.act(self.body(x) + self.skip(x))


class ECGCNNEncoder(nn.Module):
    """1D ResNet ECG encoder.

    Args:
        in_leads: number of input leads (12 for a standard ECG).
        widths: channels of each stage; every stage after the first halves time.
        kernel_size: convolution kernel length in samples.
        num_tokens: N, the number of tokens handed to the adapter.
    """

    def __init__(self, in_leads: int, widths: list[int], kernel_size: int, num_tokens: int) -> None:
        super().__init__()
        self.in_leads = in_leads
        self.num_tokens = num_tokens
        self.out_dim = widths[-1]
        self.stem = nn.Sequential(
            nn.Conv1d(in_leads, widths[0], 15, stride=2, padding=7, bias=False),
            nn.BatchNorm1d(widths[0]),
            nn.ReLU(inplace=True),
        )
        stages, prev = [], widths[0]
        for i, width in enumerate(widths):
            stages.append(ResidualBlock1d(prev, width, kernel_size, stride=1 if i == 0 else 2))
            prev = width
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool1d(num_tokens)
        self.norm = nn.LayerNorm(self.out_dim)

    def example_input(self, batch_size: int, num_samples: int = 1000) -> torch.Tensor:
        """A random input of the shape ``forward`` takes (for shape checks): (B, leads, T)"""
        return torch.randn(batch_size, self.in_leads, num_samples)

    def forward(self, signal: torch.Tensor) -> torch.Tensor:
        """(B, leads, T) -> (B, N, D)"""
        if signal.ndim != 3 or signal.shape[1] != self.in_leads:
            raise ValueError(f"ECG encoder expects (B, {self.in_leads}, T), got {tuple(signal.shape)}")
        features = self.stages(self.stem(signal))  # (B, D, T')
        tokens = self.pool(features).transpose(1, 2)  # (B, N, D)
        return self.norm(tokens)
