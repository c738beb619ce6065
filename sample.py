"""
Sampling: modal-switching inference with a KV cache (Appendix B).

The model writes text token by token. When it writes BOI, the sampler appends a grid of pure-noise latent tokens
and integrates them from t = 0 (noise) to t = 1 (clean) with a 25-step Euler sampler and classifier-free
guidance, then appends EOI and goes back to text. So one call can produce text, then an image, then more text.

The prefix is kept in a KV cache. Each Euler step runs only the N image tokens against it, the conditional and
the unconditional branch (the conditioning dropped as in training: BOS BOI) in one batch. A finished image's clean
latents run once more at t = 1 and their keys/values enter the cache, as in training; the noisy steps never do.

    python sample.py --out_dir=out/toy --prompt="a small red circle at the top left"        # caption -> image
    python sample.py --out_dir=out/toy --mode=caption --image=picture.png                   # image -> caption
    python sample.py --out_dir=out/toy --mode=video                                         # video continuation
    python sample.py --out_dir=out/toy --mode=text --prompt="there is"                      # free modal switching
"""
import os
import sys
from dataclasses import dataclass

import numpy as np
import torch

from data import FRAME, Example, caption_to_image, collate, image_to_caption, to_device, video_example, vqa_example
from model import KVCache, shift_time, velocity
from plumbing.build import load_for_inference
from plumbing.export import local_folder
from plumbing.outputs import refuse_overwrite
from plumbing.pictures import load_image, save_gif, save_grid
from plumbing.settings import cli, configure, settings

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
    """Run the finished latents at t = 1 into the cache; rows that drew nothing get N slots nobody sees (doc -1)."""
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
    are right-padded with slots nobody sees (document -1). Returns each row's next rotary position, and the logits."""
    dev, L = pos.device, max(map(len, token_lists))
    tokens = torch.tensor([ids + [pad_id] * (L - len(ids)) for ids in token_lists], device=dev)
    live = torch.tensor([[i < len(ids) for i in range(L)] for ids in token_lists], device=dev)
    N, C = model.cfg.tokens_per_frame, model.cfg.latent_dim
    logits, _ = model(tokens, torch.where(live, 0, -1), torch.full_like(tokens, -1),
                      torch.zeros(0, dtype=torch.long, device=dev), torch.zeros(0, N, C, device=dev),
                      torch.zeros(0, device=dev), pos=pos[:, None] + torch.arange(L, device=dev), cache=cache)
    return pos + live.sum(1), logits


# ----------------------------------------------------------------------------------------------------------------
# The modal-switching loop.

@dataclass
class Row:
    """Where one prompt's generation stands."""
    out: Example          # the prompt, then everything generated (FRAME markers with their latents in .frames)
    last: int             # the token last fed to the model: BOI means this row draws an image next
    feed: int = None      # the token to feed in this pass; None: nothing (the row waits, or is done)
    done: bool = False
    images: int = 0       # images drawn
    texts: int = 0        # text tokens sampled

    def write(self, token, feed=True):
        self.out.ids.append(token)
        self.feed = token if feed else None


