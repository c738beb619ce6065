"""
Real data at scale, beside data.py's toy world: the readers, the resumable per-slot streams and the loader threads,
and the commands that fill data/.

    python -m plumbing.realdata prepare-text --inputs=docs/*.jsonl --tokenizer=gpt2    # .txt/.jsonl -> token shards
    python -m plumbing.realdata download-fineweb --shards=1                             # FineWeb-Edu GPT-2 shards
    python -m plumbing.realdata preencode --shards='data/cc3m/*.tar' --out=data/cc3m-siglip2   # -> latent shards
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
from dataclasses import dataclass

import numpy as np
import torch

from data import (NAV_CONTEXT, SOURCES, SPLITS, Example, Tokenizer, action_text, caption_to_image, collate,
                  image_to_caption, navigation_example, robot_frame_actions, video_example, vqa_example,
                  source_probabilities, weighted_sources)
from encoders import build_encoder
from plumbing.hub import RemoteShard, hub_file
from plumbing.outputs import part_file, refuse_overwrite
from plumbing.pictures import load_image
from plumbing.settings import cli, command_name, print_help


# ----------------------------------------------------------------------------------------------------------------
# Real data at scale. Text: token shards in llm.c's layout, memory-mapped. Image-text pairs, video and pre-encoded
# latents: webdataset tar shards (a sample's members share a key: key.jpg + key.txt or key.json; video frames
# key.000.jpg, key.001.jpg, ...; a frame pre-encoded by preencode below is key.latent.npy), on disk or streamed over
# HTTP. Navigation: NWM trajectory folders, <traj>/{0..T-1}.jpg + traj_data.pkl.

SHARD_MAGIC = 20240520                        # llm.c: 256 int32 header (magic, version, token count), then tokens
SHARD_DTYPES = {1: np.uint16, 2: np.uint32}   # version 2 is ours: uint32 tokens, for vocabularies over 65,536
IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


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
                         f"python -m plumbing.realdata prepare-text")
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


def tar_samples(path, stats, stream=None):
    """(key, {extension: bytes}) for each sample of a webdataset tar, read as a stream. A shard that cannot be
    opened stops the run (a wrong path is a mistake to fix); one cut short ends early and is counted. A URL is read
    through a RemoteShard (`stream`: its retries and max_wait), which retries and resumes a failed connection and
    raises only when its retries run out."""
    f = None
    try:
        f = RemoteShard(path, **(stream or {})) if path.startswith(("http://", "https://")) else open(path, "rb")
        tar = tarfile.open(fileobj=f, mode="r|*")   # never stored: read as it arrives
    except (OSError, tarfile.TarError) as e:
        if f is not None:
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
    except (OSError, EOFError, tarfile.TarError):
        stats["truncated_shards"] += 1
    finally:
        f.close()


def decode_frame(ext, data, size, latent_shape):
    if ext.endswith("latent.npy"):            # pre-encoded (preencode below): float16 [N, C], used as it is
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


def conversation(group):
    """A VQA sample's [(question, answer), ...]: its .json's "question" and "answer" fields, or the human and gpt
    turns of LLaVA's "conversations" (the <image> marker dropped); None when it has neither."""
    try:
        meta = json.loads(group["json"])
        turns = [(meta["question"], meta["answer"])] if "question" in meta else \
            [(h["value"].replace("<image>", ""), g["value"]) for h, g in zip(*[iter(meta["conversations"])] * 2)]
        turns = [(q.strip(), a.strip()) for q, a in turns]
        return turns if turns and all(q and a for q, a in turns) else None
    except (ValueError, AttributeError, KeyError, TypeError):
        return None


@dataclass
class Position:
    """The next example a stream consumes. Checkpoints save it as the list [epoch, file, item, taken]."""
    epoch: int = 0
    file: int = 0          # index into this epoch's order of the stream's files
    item: int = 0          # position in the file: a token offset, a tar sample's index or a trajectory window's start
    taken: int = 0         # examples of that item consumed already


