"""
Data: how text, images and video become one packed stream of training sequences.

Every example is a list of token ids in which each image or video frame is a block BOI, N latent tokens, EOI
(Appendix B). Examples are packed whole into fixed-length rows; each position carries a document id (packed
examples never see each other), a frame id (-1 for text; the attention mask and the FFN routing read it) and a
next-token target (-1 where there is none). Frames travel as images (or as latents pre-encoded into the shards);
train.py encodes them with the frozen encoder. A toy-world batch is a pure function of (seed, step, micro-batch
index); a real-data batch (ShardData) of those and the reading position of its micro-batch's streams, which
checkpoints save: resumed and re-run jobs, on any number of processes, see exactly the same data.
"""
import functools
import glob
import io
import itertools
import json
import os
import pickle
import re
import sys
import tarfile
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import tiktoken
import torch

import toyworld

# ----------------------------------------------------------------------------------------------------------------
# Tokenizer: tiktoken. The toy world uses a byte-level encoding built in code (256 byte tokens, no merges), so
# nothing has to be downloaded; real configs name a standard encoding such as "gpt2" or "cl100k_base".

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|boi|>", "<|eoi|>", "<|pad|>")


class Tokenizer:
    def __init__(self, name="bytes"):
        if name == "bytes":
            base_ranks, pat, specials = {bytes([i]): i for i in range(256)}, r"\S+|\s+", {}
        else:
            try:
                base = tiktoken.get_encoding(name)
            except Exception as e:            # unknown name, or no network for its BPE file on first use
                raise ValueError(f"tiktoken encoding {name!r} not available ({e.__class__.__name__}); it downloads "
                                 f"once, into TIKTOKEN_CACHE_DIR: fetch it where there is network, or use 'bytes'")
            base_ranks, pat, specials = base._mergeable_ranks, base._pat_str, dict(base._special_tokens)
        n = max([*base_ranks.values(), *specials.values()]) + 1
        specials.update({s: n + i for i, s in enumerate(SPECIAL_TOKENS)})
        self.enc = tiktoken.Encoding(f"{name}+multimodal", pat_str=pat, mergeable_ranks=base_ranks,
                                     special_tokens=specials)
        self.bos, self.eos, self.boi, self.eoi, self.pad = (specials[s] for s in SPECIAL_TOKENS)
        self.eot = specials.get("<|endoftext|>", self.bos)   # separates documents in token shards, as in llm.c
        self.vocab_size = self.enc.n_vocab

    def encode(self, text):
        return self.enc.encode_ordinary(text)

    def decode(self, ids):
        """Text tokens only: special tokens and FRAME markers are dropped."""
        return self.enc.decode([i for i in ids if 0 <= i < self.bos])


# ----------------------------------------------------------------------------------------------------------------
# Examples. FRAME marks where one frame's N latent tokens go; the BOI/EOI around it are ordinary tokens.

FRAME = -2


@dataclass
class Example:
    ids: list
    frames: list = field(default_factory=list)   # one image (uint8 [H, W, 3]) per FRAME; None when generated later
    cond: list = field(default_factory=list)     # per frame: True = clean conditioning input without flow loss

    def length(self, tokens_per_frame):
        return len(self.ids) + (tokens_per_frame - 1) * len(self.frames)


def text_example(tok, text):
    return Example([tok.bos, *tok.encode(text), tok.eos])


def caption_to_image(tok, caption, image, drop_caption=False, prompt_only=False):
    """Generation. With drop_caption the model sees no caption at all: that is the unconditional branch that
    classifier-free guidance subtracts at sampling time, built by the same function in both places."""
    ids = [tok.bos, *([] if drop_caption else tok.encode(caption)), tok.boi, FRAME]
    return Example(ids if prompt_only else ids + [tok.eoi, tok.eos], [image], [False])


def image_to_caption(tok, image, caption, prompt_only=False):
    """Understanding: the image is seen clean and carries no flow loss; the caption is learned as text."""
    ids = [tok.bos, tok.boi, FRAME, tok.eoi]
    return Example(ids if prompt_only else ids + tok.encode(caption) + [tok.eos], [image], [True])


def video_example(tok, frames):
    """Raw video, no text: each frame its own BOI ... EOI block, each with its own t (Diffusion-Forcing-like)."""
    ids = [tok.bos]
    for _ in frames:
        ids += [tok.boi, FRAME, tok.eoi]
    return Example(ids + [tok.eos], list(frames), [False] * len(frames))



