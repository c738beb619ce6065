"""
The toy world's held-out scores, GenEval and VQA in miniature: what a model draws, writes and answers, graded by the
world's own oracle (toyworld.py) on two held-out splits, each score with its 95% interval.

    unseen_scenes      scenes no training batch ever draws, built from trained colour-shape bindings: has the model
                       learned the world it was trained on?
    held_out_bindings  scenes showing a colour-shape binding training never draws: can it compose known parts anew?

gen_*: the image drawn from each scene's caption (guidance, Euler steps as configured), scored against the caption.
caption_*: the model's greedy caption of the true render, the pretraining run's understanding score.
vqa_*: the model's greedy answer to a question about the true render, right or wrong: understanding as the paper
scores it, after fine-tuning on VQA (§2, App. E.6; configs/toy_vqa.py).
"""
import numpy as np

import toyworld
from plumbing.pictures import save_annotated
from sample import describe, draw

SPLITS = ("unseen_scenes", "held_out_bindings")
TASKS = {"caption_to_image": "gen", "image_to_caption": "caption", "vqa": "vqa"}   # what a mixture is scored on


def interval(scores, z=1.96):
    """Mean and 95% interval of per-sample scores: Wilson's for right/wrong scores (it stays inside [0, 1] and is not
    empty at 0 or 1), the normal approximation for graded ones."""
    x = np.asarray(scores, float)
    n, mean = len(x), float(x.mean())
    if np.isin(x, (0.0, 1.0)).all():
        shrink = 1 + z * z / n
        centre = (mean + z * z / (2 * n)) / shrink
        half = z * np.sqrt(mean * (1 - mean) / n + (z / (2 * n)) ** 2) / shrink
    else:
        centre, half = mean, z * x.std(ddof=1) / np.sqrt(n)
    return mean, [float(centre - half), float(centre + half)]


def scored_tasks(data):
    return {TASKS[s] for s in data.names if s in TASKS}


def oracle_parts(data, splits=SPLITS):
    """The oracle's parts of work, each task on each split: what oracle_scores advances a progress bar by."""
    return len(scored_tasks(data)) * len(splits)


def oracle_scores(model, tok, enc, data, c, n, generator, picture=None, splits=SPLITS, bar=None):
    """{task_split: mean, task_split_ci: [lo, hi]} on the first n items of each held-out split, for the tasks the
    data's mixture has (TASKS); with `picture` (a path), a table of the first items: prompts, drawings, truths,
    captions and answers. bar: a progress bar (tqdm) to advance by one as each task of each split is scored."""
    from tqdm import tqdm
    tasks, bar = scored_tasks(data), tqdm(disable=True) if bar is None else bar   # a disabled bar counts nothing
    device = next(model.parameters()).device
    scores, rows = {}, []
    for split in splits:
        items = data.held_out(split, n)
        scenes, questions = [s for s, _, _ in items], [q for _, q, _ in items]
        captions = [toyworld.caption(s, c.image_size) for s in scenes]
        truth = np.stack([toyworld.render(s, c.image_size) for s in scenes])
        got = dict(caption=captions, truth=truth)
        if "gen" in tasks:
            got["drawn"] = enc.decode(draw(model, tok, captions, c.sample_steps, c.guidance, generator))
            scores[f"gen_{split}"] = [toyworld.score_image(im, t) for im, t in zip(got["drawn"], captions)]
            bar.update(1)
        latents = enc.encode(truth).to(device)
        if "caption" in tasks:
            got["written"] = describe(model, tok, latents, generator=generator)
            scores[f"caption_{split}"] = [toyworld.score_caption(w, s, c.image_size)
                                          for w, s in zip(got["written"], scenes)]
            bar.update(1)
        if "vqa" in tasks:
            replies = describe(model, tok, latents, max_tokens=12, questions=questions)
            got["answer"] = [a.split("\n")[0].strip() for a in replies]   # the answer ends its turn
            scores[f"vqa_{split}"] = [float(a == want) for a, (_, _, want) in zip(got["answer"], items)]
            bar.update(1)
        rows += picture_rows(split, got, items, k=4)
    if picture and rows:
        save_annotated(rows, picture)
    return {k: v for name, per in scores.items() for k, v in zip((name, name + "_ci"), interval(per))}


def picture_rows(split, got, items, k):
    """The picture's rows for the first k items of a split: what was asked, what the model made, the truth."""
    rows = []
    for i in range(min(k, len(items))):
        label = split.replace("_", " ")
        written = f"model's caption of the truth: {got['written'][i]}" if "written" in got else ""
        if "drawn" in got:
            rows.append([f"{label}, prompt: {got['caption'][i]}", got["drawn"][i], got["truth"][i], written])
        elif written:
            rows.append([f"{label}: {got['caption'][i]}", got["truth"][i], written])
        if "answer" in got:
            _, question, want = items[i]
            mark = "right" if got["answer"][i] == want else f"wrong; the oracle: {want}"
            rows.append([f"{label}: {question}", got["truth"][i], f"model: {got['answer'][i]} ({mark})"])
    return rows


def summary(scores):
    """A log line: each score, with its interval where it has one; the losses per source only in the logs."""
    from data import SOURCES
    per_source = {f"val_{s}_{kind}_loss" for s in SOURCES for kind in ("text", "flow")}
    return ", ".join(f"{k} {v:.4f}" + (" [{:.3f}, {:.3f}]".format(*scores[k + "_ci"]) if k + "_ci" in scores else "")
                     for k, v in scores.items() if not k.endswith("_ci") and k not in per_source)
