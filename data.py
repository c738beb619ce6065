"""
Data: how text, images and video become one packed stream of training sequences.

Every example is a list of token ids in which each image or video frame is a block BOI, N latent tokens, EOI
(Appendix B). Examples are packed whole into fixed-length rows; each position carries a document id (packed
examples never see each other), a frame id (-1 for text; the attention mask and the FFN routing read it) and a
next-token target (-1 where there is none). Frames travel as images (or pre-encoded latents); train.py encodes
them. A batch is a function of (seed, step, micro-batch index), and for real data (realdata.ShardData) of its
streams' reading positions, which checkpoints save: resumed runs, on any number of processes, see the same data.
"""
import functools
import re
from dataclasses import dataclass, field

import numpy as np
import tiktoken
import torch

import toyworld
from plumbing import stdlib_corpus

# ----------------------------------------------------------------------------------------------------------------
# Tokenizer: tiktoken, with encodings built in code so that nothing has to be downloaded: "bytes" (256 byte tokens,
# no merges) and "toy" (byte-level BPE whose merges are the toy world's words, as a BPE trained on its text would
# learn them); real configs name a standard encoding such as "gpt2" or "cl100k_base".

SPECIAL_TOKENS = ("<|bos|>", "<|eos|>", "<|boi|>", "<|eoi|>", "<|pad|>")


def byte_ranks():
    return {bytes([i]): i for i in range(256)}


@functools.cache
def toy_ranks():
    """Byte tokens, then every word of the toy world's text (sentences, captions, questions; with the space before
    it) as a chain of merges through its prefixes, so that BPE joins it into one token."""
    rng, ranks = np.random.default_rng(0), byte_ranks()
    for _ in range(600):
        scene = toyworld.random_scene(rng)
        text = " ".join([toyworld.random_sentence(rng), toyworld.caption(scene), *toyworld.random_question(rng, scene)])
        for word in re.findall(r" ?[a-z]+", text):
            for k in range(2, len(word) + 1):
                ranks.setdefault(word[:k].encode(), len(ranks))
    return ranks


class Tokenizer:
    def __init__(self, name="bytes"):
        if name == "bytes":
            base_ranks, pat, specials = byte_ranks(), r"\S+|\s+", {}
        elif name == "toy":   # a word, with the space before it, is one piece for BPE to join
            base_ranks, pat, specials = toy_ranks(), r" ?[a-z]+| ?[^\sa-z]+|\s+(?!\S)|\s+", {}
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
# the sources a mixture draws from: an example names its own, and the log reports losses per source
SOURCES = ("text", "caption_to_image", "image_to_caption", "video", "navigation", "vqa")


@dataclass
class Example:
    ids: list
    frames: list = field(default_factory=list)   # one image (uint8 [H, W, 3]) per FRAME; None when generated later
    cond: list = field(default_factory=list)     # per frame: True = clean conditioning input without flow loss
    learn: list = None                           # per id, whether it is learned as a target (None: all text is)
    source: str = None                           # the mixture's source it belongs to (SOURCES; the log's losses)

    def length(self, tokens_per_frame):
        return len(self.ids) + (tokens_per_frame - 1) * len(self.frames)


def text_example(tok, text):
    return Example([tok.bos, *tok.encode(text), tok.eos], source="text")


def caption_to_image(tok, caption, image, drop_caption=False, prompt_only=False):
    """Generation. With drop_caption the model sees no caption at all: that is the unconditional branch that
    classifier-free guidance subtracts at sampling time, built by the same function in both places."""
    ids = [tok.bos, *([] if drop_caption else tok.encode(caption)), tok.boi, FRAME]
    return Example(ids if prompt_only else ids + [tok.eoi, tok.eos], [image], [False], source="caption_to_image")


def image_to_caption(tok, image, caption, prompt_only=False, clean=True):
    """Understanding: the caption is learned as text after the image. Training shows the image noisy, with a flow
    loss (clean=False; Appendix B); clean=True (sampling, or caption_clean_image) shows it clean, without."""
    ids = [tok.bos, tok.boi, FRAME, tok.eoi]
    return Example(ids if prompt_only else ids + tok.encode(caption) + [tok.eos], [image], [clean],
                   source="image_to_caption")


