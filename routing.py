"""
What the experts of a trained MoE learned (Appendix E.8, Figures 18-20): selection counts by modality, diffusion
timestep and task, the specialization score S_i and the text/vision/multimodal classes, coefficients of variation
over timestep bins, and the generation/understanding correlation.

    python routing.py --out_dir=out/toy_moe          # routing analysis of a trained MoE checkpoint: table + figures
"""
import json
import os
import sys

import numpy as np
import torch

from data import ToyWorldData
from model import add_noise, sample_time
from moe import MoEFFN
from plumbing.build import load_for_inference
from plumbing.outputs import refuse_overwrite
from plumbing.pictures import routing_figure
from plumbing.settings import cli, configure, settings
from train import get_batch


def specialization(count_text, count_vision, n_text, n_vision, k):
    """S_i = (R_text - R_vision) / (R_text + R_vision) with R_m(i) = C_m(i) / (N_m k); an expert is 'text' when
    S > 0.5, 'vision' when S < -0.5, otherwise 'multimodal' (experts never chosen are 'unused')."""
    r_text = np.asarray(count_text, float) / max(n_text * k, 1)
    r_vision = np.asarray(count_vision, float) / max(n_vision * k, 1)
    total = r_text + r_vision
    S = np.divide(r_text - r_vision, total, out=np.zeros_like(total), where=total > 0)
    classes = np.where(total == 0, "unused", np.where(S > 0.5, "text", np.where(S < -0.5, "vision", "multimodal")))
    return S, classes


def timestep_cv(counts_by_bin, tokens_by_bin):
    """Coefficient of variation of each expert's selection rate across diffusion-timestep bins: [bins, E] -> [E]."""
    rates = np.asarray(counts_by_bin, float) / np.maximum(np.asarray(tokens_by_bin, float)[:, None], 1)
    mean = rates.mean(0)
    return np.divide(rates.std(0), mean, out=np.zeros_like(mean), where=mean > 0)


def pearson(a, b):
    a, b = np.asarray(a, float) - np.mean(a), np.asarray(b, float) - np.mean(b)
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    return float((a * b).sum() / denom) if denom > 0 else 0.0


@torch.no_grad()
def routing_counts(model, batches, bins=10):
    """Selection counts of every MoE layer's routed experts over (task, batch) pairs, read off with forward hooks
    (the layers themselves are untouched). Returns one dict of numpy arrays per layer."""
    layers = [m for m in model.modules() if isinstance(m, MoEFFN)]
    stats = [dict(text=np.zeros(m.n_routed), vision=np.zeros(m.n_routed), n_text=0, n_vision=0,
                  tbins=np.zeros((bins, m.n_routed)), n_tbins=np.zeros(bins),
                  generation=np.zeros(m.n_routed), understanding=np.zeros(m.n_routed)) for m in layers]
    labels = {}

    def hook(i):
        def record(module, args, out):
            x, modality = args[0].reshape(-1, args[0].shape[-1]), args[1].reshape(-1)   # 1 vision, 0 text, -1 pad
            top = module.route(x)[0]
            s, mod = stats[i], modality.cpu().numpy()
            chosen, vis = top.cpu().numpy(), mod == 1
            for name, rows in (("text", mod == 0), ("vision", vis)):   # padding is neither
                np.add.at(s[name], chosen[rows].reshape(-1), 1)
                s["n_" + name] += int(rows.sum())
            noisy = labels["noisy"]   # timestep statistics count frames being generated, not clean inputs
            tb = labels["tbin"][noisy]
            np.add.at(s["tbins"], (np.repeat(tb, module.k_routed), chosen[noisy].reshape(-1)), 1)
            np.add.at(s["n_tbins"], tb, 1)
            if labels["task"] in ("generation", "understanding"):
                np.add.at(s[labels["task"]], chosen[vis].reshape(-1), 1)
        return record
    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    model.eval()
    gen = torch.Generator(next(model.parameters()).device).manual_seed(0)   # the same noise every time
    for task, batch in batches:
        z0, cond = batch["latents"], batch["cond"]
        t = torch.where(cond, torch.ones_like(z0[:, 0, 0]), sample_time(len(z0), model.cfg, z0.device, gen))
        zt = add_noise(z0, torch.randn(z0.shape, device=z0.device, generator=gen), t)
        frame = batch["frame"].reshape(-1)
        per_pos = torch.cat([t, t.new_ones(1)])[frame].cpu().numpy()                      # text (-1): t = 1
        noisy = torch.cat([~cond, cond.new_zeros(1)])[frame].cpu().numpy()
        labels.update(task=task, tbin=np.minimum((per_pos * bins).astype(int), bins - 1), noisy=noisy)
        model(batch["tokens"], batch["doc"], batch["frame"], batch["vis_idx"], zt, t)
    for h in handles:
        h.remove()
    return stats, [m.k_routed for m in layers]