# ----------------------------------------------------------------------------------------------------------------
# Navigation (section 5): actions are plain text. An action is a move in the robot's own frame (+x forward, +y
# left, yaw counter-clockwise, in radians), written with two decimals; the WASD keys of Appendix F.1 are presets.
# Anything else (a free-form sentence) passes through as text, but only these forms can be parsed back.

WASD = toyworld.NAV_KEYS   # {"w": (+0.5, 0, 0), ...}: kept with the world they move
_ACTION = re.compile(r"dx=([+-]\d+\.\d\d) dy=([+-]\d+\.\d\d) dyaw=([+-]\d+\.\d\d)")


def action_text(dx, dy, dyaw):
    return f"dx={dx:+.2f} dy={dy:+.2f} dyaw={dyaw:+.2f}".replace("-0.00", "+0.00")


def parse_actions(text):
    """'w w a d', or numeric actions separated by ';' (as action_text writes them) -> [(dx, dy, dyaw), ...]."""
    keys = text.lower().split()
    if keys and all(k in WASD for k in keys):
        return [WASD[k] for k in keys]
    parts = [p.strip() for p in text.split(";") if p.strip()]
    matches = [_ACTION.fullmatch(p) for p in parts]
    if not parts or not all(matches):
        bad = next((p for p, m in zip(parts, matches) if not m), text)
        raise ValueError(f"cannot read action {bad!r}: write keys from 'wasd' separated by spaces (e.g. 'w w a d') "
                         f"or '{action_text(0.5, 0, 0.25)}' steps separated by ';'")
    return [tuple(float(v) for v in m.groups()) for m in matches]


def robot_frame_actions(position, yaw):
    """Poses [T, 2] and [T] in the world frame -> the T-1 actions between consecutive poses, each in the frame of
    the pose it starts from (as NWM computes them): (p[i+1] - p[i]) rotated by -yaw[i], and the wrapped yaw step."""
    position, yaw = np.asarray(position, float), np.asarray(yaw, float)
    d = position[1:] - position[:-1]
    c, s = np.cos(yaw[:-1]), np.sin(yaw[:-1])
    dyaw = toyworld.wrap_angle(yaw[1:] - yaw[:-1])
    return np.stack([c * d[:, 0] + s * d[:, 1], -s * d[:, 0] + c * d[:, 1], dyaw], 1)


def navigation_example(tok, context, actions, targets=None):
    """World modeling: context frames seen clean, then per step the action as text and the frame it leads to.
    actions are strings; targets None (prompt for the step to generate) or frames. Only the last target is learned
    (flow matching); earlier ones are seen clean, as a rollout commits each imagined frame before the next: a chain
    of noisy targets would teach predicting from noisy predecessors that inference never shows."""
    ids = [tok.bos]
    for _ in context:
        ids += [tok.boi, FRAME, tok.eoi]
    frames, cond = list(context), [True] * len(context)
    for i, action in enumerate(actions):
        ids += tok.encode(action) + [tok.boi, FRAME]
        frames.append(None if targets is None else targets[i])
        cond.append(i < len(actions) - 1)
        if targets is not None or i < len(actions) - 1:
            ids.append(tok.eoi)
    return Example(ids + ([tok.eos] if targets is not None else []), frames, cond)

# ----------------------------------------------------------------------------------------------------------------
# Packing: examples into rows of seq_len positions, and rows into one batch of tensors.

def pack_rows(examples, seq_len, tokens_per_frame):
    """Greedy: examples go whole into the current row until the next one does not fit."""
    rows, row, used = [], [], 0
    for ex in examples:
        n = ex.length(tokens_per_frame)
        if row and used + n > seq_len:
            rows.append(row)
            row, used = [], 0
        row.append(ex)
        used += n
    return rows + ([row] if row else [])