@torch.no_grad()
def generate(model, tok, prompts, force_images=0, allow_images=True, max_tokens=64, temperature=1.0, top_k=0,
             steps=25, guidance=3.0, generator=None, progress=False):
    """prompts: data.Examples (frames as latents [N, C]) -> each followed by what was generated (a FRAME marker per
    image, its latents in .frames). force_images=k: k images back to back, then stop. Otherwise text is sampled
    until EOS or max_tokens, and BOI, if allow_images, switches to drawing."""
    from tqdm import tqdm
    cfg, N, dev = model.cfg, model.cfg.tokens_per_frame, next(model.parameters()).device
    rows = [Row(Example(list(p.ids), list(p.frames), list(p.cond)), last=p.ids[-1]) for p in prompts]
    b = prompt_batch(prompts, model, tok.pad)
    cache, uncond = KVCache(cfg.n_layer), KVCache(cfg.n_layer)
    logits = prefill(model, b, cache)
    # BOS BOI: the caption dropped, as in 10% of the caption->image training examples
    prefill(model, prompt_batch([Example(caption_to_image(tok, "", None, drop_caption=True, prompt_only=True)
                                         .ids[:-1])], model, tok.pad), uncond)
    pos = b["pos"][:, -1] + 1
    frame_id = len(b["latents"])
    # passes through the model: an image's BOI fed (unless the prompt ends with it), its Euler steps and commit, its
    # EOI fed back; text, up to max_tokens - 1, a drawn image adding its passes to the total
    opened = all(p.ids[-1] == tok.boi for p in prompts)
    bar = tqdm(total=force_images * (steps + 3) - opened if force_images else max_tokens - 1, disable=not progress,
               desc="generating", unit="pass")
    while True:
        # rows that have just written BOI draw an image, all of them together
        drawing = [r for r, row in enumerate(rows) if not row.done and row.last == tok.boi]
        if drawing:
            index = torch.tensor(drawing, device=dev)
            z = draw_image(model, cache, uncond, index, pos, frame_id, steps, guidance, generator)
            commit_image(model, cache, index, z, pos, frame_id, tok.pad)
            bar.total += 0 if force_images else steps + 2
            bar.update(steps + 1)
            pos[index] += N
            frame_id += 1
            for i, r in enumerate(drawing):
                rows[r].out.ids.append(FRAME)
                rows[r].out.frames.append(z[i])
                rows[r].out.cond.append(False)
                rows[r].images += 1
                rows[r].write(tok.eoi)
        # every other row picks its next token
        if not allow_images:
            logits[..., tok.boi] = float("-inf")
        nxt = None if force_images else sample_token(logits[:, -1], temperature, top_k, generator).tolist()
        for r, row in enumerate(rows):
            if row.done or row.feed is not None:
                continue
            if force_images:
                row.done = row.images >= force_images
                if not row.done:
                    row.write(tok.boi)
            else:
                row.texts += 1
                row.done = nxt[r] == tok.eos or row.texts >= max_tokens
                row.write(nxt[r], feed=not row.done)
        if all(row.feed is None for row in rows):
            break
        feed = [[] if row.feed is None else [row.feed] for row in rows]   # nothing to feed: padding nobody sees
        for row in rows:
            row.last, row.feed = row.last if row.feed is None else row.feed, None
        pos, logits = append_tokens(model, cache, feed, pos, tok.pad)
        bar.update(1)
    bar.close()
    return [row.out for row in rows]


# ----------------------------------------------------------------------------------------------------------------
# The common tasks as forced modes (action-conditioned frames are plan.imagine's), and a generation as text.

def draw(model, tok, captions, steps=25, guidance=3.0, generator=None, progress=False):
    """Caption -> image: latents [B, N, C], one per caption."""
    prompts = [Example(caption_to_image(tok, c, None, prompt_only=True).ids[:-1]) for c in captions]
    outs = generate(model, tok, prompts, force_images=1, steps=steps, guidance=guidance, generator=generator,
                    progress=progress)
    return torch.stack([o.frames[-1] for o in outs])


def describe(model, tok, latents, max_tokens=96, temperature=0.0, top_k=0, generator=None, questions=None):
    """Image -> caption, for each image latent [N, C] of latents [B, N, C]; given questions (one per image), the
    answer to each instead (VQA)."""
    prompts = [image_to_caption(tok, z, "", prompt_only=True) if questions is None else
               vqa_example(tok, z, [(questions[i], "")], prompt_only=True) for i, z in enumerate(latents)]
    outs = generate(model, tok, prompts, allow_images=False, max_tokens=max_tokens, temperature=temperature,
                    top_k=top_k, generator=generator)
    return [tok.decode(o.ids[len(p.ids):]) for o, p in zip(outs, prompts)]


def continue_video(model, tok, context, n_frames, steps=25, guidance=1.0, generator=None, progress=False):
    """Context frames [B, K, N, C] -> the next n_frames, [B, n_frames, N, C]. No guidance by default: its
    unconditional branch, a video's first frame, would push frames away from an opening rather than toward context."""
    K = context.shape[1]
    prompts = [Example(video_example(tok, list(frames)).ids[:-1], list(frames), [True] * K) for frames in context]
    outs = generate(model, tok, prompts, force_images=n_frames, steps=steps, guidance=guidance,
                    generator=generator, progress=progress)
    return torch.stack([torch.stack(o.frames[K:]) for o in outs])


