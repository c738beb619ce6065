"""
Image metrics for a trained run: the images it draws from held-out captions, compared with the held-out images.

    python -m plumbing.image_metrics --out_dir=out/real --images='data/cc3m/val-{0000..0003}.tar' --num_images=5000
    python -m plumbing.image_metrics --out_dir=out/toy --images=toyworld         # held-out toy scenes, + the oracle
    python -m plumbing.image_metrics --out_dir=out/real --images=... --fid --clip_score  # + FID, CLIP score (downloads)
    python -m plumbing.image_metrics --out_dir=out/real --mode=geneval \
        --prompts=geneval/prompts/evaluation_metadata.jsonl

Score mode draws an image for each held-out caption (caption -> image, as sample.py draws) and reports:
- fd: the Frechet distance between Gaussians fitted to the two image sets' features in a frozen encoder's space,
  by default the run's own encoder (nothing to download), with a 95% interval over bootstrap resamples of both sets;
- fid (optional): FID, the same distance in Inception-v3's space (torchmetrics and torch-fidelity; the weights are
  downloaded once, or read from --inception_weights);
- clip_score (optional): CLIP's text-image agreement of each drawn image with its caption (transformers);
- on the toy world, the oracle's gen_accuracy, the score train.py's evaluation reports.
Geneval mode draws GenEval's prompts into the folder layout its official scorer reads.
"""
import json
import os
import shutil
import sys

import numpy as np
import torch

from plumbing.build import load_for_inference
from plumbing.export import local_folder
from plumbing.logs import check_sinks, need, report_to_run, tracked
from plumbing.outputs import refuse_overwrite
from plumbing.pictures import load_image, save_grid
from plumbing.settings import cli, configure, settings

# ----------------------------------------------------------------------------------------------------------------
# The Frechet distance between Gaussians fitted to two sets of features, and its bootstrap interval.


def centred(x, weights=None):
    """(mean, A) of the rows of x [n, d], float64; weights: how often each row was drawn. A's rows are the centred
    rows, scaled so that A^T A is the (unbiased) covariance."""
    w = torch.ones(len(x), dtype=x.dtype) if weights is None else weights
    mean = w @ x / w.sum()
    return mean, (x - mean) * (w / (w.sum() - 1)).sqrt()[:, None]


def moments(x, weights=None):
    mean, a = centred(x, weights)
    return mean, a.T @ a


def frechet_distance(mean1, cov1, mean2, cov2):
    """|m1 - m2|^2 + tr(C1 + C2 - 2 (C1 C2)^(1/2)). The trace of the root is the sum of the square roots of the
    eigenvalues of C1^(1/2) C2 C1^(1/2), which is symmetric (and has C1 C2's eigenvalues): no general sqrtm."""
    w, v = torch.linalg.eigh(cov1)
    root1 = (v * w.clamp(min=0).sqrt()) @ v.T
    cross = torch.linalg.eigvalsh(root1 @ cov2 @ root1).clamp(min=0).sqrt().sum()
    return float((mean1 - mean2).square().sum() + cov1.trace() + cov2.trace() - 2 * cross)


def sample_fd(x1, x2, w1=None, w2=None):
    """The Frechet distance of Gaussians fitted to two sets of rows. With more dimensions than rows it is computed
    in the rows' space, never forming a d x d matrix: C1 = A^T A and C2 = B^T B, so tr C1 = |A|^2, and the
    eigenvalues of C1 C2 are (besides zeros) those of (A B^T)(A B^T)^T: tr (C1 C2)^(1/2) = A B^T's singular values."""
    (m1, a), (m2, b) = centred(x1, w1), centred(x2, w2)
    if a.shape[1] <= min(len(a), len(b)):
        return frechet_distance(m1, a.T @ a, m2, b.T @ b)
    cross = torch.linalg.svdvals(a @ b.T).sum()
    return float((m1 - m2).square().sum() + a.square().sum() + b.square().sum() - 2 * cross)