def collate(rows, seq_len, tokens_per_frame, pad_id):
    """rows: a list of lists of examples. Returns numpy arrays: tokens, targets, doc, frame [B, S]; vis_idx
    [F * N] (flat positions of every frame token, frame-major); cond [F]; images [F, H, W, 3] (None if any
    frame is still to be generated)."""
    B, S, N = len(rows), seq_len, tokens_per_frame
    tokens = np.full((B, S), pad_id, np.int64)
    targets = np.full((B, S), -1, np.int64)
    doc = np.full((B, S), -1, np.int64)
    frame = np.full((B, S), -1, np.int64)
    vis_idx, images, cond = [], [], []
    for r, row in enumerate(rows):
        p = 0
        for d, ex in enumerate(row):
            if p + ex.length(N) > S:
                raise ValueError(f"example of {ex.length(N)} positions does not fit in seq_len {S}")
            start, frames = p, iter(zip(ex.frames, ex.cond))
            for tok in ex.ids:
                if tok == FRAME:
                    image, c = next(frames)
                    frame[r, p:p + N] = len(images)
                    vis_idx.extend(range(r * S + p, r * S + p + N))
                    images.append(image)
                    cond.append(c)
                    doc[r, p:p + N] = d
                    p += N
                else:
                    tokens[r, p], doc[r, p] = tok, d
                    p += 1
            # a text position learns the next token when that token is text too (BOI is, EOI follows a frame)
            is_text = frame[r, start:p] < 0
            targets[r, start:p - 1] = np.where(is_text[:-1] & is_text[1:], tokens[r, start + 1:p], -1)
    have_images = images and all(im is not None for im in images)
    if have_images and len({str(im.dtype).endswith("uint8") for im in images}) > 1:   # numpy or torch
        raise ValueError("a batch mixes images and pre-encoded latents: pre-encode every visual source or none")
    return dict(tokens=tokens, targets=targets, doc=doc, frame=frame, vis_idx=np.array(vis_idx, np.int64),
                cond=np.array(cond, bool), images=np.stack(images) if have_images else None)


def to_device(batch, device):
    return {k: move(torch.as_tensor(v), device) if isinstance(v, np.ndarray) else v for k, v in batch.items()}


def move(x, device):
    """A CPU tensor to the device. To a GPU through pinned memory, without waiting: a plain copy would first wait
    for all the work queued on the GPU (the last micro-batch's backward), leaving the GPU idle while the next
    forward pass is launched."""
    if x.device.type == "cpu" and torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


# ----------------------------------------------------------------------------------------------------------------
# The built-in source: the toy world (toyworld.py), a weighted mixture of text, caption->image, image->caption,
# video and navigation examples, generated on the fly.

SOURCES = ("text", "caption_to_image", "image_to_caption", "video", "navigation")
NAV_CONTEXT = 4     # App. F.1: 4 context frames, one action, one target frame
SPLITS = {"train": 0, "val": 1, "eval_prompts": 2}


def weighted_sources(mixture, tok, seq_len, tokens_per_frame, video_frames):
    """The sources a mixture weights, in SOURCES order (the toy world's and real data's alike). An unknown source,
    a mixture that weights nothing, or a video too long for a row stops with a message."""
    unknown = set(mixture) - set(SOURCES)
    if unknown or not any(w > 0 for w in mixture.values()):
        raise ValueError(f"mixture {mixture} must weight some of {SOURCES} (unknown: {sorted(unknown)})")
    names = [s for s in SOURCES if mixture.get(s, 0) > 0]
    need = video_example(tok, [None] * video_frames).length(tokens_per_frame)
    if "video" in names and need > seq_len:
        raise ValueError(f"a video of {video_frames} frames needs {need} positions but seq_len is {seq_len}: "
                         f"lower video_frames or raise seq_len")
    return names


