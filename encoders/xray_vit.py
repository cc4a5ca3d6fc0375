"""A timm Vision Transformer that turns a grayscale radiograph (B, 1, H, W) into N tokens (B, N, D).

``timm.create_model(name, pretrained=..., in_chans=1, num_classes=0)``: with hub weights, timm
folds the RGB patch embedding into one channel; offline, ``pretrained=false`` trains from scratch.
``forward_features`` gives prefix (class/register) tokens plus the patch grid; the patch grid is
average-pooled to a ``g x g`` grid of tokens in raster order (top-left first), so each token keeps
a fixed region of the film and laterality stays explicit for the LLM.

Images arrive in [0, 1] (1 = white); they are normalised with the checkpoint's mean/std (the
channel average, as timm does when it folds RGB weights into one channel).
"""

from __future__ import annotations

import math

import timm
import torch
import torch.nn.functional as F
from torch import nn


class XrayViTEncoder(nn.Module):
    """timm ViT image encoder with optional pooling of patch tokens.

    Args:
        model_name: a timm ViT, e.g. ``vit_base_patch16_224.augreg_in21k`` (hub) or ``vit_tiny_patch16_224``.
        pretrained: load hub weights (needs the network or a filled Hugging Face cache).
        img_size: input side in pixels; must match the data's ``images.size``.
        num_tokens: tokens handed to the adapter: a square number up to the patch count
            (patch tokens are pooled to ``sqrt(N) x sqrt(N)``), or None for every patch token.
        model_kwargs: extra ``timm.create_model`` arguments (e.g. ``depth``, ``drop_path_rate``).
    """

    def __init__(
        self,
        model_name: str,
        pretrained: bool,
        img_size: int,
        num_tokens: int | None,
        model_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        self.vit = timm.create_model(
            model_name, pretrained=pretrained, in_chans=1, num_classes=0, img_size=img_size, **dict(model_kwargs or {})
        )
        self.img_size = img_size
        self.grid = tuple(self.vit.patch_embed.grid_size)  # (gh, gw) patches
        patches = self.grid[0] * self.grid[1]
        if num_tokens is None:
            self.pool_side = None
            self.num_tokens = patches
        else:
            side = math.isqrt(num_tokens)
            if side * side != num_tokens or num_tokens > patches:
                raise ValueError(f"num_tokens must be a square number <= {patches} patches, got {num_tokens}")
            self.pool_side = side
            self.num_tokens = num_tokens
        self.out_dim = self.vit.embed_dim
        cfg = self.vit.pretrained_cfg
        self.register_buffer("mean", torch.tensor(sum(cfg["mean"]) / len(cfg["mean"])), persistent=False)
        self.register_buffer("std", torch.tensor(sum(cfg["std"]) / len(cfg["std"])), persistent=False)

    def example_input(self, batch_size: int) -> torch.Tensor:
        """A random input of the shape ``forward`` takes (for shape checks): (B, 1, S, S) in [0, 1]"""
        return torch.rand(batch_size, 1, self.img_size, self.img_size)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) in [0, 1] -> (B, N, D)"""
        if image.ndim != 4 or image.shape[1] != 1 or tuple(image.shape[-2:]) != (self.img_size, self.img_size):
            raise ValueError(f"X-ray encoder expects (B, 1, {self.img_size}, {self.img_size}), got {tuple(image.shape)}")
        tokens = self.vit.forward_features((image - self.mean) / self.std)  # (B, P + prefix, D)
        patches = tokens[:, self.vit.num_prefix_tokens :]  # (B, P, D)
        if self.pool_side is None:
            return patches
        grid = patches.transpose(1, 2).reshape(patches.shape[0], -1, *self.grid)  # (B, D, gh, gw)
        pooled = F.adaptive_avg_pool2d(grid, self.pool_side)  # (B, D, g, g)
        return pooled.flatten(2).transpose(1, 2)  # (B, g*g, D)
