"""
Frozen visual encoders and decoders: images in, latent tokens [B, N, C] out, and back.

The model never sees pixels: every image or video frame is turned into N latent tokens of C channels by a frozen
encoder, flow matching runs in that latent space, and a frozen decoder maps generated latents back to pixels
(section 3). This file is the seam: every encoder has encode(images) -> [B, N, C] and decode(latents) -> images,
plus .tokens_per_frame and .latent_dim. The built-in one is raw pixels cut into patches.
"""
import os

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


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


# ----------------------------------------------------------------------------------------------------------------
# SigLIP 2 (section 3): the paper's encoder. A plain pre-LayerNorm ViT; its module names follow the Hugging Face
# layout, so the published vision tower loads as it is. The latents are the last layer's output *before*
# post_layernorm, normalised by a LayerNorm without affine parameters (RAE).

class SiglipAttention(nn.Module):
    def __init__(self, width, heads):
        super().__init__()
        self.heads = heads
        self.q_proj, self.k_proj = nn.Linear(width, width), nn.Linear(width, width)
        self.v_proj, self.out_proj = nn.Linear(width, width), nn.Linear(width, width)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = (p(x).view(B, N, self.heads, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        return self.out_proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))


class SiglipMLP(nn.Module):
    def __init__(self, width, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SiglipLayer(nn.Module):
    def __init__(self, width, heads, hidden, eps):
        super().__init__()
        self.layer_norm1, self.self_attn = nn.LayerNorm(width, eps=eps), SiglipAttention(width, heads)
        self.layer_norm2, self.mlp = nn.LayerNorm(width, eps=eps), SiglipMLP(width, hidden)

    def forward(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class SiglipVision(nn.Module):
    """Images normalised to [-1, 1], [B, 3, H, W] -> latents [B, (H/p)(W/p), width]."""

    def __init__(self, width=1152, depth=27, heads=16, hidden=4304, patch=14, image_size=224, eps=1e-6):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.patch_embedding = nn.Conv2d(3, width, patch, stride=patch)
        self.embeddings.position_embedding = nn.Embedding((image_size // patch) ** 2, width)
        self.encoder = nn.Module()
        self.encoder.layers = nn.ModuleList(SiglipLayer(width, heads, hidden, eps) for _ in range(depth))
        self.eps = eps

    @classmethod
    def from_config(cls, config):
        """Sizes from a Hugging Face config.json (a SigLIP one, or its vision_config)."""
        v = config.get("vision_config", config)
        return cls(v["hidden_size"], v["num_hidden_layers"], v["num_attention_heads"], v["intermediate_size"],
                   v["patch_size"], v["image_size"], v.get("layer_norm_eps", 1e-6))

    def load_vision_tower(self, state):
        """Load a Hugging Face SigLIP state dict: the vision tower's tensors only (the text tower, the final
        post_layernorm and the pooling head are not used)."""
        if any(k.startswith("vision_model.") for k in state):   # a whole SiglipModel: keep its vision tower
            state = {k.removeprefix("vision_model."): v for k, v in state.items() if k.startswith("vision_model.")}
        state = {k: v for k, v in state.items() if not k.startswith(("post_layernorm.", "head."))}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(f"not a SigLIP vision tower: missing {missing[:3]}, unexpected {unexpected[:3]}")
        return self

    def forward(self, pixels):
        x = self.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
        x = x + self.embeddings.position_embedding.weight
        for layer in self.encoder.layers:
            x = layer(x)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps)


# ----------------------------------------------------------------------------------------------------------------
# Weights from the Hugging Face hub: downloaded once into a cache, resumable, never half-written.

HUB = os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def cache_dir():
    return os.environ.get("BLM_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "beyond-lm"))


def hub_file(repo, filename, revision="main", size=None, sha256=None, endpoint=None):
    """Local path of repo/filename, downloading it first if the cache lacks it. A partial download (.part) is
    resumed with an HTTP Range request; the file is renamed into place only once its size (and sha256, if given)
    check out. HF_TOKEN is sent for gated repositories; BLM_OFFLINE=1 only reads the cache."""
    import requests
    from tqdm import tqdm
    dest = os.path.join(cache_dir(), repo, revision, filename)
    if os.path.exists(dest):
        return dest
    url = f"{endpoint or HUB}/{repo}/resolve/{revision}/{filename}"
    if os.environ.get("BLM_OFFLINE") == "1":
        raise SystemExit(f"offline and {dest} is not in the cache: download {url} there, or unset BLM_OFFLINE")
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    part = dest + ".part"
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    if os.environ.get("HF_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['HF_TOKEN']}"
    try:
        with requests.get(url, headers=headers, stream=True, timeout=60) as r:
            if r.status_code in (401, 403):
                raise SystemExit(f"{url}: access denied ({r.status_code}); for a gated repository accept its terms "
                                 f"on the hub and set HF_TOKEN")
            if r.status_code == 404:
                raise SystemExit(f"{url}: not found (404); check the repository and file names")
            if r.status_code == 416:   # the partial file is already complete
                total = have
            else:
                r.raise_for_status()
                if r.status_code == 200:   # the server ignored the range: start again
                    have = 0
                total = have + int(r.headers.get("Content-Length", 0)) if "Content-Length" in r.headers else None
                with open(part, "ab" if have else "wb") as f, tqdm(total=total, initial=have, unit="B",
                                                                     unit_scale=True, desc=filename) as bar:
                    for chunk in r.iter_content(1 << 16):   # small chunks: a cut loses little
                        f.write(chunk)
                        bar.update(len(chunk))
    except requests.RequestException as e:
        raise SystemExit(f"download of {url} failed ({e.__class__.__name__}); run again to resume from "
                         f"{os.path.getsize(part) if os.path.exists(part) else 0} bytes")
    got = os.path.getsize(part)
    if (total is not None and got != total) or (size is not None and got != size):
        os.remove(part)
        raise SystemExit(f"{url}: got {got} bytes, expected {size or total}; the partial file was removed, run again")
    if sha256 is not None:
        import hashlib
        digest = hashlib.sha256()
        with open(part, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        if digest.hexdigest() != sha256:
            os.remove(part)
            raise SystemExit(f"{url}: sha256 mismatch; the file was removed, run again")
    os.replace(part, dest)
    return dest


def build_encoder(name="pixels", image_size=32, patch_size=4):
    if name == "pixels":
        return PixelPatches(image_size, patch_size)
    raise ValueError(f"unknown encoder {name!r}: available: 'pixels'")