def fd_with_interval(real, fake, resamples=200, seed=0):
    """(FD, FD -+ 1.96 standard deviations of FD over resamples that redraw both sets with replacement): how far the
    number would move with other held-out and other drawn images of the same sizes. Not the resamples' percentiles:
    a resample repeats images, and FD's upward bias grows as distinct images get fewer, so the percentiles sit
    above the estimate (with more dimensions than images, wholly above it)."""
    real, fake = torch.as_tensor(real, dtype=torch.float64), torch.as_tensor(fake, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    redraw = lambda n: torch.from_numpy(np.bincount(rng.integers(0, n, n), minlength=n)).double()
    spread = np.std([sample_fd(real, fake, redraw(len(real)), redraw(len(fake))) for _ in range(resamples)],
                    ddof=1) if resamples > 1 else float("nan")
    fd = sample_fd(real, fake)
    return fd, float(fd - 1.96 * spread), float(fd + 1.96 * spread)


def image_features(extract, images, pool, batch=64):
    """float64 [n, D]: one vector per image. extract: uint8 [B, H, W, 3] -> tokens [B, N, C] (an encoder's
    encode), or already vectors [B, D]. pool "mean": the tokens' mean; "flat": all tokens one after another."""
    out = []
    for i in range(0, len(images), batch):
        z = extract(images[i:i + batch]).double().cpu()
        out.append(z if z.dim() == 2 else z.mean(1) if pool == "mean" else z.flatten(1))
        if out[0].shape[1] > 65536:   # features alone of 10,000 images would take 5 GB
            raise SystemExit(f"pool={pool} gives {out[0].shape[1]} dimensions per image: use pool=mean")
    return torch.cat(out)


# ----------------------------------------------------------------------------------------------------------------
# FID (torchmetrics) and CLIP score, whose weights come from the web: one line when they cannot. The command loads
# both before it draws a single image (metric_tools), so that a missing package or weight file costs nothing.

def inception_metric(weights=""):
    """torchmetrics' FID in Inception-v3's pool features (2048), the weights loaded: downloaded once by torch-fidelity,
    or read from `weights` (a local pt_inception-2015-12-05-6726825d.pth)."""
    if weights and not os.path.isfile(weights):
        raise SystemExit(f"--inception_weights={weights!r}: no such file; give a local "
                         f"pt_inception-2015-12-05-6726825d.pth, or leave it empty to download the weights")
    fid = need("torchmetrics.image.fid", "torchmetrics")
    try:   # torchmetrics builds its Inception from torch-fidelity
        import torch_fidelity  # noqa: F401
    except ImportError as e:
        raise SystemExit(f"fid needs torch-fidelity ({e}): pip install torch-fidelity, or leave --fid off")
    try:
        return fid.FrechetInceptionDistance(feature=2048, feature_extractor_weights_path=weights or None)
    except ModuleNotFoundError as e:
        raise SystemExit(f"fid needs torch-fidelity ({e}): pip install torch-fidelity, or leave --fid off")
    except Exception as e:   # no network, a proxy, a bad file: torch.hub raises any of several errors
        raise SystemExit(f"fid: the Inception-v3 weights are unavailable ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}): run once with network access, or give "
                         f"--inception_weights=<a local pt_inception-2015-12-05-6726825d.pth>")


def inception_fid(real, fake, weights="", batch=64, metric=None):
    """FID in Inception-v3's pool features (2048), images uint8 [n, H, W, 3] (resized by torch-fidelity); metric:
    inception_metric's, loaded already."""
    metric = inception_metric(weights) if metric is None else metric
    for images, real_ in ((real, True), (fake, False)):
        for i in range(0, len(images), batch):
            metric.update(torch.from_numpy(images[i:i + batch]).permute(0, 3, 1, 2), real=real_)
    return float(metric.compute())


def clip_model(name):
    """(CLIPModel, CLIPProcessor) of a hub name or a local folder."""
    transformers = need("transformers", "transformers")
    try:
        return transformers.CLIPModel.from_pretrained(name).eval(), transformers.CLIPProcessor.from_pretrained(name)
    except Exception as e:   # no network, no such model: transformers raises OSError or others
        raise SystemExit(f"clip_score: the CLIP model {name!r} is unavailable ({type(e).__name__}: "
                         f"{str(e).splitlines()[0] if str(e) else ''}): run once with network access, or give "
                         f"--clip_score_model=<a local folder of a CLIP model>")


def clip_score(images, captions, model, batch=64):
    """CLIPScore as torchmetrics defines it: 100 * max(0, cosine of CLIP's image and text embeddings), averaged. On
    transformers' CLIPModel directly: torchmetrics 1.9's CLIPScore breaks on transformers 5 (whose image features
    come back as an output object), and takes only the hub names it lists, no local folder. model: a hub name or a
    folder, or clip_model's pair, loaded already."""
    clip, processor = clip_model(model) if isinstance(model, str) else model
    scores = []
    for i in range(0, len(images), batch):
        inputs = processor(text=list(captions[i:i + batch]), images=list(images[i:i + batch]), return_tensors="pt",
                           padding=True, truncation=True)
        with torch.no_grad():
            out = clip(**inputs)
        scores.append(100 * (out.image_embeds * out.text_embeds).sum(-1).clamp(min=0))
    return float(torch.cat(scores).mean())


# ----------------------------------------------------------------------------------------------------------------
# Held-out images and the images the run draws from their captions.

def shard_paths(spec):
    """The held-out tars' paths: comma-separated paths, globs, brace ranges or URLs, as training's *_data."""
    from plumbing.realdata import expand
    try:
        return expand(spec)
    except ValueError as e:
        raise SystemExit(f"--images: {e}")


def held_out_tars(paths, n, size, fits):
    """Up to n (image, caption) pairs from webdataset tars (realdata's layout: key.jpg + key.txt or key.json), the
    images at `size` as training reads them; samples without an image or a caption, or whose caption does not
    fit the model (fits(caption) False), are skipped and counted."""
    from collections import Counter
    from plumbing.realdata import tar_samples
    stats, pairs = Counter(), []
    try:
        for path in paths:
            for _, group in tar_samples(path, stats):
                pairs += filter(None, [usable_pair(group, size, fits, stats)])
                if len(pairs) == n:
                    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs], dict(stats)
    except ValueError as e:   # a shard that cannot be opened
        raise SystemExit(f"--images: {e}")
    if not pairs:
        raise SystemExit(f"no usable image-caption pair in {', '.join(paths)} ({dict(stats)}): give webdataset tars of "
                         f"key.jpg + key.txt (or key.json)")
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs], dict(stats)


