"""XrayViTEncoder: a tiny random timm ViT (2 blocks) on small grayscale images."""

from __future__ import annotations

import hydra
import pytest
import torch

from mmmed_encoders.xray_vit import XrayViTEncoder

MODEL = "vit_tiny_patch16_224"  # patch 16, width 192; pretrained_cfg mean = std = 0.5 per channel
WIDTH = 192


def make_encoder(img_size: int = 64, num_tokens: int | None = 4) -> XrayViTEncoder:
    torch.manual_seed(0)
    return XrayViTEncoder(MODEL, pretrained=False, img_size=img_size, num_tokens=num_tokens, model_kwargs={"depth": 2})


def images(batch: int = 2, side: int = 64) -> torch.Tensor:
    """Random films in [0, 1]. (B, 1, side, side)"""
    return torch.rand(batch, 1, side, side, generator=torch.Generator().manual_seed(1))


def reference_patch_tokens(enc: XrayViTEncoder, x: torch.Tensor) -> torch.Tensor:
    """Patch tokens computed without the wrapper: normalise by 0.5 / 0.5, drop the class token. (B, P, D)"""
    assert tuple(enc.vit.pretrained_cfg["mean"]) == (0.5, 0.5, 0.5)
    assert tuple(enc.vit.pretrained_cfg["std"]) == (0.5, 0.5, 0.5)
    return enc.vit.forward_features((x - 0.5) / 0.5)[:, 1:]


def test_patch_embedding_takes_one_channel_and_width_is_the_vit_width():
    enc = make_encoder()
    assert enc.vit.patch_embed.proj.weight.shape == (WIDTH, 1, 16, 16)
    assert enc.out_dim == WIDTH
    assert enc.grid == (4, 4)


@torch.no_grad()
def test_no_pooling_returns_every_patch_token():
    enc = make_encoder(img_size=64, num_tokens=None).eval()
    x = images()
    out = enc(x)
    assert enc.num_tokens == 16
    assert out.shape == (2, 16, WIDTH)
    torch.testing.assert_close(out, reference_patch_tokens(enc, x), rtol=1e-6, atol=1e-6)


@torch.no_grad()
def test_four_tokens_are_2x2_block_means_in_raster_order():
    enc = make_encoder(img_size=64, num_tokens=4).eval()
    x = images()
    out = enc(x)
    assert enc.num_tokens == 4
    assert out.shape == (2, 4, WIDTH)
    patches = reference_patch_tokens(enc, x)  # (B, 16, D), patch (row r, column c) at index 4 r + c
    blocks = {
        "top-left": [0, 1, 4, 5],
        "top-right": [2, 3, 6, 7],
        "bottom-left": [8, 9, 12, 13],
        "bottom-right": [10, 11, 14, 15],
    }
    expected = torch.stack([patches[:, idx].mean(dim=1) for idx in blocks.values()], dim=1)  # (B, 4, D)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_one_token_is_the_mean_and_sixteen_tokens_are_the_patches():
    x = images()
    one = make_encoder(num_tokens=1).eval()
    torch.testing.assert_close(one(x), reference_patch_tokens(one, x).mean(dim=1, keepdim=True), rtol=1e-5, atol=1e-6)
    sixteen = make_encoder(num_tokens=16).eval()
    torch.testing.assert_close(sixteen(x), reference_patch_tokens(sixteen, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("num_tokens", [3, 25])
def test_num_tokens_must_be_a_square_no_larger_than_the_patch_count(num_tokens):
    with pytest.raises(ValueError, match=rf"square number <= 16 patches, got {num_tokens}"):
        make_encoder(img_size=64, num_tokens=num_tokens)


@pytest.mark.parametrize("shape", [(2, 3, 64, 64), (2, 1, 32, 32), (1, 64, 64)])
def test_wrong_input_shape_names_the_expected_shape(shape):
    enc = make_encoder(img_size=64)
    with pytest.raises(ValueError, match=r"expects \(B, 1, 64, 64\), got " + repr(shape).replace("(", r"\(").replace(")", r"\)")):
        enc(torch.zeros(shape))


def test_gradients_reach_the_vit_in_train_mode():
    enc = make_encoder(img_size=32, num_tokens=None).train()
    out = enc(images(side=32))
    assert out.shape == (2, 4, WIDTH)
    out.sum().backward()
    grad = enc.vit.patch_embed.proj.weight.grad
    assert grad is not None
    assert grad.abs().sum() > 0
    assert all(p.grad is not None for p in enc.vit.blocks.parameters())


def test_hydra_encoder_xray_builds_this_encoder_with_matching_data_and_prompt(compose):
    cfg = compose(["encoder=xray", "model=tiny"])
    enc = hydra.utils.instantiate(cfg.modalities.xray.net)
    assert isinstance(enc, XrayViTEncoder)
    assert enc.num_tokens == cfg.modalities.xray.net.num_tokens == 16
    assert enc.img_size == cfg.modalities.xray.net.img_size
    assert cfg.data.dataset.images.size == cfg.modalities.xray.net.img_size
    assert "radiology" in cfg.prompt.system
    with torch.no_grad():
        out = enc.eval()(torch.rand(1, 1, enc.img_size, enc.img_size))
    assert out.shape == (1, 16, enc.out_dim)


def test_hydra_encoder_ecg_selects_the_cardiology_prompt(compose):
    cfg = compose(["encoder=ecg", "model=tiny"])
    assert "cardiology" in cfg.prompt.system
    assert "radiology" not in cfg.prompt.system
