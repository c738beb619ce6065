"""
Frozen visual encoders and decoders: images in, latent tokens [B, N, C] out, and back.

The model never sees pixels: every image or video frame is turned into N latent tokens of C channels by a frozen
encoder, flow matching runs in that latent space, and a frozen decoder maps generated latents back to pixels
(section 3). This file is the seam: every encoder has encode(images) -> [B, N, C] and decode(latents) -> images,
plus .tokens_per_frame and .latent_dim. The built-in one is raw pixels cut into patches.
"""
import numpy as np
import torch


class PixelPatches:
    """Raw pixels as latents: p x p patches of the image, scaled to [-1, 1], one token per patch (C = 3 p^2)."""

    def __init__(self, image_size=32, patch_size=4):
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of patch_size {patch_size}")
        self.image_size, self.patch_size = image_size, patch_size
        self.grid = image_size // patch_size
        self.tokens_per_frame, self.latent_dim = self.grid ** 2, 3 * patch_size ** 2

    @torch.no_grad()
    def encode(self, images):
        """uint8 [B, H, W, 3] (numpy or torch) -> float32 [B, N, C]."""
        x = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images)
        if x.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"expected images of shape [B, {self.image_size}, {self.image_size}, 3], "
                             f"got {list(x.shape)}")
        x = x.float() / 127.5 - 1
        g, p = self.grid, self.patch_size
        x = x.view(-1, g, p, g, p, 3).permute(0, 1, 3, 2, 4, 5)   # [B, gy, gx, py, px, 3]
        return x.reshape(-1, g * g, p * p * 3)

    @torch.no_grad()
    def decode(self, latents):
        """float [B, N, C] -> uint8 numpy [B, H, W, 3]."""
        g, p = self.grid, self.patch_size
        x = latents.float().cpu().view(-1, g, g, p, p, 3).permute(0, 1, 3, 2, 4, 5).reshape(-1, g * p, g * p, 3)
        return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()


def build_encoder(name="pixels", image_size=32, patch_size=4):
    if name == "pixels":
        return PixelPatches(image_size, patch_size)
    raise ValueError(f"unknown encoder {name!r}: available: 'pixels'")
