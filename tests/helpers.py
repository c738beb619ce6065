"""What several test files share: the repository's root, a tiny model and a packed row of every kind, the tiny
training settings, and the obvious (uncached) sampler that sample.draw is checked against."""
import os

import numpy as np
import torch

from data import FRAME, Example, Tokenizer, caption_to_image, collate, text_example, to_device
from model import ModelConfig, UnifiedTransformer, shift_time, velocity

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, C = 4, 3  # tokens per frame, latent channels: tiny on purpose

# train.py's settings for a run of a few seconds on the CPU
TINY = ["--n_layer=2", "--d_model=32", "--n_head=2", "--n_kv_head=1", "--seq_len=128", "--batch_size=4",
        "--image_size=16", "--patch_size=4", "--max_shapes=1", "--video_frames=2", "--eval_samples=2",
        "--eval_iters=1", "--sample_steps=2", "--log_interval=1", "--warmup_iters=5", "--learning_rate=1e-2",
        "--device=cpu"]


def tiny(**kw):
    torch.manual_seed(0)
    cfg = dict(vocab_size=Tokenizer().vocab_size, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=64,
               latent_dim=C, tokens_per_frame=N, attention="sdpa")
    cfg.update(kw)
    return UnifiedTransformer(ModelConfig(**cfg))


def mixed_row(tok):
    """One packed row: caption -> image, a two-frame video, then an unrelated text document."""
    img = Example([tok.bos, *tok.encode("ab"), tok.boi, FRAME, tok.eoi, *tok.encode("c"), tok.eos], [None], [False])
    vid = Example([tok.bos, tok.boi, FRAME, tok.eoi, tok.boi, FRAME, tok.eoi, tok.eos], [None, None], [False] * 2)
    return collate([[img, vid, text_example(tok, "xyz")]], 40, N, tok.pad)


def train_lines(lines):
    """{step: (text loss, flow loss)} of a run's training records (its evaluation records left out)."""
    return {r["step"]: (r["text_loss"], r["flow_loss"]) for r in lines if "val_text_loss" not in r}


def grad_norms(lines):
    """{step: the gradient's norm before clipping} of a run's training records: what a loss alone does not show (a
    gradient summed over processes instead of averaged is clipped and fed to AdamW, indifferent to its scale)."""
    return {r["step"]: r["grad_norm"] for r in lines if "grad_norm" in r}


def full_pass(model, tok, examples, zt=None, t=None):
    """No cache: the whole of every (right-padded) sequence at once. Frames given in the examples are clean."""
    n, c = model.cfg.tokens_per_frame, model.cfg.latent_dim
    S, dev = max(ex.length(n) for ex in examples), next(model.parameters()).device
    b = to_device(collate([[ex] for ex in examples], S, n, tok.pad), dev)
    frames = [f for ex in examples for f in ex.frames if f is not None]
    z = torch.stack(frames) if frames else torch.zeros(0, n, c, device=dev)
    tt = torch.ones(len(z), device=dev)
    if zt is not None:   # the last frame of every row is being generated
        z, tt = torch.cat([z, zt]), torch.cat([tt, t])
        order = np.argsort([r for r, ex in enumerate(examples) for _ in ex.frames], kind="stable")
        z, tt = z[torch.as_tensor(order, device=dev)], tt[torch.as_tensor(order, device=dev)]
    return b, model(b["tokens"], b["doc"], b["frame"], b["vis_idx"], z, tt)


@torch.no_grad()
def reference_draw(model, tok, captions, steps, guidance, generator):
    """The obvious sampler: every Euler step recomputes every prefix from scratch."""
    cond = [caption_to_image(tok, c, None, prompt_only=True) for c in captions]
    uncond = [caption_to_image(tok, c, None, drop_caption=True, prompt_only=True) for c in captions]
    B, dev = len(captions), next(model.parameters()).device
    z = torch.randn(B, model.cfg.tokens_per_frame, model.cfg.latent_dim, generator=generator,
                    device=generator.device).to(dev)
    ts = shift_time(torch.linspace(0, 1, steps + 1, device=dev), model.cfg.time_shift)
    for i in range(steps):
        t = ts[i].expand(B)
        _, pred_c = full_pass(model, tok, cond, z, t)[1]
        v = velocity(pred_c, z, t, model.cfg.prediction)
        if guidance != 1.0:
            _, pred_u = full_pass(model, tok, uncond, z, t)[1]
            v_u = velocity(pred_u, z, t, model.cfg.prediction)
            v = v_u + guidance * (v - v_u)
        z = z + (ts[i + 1] - ts[i]) * v
    return z