class ToyWorldData:
    def __init__(self, tok, seq_len, tokens_per_frame, mixture, seed=0, image_size=32, max_shapes=3,
                 video_frames=4, cfg_dropout=0.1, nav_view="ray"):
        self.tok, self.seq_len, self.N = tok, seq_len, tokens_per_frame
        self.names = weighted_sources(mixture, tok, seq_len, tokens_per_frame, video_frames)
        self.weights = np.array([mixture[s] for s in self.names], float) / sum(mixture[s] for s in self.names)
        self.seed, self.image_size, self.max_shapes = seed, image_size, max_shapes
        self.video_frames, self.cfg_dropout, self.nav_view = video_frames, cfg_dropout, nav_view
        nav_len = navigation_example(tok, [None] * NAV_CONTEXT, [action_text(0, 0, 0)], [None]).length(tokens_per_frame)
        if "navigation" in self.names and nav_len > seq_len:
            raise ValueError(f"a navigation example needs {nav_len} positions but seq_len is {seq_len}: raise "
                             f"seq_len or drop navigation from the mixture")
        self.skipped = 0       # examples too long for one row (none in the toy world at sane settings)

    def rng(self, split, *key):
        return np.random.default_rng([self.seed, SPLITS[split], *key])

    def scene(self, rng):
        return toyworld.random_scene(rng, self.max_shapes, self.image_size)

    def example(self, rng):
        source = self.names[rng.choice(len(self.names), p=self.weights)]
        if source == "text":
            return text_example(self.tok, toyworld.random_sentence(rng, self.max_shapes))
        if source == "video":
            return video_example(self.tok, toyworld.random_video(rng, self.video_frames, self.image_size))
        if source == "navigation":
            return self.navigation(rng)
        scene = self.scene(rng)
        image, text = toyworld.render(scene, self.image_size), toyworld.caption(scene, self.image_size)
        if source == "image_to_caption":
            return image_to_caption(self.tok, image, text)
        return caption_to_image(self.tok, text, image, drop_caption=rng.random() < self.cfg_dropout)

    def navigation(self, rng):
        """4 frames of a walk (random or goal-directed) in a training maze, then the next action as text and the
        frame it leads to. One target only: a second would learn from a noisy first one, while a rollout commits
        each imagined frame clean. Held-out mazes (plan.py) have seeds of the other parity."""
        maze = toyworld.maze_for(rng.integers(2 ** 31))
        poses, actions = toyworld.walk(rng, maze, toyworld.random_pose(rng, maze), NAV_CONTEXT,
                                       goal_directed=rng.random() < 0.5)
        frames = [toyworld.view(maze, p, self.image_size, self.nav_view) for p in poses]
        return navigation_example(self.tok, frames[:NAV_CONTEXT], [action_text(*actions[-1])], frames[NAV_CONTEXT:])

    def batch(self, step, micro, batch_size, split="train"):
        """Rows for one micro-batch; `micro` is the global micro-batch index (rank * accumulation + i), so the
        global batch of a step does not depend on how many processes share it."""
        rng = self.rng(split, step, micro)
        examples, rows = [], []
        while len(rows) <= batch_size:  # one row more than needed, so the last kept row is full
            ex = self.example(rng)
            if ex.length(self.N) > self.seq_len:
                self.skipped += 1
                continue
            examples.append(ex)
            rows = pack_rows(examples, self.seq_len, self.N)
        batch = collate(rows[:batch_size], self.seq_len, self.N, self.tok.pad)
        return batch

    def eval_prompts(self, n):
        """Held-out scenes (their own random stream) for the generation and understanding scores."""
        rng = self.rng("eval_prompts")
        return [self.scene(rng) for _ in range(n)]

    state = load_state = staticmethod(lambda _: None)   # a batch is a function of (seed, step, micro): no state


# ----------------------------------------------------------------------------------------------------------------
# Real data at scale. Text: token shards in llm.c's layout, memory-mapped. Image-text pairs, video and pre-encoded
# latents: webdataset tar shards (a sample's members share a key: key.jpg + key.txt or key.json; video frames
# key.000.jpg, key.001.jpg, ...; a frame pre-encoded by encoders.py is key.latent.npy), on disk or streamed over
# HTTP. Navigation: NWM trajectory folders, <traj>/{0..T-1}.jpg + traj_data.pkl.

SHARD_MAGIC = 20240520                        # llm.c: 256 int32 header (magic, version, token count), then tokens
SHARD_DTYPES = {1: np.uint16, 2: np.uint32}   # version 2 is ours: uint32 tokens, for vocabularies over 65,536
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CONTEXT_FRAMES = NAV_CONTEXT                  # navigation: 4 context frames, then 1 to 4 steps, the last one learned


def write_shard(path, tokens, vocab_size):
    version = 1 if vocab_size <= 1 << 16 else 2
    header = np.zeros(256, np.int32)
    header[:3] = SHARD_MAGIC, version, len(tokens)
    with open(path + ".tmp", "wb") as f:      # never a half-written shard under the real name
        f.write(header.tobytes())
        f.write(np.asarray(tokens, SHARD_DTYPES[version]).tobytes())
    os.replace(path + ".tmp", path)


def read_shard(path):
    header = np.fromfile(path, np.int32, 256) if os.path.isfile(path) else np.zeros(0, np.int32)
    if len(header) < 256 or header[0] != SHARD_MAGIC or header[1] not in SHARD_DTYPES:
        raise ValueError(f"{path} is not a token shard (llm.c layout, magic {SHARD_MAGIC}): make shards with "
                         f"python data.py prepare-text")
    dtype, n = SHARD_DTYPES[int(header[1])], int(header[2])
    if os.path.getsize(path) < 1024 + n * np.dtype(dtype).itemsize:
        raise ValueError(f"{path} is truncated (its header promises {n} tokens): prepare or download it again")
    return np.memmap(path, dtype, "r", offset=1024, shape=(n,))


