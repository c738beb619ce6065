"""
Files in and out, beside the chapters. Weight files: a weights source is a local folder or a hub repository holding
the published files (remote.py downloads them); this project's checkpoints are saved and loaded here too.
Pictures: image files read as the data loader reads them, image grids (PNG) and videos (GIF) written, and the
analysis commands' figures (matplotlib, optional). Every file is written to a temporary name and renamed, so none
is ever left half-written.
"""
import ast
import dataclasses
import io
import json
import os
from contextlib import contextmanager

import numpy as np
import torch

from model import ModelConfig
from remote import weights_file


# ----------------------------------------------------------------------------------------------------------------
# Published weights: a local folder, or a hub repository "owner/name[/folder][@revision]" (remote.py downloads it).

def weights_folder(source, filenames):
    """The folder that holds `filenames` of a weights source, each fetched first: a library loads the model from it."""
    paths = [weights_file(source, name) for name in filenames]
    return os.path.dirname(paths[0])


def read_weights(source, filename, keep=lambda key: True):
    """config.json and the tensors whose names pass `keep` (safetensors reads only those; .pt files load with
    weights_only=True and may wrap their state dict in {"model": ...})."""
    config = json.load(open(weights_file(source, "config.json")))
    path = weights_file(source, filename)
    if path.endswith(".safetensors"):
        from safetensors import safe_open
        with safe_open(path, "pt") as f:
            return config, {k: f.get_tensor(k) for k in f.keys() if keep(k)}
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("model", state.get("state_dict", state))
    return config, {k: v for k, v in state.items() if keep(k)}


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints: written to a temporary file and renamed, so a crash mid-write never destroys the last good one; the
# one before is kept as ckpt.prev.pt, so a checkpoint damaged later (a full disk, a bad copy) never costs the run.

def crash_point(name, _passes={}):
    """Test-only (tests/test_errors.py): BLM_CRASH_AT=name:k kills this process the k-th time it passes `name`."""
    point, _, k = os.environ.get("BLM_CRASH_AT", "").rpartition(":")
    if point == name:
        _passes[name] = _passes.get(name, 0) + 1
        if _passes[name] == int(k):
            import signal
            os.kill(os.getpid(), signal.SIGKILL)


def previous(path):
    return os.path.splitext(path)[0] + ".prev.pt"


# Raised when the same weights would compute something else: 2 = rotary embedding on consecutive pairs of a head's
# dimensions (before: its two halves). A checkpoint of an older format stops with one line instead of loading.
CHECKPOINT_FORMAT = 2


def save_checkpoint(path, obj):
    tmp = path + ".tmp"
    torch.save(dict(obj, format=CHECKPOINT_FORMAT), tmp)
    crash_point("checkpoint")
    if os.path.exists(path):
        os.replace(path, previous(path))
    os.replace(tmp, path)
    drop_unnamed_shards(path)


# Sharded checkpoints (torch.distributed.checkpoint): every process writes its part of the weights and optimizer
# state into a folder beside the checkpoint, ckpt.shards.<step>; ckpt.pt, written last as above, holds the run's
# metadata, the folder's name and its files' sizes. A folder that neither ckpt.pt nor ckpt.prev.pt names (a save cut
# short, a checkpoint rotated out) is removed at the next save.

def shard_folders(path):
    """{folder name: path} of the shard folders beside checkpoint `path`, finished or not."""
    stem = os.path.basename(os.path.splitext(path)[0]) + ".shards."
    where = os.path.dirname(path) or "."
    return {n: os.path.join(where, n) for n in os.listdir(where) if n.startswith(stem)} if os.path.isdir(where) else {}


