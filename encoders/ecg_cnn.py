"""A 1D residual CNN that turns a 12-lead ECG (B, 12, T) into a fixed number of tokens (B, N, D).

The design follows the 1D ResNets that do well on PTB-XL (Strodthoff et al. 2021, resnet1d):
a wide stem, residual blocks that halve time, then adaptive average pooling to N tokens. Pooling
keeps each token a summary of one stretch of the recording (10 s / N), so beat density — the
heart rate — is directly visible in every token.

With ``lead_mask_input`` the lead mask (which leads the record really had; missing ones arrive as
zeros) is fed as one extra constant input channel per lead, so a missing lead is distinguishable
from a flat one.
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
        lead_mask_input: feed the lead mask as ``in_leads`` extra input channels.
    """

    def __init__(self, in_leads: int, widths: list[int], kernel_size: int, num_tokens: int, lead_mask_input: bool) -> None:
        super().__init__()
        self.in_leads = in_leads
        self.num_tokens = num_tokens
        self.out_dim = widths[-1]
        self.lead_mask_input = lead_mask_input
        self.stem = nn.Sequential(
            nn.Conv1d(in_leads * (2 if lead_mask_input else 1), widths[0], 15, stride=2, padding=7, bias=False),
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

    def example_input(self, batch_size: int, num_samples: int = 1000) -> dict[str, torch.Tensor]:
        """A random input of the kind ``forward`` takes (for shape checks): signal (B, leads, T), lead mask (B, leads)"""
        return {
            "signal": torch.randn(batch_size, self.in_leads, num_samples),
            "lead_mask": torch.ones(batch_size, self.in_leads, dtype=torch.bool),
        }

    def forward(self, signal: torch.Tensor, lead_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, leads, T), lead mask (B, leads) bool -> (B, N, D)"""
        if signal.ndim != 3 or signal.shape[1] != self.in_leads:
            raise ValueError(f"ECG encoder expects (B, {self.in_leads}, T), got {tuple(signal.shape)}")
        if self.lead_mask_input:
            if lead_mask is None:
                lead_mask = torch.ones(signal.shape[:2], dtype=torch.bool, device=signal.device)
            mask = lead_mask.to(signal.dtype).unsqueeze(-1).expand_as(signal)  # (B, leads, T)
            signal = torch.cat([signal, mask], dim=1)  # (B, 2 * leads, T)
        features = self.stages(self.stem(signal))  # (B, D, T')
        tokens = self.pool(features).transpose(1, 2)  # (B, N, D)
        return self.norm(tokens)
