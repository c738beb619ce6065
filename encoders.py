"""
Frozen visual encoders and decoders: images in, latent tokens [B, N, C] out, and back.

The model never sees pixels: every image or video frame is turned into N latent tokens of C channels by a frozen
encoder, flow matching runs in that latent space, and a frozen decoder maps generated latents back to pixels
(section 3). This file is the seam: every encoder has encode(images) -> [B, N, C] and decode(latents) -> images,
plus .tokens_per_frame and .latent_dim. In order: raw pixel patches (the built-in one, nothing to download); the
semantic encoders (SigLIP 2, the paper's; DINOv2, WebSSL) and the RAE decoder that turns their latents back into
pixels; VAEs; build_encoder. Downloads and weight files are plumbing/hub.py's, pre-encoding shards
plumbing/realdata.py's.
"""
import re

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from plumbing.hub import read_weights, weights_folder


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
# Semantic encoders (section 3): SigLIP 2 (the paper's choice), DINOv2 and WebSSL, all plain pre-LayerNorm ViTs.
# Latents: the last layer's output *before* the model's final norm, through an affine-free LayerNorm (RAE). One block
# class serves every ViT; `load_published` maps each family's published key names onto it.

class ViTBlock(nn.Module):
    def __init__(self, width, heads, hidden, eps, approximate="none", layer_scale=False):
        super().__init__()
        self.heads, self.approximate = heads, approximate
        self.norm1, self.norm2 = nn.LayerNorm(width, eps=eps), nn.LayerNorm(width, eps=eps)
        self.q, self.k, self.v, self.o = (nn.Linear(width, width) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)
        self.ls1, self.ls2 = (nn.Parameter(torch.ones(width)) if layer_scale else None for _ in range(2))

    def forward(self, x):
        B, N, C = x.shape
        h = self.norm1(x)
        q, k, v = (p(h).view(B, N, self.heads, -1).transpose(1, 2) for p in (self.q, self.k, self.v))
        a = self.o(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, C))
        x = x + (a if self.ls1 is None else a * self.ls1)
        m = self.fc2(F.gelu(self.fc1(self.norm2(x)), approximate=self.approximate))
        return x + (m if self.ls2 is None else m * self.ls2)


BLOCK_KEYS = {  # published names of a block's parts (SigLIP, DINOv2, ViT-MAE; old and new layouts) -> ViTBlock's
    "layer_norm1": "norm1", "layernorm_before": "norm1", "layer_norm2": "norm2", "layernorm_after": "norm2",
    "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.out_proj": "o",
    "attention.attention.query": "q", "attention.attention.key": "k", "attention.attention.value": "v",
    "attention.output.dense": "o", "attention.q_proj": "q", "attention.k_proj": "k", "attention.v_proj": "v",
    "attention.o_proj": "o", "intermediate.dense": "fc1", "output.dense": "fc2", "mlp.fc1": "fc1", "mlp.fc2": "fc2",
    "layer_scale1.lambda1": "ls1", "layer_scale2.lambda1": "ls2"}
_BLOCK_KEY = re.compile(r"(?:encoder\.layers?|decoder_layers)\.(\d+)\.(.+?)(\.weight|\.bias)?")


def load_published(module, state, unused, what):
    """Load a published state dict into one of our ViTs; `unused` key prefixes (text tower, heads, final norms)
    are dropped, and anything else that does not fit is an error that says what was expected."""
    renamed = {}
    for key, value in state.items():
        m = _BLOCK_KEY.fullmatch(key)
        key = f"blocks.{m[1]}.{BLOCK_KEYS.get(m[2], m[2])}{m[3] or ''}" if m else key
        if not key.startswith(unused):
            renamed[key] = value
    missing, unexpected = module.load_state_dict(renamed, strict=False)
    if missing or unexpected:
        raise ValueError(f"not a {what}: missing {missing[:3]}, unexpected {unexpected[:3]}")
    return module


SIGLIP_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                       patch_size=16, image_size=224, layer_norm_eps=1e-6)
DINO_DEFAULTS = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, patch_size=14,
                     image_size=224, layer_norm_eps=1e-6)