def usable_pair(group, size, fits, stats):
    """A webdataset sample's (image, caption), or None with the reason counted."""
    from plumbing.realdata import IMAGE_EXTS, caption_of
    frame = next((e for e in sorted(group) if e.rsplit(".", 1)[-1] in IMAGE_EXTS), None)
    caption = caption_of(group)
    if frame is None or caption is None or not fits(caption):
        stats["no_image" if frame is None else "no_caption" if caption is None else "long_caption"] += 1
        return None
    try:
        return load_image(group[frame], size), caption
    except Exception:   # whatever a corrupt file makes the decoder raise
        stats["bad_image"] += 1
        return None


def held_out_toy(n, cfg, seed, split):
    """n toy scenes of a held-out split (toyworld.SPLIT_NAMES: none drawn in training), rendered, and their captions."""
    import toyworld
    rng = np.random.default_rng(seed)
    scenes = [toyworld.random_scene(rng, cfg.max_shapes, cfg.image_size, split) for _ in range(n)]
    return np.stack([toyworld.render(s, cfg.image_size) for s in scenes]), \
        [toyworld.caption(s, cfg.image_size) for s in scenes]


def draw_images(model, tok, enc, captions, c):
    """uint8 [n, H, W, 3]: one image per caption, drawn batch_size at a time, with a progress bar."""
    from tqdm import tqdm
    from sample import draw
    gen = torch.Generator(next(model.parameters()).device).manual_seed(c.seed)
    out = []
    with tqdm(total=len(captions), desc="drawing", unit="image") as bar:
        for i in range(0, len(captions), c.batch_size):
            batch = captions[i:i + c.batch_size]
            out.append(enc.decode(draw(model, tok, batch, c.steps, c.guidance, gen)))
            bar.update(len(batch))
    return np.concatenate(out)


def feature_extractor(c, cfg, enc, device):
    """features "": the run's own frozen encoder; or another encoder's name (its published weights)."""
    if not c.features:
        return enc.encode
    from encoders import build_encoder
    try:
        return build_encoder(c.features, cfg.image_size, cfg.patch_size, device).encode
    except ValueError as e:
        raise SystemExit(f"features={c.features!r}: {e}")


