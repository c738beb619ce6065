"""
The claims suite's evaluation (claims.py): one held-out evaluation shared by every arm and every training seed of a
claim, so that the difference between two runs is the runs', not their evaluations'. Everything it draws is a
function of the evaluation seed alone, never of the run's training seed: the validation examples (data seed
`seed`, validation split, no caption dropout, ROWS rows per batch whatever the run's batch size), the flow times and
noise, the oracle's prompts (scenes of trained bindings, and of the held-out ones), the sampler's noise and the maze
episodes. Re-scoring one checkpoint under a second evaluation seed (claims.py does, for each arm's seed 0) shows
how much evaluation noise is left, to set beside the spread between training seeds.
"""
from types import SimpleNamespace

import numpy as np
import torch

import plan
import routing
import train
from data import ToyWorldData, collate, text_example
from model import shift_time, training_losses
from plumbing import stdlib_corpus, toyscores
from plumbing.build import build, load_for_inference

EVAL_SEED = 0
ROWS = 16            # rows per validation batch


def validation_data(tok, enc, cfg, source, seed):
    """One source alone under the run's world settings: the validation split at data seed `seed`."""
    return ToyWorldData(tok, cfg.seq_len, enc.tokens_per_frame, {source: 1.0}, seed, cfg.image_size, cfg.max_shapes,
                        cfg.video_frames, 0.0, cfg.caption_clean_image, cfg.nav_view,
                        getattr(cfg, "text_source", "toy"), getattr(cfg, "video_source", "shapes"))


def stratified_times(n, cfg, generator):
    """Flow times for n frames, one per n-quantile of the training distribution of t (in an order the generator
    shuffles): with x-prediction the loss of a frame near t = 1 is weighted up to 400 times, so random times make
    the held-out flow loss swing between evaluation draws; a fixed grid does not, and has the same expectation."""
    u = (torch.randperm(n, generator=generator) + 0.5) / n
    return shift_time(u if cfg.time_sampling == "uniform" else torch.sigmoid(torch.special.ndtri(u)), cfg.time_shift)


@torch.no_grad()
def source_losses(model, tok, enc, cfg, source, batches, seed):
    """Held-out text and flow loss of one source: `<source>_text_loss`, and `<source>_flow_loss` where it has
    frames to generate; flow times on a fixed grid; Python's source as a systematic sample of the held-out files.
    Each document's first target (the token after BOS) is left out: it is where a model that trained on several
    kinds of documents pays for not knowing which kind comes (ln(1 / that kind's share of documents)), a cost of the
    mixture's bookkeeping, not of what the model knows about the text."""
    data = validation_data(tok, enc, cfg, source, seed)
    generator, text, flow = torch.Generator().manual_seed(seed), [], []
    python = source == "text" and getattr(cfg, "text_source", "toy") == "stdlib"
    docs = stdlib_corpus.validation_documents(batches * ROWS, cfg.seq_len - 2, seed) if python else None
    for i in range(batches):
        made = collate([[text_example(tok, d)] for d in docs[i * ROWS:(i + 1) * ROWS]], cfg.seq_len, data.N,
                       tok.pad) if python else data.batch(i, 0, ROWS, "val")
        made["targets"][made["tokens"] == tok.bos] = -1
        batch = train.get_batch(data, enc, i, 0, cfg, "cpu", batch=made)
        t, f = training_losses(model, batch, generator, stratified_times(len(batch["cond"]), cfg, generator))
        text.append(t.item())
        flow += [f.item()] if (~batch["cond"]).any() else []
    return {f"{source}_text_loss": float(np.mean(text)), **({f"{source}_flow_loss": float(np.mean(flow))} if flow
                                                               else {})}


@torch.no_grad()
def oracle_scores(model, tok, enc, cfg, n, seed, splits=toyscores.SPLITS):
    """The toy world's oracle (plumbing/toyscores.py) on the first n items of each held-out split drawn from the
    evaluation seed: generation (`gen_<split>`: caption -> image) and understanding (`caption_<split>`: a clean
    render -> caption), on unseen scenes of trained bindings and on held-out bindings."""
    data = ToyWorldData(tok, cfg.seq_len, enc.tokens_per_frame, {"caption_to_image": 1, "image_to_caption": 1}, seed,
                        cfg.image_size, cfg.max_shapes, eval_seed=seed)
    scores = toyscores.oracle_scores(model, tok, enc, data, cfg, n, torch.Generator().manual_seed(seed), None, splits)
    return {k: v for k, v in scores.items() if not k.endswith("_ci")}