def named_shards(path):
    """The shard folder that checkpoint `path` names, if any (its tensors are not read: mmap)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, mmap=True).get("shards")
    except Exception:   # missing or unreadable: it names nothing
        return None


def drop_unnamed_shards(path):
    import shutil
    folders = shard_folders(path)
    keep = {named_shards(path), named_shards(previous(path))} if folders else set()
    for name, folder in folders.items():
        if name not in keep:
            shutil.rmtree(folder, ignore_errors=True)


def save_sharded(path, state, meta, master):
    """Every process writes its part of `state` into a new shard folder (nothing is gathered); process 0 then names
    it in the checkpoint `path`, written as save_checkpoint writes one. Every process calls it."""
    import shutil
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    name = os.path.basename(os.path.splitext(path)[0]) + f".shards.{meta['step']}"
    folder = os.path.join(os.path.dirname(path), name)
    if master and os.path.exists(folder + ".tmp"):   # left by a save that was cut short
        shutil.rmtree(folder + ".tmp")
    dist.barrier()
    dcp.save(state, checkpoint_id=folder + ".tmp")   # returns once every part and the index are written
    if master:
        crash_point("shards")
        if os.path.exists(folder):   # a folder of this step that no checkpoint names: a run that died after it
            shutil.rmtree(folder)
        os.replace(folder + ".tmp", folder)
        sizes = {f: os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)}
        save_checkpoint(path, dict(meta, shards=name, shard_sizes=sizes))


def read_shards(path, ckpt, state):
    """Fills `state` ({"model": ..., "optimizer": ...} of this process's tensors, sharded or whole) from the shard
    folder that checkpoint `path` names; on one process or all of them (collective when there are several)."""
    import warnings
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    try:
        with warnings.catch_warnings():   # on one process it warns that it reads on one process: the intent
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(state, checkpoint_id=os.path.join(os.path.dirname(path), ckpt["shards"]),
                     no_dist=not dist.is_initialized())
    except Exception as e:
        raise SystemExit(f"{path} names shards that cannot be read ({type(e).__name__}): {way_out(path)}")


def load_checkpoint(path):
    """The checkpoint's dict; a missing or unreadable file stops with one line that names the way out."""
    if not os.path.isfile(path):
        raise SystemExit(f"no checkpoint at {path}: " + (way_out(path) if os.path.isfile(previous(path)) else
                         "train one first (python train.py configs/toy.py) or fix --out_dir"))
    try:   # mmap: every process of a run may read the file, but its pages are shared, not copied
        ckpt = torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        if not (isinstance(ckpt, dict) and {"config", "model_args"} <= ckpt.keys() and
                ("model" in ckpt or "shards" in ckpt)):
            raise ValueError("not a training checkpoint")
    except Exception as e:   # cut short, overwritten, empty: torch raises any of a dozen errors
        raise SystemExit(f"{path} is not a readable checkpoint ({type(e).__name__}): {way_out(path)}")
    if ckpt.get("format", 1) != CHECKPOINT_FORMAT:
        raise SystemExit(f"{path} is a format {ckpt.get('format', 1)} checkpoint and this code reads format "
                         f"{CHECKPOINT_FORMAT} (files.CHECKPOINT_FORMAT says what changed): train it again, or use "
                         f"the code it was trained with")
    folder = os.path.join(os.path.dirname(path), ckpt.get("shards", ""))
    for name, size in ckpt.get("shard_sizes", {}).items():   # a folder cut short or copied in part
        if not os.path.isfile(os.path.join(folder, name)) or os.path.getsize(os.path.join(folder, name)) != size:
            raise SystemExit(f"{path} names shards that are missing or cut short ({os.path.join(folder, name)}): "
                             f"{way_out(path)}")
    return ckpt


def way_out(path):
    prev = previous(path)
    return (f"the one before is {prev}: copy it to {path} to continue from there" if os.path.isfile(prev) else
            "start a fresh run with another --out_dir")


def read_log(path):
    """[(line, record)] of a metrics.jsonl; a last line torn by a crash mid-write is dropped (resume trims it)."""
    lines = open(path).readlines()
    out = []
    for n, line in enumerate(lines, 1):
        try:
            out.append((line.rstrip("\n") + "\n", json.loads(line)))
        except ValueError:
            if n < len(lines):
                raise SystemExit(f"{path}, line {n}: not a JSON record; fix or move the log aside, then resume")
    return out


def append_log(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
    crash_point("log")


def trim_log(path, step):
    """Drop a resumed run's log lines after its checkpoint's step: they will be logged again."""
    lines = [ln for ln, r in read_log(path) if r["step"] <= step]
    with open(path + ".tmp", "w") as f:
        f.writelines(lines)
    os.replace(path + ".tmp", path)


def set_log_aside(path):
    """Move the log of a run that died before its first checkpoint to the first free path.N."""
    aside = next(f"{path}.{i}" for i in range(1, 10 ** 6) if not os.path.exists(f"{path}.{i}"))
    os.replace(path, aside)
    print(f"{path} of a run without a checkpoint moved to {aside}; this run starts a new log")


@contextmanager
def part_file(path):
    """A temporary name to write `path` under: renamed to it when the block succeeds, removed when it fails, so a
    failed or killed command never leaves a half-written file under a real name."""
    part = path + ".part"
    try:
        yield part
    except BaseException:
        if os.path.exists(part):
            os.remove(part)
        raise
    os.replace(part, path)


def write_lines(path, lines):
    """A text file of the lines, each ended by a newline; returns its path."""
    with open(path, "w") as f:
        f.write("".join(line + "\n" for line in lines))
    return path


def refuse_overwrite(paths, overwrite=False):
    """No command replaces an existing output unless asked to: the first one that exists stops it."""
    for path in paths:
        if os.path.exists(path) and not overwrite:
            raise SystemExit(f"{path} exists: pass --overwrite to replace it, or write elsewhere")


def check_same_model(saved, current, path):
    """A checkpoint only loads into the configuration it was trained with: name the first difference. A setting
    the checkpoint predates counts as its default."""
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    for key in current:
        was = saved.get(key, defaults[key])
        if was != current[key]:
            raise SystemExit(f"checkpoint {path} was trained with {key}={was!r} but the config asks for "
                             f"{current[key]!r}: use the checkpoint's config or another out_dir")


# ----------------------------------------------------------------------------------------------------------------
# The command line's files: config files run, the comments --help shows read from a command's source, and the last
# line a command prints kept clear of progress bars.

def key_comments(sources, function=None):
    """{name: its comment} for each module-level `name = value  # comment` in the source files (or each argument
    of `function`, one a line): what --help shows beside the key."""
    import io
    import tokenize
    comments = {}
    for path in sources:
        text = open(path).read()
        notes = {t.start[0]: t.string.lstrip("# ") for t in tokenize.generate_tokens(io.StringIO(text).readline)
                 if t.type == tokenize.COMMENT}
        tree = ast.parse(text)
        nodes = tree.body if function is None else \
            next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == function).args.args
        for node in nodes:
            if isinstance(node, ast.arg) or isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                name = node.arg if isinstance(node, ast.arg) else node.targets[0].id
                comments.setdefault(name, notes.get(node.end_lineno, "") or notes.get(node.lineno, ""))
    return comments


def print_help(defaults, sources, usage="", function=None):
    comments = key_comments(sources, function)
    print(usage or f"usage: python {os.path.basename(sources[0])} [config.py ...] [--key=value ...]")
    for k, v in defaults.items():
        print((f"  --{k}={v}".ljust(36) + f"  {comments.get(k, '')}").rstrip())


def run_config_file(path):
    """The names a python config file assigns; one that fails to run stops with its file, line and error."""
    import builtins
    import traceback
    scope = {"__file__": path}   # a config may build on another: exec(open(...).read())
    try:
        exec(builtins.compile(open(path).read(), path, "exec"), scope)   # named, so errors point into the file
    except Exception as e:
        lines = [e.lineno] if isinstance(e, SyntaxError) else \
            [f.lineno for f in traceback.extract_tb(e.__traceback__) if f.filename == path]
        raise SystemExit(f"config file {path}, line {lines[-1] if lines else '?'}: {type(e).__name__}: "
                         f"{e.msg if isinstance(e, SyntaxError) else e}")
    return scope


def cli(main, argv):
    """Runs a command's main. Whatever stops it, open progress bars are closed first, so that its last message is
    a line of its own, not the tail of the bar's line."""
    try:
        main(argv)
    except BaseException:
        from tqdm import tqdm
        for bar in list(getattr(tqdm, "_instances", [])):
            bar.close()
        raise


# ----------------------------------------------------------------------------------------------------------------
# Pictures in and out.

def to_rgb(image, size):
    """Any image (a pillow image or an array; grayscale, RGBA, palette, CMYK, any size) -> uint8 [size, size, 3]:
    transparency over white, the shorter side resized to `size` (bilinear: as good when shrinking, and faster in
    the data loader, which uses this too), the centre cropped square."""
    from PIL import Image
    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image).squeeze())
    if "A" in img.getbands() or "transparency" in img.info:
        img = Image.alpha_composite(Image.new("RGBA", img.size, "white"), img.convert("RGBA"))
    img = img.convert("RGB")
    scale = size / min(img.size)
    img = img.resize((max(size, round(img.width * scale)), max(size, round(img.height * scale))), Image.BILINEAR)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def load_image(source, size):
    """An image file's bytes, or its path -> RGB uint8 [size, size, 3] (to_rgb: any mode, the short side
    resized, the centre cropped): the data loader and the sampler read images alike. JPEGs much larger than `size`
    are decoded at a reduced scale, which is much faster."""
    from PIL import Image
    im = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    im.draft("RGB", (size, size))
    return to_rgb(im, size)


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