def as_text(tok, ids):
    """A generated sequence as text, with <image> where each frame is."""
    cuts = [-1] + [k for k, i in enumerate(ids) if i == FRAME] + [len(ids)]
    return " <image> ".join(tok.decode(ids[a + 1:b]) for a, b in zip(cuts, cuts[1:]))


# ----------------------------------------------------------------------------------------------------------------
# Command line.

out_dir = "out/toy"     # the model to sample: a run's out_dir, an export folder, or hf://owner/name[@revision]
weights = "auto"        # "auto": the weights' moving average where the run kept one (ema_decay), else the raw; ema, raw
mode = "image"          # "image": caption -> image; "caption": image -> text; "video": continue frames; "text"
prompt = "a small red circle at the top left"
image = ""              # caption mode: an image file; empty: toy-world renders
question = ""           # caption mode: ask each image this instead (a model fine-tuned on VQA answers it)
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
out = ""                # output folder; default out_dir/samples (a hub model: out/owner--name/samples)
overwrite = False       # replace the pictures of an earlier run in the output folder


def check_length(c, tok, N, seq_len):
    """A prompt and what the mode adds must fit in the trained sequence length (text mode's images not counted)."""
    P = len(tok.encode(c.prompt))
    need = {"image": P + N + 3, "caption": N + 3 + c.max_tokens, "video": 1 + (c.context_frames + c.new_frames) *
            (N + 2), "text": 1 + P + c.max_tokens}[c.mode]
    if need > seq_len:
        raise SystemExit(f"{c.mode} mode needs {need} positions here (prompt {P} tokens, max_tokens {c.max_tokens}, "
                         f"{N} per image) but the model was trained on {seq_len}: shorten --prompt or lower "
                         f"--max_tokens / the frames")


def main(argv):
    import toyworld
    c = configure(settings(globals()), argv, [__file__])
    if c.mode not in ("image", "caption", "video", "text"):
        raise SystemExit(f"unknown mode '{c.mode}': use image, caption, video or text")
    if min(c.num_samples, c.steps, c.max_tokens, c.context_frames, c.new_frames) < 1 or min(c.temperature, c.top_k) < 0:
        raise SystemExit("num_samples, steps, max_tokens, context_frames and new_frames must be >= 1, temperature "
                         "and top_k >= 0")
    folder = c.out or os.path.join(local_folder(c.out_dir), "samples")
    names = {"image": ["images.png"], "caption": ["caption_inputs.png"], "text": ["text_images.png"],
             "video": [f"video_{i}.gif" for i in range(c.num_samples)]}[c.mode]
    refuse_overwrite([os.path.join(folder, n) for n in names], c.overwrite)
    model, tok, enc, cfg = load_for_inference(c.out_dir, c.device, c.weights)
    check_length(c, tok, enc.tokens_per_frame, cfg.seq_len)
    dev = next(model.parameters()).device
    gen = torch.Generator(dev).manual_seed(c.seed)
    rng = np.random.default_rng(c.seed)
    os.makedirs(folder, exist_ok=True)
    written = []
    if c.mode == "image":
        z = draw(model, tok, [c.prompt] * c.num_samples, c.steps, c.guidance, gen, progress=True)
        written.append(save_grid(enc.decode(z), os.path.join(folder, "images.png")))
    elif c.mode == "caption":
        if c.image:
            try:
                pictures = np.stack([load_image(c.image, cfg.image_size)] * c.num_samples)
            except (OSError, ValueError) as e:
                raise SystemExit(f"cannot read image '{c.image}' ({e}): give a PNG or JPEG file")
        else:
            pictures = np.stack([toyworld.render(toyworld.random_scene(rng, cfg.max_shapes, cfg.image_size),
                                                 cfg.image_size) for _ in range(c.num_samples)])
        texts = describe(model, tok, enc.encode(pictures).to(dev), c.max_tokens, c.temperature, c.top_k, gen,
                         [c.question] * c.num_samples if c.question else None)
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
    cli(main, sys.argv[1:])