def expand(spec):
    """'a.tar, dir/*.tar, https://host/cc3m-{0000..0575}.tar' -> the list of files (globs sorted, URLs kept)."""
    files = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        if m := re.search(r"\{(\d+)\.\.(\d+)\}", part):   # webdataset's brace ranges, zero-padded as written
            files += expand(",".join(part[:m.start()] + str(i).zfill(len(m[1])) + part[m.end():]
                                     for i in range(int(m[1]), int(m[2]) + 1)))
            continue
        found = [part] if part.startswith(("http://", "https://")) else sorted(glob.glob(part))
        if not found:
            raise ValueError(f"no file matches '{part}': fill data/ with the README's data commands or fix the path")
        files += found
    return files


def tar_samples(path, stats):
    """(key, {extension: bytes}) for each sample of a webdataset tar, read as a stream. A shard that cannot be
    opened stops the run (a wrong path is a mistake to fix); one cut short ends early and is counted."""
    import requests
    remote, f = path.startswith(("http://", "https://")), None
    try:
        f = requests.get(path, stream=True, timeout=60) if remote else open(path, "rb")
        if remote:
            f.raise_for_status()
        tar = tarfile.open(fileobj=f.raw if remote else f, mode="r|*")   # never stored: read as it arrives
    except (OSError, tarfile.TarError, requests.RequestException) as e:
        if f is not None:                     # (a failed response is falsy: test for None)
            f.close()
        raise ValueError(f"cannot open shard {path}: {e}")
    key, group = None, {}
    try:
        for m in tar:
            folder, _, name = m.name.rpartition("/")
            stem, _, ext = name.partition(".")
            if m.isfile() and ext:
                if (folder, stem) != key and group:
                    yield key, group
                    group = {}
                key, group[ext.lower()] = (folder, stem), tar.extractfile(m).read()
        if tar.fileobj.pos < tar.offset + 512:   # tarfile takes a cut header for the end: no end-of-archive block
            raise EOFError
        if group:
            yield key, group
    except (OSError, EOFError, tarfile.TarError, requests.RequestException):
        stats["truncated_shards"] += 1
    finally:
        f.close()


def load_image(data, size):
    """Encoded image bytes -> RGB uint8 [size, size, 3] (encoders.to_rgb: any mode, short side resized, centre
    cropped). JPEGs much larger than `size` are decoded at a reduced scale, which is much faster."""
    from PIL import Image
    from encoders import to_rgb
    im = Image.open(io.BytesIO(data))
    im.draft("RGB", (size, size))
    return to_rgb(im, size)


def decode_frame(ext, data, size, latent_shape):
    if ext.endswith("latent.npy"):            # pre-encoded (encoders.py): float16 [N, C], used as it is
        z = np.load(io.BytesIO(data))
        if z.shape != latent_shape or z.dtype.kind != "f":
            raise ValueError(f"latent {z.dtype} {z.shape}, the encoder makes {latent_shape}")
        return z
    return load_image(data, size)


def frame_members(group):
    """The extensions of a sample's frames, images or pre-encoded latents, in frame order ("000.jpg", "001.jpg", ...
    for a video; one "jpg" or "latent.npy" for an image-text pair)."""
    frames = [e for e in group if e.rsplit(".", 1)[-1] in IMAGE_EXTS or e.endswith("latent.npy")]
    return sorted(frames, key=lambda e: int(e.split(".")[0]) if e.split(".")[0].isdigit() else -1)


def caption_of(group):
    """A sample's .txt, or the "caption" (else "text") field of its .json; None when it has none."""
    try:
        meta = {"caption": group["txt"].decode()} if "txt" in group else json.loads(group["json"])
        return (meta.get("caption") or meta.get("text")).strip() or None
    except (ValueError, AttributeError, KeyError, TypeError):
        return None