# ----------------------------------------------------------------------------------------------------------------
# GenEval: its prompts drawn into the folders its scorer (evaluation/evaluate_images.py) reads:
# <out>/<index:05d>/metadata.jsonl (the prompt's line) and <out>/<index:05d>/samples/<k:04d>.png.

def geneval_folders(model, tok, enc, c, folder):
    from PIL import Image
    try:
        lines = [json.loads(line) for line in open(c.prompts) if line.strip()]
        prompts = [line["prompt"] for line in lines]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--prompts={c.prompts!r}: not GenEval's evaluation_metadata.jsonl ({type(e).__name__}: "
                         f"{e}); it is in GenEval's prompts/ folder")
    images = draw_images(model, tok, enc, [p for p in prompts for _ in range(c.samples_per_prompt)], c)
    part = folder + ".part"   # written whole, then renamed: never a half-filled folder under the real name
    shutil.rmtree(part, ignore_errors=True)
    for i, line in enumerate(lines):
        os.makedirs(os.path.join(part, f"{i:05d}", "samples"))
        with open(os.path.join(part, f"{i:05d}", "metadata.jsonl"), "w") as f:
            json.dump(line, f)
        for k in range(c.samples_per_prompt):
            Image.fromarray(images[i * c.samples_per_prompt + k]).save(
                os.path.join(part, f"{i:05d}", "samples", f"{k:04d}.png"))
    if os.path.exists(folder):
        shutil.rmtree(folder)
    os.replace(part, folder)
    return len(images)


# ----------------------------------------------------------------------------------------------------------------
# Command line.

out_dir = "out/toy"           # the model that draws: a run's out_dir, an export folder, or hf://owner/name[@revision]
weights = "auto"              # "auto": the weights' moving average where the run kept one, else the raw; or ema, raw
mode = "score"                # "score": metrics against held-out images; "geneval": GenEval's folders of drawn images
images = "toyworld"           # held-out webdataset tars (paths, globs, URLs; key.jpg + key.txt/json) or "toyworld"
num_images = 500              # held-out pairs to score (FID is usually reported at 10k-50k)
features = ""                 # fd's space: "" the run's own encoder; or pixels, siglip2, dinov2, webssl (downloads)
pool = "mean"                 # an image's feature: its tokens' "mean", or "flat" (all of them; small latents only)
resamples = 200               # bootstrap resamples for fd's 95% interval (their standard deviation)
fid = False                   # also FID (torchmetrics + torch-fidelity; Inception weights downloaded once)
inception_weights = ""        # a local pt_inception-2015-12-05-6726825d.pth for FID; "": download it
clip_score_model = ""         # also CLIP score with this CLIP (hub name, e.g. openai/clip-vit-large-patch14, or folder)
prompts = ""                  # geneval mode: GenEval's prompts/evaluation_metadata.jsonl
samples_per_prompt = 4        # geneval mode: images per prompt (GenEval's 4)
batch_size = 32               # images drawn at once
steps = 25
guidance = 3.0
split = "unseen_scenes"       # images=toyworld: the held-out split, or "held_out_bindings"
seed = 0
device = "auto"
out = ""                      # where results go; default out_dir (image_metrics.json) or out_dir/geneval (a hub
                              # model: out/owner--name)
overwrite = False             # replace earlier results


def metric_tools(c):
    """What the optional metrics need, loaded before any image is drawn: the FID's Inception, the CLIP model."""
    return dict(fid=inception_metric(c.inception_weights) if c.fid else None,
                clip=clip_model(c.clip_score_model) if c.clip_score_model else None)


