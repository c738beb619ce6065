"""
A text source that does not saturate, on every machine that runs this code: Python's own standard library, the
.py files beside os.py (about 14 MB in some 700 files), read offline with nothing to download. The toy world's
sentences have an entropy floor a small model reaches in minutes; source code does not, so a text loss measured on
it still separates models (train.py's text_source="stdlib"; the claims suite's text claims).

Held-out documents are whole files: one in ten by a hash of its path, so the split is the same on every machine
and across runs. Training draws only from the other files, validation only from these. A document is a window of
a file that fills a training row (about 254 bytes at seq_len 256), starting at a line, from a file drawn in
proportion to its size; with documents that long, not knowing after BOS which kind of document comes costs at
most ln(kinds) / 254 nats per byte. Contents follow the Python version installed (results record it).
"""
import functools
import os
import zlib

import numpy as np

# folders left out: installed packages, test suites (often not installed), generated tables and data
SKIP = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "encodings", "pydoc_data"}
HELD_OUT_ONE_IN = 10


def root():
    return os.path.dirname(os.__file__)


def held_out(path):
    """Whether a file (its path relative to the library, with '/') is a validation document."""
    return zlib.crc32(path.encode()) % HELD_OUT_ONE_IN == 0


@functools.cache
def files(split):
    """(paths relative to the library, their sizes in bytes) of one split: "val" (held out) or "train"."""
    base, found = root(), []
    for folder, dirs, names in os.walk(base):
        dirs[:] = sorted(d for d in dirs if d not in SKIP and not d.startswith("config-"))
        for name in sorted(n for n in names if n.endswith(".py") and not n.startswith("_sysconfigdata")):
            path = os.path.relpath(os.path.join(folder, name), base).replace(os.sep, "/")
            if held_out(path) == (split == "val"):
                found.append(path)
    if not found:
        raise ValueError(f"text_source='stdlib' found no Python source in {base} (the standard library's .py files "
                         f"are not installed here): use text_source='toy'")
    return found, np.array([os.path.getsize(os.path.join(base, p)) for p in found], float)


@functools.lru_cache(maxsize=128)
def read(path):
    with open(os.path.join(root(), path), "rb") as f:
        return f.read()


def window(text, start, length):
    """At most `length` bytes of a file's text from the first line that starts at or after `start`."""
    start = text.find(b"\n", start) + 1 if start else 0
    return text[start:start + length].decode("utf-8", errors="ignore")


def document(rng, split, length):
    """A window of one file of the split ("val": held out; any other: training), drawn at random: training's."""
    paths, sizes = files("val" if split == "val" else "train")
    text = read(paths[rng.choice(len(paths), p=sizes / sizes.sum())])
    return window(text, int(rng.integers(max(1, len(text) - length))), length)


def validation_documents(n, length, seed):
    """n held-out windows spread evenly over all held-out bytes, the seed shifting the grid: a systematic sample,
    in which every file counts by its size, so the loss on it moves far less from one seed to the next than on n
    random draws (code files differ a lot in how predictable they are)."""
    paths, sizes = files("val")
    ends = np.cumsum(sizes)
    docs = []
    for x in (np.arange(n) + np.random.default_rng([seed, 11]).random()) * ends[-1] / n:
        i = int(np.searchsorted(ends, x, side="right"))
        text = read(paths[i])
        docs.append(window(text, min(int(x - ends[i] + sizes[i]), max(0, len(text) - length)), length))
    return docs
