"""
The unified model: one decoder-only Transformer over one mixed sequence of text tokens and visual latent tokens.

Text is learned by next-token prediction, images and video frames by flow matching in the latent space of a frozen
visual encoder (Tong et al., 2026, "Beyond Language Modeling", section 2 and Appendix B). Text enters through an
embedding and leaves through a vocabulary head; a frame's latents enter through a linear projection plus an
embedding of the frame's time t, and leave through a linear flow head. No U-Net.

Read top to bottom: the configuration, the flow-matching maths, the hybrid attention mask, the building blocks
(RMSNorm, RoPE, grouped-query attention, SwiGLU, the FFN seam), the model, and the training loss.
"""
import functools
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from moe import MoEFFN, grouped_swiglu
from plumbing.fastpaths import RMSNormCPU, summed_cross_entropy, use_written_backward


@dataclass
class ModelConfig:
    vocab_size: int = 261
    n_layer: int = 4
    n_head: int = 4
    n_kv_head: int = 4            # grouped-query attention: n_head query heads share n_kv_head key/value heads
    d_model: int = 128
    ffn_hidden: int = 0           # 0: ffn_mult * d_model, rounded up to a multiple of 32
    ffn_mult: float = 4.0         # the paper's: LLaMA's expansion multiplier 1.5 on SwiGLU's 8/3 (App. E.7)
    ffn: str = "modality"         # "shared": one FFN for all; "modality": a text and a vision FFN; "moe": moe.py
    qk_norm: bool = True
    rope_theta: float = 10000.0
    max_seq_len: int = 256
    latent_dim: int = 48          # channels of one visual latent token (C)
    tokens_per_frame: int = 64    # visual latent tokens per image or video frame (N)
    prediction: str = "v"         # "v": the network predicts the velocity (§2.1); "x": clean latents (JiT, §6.3)
    time_shift: float = 0.0       # shift of t toward noise; 0: sqrt(N * C / 4096) as in RAE; 1: no shift
    time_sampling: str = "uniform"   # t ~ U[0, 1] as in the paper (section 2.1), or "logit_normal"
    attention: str = "auto"       # "flex" (FlexAttention), "sdpa" (dense boolean mask) or "auto" (flex on GPU)
    # Mixture-of-Experts (ffn="moe"): experts of width 4 * d_model / moe_granularity, moe_top_k active (0: G)
    moe_experts: int = 256             # the paper's MoE of §6.2: 256 experts, G = 16 (16 active)
    moe_granularity: int = 16
    moe_top_k: int = 0
    moe_shared: str = "per_modality"   # "none", "global" or "per_modality"
    moe_score: str = "softmax"         # or "sigmoid"
    moe_renorm: bool = False           # renormalise the selected routed weights to sum to 1
    moe_balance: str = "aux"           # "aux": balance loss; "bias": auxiliary-loss-free bias updates
    moe_aux_coef: float = 0.01
    moe_z_coef: float = 0.0

    def __post_init__(self):
        if self.ffn_hidden == 0:   # (rounded first: 8/3 * 96 / 32 is 7.999... in floating point)
            self.ffn_hidden = 32 * math.ceil(round(self.ffn_mult * self.d_model / 32, 9))
        if self.time_shift == 0:
            self.time_shift = math.sqrt(self.tokens_per_frame * self.latent_dim / 4096)
        if self.d_model % self.n_head or self.n_head % self.n_kv_head:
            raise ValueError(f"n_head {self.n_head} must divide d_model {self.d_model}, n_kv_head {self.n_kv_head} "
                             f"must divide n_head")
        for key, allowed in (("prediction", ("x", "v")), ("time_sampling", ("uniform", "logit_normal")),
                             ("attention", ("auto", "flex", "sdpa"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"{key}={getattr(self, key)!r}: use one of {allowed}")


# Defaults that became the paper's after checkpoints and recorded runs had used the old ones, which configs name
# only since: what those runs resolved to. A checkpoint whose config predates a setting is rebuilt with this value
# (build.load_for_inference), and a recorded run whose config now names it is the run it was (findings/runs.py).
FORMER_DEFAULTS = {"prediction": "x", "ffn_mult": 8 / 3, "tokenizer": "bytes", "mixture_unit": "examples",
                   "mixture": {"text": 0.25, "caption_to_image": 0.45, "image_to_caption": 0.2, "video": 0.1}}


# ----------------------------------------------------------------------------------------------------------------
# Flow matching (section 2.1). Paper convention: z_t = (1 - t) * eps + t * z0, so t = 0 is pure noise and t = 1 is
# the clean latent; the velocity is dz_t/dt = z0 - eps. One t per image or frame, shared by all its tokens.

def shift_time(t, s):
    """Move t toward the noisy end by the factor s (s > 1 noisier): high-dimensional latents stay recognisable at
    noise levels that destroy small images, so they need more time spent near t = 0 (SD3, RAE)."""
    return t / (t + s * (1 - t))


def sample_time(n, cfg, device, generator=None):
    """One training time per frame: uniform, or logit-normal (more weight on the middle), then shifted."""
    t = torch.rand(n, device=device, generator=generator) if cfg.time_sampling == "uniform" else \
        torch.sigmoid(torch.randn(n, device=device, generator=generator))
    return shift_time(t, cfg.time_shift)


def add_noise(z0, eps, t):
    """z_t on the straight path from noise (t = 0) to data (t = 1); t has one entry per frame."""
    t = t.view(-1, *([1] * (z0.dim() - 1)))
    return (1 - t) * eps + t * z0


def velocity(pred, zt, t, prediction):
    """The velocity the network's output implies: with x-prediction v = (x - z_t) / (1 - t), 1 - t clamped at 0.05
    (JiT). Training and sampling both go through here, so the sampler integrates exactly what the loss trained."""
    if prediction == "v":
        return pred
    t = t.view(-1, *([1] * (zt.dim() - 1)))
    return (pred - zt) / (1 - t).clamp(min=0.05)


def timestep_embedding(t, dim, max_period=10000.0):
    """Sinusoidal features of t in [0, 1] (scaled by 1000, as diffusion models conventionally do)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


# ----------------------------------------------------------------------------------------------------------------
# The hybrid attention mask (section 2.1, Appendix B). Every position carries a document id (packed examples never
# see each other) and a frame id (-1 for text). A query sees a key in its own document that came before it, and,
# if the query is a visual token, every token of its own frame, so a frame is a bidirectional block.

def may_attend(doc_q, doc_k, frame_q, frame_k, q_idx, k_idx):
    """The one rule, written once and used by both the FlexAttention mask_mod and the dense CPU mask."""
    causal = k_idx <= q_idx
    same_frame = (frame_q == frame_k) & (frame_q >= 0)
    return (doc_q == doc_k) & (causal | same_frame)


def dense_mask(doc, frame, doc_k=None, frame_k=None):
    """[B, 1, S, K] boolean mask for scaled_dot_product_attention (the CPU path; exact, O(S K) memory). Keys
    default to the queries; with a KV cache they are the cached positions followed by the S queries."""
    doc_k, frame_k = (doc, frame) if doc_k is None else (doc_k, frame_k)
    S, K = doc.shape[1], doc_k.shape[1]
    q_idx, k_idx = torch.arange(K - S, K, device=doc.device), torch.arange(K, device=doc.device)
    return may_attend(doc[:, :, None], doc_k[:, None, :], frame[:, :, None], frame_k[:, None, :],
                      q_idx[:, None], k_idx[None, :])[:, None]


def plain_causal(doc, frame):
    """Whether the rule is plain causal wherever it is read: no frames, each row one document then only padding
    (whose own outputs, read by nothing, would see more). Text shards' rows are: SDPA's is_causal, no [B, S, S] mask."""
    return bool((frame < 0).all() and ((doc[:, 1:] == doc[:, :-1]) | (doc[:, 1:] < 0)).all())


def flex_block_mask(doc, frame):
    """The same rule as a FlexAttention BlockMask: built once per batch (outside the compiled model), shared by
    every layer. On the GPU its construction is compiled too: eager, it would first build the whole [B, S, S] mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):
        return may_attend(doc[b, q], doc[b, k], frame[b, q], frame[b, k], q, k)
    B, S = doc.shape
    build = compiled(create_block_mask) if doc.is_cuda else create_block_mask
    return build(mask_mod, B, None, S, S, device=doc.device)


@functools.cache
def compiled(fn):
    """torch.compile(fn), made once per function: a new wrapper per call would compile again."""
    return torch.compile(fn, dynamic=False)


def flex_attention(q, k, v, block_mask):
    """FlexAttention is only fast when compiled: one fused kernel that skips the blocks the mask empties. Inside a
    compiled model it fuses there; called eagerly on the GPU it is compiled on its own; on the CPU it runs as is."""
    from torch.nn.attention.flex_attention import flex_attention as flex
    if q.is_cuda and not torch.compiler.is_compiling():
        flex = compiled(flex)
    return flex(q, k, v, block_mask=block_mask, enable_gqa=True)


# ----------------------------------------------------------------------------------------------------------------
# Building blocks.

def rope_angles(pos, head_dim, theta):
    """Rotary cos and sin [..., S, 1, D/2, 2] for positions [B, S] or [S], once per forward for all layers. On the
    fly: generation runs past the training length, and rows may differ."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, device=pos.device).float() / head_dim)
    angles = pos.float()[..., None] * inv_freq
    return torch.stack([angles.cos(), angles.sin()], -1)[..., None, :, :]


def apply_rope(x, rot):
    """Rotary position embedding on [B, S, H, D] as RoFormer writes it: each consecutive pair (a, b) of a head's
    dimensions turns by its angle, to (a cos - b sin, a sin + b cos). Eagerly that is one complex multiply (no
    halves rolled or concatenated); compiled, real arithmetic, which the compiler fuses (it has no complex kernels)."""
    pairs = x.float().unflatten(-1, (-1, 2))
    if torch.compiler.is_compiling():
        (a, b), (cos, sin) = pairs.unbind(-1), rot.unbind(-1)
        turned = torch.stack([a * cos - b * sin, a * sin + b * cos], -1)
    else:
        turned = torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(rot))
    return turned.flatten(-2).type_as(x)


class KVCache:
    """Every layer's keys and values so far, with their document and frame ids (for the mask). Nothing is stored
    unless the forward pass commits: the Euler steps of an image attend to the cache without growing it."""

    def __init__(self, n_layer):
        self.k, self.v = [None] * n_layer, [None] * n_layer
        self.doc = self.frame = None

    def __len__(self):
        return 0 if self.doc is None else self.doc.shape[1]

    def extend(self, layer, k, v, commit):
        if self.k[layer] is not None:
            k, v = torch.cat([self.k[layer], k], dim=2), torch.cat([self.v[layer], v], dim=2)
        if commit:
            self.k[layer], self.v[layer] = k, v
        return k, v

    def ids_with(self, doc, frame):
        """Document and frame ids of the cached positions followed by new ones: the keys' ids in the mask."""
        if self.doc is None:
            return doc, frame
        return torch.cat([self.doc, doc], dim=1), torch.cat([self.frame, frame], dim=1)

    def select(self, rows):
        """A new cache of some rows (index tensor), e.g. the rows that are drawing an image."""
        out = KVCache(len(self.k))
        out.k, out.v = [k[rows] for k in self.k], [v[rows] for v in self.v]
        out.doc, out.frame = self.doc[rows], self.frame[rows]
        return out

    def stack(self, other):
        """Rows of both caches in one batch; the shorter one is left-padded with slots nobody sees (doc -1)."""
        L = max(len(self), len(other))
        kv = lambda x: F.pad(x, (0, 0, L - x.shape[2], 0))                  # [B, H, L, D]: pad dim 2 on the left
        ids = lambda x: F.pad(x, (L - x.shape[1], 0), value=-1)            # [B, L]
        out = KVCache(len(self.k))
        out.k = [torch.cat([kv(a), kv(b)]) for a, b in zip(self.k, other.k)]
        out.v = [torch.cat([kv(a), kv(b)]) for a, b in zip(self.v, other.v)]
        out.doc, out.frame = torch.cat([ids(self.doc), ids(other.doc)]), torch.cat([ids(self.frame), ids(other.frame)])
        return out


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm; on the CPU its backward pass is written out (plumbing/fastpaths.py): PyTorch has no fused kernel
    there, and the same maths over the memory fewer times makes a small model's step faster."""
    def forward(self, x):
        return RMSNormCPU.apply(x, self.weight, self.eps) if use_written_backward(x) else super().forward(x)


class Attention(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.layer = layer
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.d_model // cfg.n_head
        self.wq = nn.Linear(cfg.d_model, cfg.n_head * self.head_dim, bias=False)
        self.wkv = nn.Linear(cfg.d_model, 2 * cfg.n_kv_head * self.head_dim, bias=False)
        self.wo = nn.Linear(cfg.d_model, cfg.d_model, bias=False)
        # QK-norm keeps attention logits bounded, which mixed text/latent training benefits from
        self.q_norm, self.k_norm = (RMSNorm(self.head_dim, eps=1e-6) if cfg.qk_norm else nn.Identity()
                                    for _ in range(2))

    def forward(self, x, rot, mask, cache=None, commit=True):
        B, S, _ = x.shape
        q = self.q_norm(self.wq(x).view(B, S, self.n_head, self.head_dim))
        k, v = self.wkv(x).view(B, S, 2, self.n_kv_head, self.head_dim).unbind(2)
        q, k = apply_rope(q, rot), apply_rope(self.k_norm(k), rot)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if cache is not None:
            k, v = cache.extend(self.layer, k, v, commit)
        if isinstance(mask, str):   # "causal": see attention_mask
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        elif isinstance(mask, torch.Tensor):
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        else:
            y = flex_attention(q, k, v, mask)
        return self.wo(y.transpose(1, 2).reshape(B, S, -1))


class SwiGLU(nn.Module):
    def __init__(self, d_model, hidden):
        super().__init__()
        self.w_gate_up = nn.Linear(d_model, 2 * hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x):
        gate, up = self.w_gate_up(x).chunk(2, dim=-1)
        return self.w_down(F.silu(gate) * up)


class SharedFFN(nn.Module):
    """One FFN for every token, text or visual."""
    def __init__(self, cfg):
        super().__init__()
        self.ffn = SwiGLU(cfg.d_model, cfg.ffn_hidden)

    def forward(self, x, modality):
        return self.ffn(x), {}

    def active_params(self):
        return sum(p.numel() for p in self.parameters())


class ModalityFFN(nn.Module):
    """A text FFN and a vision FFN (Appendix C): each token uses one, so FLOPs per token stay while parameters double.
    Both run as one grouped matrix multiply (a two-expert MoE whose router is the modality)."""
    def __init__(self, cfg):
        super().__init__()
        self.text, self.vision = SwiGLU(cfg.d_model, cfg.ffn_hidden), SwiGLU(cfg.d_model, cfg.ffn_hidden)

    def forward(self, x, modality):
        shape = x.shape
        x, is_vision = x.reshape(-1, shape[-1]), modality.reshape(-1) > 0   # padding goes with text, read by nothing
        order = torch.argsort(is_vision.to(torch.uint8), stable=True)        # text tokens first, then vision
        n_vision = is_vision.sum()
        counts = torch.stack([is_vision.numel() - n_vision, n_vision])
        ffns = (self.text, self.vision)
        y = grouped_swiglu(x[order], torch.stack([f.w_gate_up.weight.t() for f in ffns]),
                           torch.stack([f.w_down.weight.t() for f in ffns]), counts)
        return torch.empty_like(x).index_copy(0, order, y.to(x.dtype)).view(shape), {}

    def active_params(self):
        return sum(p.numel() for p in self.text.parameters())


def make_ffn(cfg):
    """The FFN seam: (x [B, S, d], modality [B, S]: 1 vision, 0 text, -1 padding) -> ([B, S, d], training
    statistics), plus active_params().
    The statistics ({} when dense; the MoE's balance loss and load) are returned, not stored: no side effects that
    would stop activation checkpointing from compiling."""
    ffns = {"shared": SharedFFN, "modality": ModalityFFN, "moe": MoEFFN}
    if cfg.ffn in ffns:
        return ffns[cfg.ffn](cfg)
    raise ValueError(f"unknown ffn {cfg.ffn!r}: use 'shared', 'modality' or 'moe'")


class Block(nn.Module):
    def __init__(self, cfg, layer):
        super().__init__()
        self.attn_norm, self.attn = RMSNorm(cfg.d_model, eps=1e-6), Attention(cfg, layer)
        self.ffn_norm, self.ffn = RMSNorm(cfg.d_model, eps=1e-6), make_ffn(cfg)
        self.checkpointing = False   # recompute in the backward pass: less memory (model.activation_checkpointing)

    def forward(self, x, rot, mask, modality, cache=None, commit=True):
        if self.checkpointing and torch.is_grad_enabled():   # inside the block: compiled with it (build.compile_model)
            return torch.utils.checkpoint.checkpoint(self.layer, x, rot, mask, modality, use_reentrant=False)
        return self.layer(x, rot, mask, modality, cache, commit)

    def layer(self, x, rot, mask, modality, cache=None, commit=True):
        x = x + self.attn(self.attn_norm(x), rot, mask, cache, commit)
        y, stats = self.ffn(self.ffn_norm(x), modality)
        return x + y, stats


# ----------------------------------------------------------------------------------------------------------------
# The model.

class UnifiedTransformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.tok_emb = nn.Embedding(cfg.vocab_size, d)
        self.latent_in = nn.Linear(cfg.latent_dim, d)                     # visual latents in: a linear projection
        self.patch_pos = nn.Parameter(torch.zeros(cfg.tokens_per_frame, d))  # where a token sits in its frame
        self.time_mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.norm = RMSNorm(d, eps=1e-6)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)          # text out: next-token logits
        self.flow_head = nn.Linear(d, cfg.latent_dim)                     # visual latents out: x or v
        self.init_weights()

    @property
    def activation_checkpointing(self):
        return self.blocks[0].checkpointing

    @activation_checkpointing.setter
    def activation_checkpointing(self, on):
        """A training option (train.py): every block recomputes its activations in the backward pass."""
        for block in self.blocks:
            block.checkpointing = on

    @torch.no_grad()
    def init_weights(self, fill=lambda p, mean, std: p.normal_(mean, std) if std else p.fill_(mean)):
        """GPT-2's: weights N(0, 0.02), the residual branches' last projections (wo, w_down) scaled down with depth,
        biases 0, norms 1, the flow head 0 (it starts out predicting zeros); buffers (the MoE's balance state) 0.
        fill(p, mean, std) writes a parameter: a sharded model's writes each process's part (parallel.fill_shard)."""
        for name, p in self.named_parameters():
            residual = name.endswith(("wo.weight", "w_down.weight", "w_down"))
            std = 0.0 if name.endswith(("bias", "norm.weight")) or name.startswith("flow_head") else \
                0.02 / math.sqrt(2 * self.cfg.n_layer) if residual else 0.02
            fill(p, float(name.endswith("norm.weight")), std)
        for b in self.buffers():
            b.zero_()

    def forward(self, tokens, doc, frame, vis_idx, zt, t, pos=None, cache=None, commit=True, mask=None, targets=None):
        """tokens, doc, frame: [B, S] (frame = -1 on text positions); vis_idx: [F * N] flat positions of the F
        frames' tokens in frame-major order; zt: [F, N, C] the (noisy) latents; t: [F] their times.
        Generation adds pos [B, S] (rotary positions) and a KVCache; mask: attention_mask(doc, frame), if prebuilt.
        Returns next-token logits [B, S, V], or given targets [B, S] their summed cross-entropy and each position's
        term, detached (a chunk of positions at a time: plumbing/fastpaths.py), and the flow head's prediction (x or
        v) for every frame [F, N, C]."""
        B, S = tokens.shape
        x = self.tok_emb(tokens)
        v = self.latent_in(zt.to(x.dtype)) + self.patch_pos + self.time_mlp(timestep_embedding(t, 256))[:, None]
        # scatter the frames' tokens into their sequence positions (an index, not a boolean mask: no host sync)
        x = x.view(B * S, -1).index_copy(0, vis_idx, v.reshape(-1, v.shape[-1]).to(x.dtype)).view(B, S, -1)
        mask = self.attention_mask(doc, frame, cache) if mask is None else mask
        pos = torch.arange(S, device=tokens.device) if pos is None else pos
        rot = rope_angles(pos, self.cfg.d_model // self.cfg.n_head, self.cfg.rope_theta)
        modality, stats = (frame >= 0).long().masked_fill(doc < 0, -1), []   # padding: routed, never counted
        for block in self.blocks:
            x, s = block(x, rot, mask, modality, cache, commit)
            stats.append(s)
        self.ffn_stats = stats   # per layer, for the training step (moe.auxiliary_loss)
        if cache is not None and commit:
            cache.doc, cache.frame = cache.ids_with(doc, frame)
        h = self.norm(x)
        flow = self.flow_head(h.reshape(B * S, -1)[vis_idx]).view(-1, self.cfg.tokens_per_frame, self.cfg.latent_dim)
        text = self.lm_head(h) if targets is None else summed_cross_entropy(h, self.lm_head.weight, targets)
        return text, flow.float()

    def attention_mask(self, doc, frame, cache=None):
        if cache is not None:  # generation: new positions against cached + new ones, shapes vary: the dense path
            return dense_mask(doc, frame, *cache.ids_with(doc, frame))
        if self.cfg.attention == "flex" or (self.cfg.attention == "auto" and doc.device.type == "cuda"):
            return flex_block_mask(doc, frame)
        causal = doc.device.type == "cpu" and plain_causal(doc, frame)   # on a GPU, the check would wait for it
        return "causal" if causal else dense_mask(doc, frame)

    # -- accounting ---------------------------------------------------------------------------------------------
    def num_params(self):
        """(total, active): active counts the weights one token multiplies by, i.e. without the embedding table
        and patch positions (lookups) and with only the FFN parameters a token actually uses."""
        total = sum(p.numel() for p in self.parameters())
        lookups = self.tok_emb.weight.numel() + self.patch_pos.numel()
        ffn_all = sum(sum(p.numel() for p in b.ffn.parameters()) for b in self.blocks)
        ffn_active = sum(b.ffn.active_params() for b in self.blocks)
        return total, total - lookups - ffn_all + ffn_active

    def flops_per_token(self, seq_len):
        """Training FLOPs per token: 6 N_active for the matrix multiplies (forward + backward) plus the attention
        scores and values, 12 * n_layer * d_model * seq_len (PaLM's convention, which ignores masking)."""
        return 6 * self.num_params()[1] + 12 * self.cfg.n_layer * self.cfg.d_model * seq_len


# ----------------------------------------------------------------------------------------------------------------
# The training loss: L = lambda_LM * L_LM + lambda_flow * L_flow in one forward/backward (section 2.1).

def training_losses(model, batch, generator=None, times=None, each=False):
    """batch (data.collate's): tokens, targets, doc, frame, vis_idx, latents [F, N, C] (clean), cond [F] (True: seen
    clean, no flow loss); times [F] fixes the frames' t (else drawn). Returns (text_loss, flow_loss), unweighted;
    each=True adds the terms they average, detached: each position's text loss [B * S] (0 without a target) and
    each frame's flow loss [F] (0 for a clean frame), which the training log splits by source."""
    core = getattr(model, "module", model)   # DDP's wrapper (torch.compile's passes attributes through)
    cfg, z0, cond = core.cfg, batch["latents"], batch["cond"]
    t = torch.where(cond, torch.ones_like(cond, dtype=torch.float32),
                    sample_time(z0.shape[0], cfg, z0.device, generator) if times is None else times)
    eps = torch.randn(z0.shape, device=z0.device, generator=generator)
    zt = add_noise(z0, eps, t)
    mask = core.attention_mask(batch["doc"], batch["frame"])       # once per batch, for every layer, not compiled
    targets = batch["targets"]
    (ce, ce_each), pred = model(batch["tokens"], batch["doc"], batch["frame"], batch["vis_idx"], zt, t, mask=mask,
                                targets=targets)
    text_loss = ce / (targets >= 0).sum().clamp(min=1)

    v_hat = velocity(pred, zt, t, cfg.prediction)
    per_frame = (v_hat - (z0 - eps)).pow(2).mean(dim=(1, 2))
    gen = (~cond).float()
    flow_loss = (per_frame * gen).sum() / gen.sum().clamp(min=1)
    return (text_loss, flow_loss, (ce_each, (per_frame * gen).detach())) if each else (text_loss, flow_loss)