def task_batches(tok, enc, cfg, n, device, seed):
    """n held-out batches of one task each (generation, understanding, text), so that every selection is labelled
    with its task; `seed` draws the held-out data (the run's own seed, or the claims suite's evaluation seed).
    Understanding's images come as the run trained on them (caption_clean_image): noisy, at their own flow times,
    by the paper's default, so that generation and understanding are compared on the same kind of input."""
    batches = []
    for task, source in (("generation", "caption_to_image"), ("understanding", "image_to_caption"), ("text", "text")):
        data = ToyWorldData(tok, cfg.seq_len, enc.tokens_per_frame, {source: 1.0}, seed, cfg.image_size,
                            cfg.max_shapes, cfg.video_frames, cfg.cfg_dropout, cfg.caption_clean_image,
                            getattr(cfg, "nav_view", "ray"),
                            getattr(cfg, "text_source", "toy"), getattr(cfg, "video_source", "shapes"), eval_seed=seed)
        batches += [(task, get_batch(data, enc, i, 0, cfg, device, "val")) for i in range(n)]
    return batches


def analyze(stats, ks):
    """The paper's routing analysis, one row per layer, plus per-expert arrays for the figures."""
    rows = []
    for layer, (s, k) in enumerate(zip(stats, ks)):
        S, classes = specialization(s["text"], s["vision"], s["n_text"], s["n_vision"], k)
        cv = timestep_cv(s["tbins"], s["n_tbins"])
        seen = (classes == "vision") | (classes == "multimodal")   # text experts hardly see frames: CV is noise
        rows.append(dict(layer=layer, text=int((classes == "text").sum()), vision=int((classes == "vision").sum()),
                         multimodal=int((classes == "multimodal").sum()), unused=int((classes == "unused").sum()),
                         timestep_cv=float(cv[seen].mean()) if seen.any() else 0.0,
                         gen_und_r=pearson(s["generation"], s["understanding"]), S=S.tolist()))
    return rows


# ----------------------------------------------------------------------------------------------------------------
# Command line.

out_dir = "out/toy_moe"     # the MoE run whose checkpoint to analyse
batches = 8                 # held-out batches per task
device = "auto"
overwrite = False           # replace routing.json and routing.md of an earlier analysis


def main(argv):
    c = configure(settings(globals()), argv, [__file__],
                  "usage: python routing.py --out_dir=RUN [--batches=8 --device=auto --overwrite]: routing analysis")
    refuse_overwrite([os.path.join(c.out_dir, f"routing.{e}") for e in ("json", "md")], c.overwrite)
    model, tok, enc, cfg = load_for_inference(c.out_dir, c.device)
    if not any(isinstance(m, MoEFFN) for m in model.modules()):
        raise SystemExit(f"the checkpoint in {c.out_dir} has no MoE layers (ffn={model.cfg.ffn!r})")
    stats, ks = routing_counts(model, task_batches(tok, enc, cfg, c.batches, next(model.parameters()).device, cfg.seed))
    rows = analyze(stats, ks)
    header = "| layer | text | vision | multimodal | unused | timestep CV | gen/und r |\n" + "|---" * 7 + "|\n"
    table = header + "".join(f"| {r['layer']} | {r['text']} | {r['vision']} | {r['multimodal']} | {r['unused']} | "
                             f"{r['timestep_cv']:.3f} | {r['gen_und_r']:.3f} |\n" for r in rows)
    print(table)
    with open(os.path.join(c.out_dir, "routing.json"), "w") as f:
        json.dump(rows, f)
    with open(os.path.join(c.out_dir, "routing.md"), "w") as f:
        f.write(table)
    for path in [os.path.join(c.out_dir, "routing.json"), os.path.join(c.out_dir, "routing.md"),
                 *routing_figure(rows, stats, os.path.join(c.out_dir, "routing.png"))]:
        print(f"wrote {path}")


if __name__ == "__main__":
    cli(main, sys.argv[1:])