def vqa_example(tok, image, turns, prompt_only=False):
    """Understanding as the paper scores it (VQA fine-tuning, §2, App. E.6): a clean image, then a conversation about
    it, each question followed by its short answer; only the answers are learned. prompt_only: the last answer left
    for the model to give."""
    ids, learn = [tok.bos, tok.boi, FRAME, tok.eoi], [False] * 4
    for k, (question, answer) in enumerate(turns):
        last, asked = k == len(turns) - 1, tok.encode(question)
        reply = [] if prompt_only and last else tok.encode(" " + answer) + ([tok.eos] if last else tok.encode("\n"))
        ids, learn = ids + asked + reply, learn + [False] * len(asked) + [True] * len(reply)
    return Example(ids, [image], [True], learn, source="vqa")


def video_example(tok, frames):
    """Raw video, no text: each frame its own BOI ... EOI block, each with its own t (Diffusion-Forcing-like)."""
    ids = [tok.bos] + [tok.boi, FRAME, tok.eoi] * len(frames)
    return Example(ids + [tok.eos], list(frames), [False] * len(frames), source="video")


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


def navigation_example(tok, context, action=None, target=None, prompt_only=False):
    """World modeling (§5.1, Fig. 11): 4 context frames seen clean, one action as text, and the frame it leads to, which
    carries the flow loss. Without an action: the context alone (a rollout appends each row's action itself)."""
    ids = [tok.bos] + [tok.boi, FRAME, tok.eoi] * len(context)
    if action is None:
        return Example(ids, list(context), [True] * len(context), source="navigation")
    ids += tok.encode(action) + [tok.boi, FRAME]
    ids, cond = ids if prompt_only else ids + [tok.eoi, tok.eos], [True] * len(context) + [False]
    return Example(ids, [*context, target], cond, source="navigation")

# ----------------------------------------------------------------------------------------------------------------
# Packing: examples into rows of seq_len positions, and rows into one batch of tensors.

def pack_rows(examples, seq_len, tokens_per_frame):
    """First fit: each example goes whole into the first row with room for it, so short examples fill the gaps that
    long ones leave (toy batches: 6% padding, against 15% filling one row at a time)."""
    rows, used = [], []
    for ex in examples:
        n = ex.length(tokens_per_frame)
        i = next((i for i, u in enumerate(used) if u + n <= seq_len), len(rows))
        if i == len(rows):
            rows, used = rows + [[]], used + [0]
        rows[i].append(ex)
        used[i] += n
    return rows


def collate(rows, seq_len, tokens_per_frame, pad_id):
    """rows: a list of lists of examples. Returns numpy arrays: tokens, targets, doc, frame [B, S]; source [B, S]
    (each position's example's index in SOURCES, -1: padding or none); vis_idx [F * N] (flat positions of every
    frame token, frame-major); cond [F]; images [F, H, W, 3] (None if any frame is still to be generated)."""
    B, S, N = len(rows), seq_len, tokens_per_frame
    tokens = np.full((B, S), pad_id, np.int64)
    targets, doc, frame = (np.full((B, S), -1, np.int64) for _ in range(3))
    source = np.full((B, S), -1, np.int8)
    vis_idx, images, cond = [], [], []
    for r, row in enumerate(rows):
        p = 0
        for d, ex in enumerate(row):
            if p + ex.length(N) > S:
                raise ValueError(f"example of {ex.length(N)} positions does not fit in seq_len {S}")
            start, frames, read_only = p, iter(zip(ex.frames, ex.cond)), []
            for i, tok in enumerate(ex.ids):
                if ex.learn is not None and not ex.learn[i]:
                    read_only.append(p)   # a position whose token is read, not predicted (a VQA question)
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
            targets[r, [q - 1 for q in read_only if q > start]] = -1
            source[r, start:p] = SOURCES.index(ex.source) if ex.source in SOURCES else -1
    have_images = images and all(im is not None for im in images)
    if have_images and len({str(im.dtype).endswith("uint8") for im in images}) > 1:   # numpy or torch
        raise ValueError("a batch mixes images and pre-encoded latents: pre-encode every visual source or none")
    return dict(tokens=tokens, targets=targets, doc=doc, frame=frame, source=source,
                vis_idx=np.array(vis_idx, np.int64), cond=np.array(cond, bool),
                images=np.stack(images) if have_images else None)