class Stream:
    """One source's examples for one micro-batch slot, epoch after epoch. With at least as many files as slots,
    slot g reads files g, g + n, ...; with fewer, slots share a file and each takes its own part of it."""

    def __init__(self, data, source, files, slot, n_slots, state=None):
        F = len(files)
        if F >= n_slots:
            self.files, self.part = files[slot::n_slots], (0, 1)
        else:
            self.files, self.part = [files[slot % F]], (slot // F, len(range(slot % F, n_slots, F)))
        self.data, self.source, self.key = data, source, [data.seed, SOURCES.index(source), slot]
        state = state or []   # a checkpoint from before the token counts has only the position
        self.at, self.items, self.pending, self.dry = Position(*state[:4]), None, [], 0
        self.count, self.tokens = state[4:6] or (0, 0)   # examples and tokens taken: the mean example length

    @property
    def state(self):
        return [self.at.epoch, self.at.file, self.at.item, self.at.taken, self.count, self.tokens]

    def mean_length(self):
        return (self.tokens + self.peek().length(self.data.N)) / (self.count + 1)

    def peek(self):
        at = self.at
        while not self.pending:
            if self.items is None:            # open the file at the saved position; a new file order every epoch
                path = self.files[np.random.default_rng([*self.key, at.epoch]).permutation(len(self.files))[at.file]]
                self.items = self.data.read(self.source, path, at.item, self.part, [*self.key, at.epoch, at.file])
                self.skip = at.taken          # examples of that item consumed before a resume
            item = next(self.items, None)
            if item is None:                  # the file is done: the next one, or the first of a new epoch
                last = at.file + 1 == len(self.files)
                self.items, self.dry = None, self.dry + last
                at = self.at = Position(at.epoch + last, 0 if last else at.file + 1)
                if self.dry > 1:
                    raise ValueError(f"no usable {self.source} example in {', '.join(self.files)} (see the skip "
                                     f"counts in the log)")
                continue
            examples = [ex for ex in item[1] if ex.length(self.data.N) <= self.data.seq_len]
            if len(examples) < len(item[1]):
                self.data.stats["too_long"] += len(item[1]) - len(examples)
            at.item, at.taken, self.pending, self.skip = item[0], self.skip, examples[self.skip:], 0
            self.dry = 0 if examples else self.dry
        return self.pending[0]

    def pop(self):
        self.at.taken += 1
        self.count, self.tokens = self.count + 1, self.tokens + self.pending[0].length(self.data.N)
        return self.pending.pop(0)


class ShardData:
    """The mixture over real sources. Each micro-batch slot g (the global micro-batch index, as for the toy world)
    owns one Stream per source and draws its examples' sources from (seed, step, g): a batch is a function of
    (seed, step, slot, stream states), and the states are what checkpoints save (state, load_state). `stream`: the
    retries and max_wait of shards read over HTTP (RemoteShard's; train.py's stream_retries, stream_max_wait)."""

    def __init__(self, tok, seq_len, tokens_per_frame, latent_dim, mixture, sources, n_slots, seed=0,
                 image_size=224, video_frames=4, cfg_dropout=0.1, val_sources=None, caption_clean_image=False,
                 waypoint_spacing=None, stream=None, mixture_unit="examples"):
        self.names = weighted_sources(mixture, tok, seq_len, tokens_per_frame, video_frames, mixture_unit)
        for s in self.names:
            if not sources.get(s):
                raise ValueError(f"the mixture weights {s} but {s}_data is empty: set it (paths, globs or URLs, "
                                 f"comma-separated) or drop {s} from the mixture")
        self.files = {s: expand(sources[s]) for s in self.names}
        self.val_files = {s: expand(v) for s, v in (val_sources or {}).items() if s in self.names and v}
        self.tok, self.seq_len, self.N, self.latent_shape = tok, seq_len, tokens_per_frame, (tokens_per_frame,
                                                                                             latent_dim)
        self.weights, self.n_slots, self.seed, self.unit = mixture, n_slots, seed, mixture_unit
        self.image_size, self.video_frames, self.cfg_dropout = image_size, video_frames, cfg_dropout
        self.caption_clean_image, self.waypoint_spacing = caption_clean_image, waypoint_spacing or {}
        self.stream = stream or {}
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
        w = np.array([self.weights[s] for s in names], float)
        rng = np.random.default_rng([self.seed, SPLITS[split], step, micro])
        rows, row, used = [], [], 0
        while len(rows) < batch_size:
            p = w / w.sum() if self.unit != "tokens" else source_probabilities(   # by each stream's mean length
                w, [streams[s].mean_length() for s in names])                      # so far, its next example too
            stream = streams[names[rng.choice(len(names), p=p)]]
            n = stream.peek().length(self.N)
            if row and used + n > self.seq_len:   # the row is full; the example waits in its stream for later
                rows.append(row)
                row, used = [], 0
                continue
            row.append(stream.pop())
            used += n
        return collate(rows, self.seq_len, self.N, self.tok.pad)

    def state(self, micro):
        return {s: stream.state for s, stream in self.streams.get(micro, {}).items()}

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
                for i, (_, group) in enumerate(tar_samples(path, self.stats, self.stream))
                if i >= pos and i % part[1] == part[0])

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
                yield p, [Example([self.tok.bos] * first + window[:k].tolist() + [self.tok.eos] * last,
                                  source="text")]
            p += k + (len(ends) > 0)

    def tar_examples(self, source, group, rng):
        """One webdataset sample -> its examples; [] when it is unusable, the reason counted."""
        frames = frame_members(group)
        K = self.video_frames if source == "video" else 1
        frames = frames[:len(frames) // K * K]
        text = "" if source == "video" else conversation(group) if source == "vqa" else caption_of(group)
        if text is None or not frames:
            missing = "question" if source == "vqa" else "caption"
            return self.skip(f"no_{missing}" if text is None else "short_video" if K > 1 else "no_image")
        try:
            frames = [decode_frame(e, group[e], self.image_size, self.latent_shape) for e in frames]
        except Exception:   # whatever a corrupt file makes the decoder raise: skip the sample, count it
            return self.skip("bad_frame")
        if source == "video":
            return [video_example(self.tok, frames[i:i + K]) for i in range(0, len(frames), K)]
        if source == "vqa":
            return [vqa_example(self.tok, frames[0], text)]
        if source == "image_to_caption":
            return [image_to_caption(self.tok, frames[0], text, clean=self.caption_clean_image)]
        return [caption_to_image(self.tok, text, frames[0], drop_caption=rng.random() < self.cfg_dropout)]

    def waypoint_spacing_of(self, path):
        """NWM divides a trajectory's translations by its dataset's metric waypoint spacing (App. F.1: a normalised
        displacement; RECON 0.25 m), so that a unit, and the W key's 0.5, mean the same in every dataset. The
        dataset is the spacing table's key that names a folder of the trajectory's path."""
        found = [s for name, s in self.waypoint_spacing.items() if name in re.split(r"[\\/]", path)]
        if not found:
            raise ValueError(f"trajectory {path}: no folder of its path names a dataset of waypoint_spacing "
                             f"{self.waypoint_spacing}: add its metric waypoint spacing in metres, e.g. "
                             f"--waypoint_spacing='{{\"mydata\": 0.3}}'")
        return found[0]

    def navigation_items(self, path, pos, part, key):
        """Windows of an NWM trajectory: 4 context frames, then the action (in the robot frame of the step's start,
        robot_frame_actions; translations in waypoint units) and the frame it leads to."""
        try:
            with open(os.path.join(path, "traj_data.pkl"), "rb") as f:
                traj = pickle.load(f)         # NWM's format; unpickling runs code: read only trajectories you trust
            actions = robot_frame_actions(np.asarray(traj["position"])[:, :2], np.asarray(traj["yaw"]).reshape(-1))
        except Exception as e:
            raise ValueError(f"cannot read trajectory {path}: {e!r} (want traj_data.pkl with position [T, 2] and "
                             f"yaw [T] next to 0.jpg ... T-1.jpg)")
        actions[:, :2] /= self.waypoint_spacing_of(path)

        @functools.lru_cache(maxsize=8)       # windows overlap: each frame is decoded once
        def frame(i):
            with open(os.path.join(path, f"{i}.jpg"), "rb") as f:
                return load_image(f.read(), self.image_size)
        for t in range(pos, len(actions) + 1 - NAV_CONTEXT):
            if t % part[1] != part[0]:
                continue
            try:
                window = [frame(i) for i in range(t, t + NAV_CONTEXT + 1)]
            except Exception:                 # a missing or corrupt frame: skip the windows that need it
                yield t, self.skip("bad_frame")
                continue
            action = action_text(*actions[t + NAV_CONTEXT - 1])
            yield t, [navigation_example(self.tok, window[:NAV_CONTEXT], action, window[NAV_CONTEXT])]


def write_nwm_trajectory(folder, frames, position, yaw):
    """NWM's on-disk layout: folder/{0..T-1}.jpg and traj_data.pkl = {"position": [T, 2], "yaw": [T]} (the toy maze's
    walks written so, they read back like real data)."""
    from PIL import Image
    os.makedirs(folder, exist_ok=True)
    for t, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, f"{t}.jpg"), quality=95)
    with open(os.path.join(folder, "traj_data.pkl"), "wb") as f:
        pickle.dump({"position": np.asarray(position, np.float64), "yaw": np.asarray(yaw, np.float64)}, f)
    return folder


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
# Commands that fill data/ (docs/real-data.md):  python -m plumbing.realdata prepare-text FILES  |  download-fineweb