def save_annotated(rows, path, scale=4, text_width=300):
    """A PNG table, one row per list of cells: images (uint8 [h, w, 3], enlarged `scale` times) or text (wrapped to
    text_width pixels, in pillow's built-in font: nothing to download)."""
    import textwrap
    from PIL import Image, ImageDraw, ImageFont
    try:
        font = ImageFont.load_default(size=13)   # a scalable font (pillow >= 10.1 with FreeType)
    except (TypeError, ImportError, OSError):
        font = ImageFont.load_default()
    pad = 2 * scale
    n_cols = max(map(len, rows))
    is_image = lambda cell: isinstance(cell, np.ndarray)
    widths = [max(r[i].shape[1] * scale if is_image(r[i]) else text_width for r in rows if i < len(r))
              for i in range(n_cols)]
    wrap = max(8, int(text_width / font.getlength("x")))
    line = font.getbbox("Ay")[3] + 3
    cells = [[upscale(c, scale) if is_image(c) else textwrap.wrap(c, wrap) for c in r] for r in rows]   # str: lines
    heights = [max(c.shape[0] if is_image(c) else len(c) * line for c in r) for r in cells]
    sheet = Image.new("RGB", (sum(widths) + pad * (n_cols + 1), sum(heights) + pad * (len(rows) + 1)), "white")
    draw, y = ImageDraw.Draw(sheet), pad
    for r, h in zip(cells, heights):
        x = pad
        for cell, w in zip(r, widths):
            if is_image(cell):
                sheet.paste(Image.fromarray(np.ascontiguousarray(cell)), (x, y))
            else:
                for k, text in enumerate(cell):
                    draw.text((x, y + k * line), text, fill="black", font=font)
            x += w + pad
        y += h + pad
    tmp = path + ".tmp"
    sheet.save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def save_rollout(rows, folder):
    """Frames [2 A, T, h, w, 3], each imagined row above its true one -> rollout.gif (the A pairs side by side, in
    time) and rollout.png (every frame); returns both paths."""
    A, T, h, w = len(rows) // 2, *rows.shape[1:4]
    framed = np.pad(rows, ((0, 0), (0, 0), (1, 1), (1, 1), (0, 0)), constant_values=255)
    movie = framed.reshape(A, 2, T, h + 2, w + 2, 3).transpose(2, 1, 3, 0, 4, 5).reshape(T, 2 * h + 4, A * w + 2 * A, 3)
    return [save_gif(movie, os.path.join(folder, "rollout.gif"), ms_per_frame=500),
            save_grid(rows.reshape(-1, h, w, 3), os.path.join(folder, "rollout.png"), ncol=T)]


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