def to_device(batch, device):
    return {k: tensor_to_device(torch.as_tensor(v), device) if isinstance(v, np.ndarray) else v
            for k, v in batch.items()}


def tensor_to_device(x, device):
    """A CPU tensor to the device; to a GPU through pinned memory without waiting (a plain copy would first wait for
    the queued work, the last micro-batch's backward, leaving the GPU idle while the next forward is launched)."""
    if x.device.type == "cpu" and torch.device(device).type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


# ----------------------------------------------------------------------------------------------------------------
# The built-in source: the toy world (toyworld.py), a weighted mixture of text, caption->image, image->caption,
# video and navigation examples, generated on the fly.

NAV_CONTEXT = 4     # §5.1, Fig. 11: 4 context frames, one action, one target frame
SPLITS = {"train": 0, "val": 1, "unseen_scenes": 2, "held_out_bindings": 3}
NAV_POOL_KEY = 4    # the navigation pool's draws: a stream of their own, apart from every split's


def weighted_sources(mixture, tok, seq_len, tokens_per_frame, video_frames, unit="examples"):
    """The sources a mixture weights, in SOURCES order (the toy world's and real data's alike). An unknown source,
    a mixture that weights nothing, an unknown unit or a video too long for a row stops with a message."""
    if unit not in ("tokens", "examples"):
        raise ValueError(f"mixture_unit={unit!r}: use 'tokens' (the mixture shares tokens) or 'examples'")
    unknown = set(mixture) - set(SOURCES)
    if unknown or not any(w > 0 for w in mixture.values()):
        raise ValueError(f"mixture {mixture} must weight some of {SOURCES} (unknown: {sorted(unknown)})")
    names = [s for s in SOURCES if mixture.get(s, 0) > 0]
    need = video_example(tok, [None] * video_frames).length(tokens_per_frame)
    if "video" in names and need > seq_len:
        raise ValueError(f"a video of {video_frames} frames needs {need} positions but seq_len is {seq_len}: "
                         f"lower video_frames or raise seq_len")
    return names


def source_probabilities(weights, lengths):
    """The chance of drawing each source's next example so that the sources fill `weights` shares of the tokens
    (the paper's shares, e.g. 520B text + 520B multimodal, §4.1): a source of examples twice as long is drawn half
    as often. mixture_unit="examples" draws by the weights themselves."""
    p = np.asarray(weights, float) / np.asarray(lengths, float)
    return p / p.sum()


