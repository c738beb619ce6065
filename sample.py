"""
Sampling: modal-switching inference with a KV cache (Appendix B).

The model writes text token by token. When it writes BOI, the sampler appends a grid of pure-noise latent tokens
and integrates them from t = 0 (noise) to t = 1 (clean) with a 25-step Euler sampler and classifier-free
guidance, then appends EOI and goes back to text. So one call can produce text, then an image, then more text.

The prefix is computed once and kept in a KV cache. Each Euler step runs only the N image tokens against it, with
the conditional and the unconditional branch in one batch; the unconditional branch is the sequence with the
conditioning dropped exactly as in training (BOS BOI, see data.caption_to_image). When an image is finished, its
clean latents are run once more at t = 1 and their keys/values enter the cache, as a clean image would in
training; the noisy steps never do.

    python sample.py --out_dir=out/toy --prompt="a small red circle at the top left"        # caption -> image
    python sample.py --out_dir=out/toy --mode=caption --image=picture.png                   # image -> caption
    python sample.py --out_dir=out/toy --mode=video                                         # video continuation
    python sample.py --out_dir=out/toy --mode=text --prompt="there is"                      # free modal switching
"""
import os
import sys

import numpy as np
import torch

from data import FRAME, Example, caption_to_image, collate, image_to_caption, to_device, video_example
from model import KVCache, shift_time, velocity

# ----------------------------------------------------------------------------------------------------------------
# Prompts. A prompt is a data.Example whose frames are latents [N, C]; rows are left-padded so every row's next
# token goes in the same column, and each row keeps its own rotary positions, so padding changes nothing.


def prompt_batch(examples, model, pad_id):
    N, C, device = model.cfg.tokens_per_frame, model.cfg.latent_dim, next(model.parameters()).device
    lengths = np.array([ex.length(N) for ex in examples])
    S = int(lengths.max())
    # the frames are latents already (maybe on the GPU): collate lays out positions only
    b = collate([[Example(ex.ids, [None] * len(ex.frames), ex.cond)] for ex in examples], S, N, pad_id)
    shift = S - lengths
    for k in ("tokens", "doc", "frame"):
        b[k] = np.stack([np.roll(row, s) for row, s in zip(b[k], shift)])
    b["vis_idx"] = b["vis_idx"] + shift[b["vis_idx"] // S]
    b["pos"] = np.maximum(np.cumsum(b["doc"] >= 0, axis=1) - 1, 0)
    del b["images"], b["targets"]
    b = to_device(b, device)
    frames = [f for ex in examples for f in ex.frames]
    b["latents"] = torch.stack(frames).to(device) if frames else torch.zeros(0, N, C, device=device)
    return b


def prefill(model, batch, cache):
    """Run a prompt batch into the cache, its frames clean (t = 1); returns the logits."""
    z = batch["latents"]
    return model(batch["tokens"], batch["doc"], batch["frame"], batch["vis_idx"], z, z.new_ones(len(z)),
                 pos=batch["pos"], cache=cache)[0]


def sample_token(logits, temperature, top_k, generator):
    """Greedy when temperature is 0; otherwise softmax sampling, optionally from the top k only."""
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)


# ----------------------------------------------------------------------------------------------------------------
# Drawing one image for some rows: Euler steps against the cache, then the clean latents enter it.

def draw_image(model, cache, uncond, rows, pos, frame_id, steps, guidance, generator):
    """Latents [R, N, C] for the rows (index tensor) of `cache` that have just written BOI; pos: their next
    rotary position. `uncond` is the cache of the unconditional prefix (one row)."""
    cfg, R, dev = model.cfg, len(rows), pos.device
    N, C = cfg.tokens_per_frame, cfg.latent_dim
    guided = guidance != 1.0
    both = cache.select(rows).stack(uncond.select(torch.zeros(R, dtype=torch.long, device=dev))) if guided \
        else cache.select(rows)
    start = torch.cat([pos[rows], torch.full((R,), len(uncond), device=dev)]) if guided else pos[rows]
    nb = both.doc.shape[0]
    tokens = torch.zeros(nb, N, dtype=torch.long, device=dev)       # overwritten by the latents
    doc, frame = torch.zeros_like(tokens), torch.full_like(tokens, frame_id)
    img_pos, vis_idx = start[:, None] + torch.arange(N, device=dev), torch.arange(nb * N, device=dev)
    z = torch.randn(R, N, C, generator=generator, device=generator.device if generator else dev).to(dev)
    ts = shift_time(torch.linspace(0, 1, steps + 1, device=dev), cfg.time_shift)
    for i in range(steps):
        zz = torch.cat([z, z]) if guided else z
        t = ts[i].expand(nb)
        _, pred = model(tokens, doc, frame, vis_idx, zz, t, pos=img_pos, cache=both, commit=False)
        v = velocity(pred, zz, t, cfg.prediction)
        if guided:
            v_cond, v_uncond = v.chunk(2)
            v = v_uncond + guidance * (v_cond - v_uncond)
        z = z + (ts[i + 1] - ts[i]) * v
    return z