def routing_figure(rows, stats, path):
    """routing.py's figure: experts by specialization per layer, the last layer's selection rates by timestep bin,
    and the generation/understanding correlation per layer."""
    plt = pyplot()
    if plt is None:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    layers = [r["layer"] for r in rows]
    bottom = np.zeros(len(rows))
    for name, colour in (("text", "tab:blue"), ("multimodal", "tab:gray"), ("vision", "tab:orange")):
        values = np.array([r[name] for r in rows])
        axes[0].bar(layers, values, bottom=bottom, label=name, color=colour)
        bottom += values
    axes[0].set(title="experts by specialization (Fig. 18)", xlabel="layer", ylabel="experts")
    axes[0].legend()
    rates = stats[-1]["tbins"] / np.maximum(stats[-1]["n_tbins"][:, None], 1)
    im = axes[1].imshow(rates.T, aspect="auto", cmap="viridis")
    axes[1].set(title="last layer: selection rate by timestep bin", xlabel="t bin (0 noise .. 9 clean)",
                ylabel="expert")
    fig.colorbar(im, ax=axes[1])
    axes[2].plot(layers, [r["gen_und_r"] for r in rows], "o-")
    axes[2].set(title="generation vs understanding selection, Pearson r", xlabel="layer", ylim=(-1, 1))
    return [save_figure(fig, path)]