def documents(path):
    """A .txt file is one document; a .jsonl file holds one per line, in its "text" field. A file that is not UTF-8
    text (binary, another encoding) stops the command rather than becoming replacement characters."""
    jsonl = path.endswith(".jsonl")
    try:
        with open(path, encoding="utf-8") as f:
            for n, text in enumerate(f if jsonl else [f.read()], 1):
                if "\0" in text:
                    raise UnicodeError("a NUL byte")
                try:
                    doc = json.loads(text)["text"] if jsonl else text
                except (ValueError, KeyError, TypeError):
                    doc = None
                if isinstance(doc, str):
                    yield doc
                else:
                    print(f"{path}:{n}: no \"text\" field, line skipped")
    except UnicodeError as e:
        raise ValueError(f"{path} is not UTF-8 text ({getattr(e, 'reason', e)}): give .txt or .jsonl files")


def prepare_text(inputs,                 # .txt / .jsonl files: comma-separated paths or globs
                 out_dir="data/text",    # where the shards go
                 tokenizer="gpt2",       # a tiktoken encoding name (train with the same tokenizer)
                 shard_tokens=100_000_000,   # tokens per shard, about
                 prefix="text",          # shards are named {prefix}_000000.bin, ...
                 overwrite=False):       # replace shards of this prefix already in out_dir
    """Tokenize .txt/.jsonl files into shards out_dir/{prefix}_000000.bin, ... of about shard_tokens tokens, every
    document preceded by the end-of-text token, as in llm.c's FineWeb shards. Shards are written under .part names
    and renamed once every input has been read, so a failure leaves out_dir as it was."""
    files, chunks, n, parts = expand(inputs), [], 0, []       # a wrong path stops before the tokenizer loads
    old = sorted(glob.glob(os.path.join(out_dir, f"{prefix}_[0-9]*.bin")))
    refuse_overwrite(old[:1], overwrite)
    tok = Tokenizer(tokenizer)

    def flush():
        os.makedirs(out_dir, exist_ok=True)
        parts.append(os.path.join(out_dir, f"{prefix}_{len(parts):06d}.bin.part"))
        write_shard(parts[-1], np.concatenate(chunks), tok.vocab_size)
        chunks.clear()
    try:
        for path in files:
            empty = True
            for doc in filter(str.strip, documents(path)):
                empty = False
                chunks.append(np.array([tok.eot, *tok.encode(doc)], np.uint32))
                n += len(chunks[-1])
                if n >= shard_tokens:   # whole documents only: none is split between two shards
                    flush()
                    n = 0
            if empty:
                raise ValueError(f"{path} holds no text: nothing to tokenize")
        if chunks:
            flush()
    except BaseException:
        for part in parts:
            os.remove(part)
        raise
    paths = [part[:-len(".part")] for part in parts]
    for part, path in zip(parts, paths):
        os.replace(part, path)
    for stale in set(old) - set(paths):   # --overwrite: shards of the old set beyond the new one's end
        os.remove(stale)
    return paths