def commit_image(model, cache, rows, z, pos, frame_id, pad_id):
    """Run the finished latents at t = 1 and keep their keys/values. Every row gets N new cache slots; rows that
    drew nothing get slots nobody sees (document -1)."""
    B, N, dev = cache.doc.shape[0], model.cfg.tokens_per_frame, pos.device
    drawing = torch.zeros(B, dtype=torch.bool, device=dev)
    drawing[rows] = True
    tokens = torch.full((B, N), pad_id, dtype=torch.long, device=dev)
    doc = torch.where(drawing[:, None], 0, -1).expand(B, N)
    frame = torch.where(drawing[:, None], frame_id, -1).expand(B, N)
    vis_idx = (rows[:, None] * N + torch.arange(N, device=dev)).reshape(-1)
    model(tokens, doc, frame, vis_idx, z, torch.ones(len(rows), device=dev),
          pos=pos[:, None] + torch.arange(N, device=dev), cache=cache)


def append_tokens(model, cache, token_lists, pos, pad_id):
    """Feed known text (one list of ids per row, lengths may differ) into every row of the cache in one pass: rows
    are right-padded with slots nobody sees (document -1). Returns each row's next rotary position."""
    dev, L = pos.device, max(map(len, token_lists))
    tokens = torch.tensor([ids + [pad_id] * (L - len(ids)) for ids in token_lists], device=dev)
    live = torch.tensor([[i < len(ids) for i in range(L)] for ids in token_lists], device=dev)
    N, C = model.cfg.tokens_per_frame, model.cfg.latent_dim
    model(tokens, torch.where(live, 0, -1), torch.full_like(tokens, -1), torch.zeros(0, dtype=torch.long, device=dev),
          torch.zeros(0, N, C, device=dev), torch.zeros(0, device=dev), pos=pos[:, None] + torch.arange(L, device=dev),
          cache=cache)
    return pos + live.sum(1)


# ----------------------------------------------------------------------------------------------------------------
# The modal-switching loop.

@torch.no_grad()
def generate(model, tok, prompts, force_images=0, allow_images=True, max_tokens=64, temperature=1.0, top_k=0,
             steps=25, guidance=3.0, generator=None, progress=False):
    """prompts: data.Examples (frames as latents [N, C]). Returns one Example per prompt: the prompt followed by
    what was generated (text ids, and a FRAME marker per image with its latents in .frames).
    force_images=k: write k images back to back (BOI forced after each EOI), then stop (caption->image ends its
    prompt with BOI; video continuation with EOI). Otherwise text is sampled until EOS or max_tokens, and BOI,
    if allow_images, switches to drawing."""
    from tqdm import tqdm
    cfg, N, B = model.cfg, model.cfg.tokens_per_frame, len(prompts)
    dev = next(model.parameters()).device
    outs = [Example(list(p.ids), list(p.frames), list(p.cond)) for p in prompts]
    b = prompt_batch(prompts, model, tok.pad)
    cache, uncond = KVCache(cfg.n_layer), KVCache(cfg.n_layer)
    logits = prefill(model, b, cache)
    # BOS BOI: the caption dropped, as in 10% of the caption->image training examples
    prefill(model, prompt_batch([Example(caption_to_image(tok, "", None, drop_caption=True, prompt_only=True)
                                         .ids[:-1])], model, tok.pad), uncond)
    pos = b["pos"][:, -1] + 1
    frame_id = len(b["latents"])
    last = [p.ids[-1] for p in prompts]
    done, n_images, n_text = [False] * B, [0] * B, [0] * B
    bar = tqdm(disable=not progress, desc="generating", unit="pass")
    while True:
        # rows that have just written BOI draw an image, all of them together
        drawing = [r for r in range(B) if not done[r] and last[r] == tok.boi]
        pending = {}
        if drawing:
            rows = torch.tensor(drawing, device=dev)
            z = draw_image(model, cache, uncond, rows, pos, frame_id, steps, guidance, generator)
            commit_image(model, cache, rows, z, pos, frame_id, tok.pad)
            bar.update(steps + 1)
            pos[rows] += N
            frame_id += 1
            for i, r in enumerate(drawing):
                outs[r].ids += [FRAME, tok.eoi]
                outs[r].frames.append(z[i])
                outs[r].cond.append(False)
                n_images[r] += 1
                pending[r] = tok.eoi
        # every other row picks its next token (each chosen token is recorded in outs as it is chosen)
        if not allow_images:
            logits[..., tok.boi] = float("-inf")
        nxt = None if force_images else sample_token(logits[:, -1], temperature, top_k, generator).tolist()
        for r in range(B):
            if done[r] or r in pending:
                continue
            if force_images:
                done[r] = n_images[r] >= force_images
                if not done[r]:
                    pending[r] = tok.boi
                    outs[r].ids.append(tok.boi)
            else:
                outs[r].ids.append(nxt[r])
                n_text[r] += 1
                done[r] = nxt[r] == tok.eos or n_text[r] >= max_tokens
                if not done[r]:
                    pending[r] = nxt[r]
        if not pending:
            break
        # feed the chosen tokens (rows with nothing to feed get padding nobody sees)
        feed = torch.tensor([pending.get(r, tok.pad) for r in range(B)], device=dev)[:, None]
        live = torch.tensor([r in pending for r in range(B)], device=dev)[:, None]
        for r, token in pending.items():
            last[r] = token
        logits, _ = model(feed, torch.where(live, 0, -1), torch.full_like(feed, -1),
                          torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, N, cfg.latent_dim, device=dev),
                          torch.zeros(0, device=dev), pos=pos[:, None], cache=cache)
        pos += live[:, 0].long()
        bar.update(1)
    bar.close()
    return outs