class ToyWorldData:
    def __init__(self, tok, seq_len, tokens_per_frame, mixture, seed=0, image_size=32, max_shapes=3, video_frames=4,
                 cfg_dropout=0.1, caption_clean_image=False, nav_view="ray", text_source="toy", video_source="shapes",
                 eval_seed=0, mixture_unit="examples", nav_pool=0):
        self.tok, self.seq_len, self.N, self.eval_seed = tok, seq_len, tokens_per_frame, eval_seed
        self.nav_pool = nav_pool
        if nav_pool < 0:
            raise ValueError(f"nav_pool={nav_pool}: use 0 (a fresh navigation example every draw) or a pool size")
        self.caption_clean_image, self.text_source, self.video_source = caption_clean_image, text_source, video_source
        self.names = weighted_sources(mixture, tok, seq_len, tokens_per_frame, video_frames, mixture_unit)
        self.weights = np.array([mixture[s] for s in self.names], float) / sum(mixture[s] for s in self.names)
        self.seed, self.image_size, self.max_shapes = seed, image_size, max_shapes
        self.video_frames, self.cfg_dropout, self.nav_view = video_frames, cfg_dropout, nav_view
        nav_len = navigation_example(tok, [None] * NAV_CONTEXT, action_text(0, 0, 0)).length(tokens_per_frame)
        if "navigation" in self.names and nav_len > seq_len:
            raise ValueError(f"a navigation example needs {nav_len} positions but seq_len is {seq_len}: raise "
                             f"seq_len or drop navigation from the mixture")
        self.skipped = 0       # examples too long for one row (none in the toy world at sane settings)
        if mixture_unit == "tokens" and len(self.names) > 1:   # the same probe in every run: the same weights
            probe = np.random.default_rng(0)
            lengths = [np.mean([self.example(probe, source=s).length(self.N) for _ in range(64)]) for s in self.names]
            self.weights = source_probabilities(self.weights, lengths)

    def rng(self, split, *key):
        """Training draws from the run's seed; held-out data from the evaluation's, so every run is scored alike."""
        return np.random.default_rng([self.seed if split == "train" else self.eval_seed, SPLITS[split], *key])

    def scene(self, rng):
        return toyworld.random_scene(rng, self.max_shapes, self.image_size)

    def example(self, rng, split="train", source=None):
        source = source or self.names[rng.choice(len(self.names), p=self.weights)]
        if source == "text":   # the world's sentences, or a window of Python's own source (held-out files for val)
            return text_example(self.tok, toyworld.random_sentence(rng, self.max_shapes) if self.text_source == "toy"
                                else stdlib_corpus.document(rng, split, self.seq_len - 2))
        if source == "video":   # shapes in motion, or camera motion: a walk in a training maze without its actions
            frames = self.walk(rng, self.video_frames)[0] if self.video_source == "walks" else \
                toyworld.random_video(rng, self.video_frames, self.image_size)
            return video_example(self.tok, frames)
        if source == "navigation":
            return self.navigation(rng, split)
        scene = self.scene(rng)
        image, text = toyworld.render(scene, self.image_size), toyworld.caption(scene, self.image_size)
        if source == "vqa":   # one question per picture: more pictures per step taught more than more questions
            return vqa_example(self.tok, image, [toyworld.random_question(rng, scene, self.image_size)])
        if source == "image_to_caption":
            return image_to_caption(self.tok, image, text, clean=self.caption_clean_image)
        return caption_to_image(self.tok, text, image, drop_caption=rng.random() < self.cfg_dropout)

    def walk(self, rng, n_frames):
        """(views [n_frames, H, W, 3], actions [n_frames - 1, 3]) of a walk in a training maze (held-out mazes: odd
        seeds), random or toward a goal."""
        maze = toyworld.maze_for(rng.integers(2 ** 31))
        poses, actions = toyworld.walk(rng, maze, toyworld.random_pose(rng, maze), n_frames - 1,
                                       goal_directed=rng.random() < 0.5)
        return np.stack([toyworld.view(maze, p, self.image_size, self.nav_view) for p in poses]), actions

    def navigation(self, rng, split="train"):
        """4 frames of a walk, the next action as text and the frame it leads to. With a pool (nav_pool = n),
        training draws one of n fixed examples, the same n in every run: a finite dataset seen epoch after epoch."""
        if self.nav_pool and split == "train":
            rng = np.random.default_rng([NAV_POOL_KEY, int(rng.integers(self.nav_pool))])
        frames, actions = self.walk(rng, NAV_CONTEXT + 1)
        return navigation_example(self.tok, list(frames[:NAV_CONTEXT]), action_text(*actions[-1]), frames[NAV_CONTEXT])

    def batch(self, step, micro, batch_size, split="train"):
        """Rows for one micro-batch; `micro` is global (rank * accumulation + i): no dependence on the process count."""
        rng = self.rng(split, step, micro)
        examples, rows = [], []
        while len(rows) <= batch_size:  # until an example finds no room in the rows kept: they are full
            ex = self.example(rng, split)
            if ex.length(self.N) > self.seq_len:
                self.skipped += 1
                continue
            examples.append(ex)
            rows = pack_rows(examples, self.seq_len, self.N)
        return collate(rows[:batch_size], self.seq_len, self.N, self.tok.pad)

    def held_out(self, split, n):
        """n (scene, question, answer) of a held-out split (toyworld.SPLIT_NAMES), the same at every evaluation and
        in every run; the first n of a longer list."""
        scenes, questions = self.rng(split, 0), self.rng(split, 1)
        drawn = [toyworld.random_scene(scenes, self.max_shapes, self.image_size, split) for _ in range(n)]
        return [(s, *toyworld.random_question(questions, s, self.image_size, split)) for s in drawn]

    state = load_state = staticmethod(lambda _: None)   # a batch is a function of (seed, step, micro): no state


if __name__ == "__main__":   # the data commands live in plumbing/realdata.py; the old spelling still works
    import runpy
    runpy.run_module("plumbing.realdata", run_name="__main__")
