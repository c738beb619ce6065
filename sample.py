"""
Sampling from a trained model: images from captions, captions from images.

Images: the caption is followed by BOI and a grid of pure-noise latent tokens, which a 25-step Euler sampler
integrates from t = 0 (noise) to t = 1 (clean), with classifier-free guidance against the same sequence without
the caption (exactly how 10% of the training examples were built). Captions: the image's clean latents between
BOI and EOI, then greedy or sampled text until EOS.

    python sample.py --out_dir=out/toy --prompt="a small red circle at the top left"
"""
import os
import sys

import numpy as np
import torch

from data import caption_to_image, collate, image_to_caption, to_device
from model import shift_time, velocity


def prompt_batch(tok, examples, model):
    """One example per row, rows as long as the longest, on the model's device."""
    N = model.cfg.tokens_per_frame
    S = max(ex.length(N) for ex in examples)
    return to_device(collate([[ex] for ex in examples], S, N, tok.pad), next(model.parameters()).device)


@torch.no_grad()
def generate_images(model, tok, captions, steps=25, guidance=3.0, generator=None):
    """Latents [B, N, C] for each caption. Both guidance branches run as one batch."""
    cfg, B = model.cfg, len(captions)
    guided = guidance != 1.0
    examples = [caption_to_image(tok, c, None, prompt_only=True) for c in captions]
    if guided:
        examples += [caption_to_image(tok, c, None, drop_caption=True, prompt_only=True) for c in captions]
    batch = prompt_batch(tok, examples, model)
    device = batch["tokens"].device
    z = torch.randn(B, cfg.tokens_per_frame, cfg.latent_dim, generator=generator, device=generator.device
                    if generator is not None else device).to(device)
    ts = shift_time(torch.linspace(0, 1, steps + 1, device=device), cfg.time_shift)
    for i in range(steps):
        zz = torch.cat([z, z]) if guided else z
        t = ts[i].expand(zz.shape[0])
        _, pred = model(batch["tokens"], batch["doc"], batch["frame"], batch["vis_idx"], zz, t)
        v = velocity(pred, zz, t, cfg.prediction)
        if guided:
            v_cond, v_uncond = v.chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        z = z + (ts[i + 1] - ts[i]) * v
    return z


@torch.no_grad()
def generate_captions(model, tok, latents, max_tokens=96, temperature=0.0, generator=None):
    """Text for each image latent [B, N, C]: greedy when temperature is 0. (Recomputes the whole prefix at each
    token; the KV-cached sampler comes with the full modal-switching sampler.)"""
    B = latents.shape[0]
    texts, done = [[] for _ in range(B)], [False] * B
    for _ in range(max_tokens):
        examples = [image_to_caption(tok, None, "", prompt_only=True) for _ in range(B)]
        for ex, t in zip(examples, texts):
            ex.ids += t
        batch = prompt_batch(tok, examples, model)
        logits, _ = model(batch["tokens"], batch["doc"], batch["frame"], batch["vis_idx"], latents,
                          torch.ones(B, device=latents.device))
        last = torch.tensor([ex.length(model.cfg.tokens_per_frame) - 1 for ex in examples], device=logits.device)
        logits = logits[torch.arange(B, device=logits.device), last].float()
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=generator).squeeze(1)
        for i, n in enumerate(nxt.tolist()):
            if not done[i]:
                done[i] = n == tok.eos
                if not done[i]:
                    texts[i].append(n)
        if all(done):
            break
    return [tok.decode(t) for t in texts]


def save_grid(images, path, ncol=8, scale=4):
    """uint8 [B, H, W, 3] -> one PNG, nearest-neighbour upscaled so small images stay crisp. Written atomically."""
    from PIL import Image
    images = np.asarray(images)
    B, H, W, _ = images.shape
    nrow = -(-B // ncol)
    grid = np.full((nrow * (H + 2), min(B, ncol) * (W + 2), 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        grid[r * (H + 2) + 1:r * (H + 2) + 1 + H, c * (W + 2) + 1:c * (W + 2) + 1 + W] = im
    img = Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.NEAREST)
    tmp = path + ".tmp"
    img.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Command line: python sample.py --out_dir=out/toy --prompt="..." [--num_samples=8 --guidance=3.0 --steps=25]

out_dir = "out/toy"
prompt = "a small red circle at the top left"
num_samples = 8
guidance = 3.0
steps = 25
seed = 0
device = "auto"
out = ""                # PNG path; default out_dir/sample.png


def main(argv):
    from train import configure, load_for_inference
    c = configure({k: globals()[k] for k in ("out_dir", "prompt", "num_samples", "guidance", "steps", "seed",
                                             "device", "out")}, argv)
    model, tok, encoder, _ = load_for_inference(c.out_dir, c.device)
    gen = torch.Generator(next(model.parameters()).device).manual_seed(c.seed)
    z = generate_images(model, tok, [c.prompt] * c.num_samples, c.steps, c.guidance, gen)
    path = save_grid(encoder.decode(z), c.out or os.path.join(c.out_dir, "sample.png"))
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