# ----------------------------------------------------------------------------------------------------------------
# The common tasks as forced modes. (Action-conditioned frames, many candidate action sequences at once, are
# plan.imagine: append_tokens for each action's text, then draw_image and commit_image.)

def draw(model, tok, captions, steps=25, guidance=3.0, generator=None, progress=False):
    """Caption -> image: latents [B, N, C], one per caption."""
    prompts = [Example(caption_to_image(tok, c, None, prompt_only=True).ids[:-1]) for c in captions]
    outs = generate(model, tok, prompts, force_images=1, steps=steps, guidance=guidance, generator=generator,
                    progress=progress)
    return torch.stack([o.frames[-1] for o in outs])


def describe(model, tok, latents, max_tokens=96, temperature=0.0, top_k=0, generator=None):
    """Image -> caption, for each image latent [N, C] of latents [B, N, C]."""
    prompts = [image_to_caption(tok, z, "", prompt_only=True) for z in latents]
    outs = generate(model, tok, prompts, allow_images=False, max_tokens=max_tokens, temperature=temperature,
                    top_k=top_k, generator=generator)
    return [tok.decode(o.ids[len(p.ids):]) for o, p in zip(outs, prompts)]


def continue_video(model, tok, context, n_frames, steps=25, guidance=1.0, generator=None, progress=False):
    """Context frames [B, K, N, C] -> the next n_frames, [B, n_frames, N, C]. Without guidance by default: the
    unconditional branch drops the whole context, leaving a video's first frame, so guidance would push each new
    frame away from a generic opening frame rather than toward its context."""
    K = context.shape[1]
    prompts = [Example(video_example(tok, list(frames)).ids[:-1], list(frames), [True] * K) for frames in context]
    outs = generate(model, tok, prompts, force_images=n_frames, steps=steps, guidance=guidance,
                    generator=generator, progress=progress)
    return torch.stack([torch.stack(o.frames[K:]) for o in outs])


# ----------------------------------------------------------------------------------------------------------------
# Pictures in and out. Files are written to a temporary name and renamed, so no half-written file is left.

def as_text(tok, ids):
    """A generated sequence as text, with <image> where each frame is."""
    parts, current = [], []
    for i in ids:
        if i == FRAME:
            parts.append(tok.decode(current))
            current = []
        else:
            current.append(i)
    return " <image> ".join(parts + [tok.decode(current)])


def load_image(path, size):
    """Any image pillow reads (grayscale, RGBA, any size) -> uint8 [size, size, 3], centre-cropped square, converted
    as the data loader converts training images (data.load_image)."""
    from data import load_image as decode
    try:
        with open(path, "rb") as f:
            return decode(f.read(), size)
    except (OSError, ValueError) as e:
        raise SystemExit(f"cannot read image '{path}' ({e}): give a PNG or JPEG file")


def upscale(images, scale):
    """uint8 [..., H, W, 3] -> nearest-neighbour enlarged, so small images stay crisp."""
    return np.asarray(images).repeat(scale, axis=-3).repeat(scale, axis=-2)


