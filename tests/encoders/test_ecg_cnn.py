"""The ECG encoder: token shapes, input checks, and the lead mask as extra input channels."""

from __future__ import annotations

import pytest
import torch

from mmmed_encoders.ecg_cnn import ECGCNNEncoder


def encoder(lead_mask_input: bool) -> ECGCNNEncoder:
    torch.manual_seed(0)
    return ECGCNNEncoder(in_leads=12, widths=[8, 16, 16], kernel_size=5, num_tokens=6, lead_mask_input=lead_mask_input).eval()


@pytest.mark.parametrize("length", [250, 1000, 4096])
def test_any_length_gives_the_declared_tokens(length):
    net = encoder(True)
    assert net(torch.randn(3, 12, length), torch.ones(3, 12, dtype=torch.bool)).shape == (3, 6, 16)


def test_lead_mask_enters_as_one_constant_channel_per_lead():
    net = encoder(True)
    stem = net.stem[0]
    assert stem.in_channels == 24
    x = torch.randn(2, 12, 300)
    mask = torch.stack([torch.ones(12, dtype=torch.bool), torch.arange(12) % 3 != 0])
    # Independently: the stem convolution over [signal, mask broadcast over time].
    stacked = torch.cat([x, mask.float()[:, :, None].expand(-1, -1, 300)], dim=1)
    expected = net.stages(net.stem[2](net.stem[1](stem(stacked))))
    expected = net.norm(net.pool(expected).transpose(1, 2))
    torch.testing.assert_close(net(x, mask), expected, rtol=0, atol=1e-6)
    # Without a mask every lead counts as present.
    torch.testing.assert_close(net(x), net(x, torch.ones(2, 12, dtype=torch.bool)), rtol=0, atol=0)


def test_without_mask_input_the_stem_takes_the_leads_only():
    net = encoder(False)
    assert net.stem[0].in_channels == 12
    x = torch.randn(2, 12, 300)
    torch.testing.assert_close(net(x, torch.zeros(2, 12, dtype=torch.bool)), net(x), rtol=0, atol=0)


def test_wrong_lead_count_is_an_error():
    with pytest.raises(ValueError, match=r"ECG encoder expects \(B, 12, T\), got \(2, 8, 300\)"):
        encoder(True)(torch.randn(2, 8, 300))