class Stream:
    """One source's examples for one micro-batch slot, epoch after epoch. With at least as many files as slots,
    slot g reads files g, g + n, ...; with fewer, slots share a file and each takes its own part of it. The state
    [epoch, file, position, examples taken at that position] names the next example to be consumed."""

    def __init__(self, data, source, files, slot, n_slots, state=None):
        F = len(files)
        if F >= n_slots:
            self.files, self.part = files[slot::n_slots], (0, 1)
        else:
            self.files, self.part = [files[slot % F]], (slot // F, len(range(slot % F, n_slots, F)))
        self.data, self.source, self.key = data, source, [data.seed, SOURCES.index(source), slot]
        self.state, self.items, self.pending, self.dry = list(state or (0, 0, 0, 0)), None, [], 0

    def peek(self):
        while not self.pending:
            epoch, f, pos, taken = self.state
            if self.items is None:            # open the file at the saved position; a new file order every epoch
                path = self.files[np.random.default_rng([*self.key, epoch]).permutation(len(self.files))[f]]
                self.items = self.data.read(self.source, path, pos, self.part, [*self.key, epoch, f])
                self.skip = taken             # examples of the item at pos that were consumed before a resume
            item = next(self.items, None)
            if item is None:                  # the file is done: the next one, or the first of a new epoch
                last = f + 1 == len(self.files)
                self.items, self.state, self.dry = None, [epoch + last, 0 if last else f + 1, 0, 0], self.dry + last
                if self.dry > 1:
                    raise ValueError(f"no usable {self.source} example in {', '.join(self.files)} (see the skip "
                                     f"counts in the log)")
                continue
            examples = [ex for ex in item[1] if ex.length(self.data.N) <= self.data.seq_len]
            if len(examples) < len(item[1]):
                self.data.stats["too_long"] += len(item[1]) - len(examples)
            self.state[2:], self.pending, self.skip = [item[0], self.skip], examples[self.skip:], 0
            self.dry = 0 if examples else self.dry
        return self.pending[0]

    def pop(self):
        self.state[3] += 1
        return self.pending.pop(0)


class ShardData:
    """The mixture over real sources. Each micro-batch slot g (the global micro-batch index, as for the toy world)
    owns one Stream per source and draws its examples' sources from (seed, step, g): a batch is a function of
    (seed, step, slot, stream states), and the states are what checkpoints save (state, load_state)."""

    def __init__(self, tok, seq_len, tokens_per_frame, latent_dim, mixture, sources, n_slots, seed=0,
                 image_size=224, video_frames=4, cfg_dropout=0.1, val_sources=None):
        self.names = weighted_sources(mixture, tok, seq_len, tokens_per_frame, video_frames)
        for s in self.names:
            if not sources.get(s):
                raise ValueError(f"the mixture weights {s} but {s}_data is empty: set it (paths, globs or URLs, "
                                 f"comma-separated) or drop {s} from the mixture")
        self.files = {s: expand(sources[s]) for s in self.names}
        self.val_files = {s: expand(v) for s, v in (val_sources or {}).items() if s in self.names and v}
        self.tok, self.seq_len, self.N, self.latent_shape = tok, seq_len, tokens_per_frame, (tokens_per_frame,
                                                                                             latent_dim)
        self.weights, self.n_slots, self.seed = mixture, n_slots, seed
        self.image_size, self.video_frames, self.cfg_dropout = image_size, video_frames, cfg_dropout
        self.stats, self.streams, self.saved, self.has_val = Counter(), {}, {}, bool(self.val_files)

    def skip(self, reason):
        self.stats[reason] += 1
        return []

    def batch(self, step, micro, batch_size, split="train"):
        if split == "val":   # the same held-out batches at every evaluation: the val streams start over at step 0
            if step == 0:
                self.val_streams = {s: Stream(self, s, f, 0, 1) for s, f in self.val_files.items()}
            streams = self.val_streams
        else:
            if micro not in self.streams:
                self.streams[micro] = {s: Stream(self, s, self.files[s], micro, self.n_slots,
                                                 self.saved.get(micro, {}).get(s)) for s in self.names}
            streams = self.streams[micro]
        names = list(streams)
        p = np.array([self.weights[s] for s in names], float)
        rng = np.random.default_rng([self.seed, SPLITS[split], step, micro])
        rows, row, used = [], [], 0
        while len(rows) < batch_size:
            stream = streams[names[rng.choice(len(names), p=p / p.sum())]]
            n = stream.peek().length(self.N)
            if row and used + n > self.seq_len:   # the row is full; the example waits in its stream for later
                rows.append(row)
                row, used = [], 0
                continue
            row.append(stream.pop())
            used += n
        return collate(rows, self.seq_len, self.N, self.tok.pad)

    def state(self, micro):
        return {s: list(stream.state) for s, stream in self.streams.get(micro, {}).items()}

    def load_state(self, saved):
        self.saved, self.streams = saved, {}

    def read(self, source, path, pos, part, key):
        """The items of one file from position pos on, as (position, examples); only every part[1]-th item,
        from part[0] on, when part[1] slots share the file."""
        if source == "text":
            return self.text_items(path, pos, part)
        if source == "navigation":
            return self.navigation_items(path, pos, part, key)
        return ((i, self.tar_examples(source, group, np.random.default_rng([*key, i])))
                for i, (_, group) in enumerate(tar_samples(path, self.stats)) if i >= pos and i % part[1] == part[0])

    def text_items(self, path, pos, part):
        """Documents (split at tok.eot) of a token shard; one longer than a row is cut into row-sized pieces, BOS
        on its first and EOS on its last. Slots that share a shard read contiguous parts of it."""
        tokens, eot, n = read_shard(path), self.tok.eot, self.seq_len - 2
        lo, hi = part[0] * len(tokens) // part[1], (part[0] + 1) * len(tokens) // part[1]
        p = max(pos, lo)
        while p < hi:
            window = np.asarray(tokens[p:min(p + n, hi)], np.int64)
            if window.max() >= self.tok.vocab_size:
                raise ValueError(f"{path} holds token {window.max()} but the tokenizer has {self.tok.vocab_size}: "
                                 f"set tokenizer to the one the shard was made with")
            ends = np.flatnonzero(window == eot)
            k = int(ends[0]) if len(ends) else len(window)
            if k:
                first, last = bool(p == 0 or tokens[p - 1] == eot), bool(len(ends) or p + k == len(tokens))
                yield p, [Example([self.tok.bos] * first + window[:k].tolist() + [self.tok.eos] * last)]
            p += k + (len(ends) > 0)

    def tar_examples(self, source, group, rng):
        """One webdataset sample -> its examples; [] when it is unusable, the reason counted."""
        frames = frame_members(group)
        K = self.video_frames if source == "video" else 1
        frames = frames[:len(frames) // K * K]
        caption = caption_of(group) if source != "video" else ""
        if caption is None or not frames:
            return self.skip("no_caption" if caption is None else "short_video" if K > 1 else "no_image")
        try:
            frames = [decode_frame(e, group[e], self.image_size, self.latent_shape) for e in frames]
        except Exception:   # whatever a corrupt file makes the decoder raise: skip the sample, count it
            return self.skip("bad_frame")
        if source == "video":
            return [video_example(self.tok, frames[i:i + K]) for i in range(0, len(frames), K)]
        if source == "image_to_caption":
            return [image_to_caption(self.tok, frames[0], caption)]
        return [caption_to_image(self.tok, caption, frames[0], drop_caption=rng.random() < self.cfg_dropout)]

    def navigation_items(self, path, pos, part, key):
        """Windows of an NWM trajectory: 4 context frames, then 1 to 4 target frames (drawn per window), each after
        the action that leads to it, in the robot frame of the step's start (robot_frame_actions)."""
        try:
            with open(os.path.join(path, "traj_data.pkl"), "rb") as f:
                traj = pickle.load(f)         # NWM's format; unpickling runs code: read only trajectories you trust
            actions = robot_frame_actions(np.asarray(traj["position"])[:, :2], np.asarray(traj["yaw"]).reshape(-1))
        except Exception as e:
            raise ValueError(f"cannot read trajectory {path}: {e!r} (want traj_data.pkl with position [T, 2] and "
                             f"yaw [T] next to 0.jpg ... T-1.jpg)")

        @functools.lru_cache(maxsize=8)       # windows overlap: each frame is decoded once
        def frame(i):
            with open(os.path.join(path, f"{i}.jpg"), "rb") as f:
                return load_image(f.read(), self.image_size)
        for t in range(pos, len(actions) + 1 - CONTEXT_FRAMES):
            if t % part[1] != part[0]:
                continue
            k = min(int(np.random.default_rng([*key, t]).integers(1, 5)), len(actions) + 1 - CONTEXT_FRAMES - t)
            try:
                window = [frame(i) for i in range(t, t + CONTEXT_FRAMES + k)]
            except Exception:                 # a missing or corrupt frame: skip the windows that need it
                yield t, self.skip("bad_frame")
                continue
            steps = [action_text(*a) for a in actions[t + CONTEXT_FRAMES - 1:t + CONTEXT_FRAMES - 1 + k]]
            yield t, [navigation_example(self.tok, window[:CONTEXT_FRAMES], steps, window[CONTEXT_FRAMES:])]


class Prefetcher:
    """Makes this process's micro-batches, step after step, on background threads, `depth` ahead of training, so
    the accelerator does not wait for decoding (PIL and numpy release the GIL). A slot always runs on the same
    thread, so its streams are read in order. Each batch comes with its slot's state right after it: a checkpoint
    saves the position of the last batch consumed, not of those already prefetched."""

    def __init__(self, data, step, slots, batch_size, depth=8, threads=1):
        self.pools = [ThreadPoolExecutor(1) for _ in range(max(1, min(threads, len(slots))))]
        self.jobs = ((s, i, m) for s in itertools.count(step) for i, m in enumerate(slots))
        self.make = lambda s, m: (data.batch(s, m, batch_size), data.state(m))
        self.ahead, self.wait = deque(self.submit() for _ in range(depth)), 0.0

    def submit(self):
        step, i, micro = next(self.jobs)
        return self.pools[i % len(self.pools)].submit(self.make, step, micro)

    def next(self):
        t = time.perf_counter()
        try:
            batch, state = self.ahead.popleft().result()
        except (ValueError, OSError) as e:    # a shard that cannot be read: one line, naming it (bugs: traceback)
            raise SystemExit(f"data: {e}")
        self.wait += time.perf_counter() - t
        self.ahead.append(self.submit())
        return batch, state

    def close(self):
        for pool in self.pools:
            pool.shutdown(cancel_futures=True)


# ----------------------------------------------------------------------------------------------------------------
# Commands that fill data/ (README):  python data.py prepare-text FILES  |  python data.py download-fineweb

def documents(path):
    """A .txt file is one document; a .jsonl file holds one per line, in its "text" field."""
    with open(path, encoding="utf-8", errors="replace") as f:
        if not path.endswith(".jsonl"):
            yield f.read()
            return
        for n, line in enumerate(f, 1):
            try:
                yield json.loads(line)["text"]
            except (ValueError, KeyError, TypeError):
                print(f"{path}:{n}: no \"text\" field, line skipped")


def prepare_text(inputs, out_dir="data/text", tokenizer="gpt2", shard_tokens=100_000_000, prefix="text"):
    """Tokenize .txt/.jsonl files into shards out_dir/{prefix}_000000.bin, ... of about shard_tokens tokens, every
    document preceded by the end-of-text token, as in llm.c's FineWeb shards."""
    files, chunks, n, paths = expand(inputs), [], 0, []       # a wrong path stops before the tokenizer loads
    tok = Tokenizer(tokenizer)
    os.makedirs(out_dir, exist_ok=True)
    for doc in itertools.chain((doc for path in files for doc in documents(path)), [None]):
        if doc is not None:
            chunks.append(np.array([tok.eot, *tok.encode(doc)], np.uint32))
            n += len(chunks[-1])
        if n and (doc is None or n >= shard_tokens):   # whole documents only: none is split between two shards
            paths.append(os.path.join(out_dir, f"{prefix}_{len(paths):06d}.bin"))
            write_shard(paths[-1], np.concatenate(chunks), tok.vocab_size)
            chunks, n = [], 0
    return paths


def download_fineweb(out_dir="data/fineweb", shards=1, repo="karpathy/fineweb-edu-100B-gpt2-token-shards",
                     endpoint=None):
    """llm.c's FineWeb-Edu GPT-2 token shards (100M tokens each): the val shard and the first `shards` train ones,
    downloaded once into the hub cache (resumable, encoders.hub_file) and linked into out_dir."""
    from encoders import hub_file
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name in ["edu_fineweb_val_000000.bin"] + [f"edu_fineweb_train_{i:06d}.bin" for i in range(1, shards + 1)]:
        cached, paths = hub_file("datasets/" + repo, name, endpoint=endpoint), paths + [os.path.join(out_dir, name)]
        if not os.path.exists(paths[-1]):
            if os.path.lexists(paths[-1]):   # a link into a cache that was cleared
                os.remove(paths[-1])
            os.symlink(os.path.abspath(cached), paths[-1])
        read_shard(paths[-1])
    return paths


def command_kwargs(args):
    """--key=value arguments of the data commands (here and encoders.py's preencode); digits become ints."""
    return {k: int(v) if v.isdigit() else v for k, _, v in (a.lstrip("-").partition("=") for a in args)}


if __name__ == "__main__":   # python data.py prepare-text --inputs=docs/*.jsonl --tokenizer=gpt2 (see README)
    commands = {"prepare-text": prepare_text, "download-fineweb": download_fineweb}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        raise SystemExit(f"usage: python data.py {' | '.join(commands)} --key=value ... (README, 'Real data')")
    try:
        written = commands[sys.argv[1]](**command_kwargs(sys.argv[2:]))
    except (ValueError, TypeError) as e:      # a bad file, or a key the command does not take
        raise SystemExit(f"data.py {sys.argv[1]}: {e}")
    print(f"{len(written)} shard(s): {', '.join(written[:3])}{' ...' if len(written) > 3 else ''}")