def score(model, tok, enc, cfg, c, extract, space, tools=None):
    """The score mode's numbers, the held-out images and the images drawn; space: the features' name; tools:
    metric_tools' (else loaded here, after the drawing)."""
    tools = tools or {}
    limit = cfg.seq_len - enc.tokens_per_frame - 3   # the prompt: BOS caption BOI, then N latents, EOI
    if c.images == "toyworld":
        if cfg.dataset != "toyworld":
            raise SystemExit("images=toyworld scores a toy-world run: give held-out tars with --images=...")
        real, captions = held_out_toy(c.num_images, cfg, c.seed, c.split)
        stats = {}
    else:
        real, captions, stats = held_out_tars(shard_paths(c.images), c.num_images, cfg.image_size,
                                              lambda t: len(tok.encode(t)) <= limit)
    fake = draw_images(model, tok, enc, captions, c)
    feats = [image_features(extract, x, c.pool) for x in (real, fake)]
    fd, low, high = fd_with_interval(*feats, c.resamples, c.seed)
    out = dict(images=len(real), features=space, pool=c.pool, dims=feats[0].shape[1], fd=fd,
               fd_low=low, fd_high=high, **{f"skipped_{k}": v for k, v in stats.items()})
    if c.images == "toyworld":
        import toyworld
        out["gen_accuracy"] = float(np.mean([toyworld.score_image(im, t) for im, t in zip(fake, captions)]))
    if c.fid:
        out["fid"] = inception_fid(real, fake, c.inception_weights, metric=tools.get("fid"))
    if c.clip_score_model:
        out["clip_score"] = clip_score(fake, captions, tools.get("clip") or c.clip_score_model)
    return out, real, fake


def main(argv, extract=None):
    """extract: a feature extractor to use instead of the features setting's (tests: random-weight towers)."""
    c = configure(settings(globals()), argv, [__file__])
    if c.mode not in ("score", "geneval"):
        raise SystemExit(f"unknown mode '{c.mode}': use score or geneval")
    if c.pool not in ("mean", "flat"):
        raise SystemExit(f"pool={c.pool!r}: use mean or flat")
    if c.num_images < 2 or min(c.batch_size, c.steps, c.samples_per_prompt) < 1 or c.resamples < 0:
        raise SystemExit("num_images must be >= 2, batch_size, steps and samples_per_prompt >= 1, resamples >= 0")
    if c.mode == "geneval" and not c.prompts:
        raise SystemExit("geneval mode needs --prompts=<GenEval's prompts/evaluation_metadata.jsonl>")
    local = local_folder(c.out_dir)
    folder = c.out or (os.path.join(local, "geneval") if c.mode == "geneval" else local)
    written = [folder] if c.mode == "geneval" else [os.path.join(folder, n) for n in ("image_metrics.json",
                                                                                    "image_metrics.png")]
    refuse_overwrite(written, c.overwrite)
    if c.mode == "score" and c.images != "toyworld":
        shard_paths(c.images)   # a wrong path stops before the model loads
    # everything the command will need, checked before it draws: packages, weights, and the run's wandb login
    tools = metric_tools(c) if c.mode == "score" else {}
    model, tok, enc, cfg = load_for_inference(c.out_dir, c.device, c.weights)
    if c.mode == "geneval":
        print(f"wrote {geneval_folders(model, tok, enc, c, folder)} images to {folder}: score them with GenEval's "
              f"evaluation/evaluate_images.py {folder}")
        return
    check_sinks(tracked(cfg))   # the numbers join the run's wandb and TensorBoard (report_to_run)
    space = "given" if extract else c.features or cfg.encoder
    extract = extract or feature_extractor(c, cfg, enc, next(model.parameters()).device)
    numbers, real, fake = score(model, tok, enc, cfg, c, extract, space, tools)
    os.makedirs(folder, exist_ok=True)
    with open(written[0] + ".tmp", "w") as f:
        json.dump(dict(checkpoint_step=cfg.checkpoint_step, **numbers), f, indent=1)
    os.replace(written[0] + ".tmp", written[0])
    n = min(8, len(real))   # drawn images above the held-out ones of the same captions
    save_grid(np.concatenate([fake[:n], real[:n]]), written[1], ncol=n)
    print(f"fd {numbers['fd']:.4g} (95% interval {numbers['fd_low']:.4g} .. {numbers['fd_high']:.4g}) over "
          f"{numbers['images']} images in {numbers['features']} space ({numbers['pool']}, {numbers['dims']} dims)" +
          "".join(f", {k} {numbers[k]:.4g}" for k in ("gen_accuracy", "fid", "clip_score") if k in numbers))
    report_to_run(cfg, c.out_dir, {f"image_metrics/{k}": v for k, v in numbers.items() if isinstance(v, float)},
                  {"image_metrics": written[1]})
    print(f"wrote {written[0]} and {written[1]}")


if __name__ == "__main__":
    cli(main, sys.argv[1:])