class SiglipVision(nn.Module):
    """SigLIP (2) vision tower; images normalised with mean = std = 0.5, [B, 3, H, W] -> [B, (H/p)(W/p), width]."""

    def __init__(self, width=1152, depth=27, heads=16, hidden=4304, patch=14, image_size=224, eps=1e-6):
        super().__init__()
        self.embeddings = nn.Module()
        self.embeddings.patch_embedding = nn.Conv2d(3, width, patch, stride=patch)
        self.embeddings.position_embedding = nn.Embedding((image_size // patch) ** 2, width)
        self.blocks = nn.ModuleList(ViTBlock(width, heads, hidden, eps, "tanh") for _ in range(depth))
        self.width, self.patch, self.image_size, self.eps = width, patch, image_size, eps

    @classmethod
    def from_config(cls, config):
        """Sizes from a Hugging Face config.json (a SigLIP one, or its vision_config), which omits default values."""
        v = {**SIGLIP_DEFAULTS, **config.get("vision_config", config)}
        return cls(v["hidden_size"], v["num_hidden_layers"], v["num_attention_heads"], v["intermediate_size"],
                   v["patch_size"], v["image_size"], v["layer_norm_eps"])

    def load_published(self, state):
        """A whole SiglipModel's tensors or its vision tower's; the text tower, post_layernorm and head are unused."""
        state = {k.removeprefix("vision_model."): v for k, v in state.items() if not k.startswith("text_model.")}
        return load_published(self, state, ("post_layernorm.", "head.", "logit_"), "SigLIP vision tower")

    def forward(self, pixels):
        x = self.embeddings.patch_embedding(pixels).flatten(2).transpose(1, 2)
        x = x + self.embeddings.position_embedding.weight
        for block in self.blocks:
            x = block(x)
        return F.layer_norm(x, x.shape[-1:], eps=self.eps)


class DinoVision(nn.Module):
    """DINOv2 / WebSSL: a CLS token, optional register tokens, layer scale, position embeddings interpolated to the
    input's grid. Images normalised with ImageNet mean/std; returns the patch tokens only (CLS, registers dropped)."""

    def __init__(self, width=1024, depth=24, heads=16, hidden=4096, patch=14, image_size=518, registers=0, eps=1e-6):
        super().__init__()
        e = self.embeddings = nn.Module()
        e.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        e.position_embeddings = nn.Parameter(torch.zeros(1, 1 + (image_size // patch) ** 2, width))
        e.register_tokens = nn.Parameter(torch.zeros(1, registers, width)) if registers else None
        e.patch_embeddings = nn.Module()
        e.patch_embeddings.projection = nn.Conv2d(3, width, patch, stride=patch)
        self.blocks = nn.ModuleList(ViTBlock(width, heads, hidden, eps, layer_scale=True) for _ in range(depth))
        self.width, self.patch, self.registers, self.eps = width, patch, registers, eps
        self.image_size = 224   # the paper's input: 16 x 16 patches of 14 px

    @classmethod
    def from_config(cls, config):
        c = {**DINO_DEFAULTS, **config}
        if c.get("use_swiglu_ffn"):
            raise ValueError("DINOv2 with a SwiGLU FFN (giant) is not supported: use a ViT-S/B/L checkpoint")
        w = c["hidden_size"]
        return cls(w, c["num_hidden_layers"], c["num_attention_heads"], int(w * c["mlp_ratio"]), c["patch_size"],
                   c["image_size"], c.get("num_register_tokens", 0), c["layer_norm_eps"])

    def load_published(self, state):
        return load_published(self, state, ("embeddings.mask_token", "layernorm."), "DINOv2 model")

    def position_embedding(self, gh, gw):
        pos = self.embeddings.position_embeddings
        n = int((pos.shape[1] - 1) ** 0.5)
        if (gh, gw) == (n, n):
            return pos
        grid = pos[:, 1:].reshape(1, n, n, -1).permute(0, 3, 1, 2).float()
        # bicubic, as DINOv2's own code; the models with registers were trained with antialiasing on
        grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", align_corners=False, antialias=self.registers > 0)
        return torch.cat([pos[:, :1], grid.to(pos.dtype).flatten(2).transpose(1, 2)], 1)

    def forward(self, pixels):
        e = self.embeddings
        x = e.patch_embeddings.projection(pixels).flatten(2).transpose(1, 2)
        x = torch.cat([e.cls_token.expand(len(x), -1, -1), x], 1)
        x = x + self.position_embedding(pixels.shape[2] // self.patch, pixels.shape[3] // self.patch)
        if self.registers:
            x = torch.cat([x[:, :1], e.register_tokens.expand(len(x), -1, -1), x[:, 1:]], 1)
        for block in self.blocks:
            x = block(x)
        x = x[:, 1 + self.registers:]
        return F.layer_norm(x, x.shape[-1:], eps=self.eps)


# ----------------------------------------------------------------------------------------------------------------
# The RAE decoder: a ViT-MAE-style decoder from a frozen encoder's latents back to pixels: latents projected, a CLS
# token prepended, fixed 2-D sin-cos positions added; each output token predicts its p x p patch.

def sincos_positions(width, grid):
    """MAE's fixed 2-D sin-cos embedding [1 + grid^2, width] (a zero row for CLS): half the channels encode the
    column, half the row; each half is sin then cos of the coordinate at geometrically spaced frequencies."""
    omega = 1.0 / 10000 ** (torch.arange(width // 4, dtype=torch.float64) / (width // 4))
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64), torch.arange(grid, dtype=torch.float64),
                                indexing="ij")
    halves = [torch.outer(c.flatten(), omega) for c in (cols, rows)]
    emb = torch.cat([f(h) for h in halves for f in (torch.sin, torch.cos)], 1)
    return torch.cat([torch.zeros(1, width, dtype=torch.float64), emb]).float()


class RAEDecoder(nn.Module):
    def __init__(self, latent_dim=1152, width=1152, depth=28, heads=16, hidden=4096, patch=14, grid=16, eps=1e-12):
        super().__init__()
        self.decoder_embed = nn.Linear(latent_dim, width)
        self.trainable_cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.register_buffer("positions", sincos_positions(width, grid), persistent=False)
        self.blocks = nn.ModuleList(ViTBlock(width, heads, hidden, eps) for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(width, eps=eps)
        self.decoder_pred = nn.Linear(width, patch * patch * 3)
        self.patch, self.grid = patch, grid

    @classmethod
    def from_published(cls, config, state, grid=16):
        """Sizes from the weights themselves where they tell, heads and eps from the config."""
        state = {k.removeprefix("module.").removeprefix("decoder."): v for k, v in state.items()}
        if "decoder_embed.weight" not in state:
            raise ValueError(f"not an RAE decoder: no decoder_embed.weight among {list(state)[:3]}")
        width, latent_dim = state["decoder_embed.weight"].shape
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("decoder_layers."))
        hidden = next(v.shape[0] for k, v in state.items() if k.endswith(("intermediate.dense.weight", "fc1.weight")))
        patch = int((state["decoder_pred.weight"].shape[0] // 3) ** 0.5)
        decoder = cls(latent_dim, width, depth, config.get("decoder_num_attention_heads", 16), hidden, patch, grid,
                      config.get("layer_norm_eps", 1e-12))
        if "decoder_pos_embed" in state:   # saved positions win: libraries disagree on which axis comes first
            decoder.positions = state["decoder_pos_embed"].reshape(decoder.positions.shape).float()
        return load_published(decoder, state, ("decoder_pos_embed", "mask_token"), "RAE decoder")

    def forward(self, latents):
        """[B, grid^2, C] -> [B, 3, grid * p, grid * p], in the encoder's normalised pixel space."""
        x = self.decoder_embed(latents)
        x = torch.cat([self.trainable_cls_token.expand(len(x), -1, -1), x], 1) + self.positions.to(x.dtype)
        for block in self.blocks:
            x = block(x)
        x = self.decoder_pred(self.decoder_norm(x))[:, 1:]
        g, p = self.grid, self.patch
        return x.reshape(-1, g, g, p, p, 3).permute(0, 5, 1, 3, 2, 4).reshape(-1, 3, g * p, g * p)


def pixels_in(images, device, dtype):
    """uint8 [B, H, W, 3] (numpy or torch) -> float [B, 3, H, W] in [0, 1] on the device."""
    from data import tensor_to_device
    x = images if torch.is_tensor(images) else torch.from_numpy(np.ascontiguousarray(images))
    return tensor_to_device(x, device).permute(0, 3, 1, 2).to(dtype) / 255


def pixels_out(x):
    """float [B, 3, H, W] in [0, 1] -> uint8 numpy [B, H, W, 3]."""
    return (x.float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


# ----------------------------------------------------------------------------------------------------------------
# Frozen encoders behind the seam: eval mode, no gradients, bfloat16 on a GPU.

HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# name: (tower, its weights, the RAE decoder's weights, the tower's pixel normalisation)
SEMANTIC = {
    "siglip2": (SiglipVision, "google/siglip2-so400m-patch14-224", "nyu-visionx/siglip2_decoder", HALF),
    "webssl": (DinoVision, "facebook/webssl-dino300m-full2b-224", "nyu-visionx/webssl300m_decoder", IMAGENET),
    "dinov2": (DinoVision, "facebook/dinov2-large", "", IMAGENET),
}
VAES = {"sdvae": "stabilityai/sd-vae-ft-mse", "flux": "black-forest-labs/FLUX.1-schnell/vae"}


def frozen(module, device):
    dtype = torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    return module.to(device, dtype).eval().requires_grad_(False), dtype


class SemanticEncoder:
    """A frozen ViT (SigLIP 2, DINOv2, WebSSL) as an RAE: encode -> [B, 256, C] latents, decode -> pixels."""

    def __init__(self, tower, decoder, mean_std, device="cpu"):
        self.tower, self.dtype = frozen(tower, device)
        self.decoder = frozen(decoder, device)[0] if decoder is not None else None
        self.mean, self.std = (torch.tensor(v, device=device).view(1, 3, 1, 1) for v in mean_std)
        self.device, self.size = device, tower.image_size
        self.tokens_per_frame, self.latent_dim = (tower.image_size // tower.patch) ** 2, tower.width

    @torch.no_grad()
    def encode(self, images):
        x = pixels_in(images, self.device, torch.float32)
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False).clamp(0, 1)
        return self.tower(((x - self.mean) / self.std).to(self.dtype)).float()

    @torch.no_grad()
    def decode(self, latents):
        if self.decoder is None:
            raise ValueError("this encoder has no decoder: set decoder_weights to an RAE decoder's hub repository or "
                             "folder to turn latents into images")
        x = self.decoder(latents.to(self.device, self.dtype)).float()
        return pixels_out(x * self.std + self.mean)


class VAE:
    """SD-VAE or FLUX VAE (optional diffusers package): 8x downsampling, then PixelUnshuffle(2), so a 256 px image
    is 16 x 16 = 256 tokens of 4c channels; latents are scaled (and shifted) by the VAE's own factors."""

    def __init__(self, source, image_size=256, device="cpu"):
        try:   # diffusers wraps a failed import of its own dependencies in a RuntimeError: any error is one line
            from diffusers import AutoencoderKL
        except Exception as e:
            raise SystemExit(f"the sdvae and flux encoders need the optional diffusers package, which did not import "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}): pip install diffusers")
        folder = weights_folder(source, ["config.json", "diffusion_pytorch_model.safetensors"])
        try:
            vae = AutoencoderKL.from_pretrained(folder)
        except Exception as e:
            raise SystemExit(f"{folder}: not a diffusers AutoencoderKL ({type(e).__name__}); give the VAE's folder or "
                             f"hub repository")
        self.vae, self.dtype = frozen(vae, device)
        cfg = self.vae.config
        self.scale, self.shift = cfg.scaling_factor, cfg.shift_factor or 0.0
        self.device, self.size = device, image_size
        self.grid = image_size // 2 ** (len(cfg.block_out_channels) - 1) // 2
        self.tokens_per_frame, self.latent_dim = self.grid ** 2, 4 * cfg.latent_channels

    @torch.no_grad()
    def encode(self, images):
        x = pixels_in(images, self.device, self.dtype) * 2 - 1
        z = (self.vae.encode(x).latent_dist.mean - self.shift) * self.scale   # the mean: pre-encoding is repeatable
        return F.pixel_unshuffle(z, 2).flatten(2).transpose(1, 2).float()

    @torch.no_grad()
    def decode(self, latents):
        z = latents.to(self.device, self.dtype).transpose(1, 2).reshape(len(latents), -1, self.grid, self.grid)
        x = self.vae.decode(F.pixel_shuffle(z, 2) / self.scale + self.shift).sample
        return pixels_out((x + 1) / 2)


def build_encoder(name="pixels", image_size=32, patch_size=4, device="cpu", weights="", decoder_weights=""):
    """The frozen encoder for a config. weights/decoder_weights: a hub repository, owner/name[@revision], or a local
    folder ('' = the published default at its pinned commit); 'random': the real shapes, random weights (benchmarks)."""
    if name == "pixels":
        return PixelPatches(image_size, patch_size)
    if name in VAES:
        return VAE(weights or VAES[name], image_size, device)
    if name not in SEMANTIC:
        raise ValueError(f"unknown encoder {name!r}: available: pixels, {', '.join([*SEMANTIC, *VAES])}")
    cls, default, default_decoder, mean_std = SEMANTIC[name]
    weights, decoder_weights = weights or default, decoder_weights or default_decoder
    if weights == "random":
        tower = cls()
        return SemanticEncoder(tower, RAEDecoder(tower.width) if decoder_weights else None, mean_std, device)
    config, state = read_weights(weights, "model.safetensors", lambda k: not k.startswith("text_model."))
    tower = cls.from_config(config).load_published(state)
    grid = tower.image_size // tower.patch
    decoder = RAEDecoder.from_published(*read_weights(decoder_weights, "model.pt"), grid) if decoder_weights else None
    return SemanticEncoder(tower, decoder, mean_std, device)