def save_grid(images, path, ncol=8, scale=4):
    """uint8 [B, H, W, 3] -> one PNG, a white line between images."""
    from PIL import Image
    images = upscale(images, scale)
    B, H, W, _ = images.shape
    grid = np.full((-(-B // ncol) * (H + 2 * scale), min(B, ncol) * (W + 2 * scale), 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, ncol)
        y, x = r * (H + 2 * scale) + scale, c * (W + 2 * scale) + scale
        grid[y:y + H, x:x + W] = im
    tmp = path + ".tmp"
    Image.fromarray(grid).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_gif(frames, path, scale=4, ms_per_frame=400):
    """uint8 [T, H, W, 3] -> an animated GIF that loops."""
    from PIL import Image
    images = [Image.fromarray(f) for f in upscale(frames, scale)]
    tmp = path + ".tmp"
    images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:], duration=ms_per_frame, loop=0)
    os.replace(tmp, path)
    return path


def pyplot():
    """matplotlib.pyplot, or None with a note: plots are optional, every table is printed without them."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        return plt
    except ImportError:
        print("matplotlib is not installed (pip install matplotlib): figures skipped")
        return None


def save_figure(fig, path):
    import matplotlib.pyplot as plt
    fig.tight_layout()
    fig.savefig(path + ".tmp.png")
    os.replace(path + ".tmp.png", path)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Command line.

out_dir = "out/toy"     # the run whose checkpoint to sample
mode = "image"          # "image": caption -> image; "caption": image -> text; "video": continue frames; "text"
prompt = "a small red circle at the top left"
image = ""              # caption mode: an image file; empty: toy-world renders
num_samples = 8
guidance = 3.0
video_guidance = 1.0    # video mode: none (see continue_video)
steps = 25
temperature = 0.8       # 0: greedy
top_k = 0
max_tokens = 96
context_frames = 2      # video mode: frames of a toy-world video given as context
new_frames = 2          # video mode: frames to generate
seed = 0
device = "auto"
out = ""                # output folder; default out_dir/samples


def main(argv):
    import toyworld
    from train import configure, load_for_inference
    c = configure({k: globals()[k] for k in ("out_dir", "mode", "prompt", "image", "num_samples", "guidance",
                                             "video_guidance", "steps", "temperature", "top_k", "max_tokens", "context_frames",
                                             "new_frames", "seed", "device", "out")}, argv)
    if c.mode not in ("image", "caption", "video", "text"):
        raise SystemExit(f"unknown mode '{c.mode}': use image, caption, video or text")
    model, tok, enc, cfg = load_for_inference(c.out_dir, c.device)
    dev = next(model.parameters()).device
    gen = torch.Generator(dev).manual_seed(c.seed)
    rng = np.random.default_rng(c.seed)
    folder = c.out or os.path.join(c.out_dir, "samples")
    os.makedirs(folder, exist_ok=True)
    written = []
    if c.mode == "image":
        z = draw(model, tok, [c.prompt] * c.num_samples, c.steps, c.guidance, gen, progress=True)
        written.append(save_grid(enc.decode(z), os.path.join(folder, "images.png")))
    elif c.mode == "caption":
        if c.image:
            pictures = np.stack([load_image(c.image, cfg.image_size)] * c.num_samples)
        else:
            pictures = np.stack([toyworld.render(toyworld.random_scene(rng, cfg.max_shapes, cfg.image_size),
                                                 cfg.image_size) for _ in range(c.num_samples)])
        texts = describe(model, tok, enc.encode(pictures).to(dev), c.max_tokens, c.temperature, c.top_k, gen)
        written.append(save_grid(pictures, os.path.join(folder, "caption_inputs.png")))
        for i, text in enumerate(texts):
            print(f"[{i}] {text}")
    elif c.mode == "video":
        truth = np.stack([toyworld.random_video(rng, c.context_frames + c.new_frames, cfg.image_size)
                          for _ in range(c.num_samples)])
        context = enc.encode(truth[:, :c.context_frames].reshape(-1, *truth.shape[2:])).to(dev)
        context = context.view(c.num_samples, c.context_frames, *context.shape[1:])
        new = continue_video(model, tok, context, c.new_frames, c.steps, c.video_guidance, gen, progress=True)
        made = enc.decode(new.reshape(-1, *new.shape[2:])).reshape(c.num_samples, c.new_frames, *truth.shape[2:])
        both = np.concatenate([truth, np.concatenate([truth[:, :c.context_frames], made], 1)], axis=3)
        for i, frames in enumerate(both):  # left: the true video; right: context + generated frames
            written.append(save_gif(frames, os.path.join(folder, f"video_{i}.gif")))
    else:
        prompts = [Example([tok.bos, *tok.encode(c.prompt)])] * c.num_samples
        outs = generate(model, tok, prompts, max_tokens=c.max_tokens, temperature=c.temperature, top_k=c.top_k,
                        steps=c.steps, guidance=c.guidance, generator=gen, progress=True)
        frames = []
        for i, o in enumerate(outs):
            print(f"[{i}] {as_text(tok, o.ids)}")
            frames += o.frames[len(prompts[i].frames):]
        if frames:
            written.append(save_grid(enc.decode(torch.stack(frames)), os.path.join(folder, "text_images.png")))
    for path in written:
        print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