def prediction(model, tok, enc, cfg, episodes, seed):
    """plan.py --mode=predict's pixel MSE k actions ahead on `episodes` held-out maze episodes (the evaluation seed
    picks which): the model (`predict_k`), copying the last context frame (`copy_k`) and the mean training frame
    (`mean_k`)."""
    p = SimpleNamespace(dev="cpu", seed=seed, episodes=episodes, steps=1, image_size=cfg.image_size,
                        view=cfg.nav_view)
    quality, steps = plan.predict_quality(model, tok, enc, p, first=seed * episodes)
    return {f"{key}_{k}": float(quality[name][:, j, 0].mean())
            for name, key in (("model", "predict"), ("copy", "copy"), ("mean", "mean")) for j, k in enumerate(steps)}


def planning(model, tok, enc, cfg, episodes, seed):
    """plan.py's planning table for the model alone on the first `episodes` held-out episodes (plan.py's default
    CEM: horizon 6, 32 samples, 2 iterations; the evaluation seed draws its candidates): the mean final position
    error (`plan_final`, corridor widths) and ATE (`plan_ate`), as the paper measures a world model (§5.2)."""
    p = SimpleNamespace(**{k: v for k, v in vars(plan).items() if k in ("horizon", "samples", "elites", "iterations",
                                                                          "repeats", "score", "candidates", "steps")},
                        dev="cpu", seed=seed, episodes=episodes, image_size=cfg.image_size, view=cfg.nav_view)
    errors = plan.evaluate(["model"], p, enc, model, tok)["model"][0]
    return dict(plan_final=float(errors[:, 2].mean()), plan_ate=float(errors[:, 0].mean()))


def routing_metrics(model, tok, enc, cfg, batches, seed):
    """Appendix E.8's analysis: per layer, the share of used routed experts that are text experts, and the Pearson r
    of generation against understanding selection rates; summarised as the change in text share from the first
    to the last layer (least-squares line) and the smallest r over layers."""
    rows = routing.analyze(*routing.routing_counts(model, routing.task_batches(tok, enc, cfg, batches, "cpu", seed)))
    share = [r["text"] / max(1, r["text"] + r["vision"] + r["multimodal"]) for r in rows]
    slope = float(np.polyfit(np.arange(len(share)), share, 1)[0]) if len(share) > 1 else 0.0
    r = [row["gen_und_r"] for row in rows]
    return dict(text_share_change=slope * (len(share) - 1), gen_und_r_min=float(min(r)), text_share=share, gen_und_r=r)


def score(out_dir, evaluation, sizes, seed=EVAL_SEED):
    """Every number a claim reads, for the checkpoint in out_dir: evaluation names what (sources for held-out
    losses, oracle: the kinds of prompts, predict, routing), sizes how much (batches, prompts, episodes). With
    `untrained`, the run's model as it started: the weights its seed drew before the first step (a null for what
    training taught)."""
    model, tok, enc, cfg = load_for_inference(out_dir, "cpu")
    if evaluation.get("untrained"):
        model = build(cfg, "cpu")[3].eval()   # plumbing/build.init_model: from the seed alone, as train.py began
    m = {}
    for source in evaluation.get("sources", ()):
        m.update(source_losses(model, tok, enc, cfg, source, sizes.batches, seed))
    if evaluation.get("oracle"):
        m.update(oracle_scores(model, tok, enc, cfg, sizes.prompts, seed, evaluation["oracle"]))
    if evaluation.get("predict"):
        m.update(prediction(model, tok, enc, cfg, sizes.episodes, seed))
    if evaluation.get("plan"):
        m.update(planning(model, tok, enc, cfg, sizes.episodes, seed))
    if evaluation.get("routing"):
        m.update(routing_metrics(model, tok, enc, cfg, sizes.batches, seed))
    return m