def download_fineweb(out_dir="data/fineweb",   # where the shards are linked
                     shards=1,                 # train shards of 100M tokens (the val shard always comes)
                     repo="karpathy/fineweb-edu-100B-gpt2-token-shards",   # the hub dataset
                     endpoint=None):           # another hub endpoint (a mirror; HF_ENDPOINT works too)
    """llm.c's FineWeb-Edu GPT-2 token shards (100M tokens each): the val shard and the first `shards` train ones,
    downloaded once into the Hugging Face cache (hub.hub_file) and linked into out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name in ["edu_fineweb_val_000000.bin"] + [f"edu_fineweb_train_{i:06d}.bin" for i in range(1, shards + 1)]:
        cached = hub_file(repo, name, repo_type="dataset", endpoint=endpoint)
        paths.append(os.path.join(out_dir, name))
        if not os.path.exists(paths[-1]):
            if os.path.lexists(paths[-1]):   # a link into a cache that was cleared
                os.remove(paths[-1])
            os.symlink(os.path.abspath(cached), paths[-1])
        read_shard(paths[-1])
    return paths


def command_kwargs(args):
    """--key=value arguments of the data commands; digits become ints, a bare --flag and True/False booleans."""
    value = lambda v, eq: True if not eq else int(v) if v.isdigit() else {"True": True, "False": False}.get(v, v)
    return {k: value(v, eq) for k, eq, v in (a.lstrip("-").partition("=") for a in args)}


# ----------------------------------------------------------------------------------------------------------------
# Pre-encoding: image(-text) tar shards -> latent shards, so repeated experiments skip the encoder. Each image is
# replaced by <key>.latent.npy (float16 [N, C]); captions and everything else are copied; ShardData reads the result
# like any image shard. A shard already in out_dir is skipped, so an interrupted run continues where it stopped.

def preencode(shards, out_dir, enc, image_size, batch=64):
    """A bar over the shards, the one count known before their images are read (a tar is a stream), with the
    images encoded so far beside it."""
    from tqdm import tqdm
    stats, bar = Counter(), tqdm(total=len(shards), unit="shard", desc="pre-encoding")

    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))

    def flush(tar, pending):
        z = enc.encode(np.stack([image for *_, image in pending])).to(torch.float16).cpu().numpy()
        for (key, frame, rest, _), latent in zip(pending, z):
            buf = io.BytesIO()
            np.save(buf, latent)
            add(tar, f"{key}{frame}.latent.npy", buf.getvalue())
            for ext, data in rest.items():
                add(tar, f"{key}.{ext}", data)
        stats["images"] += len(pending)
        bar.set_postfix_str(f"{stats['images']} images")
        pending.clear()

    for shard in shards:
        dest = os.path.join(out_dir, os.path.basename(shard.split("?")[0]))
        if os.path.exists(dest):
            stats["shards_already_done"] += 1
            bar.update(1)
            continue
        os.makedirs(out_dir, exist_ok=True)
        with part_file(dest) as part, tarfile.open(part, "w") as tar:
            pending = []
            for key, group in tar_samples(shard, stats):   # key: (folder, name)
                images = [e for e in frame_members(group) if not e.endswith("latent.npy")]   # video: 000.jpg, ...
                if not images:
                    stats["samples_without_image"] += 1
                    continue
                try:   # "000.jpg" -> frame ".000"; "jpg" -> frame ""
                    decoded = [("." + e.rpartition(".")[0] if "." in e else "", load_image(group[e], image_size))
                               for e in images]
                except Exception:   # a corrupt image: the sample is skipped and counted
                    stats["corrupt_images"] += 1
                    continue
                rest = {e: data for e, data in group.items() if e not in images}
                pending += [("/".join(filter(None, key)), frame, rest if i == len(decoded) - 1 else {}, image)
                            for i, (frame, image) in enumerate(decoded)]
                if len(pending) >= batch:
                    flush(tar, pending)
            if pending:
                flush(tar, pending)
        stats["shards"] += 1
        bar.update(1)
    bar.close()
    return stats


def preencode_command(shards,                # image(-text) tar shards: comma-separated paths, globs or URLs
                      out,                   # the folder for the latent shards (a shard already there is kept)
                      encoder="siglip2",     # the frozen encoder (train with the same one)
                      image_size=224,
                      encoder_weights="",    # owner/name[@revision] on the hub, or a folder; "" = the default, pinned
                      batch=64,              # images per encoder pass
                      device="auto"):
    """Image shards -> latent shards (key.latent.npy in place of each image), so training skips the encoder."""
    files = expand(shards)   # a wrong path stops before any weights load
    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    return preencode(files, out, build_encoder(encoder, image_size, device=device, weights=encoder_weights),
                     image_size, batch)


def run_command(commands, argv, script):
    """python script COMMAND --key=value ...: runs commands[COMMAND] with the keys; -h/--help lists each command's
    keys with their defaults and comments. Bad input (a ValueError or an unknown key) stops with one line."""
    import inspect
    name = argv[0] if argv else ""
    if name not in commands:
        usage = (f"usage: python {script} {' | '.join(commands)} --key=value ... (docs/real-data.md); "
                 f"python {script} COMMAND --help for its keys")
        if name not in ("-h", "--help"):
            raise SystemExit(usage)
        print(usage)
        raise SystemExit(0)
    fn = commands[name]
    if "-h" in argv or "--help" in argv:
        keys = {k: "" if p.default is p.empty else p.default for k, p in inspect.signature(fn).parameters.items()}
        print_help(keys, [inspect.getsourcefile(fn)], f"usage: python {script} {name} --key=value ...\n"
                   f"{inspect.getdoc(fn)}", function=fn.__name__)
        raise SystemExit(0)
    try:
        return fn(**command_kwargs(argv[1:]))
    except (ValueError, TypeError) as e:      # a bad file, or a key the command does not take
        raise SystemExit(f"python {script} {name}: {e}")


def main(argv):
    done = run_command({"prepare-text": prepare_text, "download-fineweb": download_fineweb,
                        "preencode": preencode_command}, argv, command_name(__file__))
    if isinstance(done, list):
        print(f"{len(done)} shard(s): {', '.join(done[:3])}{' ...' if len(done) > 3 else ''}")
    else:
        print(dict(done))


if __name__ == "__main__":   # python -m plumbing.realdata prepare-text --inputs=docs/*.jsonl (docs/real-data.md)
    cli(main, sys.argv[1:])
