"""
The paper's findings in miniature, tested. Each claim declares before any run its arms (the toy recipe as
configs/toy.py, or configs/toy_nav.py, stands, plus the claim's few changes), its comparisons, which of them are
primary, and for each the smallest effect that matters (delta). Every (arm, seed) is one train.py process at one
thread; one fixed evaluation scores every run of a claim alike (evaluation.py); seeds pair the arms, and
stats.py turns the per-seed differences into a 95% interval and a verdict, Holm-corrected across the
suite's primary comparisons. docs/claims.md is written from the results file alone.

    python claims.py --seeds=3 --jobs=2        # the pilot: seeds 0-2 of every arm (they count in the suite too)
    python claims.py --jobs=2                  # the suite: each claim up to the seeds its pilot's spread asks for
    python claims.py --claim=4                 # one claim (or several: --claim=1,4)
    python claims.py --table_only=True         # docs/claims.md from results/claims.jsonl alone

A finished run is one line of results/claims.jsonl, committed as it comes (--commit=True does it): a run with a
line is never trained again, and one with a checkpoint but no line resumes from it, so a fresh clone picks up where
the last session stopped. A line keeps the run's settings and their fingerprint; when the recipe changes (a config
file, or a claim's declaration), lines of the old one are left out of the table and their runs train anew under
the new one, so no table mixes two recipes; when only a claim's evaluation changes, its kept checkpoints are scored
anew without training. The suite's first version (two seeds, min-max ranges) is kept in
results/claims-v1.jsonl.
"""
import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import numpy as np
import torch

from findings import evaluation
from plumbing import stats
import scaling
import train
from plumbing.build import build
from plumbing.settings import configure, settings
from data import Tokenizer, ToyWorldData
from encoders import build_encoder
from plumbing.logs import read_log
from plumbing.outputs import write_lines
from plumbing.settings import cli, run_config_file

REPO = os.path.dirname(os.path.abspath(__file__))
SUITE = 2                   # the procedure's version, in every results line
TOY, NAV = "configs/toy.py", "configs/toy_nav.py"
PILOT_SEEDS = 3             # the first seeds of every arm: their spread sets each claim's number of seeds
LEAST_SEEDS = 5
BUDGET_HOURS = 20.0         # thread-hours for claims 1-7 (claim 8's CPU demonstration apart): docs/claims.md's plan

# ----------------------------------------------------------------------------------------------------------------
# How the claims are declared.


def arm(config=TOY, steps=1.0, **changes):
    """An arm: a config file as it stands, plus the claim's changes. steps: a multiple of the config's max_iters,
    or equal(source, other_arm). A mixture may be given as shares of positions (shares(...)), as HALF_TEXT (the
    config's own shares with text at half the positions), or NO_VIDEO (the config's mixture without video)."""
    return dict(config=config, steps=steps, changes=changes)


def shares(**token_shares):
    return ("shares", token_shares)


def equal(source, other):
    """As many steps as give this arm the other arm's positions of one source (equal in-task data)."""
    return ("equal", source, other)


HALF_TEXT, NO_VIDEO = ("recipe", 0.5), ("no video",)
EQUAL_ACTIVE = "equal active"   # moe_top_k: the number of experts that matches the dense FFN's active parameters


def compare(a, b, metric, better, delta, relative=False, primary=False, sd=None, expect="holds"):
    """A comparison of a with b on one metric, seed by seed. a, b: an arm, ("minus", arm1, arm2) (arm1's metric
    minus arm2's), or a number. better: "lower" or "higher", the way a beats b. delta: the smallest difference that
    matters (a fraction of b when relative). expect: the verdict the paper predicts ("holds", or "no effect" for
    costs-little claims). sd: for a primary comparison, the spread of its per-seed differences assumed until the
    pilot has measured it."""
    return dict(a=a, b=b, metric=metric, better=better, delta=delta, relative=relative, primary=primary, sd=sd,
                expect=expect)


# Claims 1 and 2 read text loss, so their text is Python's source, which does not saturate, at half the positions
# (the paper's architecture runs train on 50% text, §6.1 and App. C), the recipe's other sources sharing the rest.
STDLIB = dict(text_source="stdlib", mixture=HALF_TEXT)
MOE = dict(ffn="moe", moe_granularity=16, moe_experts=64, moe_shared="per_modality", moe_top_k=EQUAL_ACTIVE)
LOSSES, TRAINED = ("text", "caption_to_image"), ("unseen_scenes",)   # held-out losses; the oracle on trained bindings
ARCH = ["text_text_loss", "caption_to_image_flow_loss", "gen_unseen_scenes", "caption_unseen_scenes"]
NAV_REST = dict(text=0.25, video=0.25, caption_to_image=0.25, image_to_caption=0.25)   # App. F.1's base mixture


def nav_share(share):
    return shares(navigation=share, **{s: (1 - share) * w for s, w in NAV_REST.items()})


# Per claim: the finding (title), where the paper states it (figures named by their captions; the paper's text
# sometimes calls the same figure by the next number) and in its words (quote); arms; what the fixed evaluation
# scores (evaluation) and the metrics tabled per arm (show); the comparisons, primary ones first. Optional: common
# (changes every arm makes), fraction (of the config's max_iters an arm trains: the budget's lever; an arm's steps
# multiply it), requires ((arms, metric, "lower" or "higher", a number or another metric):
# what every run of those arms must reach for the claim to be tested at all), and a note.
CLAIMS = {
    1: dict(title="Modality-specific FFNs beat one shared FFN at equal active compute", paper="§2.2, Fig. 3; App. C",
            quote="modality-specific FFNs unanimously improves performance—reducing text perplexity while improving "
                  "image generation and VQA",
            arms={"modality": arm(**STDLIB), "shared": arm(**STDLIB, ffn="shared")},
            evaluation=dict(sources=LOSSES, oracle=TRAINED), show=ARCH,
            tests=[compare("modality", "shared", "text_text_loss", "lower", 0.01, True, primary=True, sd=0.005),
                   compare("modality", "shared", "caption_to_image_flow_loss", "lower", 0.02, True),
                   compare("modality", "shared", "gen_unseen_scenes", "higher", 0.03)]),
    2: dict(title="MoE beats a dense FFN at equal active compute", paper="§6.1 (sparsity, Fig. 16); §6.3, Fig. 21",
            quote="MoE achieves the best trade-off, reaching the lowest perplexity (12.49) and highest DPG score "
                  "(0.63), outperforming both the dense model and MoT",
            arms={"moe": arm(**STDLIB, **MOE), "dense": "1/shared"},
            evaluation=dict(sources=LOSSES, oracle=TRAINED), show=ARCH,
            tests=[compare("moe", "dense", "text_text_loss", "lower", 0.01, True, primary=True, sd=0.005),
                   compare("moe", "dense", "caption_to_image_flow_loss", "lower", 0.02, True),
                   compare("moe", "dense", "gen_unseen_scenes", "higher", 0.03)]),
    3: dict(title="x-prediction beats v-prediction on high-dimensional latents; on low-dimensional ones its "
                  "advantage shrinks or turns (192 vs 48 channels per token)", paper="§6.1, Fig. 15",
            quote="For RAE (SigLIP 2), x-pred consistently outperforms v-pred on image generation across all "
                  "granularities ... For VAE (FLUX.1), however, ... v-pred scales cleanly",
            arms={f"{p}_{ch}ch": arm(patch_size=ps, prediction=p, mixture=NO_VIDEO)
                  for ch, ps in ((192, 8), (48, 4)) for p in "xv"},
            evaluation=dict(sources=("caption_to_image",), oracle=("unseen_scenes", "held_out_bindings")),
            fraction=0.45,
            show=["caption_to_image_flow_loss", "gen_unseen_scenes", "gen_held_out_bindings"],
            tests=[compare("x_192ch", "v_192ch", "gen_unseen_scenes", "higher", 0.05, primary=True, sd=0.05),
                   compare(("minus", "x_192ch", "v_192ch"), ("minus", "x_48ch", "v_48ch"), "gen_unseen_scenes",
                           "higher",
                           0.05, primary=True, sd=0.07),
                   compare("x_192ch", "v_192ch", "caption_to_image_flow_loss", "lower", 0.02, True)]),
    4: dict(title="Visual data does not compete with text: text + video matches text alone at equal text tokens",
            paper="§4.1, Fig. 5; App. D.3, Fig. 29",
            quote="Text + Video matches the text-only PPL on DCLM, suggesting that raw visual data is compatible with "
                  "language modeling",
            arms={"text_only": arm(text_source="stdlib", mixture={"text": 1.0}),
                  "text_video": arm(steps=equal("text", "text_only"), text_source="stdlib",
                                    mixture=shares(text=0.5, video=0.5))},
            evaluation=dict(sources=("text",)), show=["text_text_loss"],
            tests=[compare("text_video", "text_only", "text_text_loss", "lower", 0.02, True, primary=True, sd=0.005,
                           expect="no effect")]),
    5: dict(title="Language helps generation at equal caption->image data (Fig. 8); understanding and generation "
                  "help each other (the prior work §6.2 cites)", paper="§4.3, Fig. 8; §6.2",
            quote="Adding text tokens to a fixed vision budget consistently improves diffusion loss and GenEval "
                  "score; ... understanding and generation are mutually beneficial",
            # image->caption images are clean inputs without flow loss, so every arm's denoising frames are its
            # caption->image frames: "both" sees no more of them than "generation" does
            common=dict(caption_clean_image=True), fraction=0.6,
            note="Understanding alone captions nearly every unseen scene (caption_unseen_scenes below), so the third "
                 "comparison has little room: a \"no effect\" there is the toy's captioning at its ceiling, not "
                 "evidence that generation cannot help understanding.",
            arms={"generation": arm(mixture={"caption_to_image": 1.0}),
                  "generation_text": arm(steps=equal("caption_to_image", "generation"),
                                         mixture=shares(caption_to_image=0.5, text=0.5)),
                  "understanding": arm(mixture={"image_to_caption": 1.0}),
                  "both": arm(steps=equal("caption_to_image", "generation"),
                              mixture=shares(caption_to_image=0.5, image_to_caption=0.5))},
            # accuracies of 0.8-0.99: 256 prompts' binomial noise would rival the spread over seeds
            evaluation=dict(sources=("caption_to_image", "image_to_caption"), oracle=TRAINED, prompts=1024),
            show=["caption_to_image_flow_loss", "gen_unseen_scenes", "image_to_caption_text_loss",
                  "caption_unseen_scenes"],
            requires=[(("generation", "generation_text", "both"), "gen_unseen_scenes", "higher", 0.5),   # chance: 0.12
                      (("understanding", "both"), "caption_unseen_scenes", "higher", 0.5)],
            tests=[compare("generation_text", "generation", "gen_unseen_scenes", "higher", 0.03, primary=True, sd=0.03),
                   compare("both", "generation", "gen_unseen_scenes", "higher", 0.03, primary=True, sd=0.03),
                   compare("both", "understanding", "caption_unseen_scenes", "higher", 0.03, primary=True, sd=0.03),
                   compare("generation_text", "generation", "caption_to_image_flow_loss", "lower", 0.02, True),
                   compare("both", "understanding", "image_to_caption_text_loss", "lower", 0.02, True)]),
    6: dict(title="Action-free video beats twice the navigation data at equal compute; a small navigation share "
                  "does about as well as a large one", paper="§5.2, Figs. 12-13; App. F.1",
            quote="Scaling domain-specific NWM data from 50B to 100B tokens yields moderate improvements ..., but "
                  "multimodal pretraining provides better results. Specifically, adding pure video yields the biggest "
                  "gain ... the model reaches competitive performance with as little as 1% in-domain data",
            common=dict(video_source="walks"), fraction=0.5,
            arms={"nav_only": arm(NAV, mixture={"navigation": 1.0}),
                  "nav_video": arm(NAV, mixture=shares(navigation=0.5, video=0.5)),
                  "nav_10pct": arm(NAV, steps=2.0, mixture=nav_share(0.1)),
                  "nav_50pct": arm(NAV, steps=2.0, mixture=nav_share(0.5))},
            note="The share arms train twice the steps of the video arms (configs/toy_nav.py's full 5,000): at 2,500 "
                 "steps the 10% arm learned no world model in 2 of 3 pilot seeds (predict_1 0.0504 ± 0.0016 against "
                 "the mean frame's 0.0512; a 25% share, one seed, 0.0503); one seed at 5,000 steps reached 0.046.",
            evaluation=dict(predict=True), show=["predict_1", "predict_4", "copy_1", "mean_1"],
            # a world model at all: better than the mean training frame, in every arm and seed
            requires=[(("nav_only", "nav_video", "nav_10pct", "nav_50pct"), "predict_1", "lower", "mean_1")],
            tests=[compare("nav_video", "nav_only", "predict_1", "lower", 0.05, True, primary=True, sd=0.03),
                   compare("nav_10pct", "nav_50pct", "predict_1", "lower", 0.05, True, primary=True, sd=0.03,
                           expect="no effect"),
                   compare("nav_video", "nav_only", "predict_4", "lower", 0.05, True)]),
    7: dict(title="Text experts give way to vision and multimodal experts with depth; generation and understanding "
                  "route alike (r >= 0.9 in every layer)", paper="§6.2, Figs. 18 and 20; App. E.8",
            quote="early layers are dominated by text-specific experts, while later layers contain progressively more "
                  "vision and multimodal experts ... very high correlation (r ≥ 0.90) across all layers",
            note="For scale: the same analysis of this MoE after 2 training steps (one seed) gives r of 0.85 to 0.89 "
                 "per layer and a text share change of -0.07: a router that has learned nothing already sends the "
                 "image tokens of both tasks alike, so 7b means little unless the trained runs clear that too.",
            arms={"routing": dict(analyze="2/moe")}, evaluation=dict(routing=True, batches=256),
            show=["text_share_change", "gen_und_r_min"],
            tests=[compare("routing", 0.0, "text_share_change", "lower", 0.1, primary=True, sd=0.1),
                   compare("routing", 0.9, "gen_und_r_min", "higher", 0.02, primary=True, sd=0.02)]),
    8: dict(title="Vision is more data-hungry than language: a larger data exponent b (D_opt ~ C^b)",
            paper="§7, Figs. 23 (dense) and 25 (MoE)",
            quote="For Vision, a≈0.37 and b≈0.63, indicating that vision is more data-hungry",
            arms={}, evaluation={}, show=["b", "a"], tests=[]),
}
# claim 8 on the CPU is scaling.py's IsoFLOP sweep of configs/toy.py (aspect 32), one seed per point: it shows the
# machinery working, not the paper's finding, which needs a GPU (GPU_RECIPE)
SWEEP = [("3e12", "1,2,3"), ("1e13", "1,2,3"), ("3e13", "1,2,3,4")]

# ----------------------------------------------------------------------------------------------------------------
# Command line settings.

claim = "all"                      # "all", one claim ("4") or several ("1,4,5")
seeds = 0                          # 0: each claim's planned seeds (docs/claims.md's plan); k: seeds 0..k-1
jobs = 1                           # train.py runs side by side, each on one thread
iters_scale = 1.0                  # multiplies every run's max_iters (the tests' tiny budget)
extra = ""                         # overrides for every train.py run, e.g. "--n_layer=1 --d_model=32" (tests)
runs_dir = "out/claims"            # checkpoints and logs, git-ignored: runs_dir/<claim>/<arm>-<fingerprint>/seed<k>
results = "results/claims.jsonl"   # one line per finished run, committed: the table is made from it alone
table = "docs/claims.md"           # where the table is written
table_only = False                 # write the table from the results file, train nothing
commit = False                     # git-commit the results file after each finished run
eval_batches = 32                  # fixed evaluation: validation batches of 16 rows per source
eval_prompts = 256                 # fixed evaluation: oracle prompts of each kind (trained, held-out bindings)
episodes = 100                     # fixed evaluation: held-out maze episodes (claim 6)
hours = 0.0                        # start no run whose estimated end lies beyond this many hours (0: no limit)

# ----------------------------------------------------------------------------------------------------------------
# The arms, resolved against the recipe as it stands.


@functools.cache
def recipe(config):
    """(train.py's settings under a config file, the keys the file itself sets)."""
    path = os.path.join(REPO, config)
    own = {k for k in run_config_file(path) if k in train.DEFAULTS}
    return vars(configure(train.DEFAULTS, [path])), own


# what a run's examples depend on (not its model or schedule)
WORLD = ("tokenizer", "encoder", "image_size", "patch_size", "seq_len", "max_shapes", "video_frames", "cfg_dropout",
         "caption_clean_image", "nav_view", "text_source", "video_source")


def world_key(c, **more):
    return json.dumps({**{k: getattr(c, k) for k in WORLD}, **more}, sort_keys=True)


def world(key, mixture):
    """The toy world's data under the settings of a world_key, and its tokens per frame."""
    c = SimpleNamespace(**json.loads(key))
    n = build_encoder(c.encoder, c.image_size, c.patch_size).tokens_per_frame
    return ToyWorldData(Tokenizer(c.tokenizer), c.seq_len, n, mixture, 0, c.image_size, c.max_shapes, c.video_frames,
                        c.cfg_dropout, c.caption_clean_image, c.nav_view, c.text_source, c.video_source), n


@functools.cache
def example_length(key, source, n=200):
    """Mean positions of one example of a source."""
    data, per_frame = world(key, {source: 1.0})
    rng = np.random.default_rng(0)
    return float(np.mean([data.example(rng).length(per_frame) for _ in range(n)]))


def token_shares(c):
    """Each source's share of the positions that c's mixture (example weights) fills."""
    length = {s: example_length(world_key(c), s) for s in c.mixture}
    total = sum(w * length[s] for s, w in c.mixture.items())
    return {s: w * length[s] / total for s, w in c.mixture.items()}


def example_weights(shares_, c):
    """The mixture (example weights) under settings c whose sources fill the given shares of positions."""
    w = {s: share / example_length(world_key(c), s) for s, share in shares_.items() if share > 0}
    return {s: round(v / sum(w.values()), 4) for s, v in w.items()}


@functools.cache
def _positions(key, batches=8):
    c = json.loads(key)
    data, _ = world(key, c["mixture"])
    return float(np.mean([(data.batch(i, 0, c["batch_size"])["doc"] >= 0).sum() for i in range(batches)]))


def task_positions(c, source):
    """Real (non-padding) positions of one source in a training step: the step's packed positions times the source's
    share of them."""
    real = _positions(world_key(c, mixture=c.mixture, batch_size=c.batch_size))
    return real * c.gradient_accumulation_steps * token_shares(c).get(source, 0.0)


def active_params(c):
    with torch.device("meta"):   # counted, not allocated
        return build(c, "meta")[3].num_params()[1]


def equal_active_top_k(c):
    """The MoE's active experts that come closest to the dense (one shared FFN) model's active parameters."""
    dense = active_params(SimpleNamespace(**{**vars(c), "ffn": "shared"}))
    guess = round(8 / 3 * c.d_model / (4 * c.d_model // c.moe_granularity))   # SwiGLU's width over an expert's
    return min(range(max(2, guess - 2), guess + 3),
               key=lambda k: abs(active_params(SimpleNamespace(**{**vars(c), "moe_top_k": k})) - dense))


def resolve_changes(config, changes, steps, done, fraction=1.0):
    """An arm's concrete train.py changes (mixture as example weights, max_iters, MoE's active experts)."""
    base, _ = recipe(config)
    changes = dict(changes)
    c = SimpleNamespace(**{**base, **changes})
    mix = changes.get("mixture")
    if isinstance(mix, tuple) and mix[0] == "recipe":   # the recipe's shares of positions, text's set to mix[1]
        rest = {s: v for s, v in token_shares(SimpleNamespace(**base)).items() if s != "text"}
        changes["mixture"] = example_weights({"text": mix[1], **{s: (1 - mix[1]) * v / sum(rest.values())
                                                                 for s, v in rest.items()}}, c)
    elif mix == NO_VIDEO:
        changes["mixture"] = {s: w for s, w in base["mixture"].items() if s != "video"}
    elif isinstance(mix, tuple):
        changes["mixture"] = example_weights(mix[1], c)
    c = SimpleNamespace(**{**base, **changes})
    if changes.get("moe_top_k") == EQUAL_ACTIVE:
        changes["moe_top_k"] = c.moe_top_k = equal_active_top_k(c)
    if isinstance(steps, tuple):
        _, source, other = steps
        o = SimpleNamespace(**{**recipe(done[other]["config"])[0], **done[other]["changes"]})
        steps = o.max_iters * task_positions(o, source) / task_positions(c, source)
    else:
        steps = steps * fraction * base["max_iters"]
    changes["max_iters"] = max(1, round(steps))
    return changes


@functools.cache
def arms(k):
    """{arm: spec} of claim k: spec = run name, config, changes (max_iters included) and evaluation; or, for an
    analysis, the run it analyses. An arm that is another claim's run is that run's spec."""
    k, out = int(k), {}
    if k == 8:
        return sweep_arms()
    for name, sp in CLAIMS[k]["arms"].items():
        if isinstance(sp, str):                      # another claim's run, trained once
            out[name] = arms(sp.split("/")[0])[sp.split("/")[1]]
        elif "analyze" in sp:
            out[name] = dict(run=f"{k}/{name}", analyze=sp["analyze"], evaluation=CLAIMS[k]["evaluation"])
        else:
            changes = resolve_changes(sp["config"], {**CLAIMS[k].get("common", {}), **sp["changes"]}, sp["steps"],
                                      out, CLAIMS[k].get("fraction", 1.0))
            out[name] = dict(run=f"{k}/{name}", config=sp["config"], changes=changes,
                             evaluation=CLAIMS[k]["evaluation"])
    return out


@functools.cache
def sweep_arms():
    """Claim 8's runs: scaling.plan's sweep of configs/toy.py (aspect 32), named like its runs (C1e13_L2)."""
    out = {}
    for budgets, depths in SWEEP:
        c = configure({**settings(vars(scaling)), **train.DEFAULTS},
                      [os.path.join(REPO, TOY), f"--budgets={budgets}", f"--depths={depths}", "--aspect=32"])
        for r in scaling.plan(c, []):
            changes = {**resolve_changes(TOY, {**STDLIB, **scaling.family(r["depth"], 32)}, 1.0, {}),
                       "max_iters": r["steps"]}
            out[r["name"]] = dict(run=f"8/{r['name']}", config=TOY, changes=changes, sweep=dict(
                budget=r["budget"], N=r["N"], C=r["C"]), evaluation=dict(sources=LOSSES))
    return out


def train_settings(spec, c):
    """What a run's train.py is given, beyond its config file: the claim's changes with max_iters scaled, an own
    evaluation kept cheap (the suite scores every run itself), and the suite's extra settings."""
    base, _ = recipe(spec["config"])
    steps = max(1, round(spec["changes"]["max_iters"] * c.iters_scale))
    return dict(spec["changes"], max_iters=steps, warmup_iters=min(base["warmup_iters"], steps),
                eval_interval=max(1, steps // 4), eval_iters=1, eval_samples=1)


def fingerprint(spec, c, evaluated=True):
    """A digest of everything that makes a run what it is: the config file's own settings, the train.py settings
    the suite gives it, the Python version when its text is Python's source, and (evaluated) the fixed
    evaluation. A results line carries the whole digest; a checkpoint's folder only the training's, so that a
    larger evaluation re-scores the kept checkpoints instead of training them again."""
    what = dict(evaluation=[spec["evaluation"], c.eval_batches, c.eval_prompts, c.episodes, evaluation.EVAL_SEED])
    if "analyze" in spec:   # an analysis is what it analyses
        k, name = spec["analyze"].split("/")
        return hashlib.sha1(json.dumps([what, fingerprint(arms(k)[name], c)]).encode()).hexdigest()[:8]
    base, own = recipe(spec["config"])
    sets = train_settings(spec, c)
    what.update(config=spec["config"], recipe={k: base[k] for k in sorted(own)}, settings=sets, extra=c.extra)
    if {**base, **sets}.get("text_source") == "stdlib":
        what["python"] = platform.python_version()
    if not evaluated:
        del what["evaluation"]
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]


def analysed(spec):
    """The spec of the run an analysis reads."""
    k, name = spec["analyze"].split("/")
    return arms(k)[name]


# ----------------------------------------------------------------------------------------------------------------
# Running and measuring one run.

def one_thread(cmd, **kw):
    """A command of this repository (train.py) run from its folder on one thread."""
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO, **kw)


def out_dir(spec, seed, c):
    name = spec["run"].replace("/", os.sep) + "-" + fingerprint(spec, c, evaluated=False)
    return os.path.join(c.runs_dir, name, f"seed{seed}")


def train_run(spec, seed, where, c):
    """One train.py process at one thread; resumes when `where` holds a checkpoint. Returns its wall seconds (those
    of the whole training, when it had finished before: its training seconds are kept in `where`)."""
    sets = dict(train_settings(spec, c), seed=seed, out_dir=where)
    timed = os.path.join(where, "train_s.json")
    if os.path.exists(timed):   # trained: only the evaluation is new
        return json.load(open(timed))["train_s"]
    cmd = [sys.executable, "train.py", spec["config"], *(f"--{k}={v}" for k, v in sets.items()), *c.extra.split()]
    cmd += ["--resume"] if os.path.exists(os.path.join(where, "ckpt.pt")) else []
    os.makedirs(where, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(where, "train.log"), "a") as log:
        rc = one_thread(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"{where}: train.py failed (exit {rc}); see {where}/train.log")
    seconds = time.time() - t0
    write_lines(timed, [json.dumps(dict(train_s=round(seconds, 1)))])
    return seconds


def sizes(c, evaluation):
    """How much the fixed evaluation scores: the suite's sizes, or a claim's own where its metric needs more."""
    return SimpleNamespace(batches=evaluation.get("batches", c.eval_batches),
                           prompts=evaluation.get("prompts", c.eval_prompts),
                           episodes=evaluation.get("episodes", c.episodes))


def measure(spec, seed, c):
    """The fixed evaluation of the run's checkpoint; for seed 0, also under a second evaluation seed (`rescored`),
    which shows how far evaluation noise alone moves each number."""
    where = out_dir(analysed(spec) if "analyze" in spec else spec, seed, c)
    n = sizes(c, spec["evaluation"])
    metrics = evaluation.score(where, spec["evaluation"], n)
    if "analyze" not in spec:   # how far it trained: steps and real (non-padding) tokens, as train.py logged them
        last = [r for _, r in read_log(os.path.join(where, "metrics.jsonl")) if "tokens" in r][-1]
        metrics.update(step=last["step"], tokens=last["tokens"], **(spec.get("sweep") or {}))
    rescored = evaluation.score(where, spec["evaluation"], n, evaluation.EVAL_SEED + 1) if seed == 0 else None
    return metrics, rescored


def machine():
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, one thread per run, torch {torch.__version__}"


def read_lines(path):
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def current(c):
    """{(run, seed): line} of the results lines measured under this suite's procedure and the current recipe, and
    how many other lines the file holds."""
    want = {spec["run"]: fingerprint(spec, c) for k in CLAIMS for spec in arms(k).values()}
    lines = read_lines(c.results)
    ok = [r for r in lines if r.get("suite") == SUITE and want.get(r.get("run")) == r.get("fingerprint")]
    return {(r["run"], r["seed"]): r for r in ok}, len(lines) - len(ok)


def record(line, c, lock):
    with lock:
        os.makedirs(os.path.dirname(c.results) or ".", exist_ok=True)
        with open(c.results, "a") as f:
            f.write(json.dumps(line) + "\n")
        if c.commit:
            msg = f"claims: {line['run']} seed {line['seed']}"
            done = subprocess.run(["git", "commit", "-q", "-m", msg, "--", c.results], cwd=REPO, capture_output=True)
            if done.returncode:   # an untracked file needs adding first
                subprocess.run(["git", "add", c.results], cwd=REPO)
                done = subprocess.run(["git", "commit", "-q", "-m", msg, "--", c.results], cwd=REPO)
            print(f"committed {c.results}" if not done.returncode else "could not commit the results", flush=True)


def run_claims(ks, c):
    """Trains and scores every missing (run, seed) of the claims, `jobs` at a time, then the analyses; each
    finished run appends its line to the results file at once."""
    done, planned = current(c)[0], plan_seeds(c)
    todo = {}
    for k in ks:
        n = c.seeds or planned[k]
        for spec in arms(k).values():
            needs = [spec] + ([analysed(spec)] if "analyze" in spec else [])
            todo.update({(sp["run"], s): sp for sp in needs for s in range(n) if (sp["run"], s) not in done})
    lock, deadline = threading.Lock(), time.time() + (c.hours * 3600 or float("inf"))

    def one(key):
        (run, seed), spec = key, todo[key]
        if time.time() + estimate_s(spec, {}) * c.iters_scale > deadline:   # a session's end: leave it to the next
            return print(f"{run} seed {seed}: not started, it would end after --hours={c.hours}", flush=True)
        if "analyze" in spec and (analysed(spec)["run"], seed) not in current(c)[0]:
            return print(f"{run} seed {seed}: not analysed, {spec['analyze']} has not finished", flush=True)
        wall = 0.0 if "analyze" in spec else train_run(spec, seed, out_dir(spec, seed, c), c)
        print(f"{run} seed {seed}: scoring", flush=True)
        t0 = time.time()
        metrics, rescored = measure(spec, seed, c)
        scoring = time.time() - t0
        line = dict(suite=SUITE, run=run, claim=int(run.split("/")[0]), arm=run.split("/")[1], seed=seed,
                    fingerprint=fingerprint(spec, c), config=spec.get("config"),
                    settings=train_settings(spec, c) if "config" in spec else {"analyze": spec["analyze"]},
                    extra=c.extra, metrics=metrics, rescored=rescored, eval_seed=evaluation.EVAL_SEED,
                    train_s=round(wall, 1), eval_s=round(scoring, 1), wall_s=round(wall + scoring, 1),
                    machine=machine(), python=platform.python_version(),
                    finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        record(line, c, lock)
        print(f"{run} seed {seed}: done in {line['wall_s']:.0f} s", flush=True)

    with ThreadPoolExecutor(c.jobs) as pool:
        list(pool.map(one, [k for k in todo if "analyze" not in todo[k]]))
    for key in (k for k in todo if "analyze" in todo[k]):
        one(key)


# ----------------------------------------------------------------------------------------------------------------
# The statistics: every comparison's per-seed differences, Holm across the primary ones.

def side(ref, metric, runs, seed):
    """One side of a comparison at one seed: a number, an arm's metric, or ("minus", p, q)."""
    if isinstance(ref, (int, float)):
        return float(ref)
    if isinstance(ref, tuple):
        p, q = side(ref[1], metric, runs, seed), side(ref[2], metric, runs, seed)
        return None if p is None or q is None else p - q
    return runs.get(ref, {}).get(seed, {}).get(metric)


def differences(k, t, got, seeds_=None):
    """{seed: the comparison's difference}, oriented so that positive means a beats b (relative: in units of b)."""
    runs = {name: got.get(spec["run"], {}) for name, spec in arms(k).items()}
    out = {}
    for seed in sorted(seeds_ if seeds_ is not None else {s for r in runs.values() for s in r}):
        a, b = side(t["a"], t["metric"], runs, seed), side(t["b"], t["metric"], runs, seed)
        if a is not None and b is not None:
            d = (a - b) / abs(b) if t["relative"] else a - b
            out[seed] = d if t["better"] == "higher" else -d
    return out


def unmet(k, got):
    """A claim's unmet requirements (runs that have not learned what the claim is about), as short phrases."""
    bad = []
    for names, metric, better, bar in CLAIMS[k].get("requires", []):
        for name in names:
            for seed, m in sorted(got.get(arms(k)[name]["run"], {}).items()):
                value = m.get(bar) if isinstance(bar, str) else bar
                if metric not in m or value is None or (m[metric] < value if better == "lower" else m[metric] > value):
                    continue
                shown = f"{bar} {value:.4f}" if isinstance(bar, str) else f"{bar:g}"
                bad.append(f"{name} seed {seed}: {metric} {m[metric]:.4f}, not {better} than {shown}")
    return bad


def analysis(got):
    """Every comparison of claims 1-7: differences, interval, p-values (Holm-adjusted for the primary ones, over the
    whole suite) and verdict."""
    rows = []
    for k in CLAIMS:
        for t in CLAIMS[k]["tests"]:
            d = differences(k, t, got)
            rows.append(dict(claim=k, test=t, diffs=d, stats=stats.paired(list(d.values()), t["delta"])))
    primary = [r for r in rows if r["test"]["primary"]]   # all of them: one still pending counts with p = 1
    for key in ("p_zero", "p_equal"):
        for r, p in zip(primary, stats.holm([r["stats"][key] for r in primary])):
            r[key + "_holm"] = p
    for r in rows:
        r["verdict"] = stats.verdict(r["stats"], r["test"]["delta"], r.get("p_zero_holm"),
                                            r.get("p_equal_holm"))
        if r["verdict"] != "pending" and unmet(r["claim"], got):
            r["verdict"] = "inconclusive"   # the models have not learned what the claim is about
    return rows


# ----------------------------------------------------------------------------------------------------------------
# The plan: seeds per claim from the pilot's spread, costs, and the budget.

# one thread's training FLOP/s on the 2-core development CPU shared with one other job, as the suite's first version
# measured it (700 steps of configs/toy.py, 27.8 GFLOPs each, in ~0.43 s); MoE's dispatch costs 1.4x its FLOPs
# there (bench/bench_train.py, 64 experts of width 32); the fixed evaluation's seconds per source, per kind of
# oracle prompts (256), for 100 episodes' prediction and for a routing analysis (32 batches per source and task),
# on toy-sized checkpoints
THREAD_FLOPS, MOE_OVERHEAD, EVAL_S = 6.5e10, 1.4, dict(sources=12, oracle=65, predict=90, routing=120)


@functools.cache
def _step_flops(config, changes):
    c = SimpleNamespace(**{**recipe(config)[0], **json.loads(changes)})
    with torch.device("meta"):
        model = build(c, "meta")[3]
    return model.flops_per_token(c.seq_len) * c.batch_size * c.seq_len * c.gradient_accumulation_steps, c.ffn


def step_flops(spec):
    """Training FLOPs of one step of the run (model.flops_per_token, padding included), and its FFN kind."""
    return _step_flops(spec["config"], json.dumps(spec["changes"], sort_keys=True))


def estimate_s(spec, got):
    """Thread-seconds of one run: the mean of its finished pilot seeds when there are some (so that the plan stays
    put once the pilot is in), else from its FLOPs."""
    measured = [m["_wall_s"] for s, m in got.get(spec["run"], {}).items() if s < PILOT_SEEDS]
    if measured:
        return float(np.mean(measured))
    ev = spec["evaluation"]
    evals = sum(v * (len(ev[key]) if key in ("sources", "oracle") else 1) for key, v in EVAL_S.items() if ev.get(key))
    evals *= 1 + 1 / LEAST_SEEDS   # seed 0 is scored twice
    if "analyze" in spec:
        return evals
    flops, ffn = step_flops(spec)
    return spec["changes"]["max_iters"] * flops / THREAD_FLOPS * (MOE_OVERHEAD if ffn == "moe" else 1) + evals


def groups():
    """Claims that share runs (2's dense arm is 1's; 7 analyses 2's MoE runs) share one number of seeds."""
    parent = {k: k for k in CLAIMS if k != 8}
    for k in parent:
        for sp in CLAIMS[k]["arms"].values():
            ref = sp if isinstance(sp, str) else sp.get("analyze", "")
            if ref:
                parent[k] = parent[int(ref.split("/")[0])]
    return {k: parent[parent[k]] for k in parent}


def needed_seeds(k, got):
    """(seeds, where the spread came from) for claim k: enough for every primary comparison's 95% interval to be
    narrower than its delta, from the sd of its first PILOT_SEEDS seeds once measured, else the assumed sd."""
    n, source = LEAST_SEEDS, "assumed"
    for t in (t for t in CLAIMS[k]["tests"] if t["primary"]):
        d = list(differences(k, t, got, range(PILOT_SEEDS)).values())
        sd = float(np.std(d, ddof=1)) if len(d) == PILOT_SEEDS else t["sd"]
        source = "pilot" if len(d) == PILOT_SEEDS else source
        n = max(n, stats.seeds_needed(sd, t["delta"]))
    return n, source


def plan_seeds(c, got=None):
    """{claim: seeds} for claims 1-7 (claim 8: 1), within BUDGET_HOURS."""
    got = by_run(current(c)[0]) if got is None else got
    group, need, cost = groups(), {}, {}
    for k in group:
        need[group[k]] = max(need.get(group[k], 0), needed_seeds(k, got)[0])
        cost[group[k]] = cost.get(group[k], 0.0) + sum(estimate_s(sp, got) for sp in own_runs(k))
    given = stats.allocate(need, cost, BUDGET_HOURS * 3600)
    return {**{k: given[group[k]] for k in group}, 8: 1}


def own_runs(k):
    """The runs claim k trains itself (not those it shares with an earlier claim)."""
    return [sp for name, sp in arms(k).items() if sp["run"].startswith(f"{k}/")]


def by_run(lines):
    got = {}
    for (run, seed), r in lines.items():
        got.setdefault(run, {})[seed] = {**r["metrics"], "_wall_s": r["wall_s"], "_machine": r["machine"],
                                         "_rescored": r.get("rescored")}
    return got


# ----------------------------------------------------------------------------------------------------------------
# The table: from the results file alone.

def show_diff(d, t, sign="+"):
    return f"{100 * d:{sign}.2f}%" if t["relative"] else f"{d:{sign}.4f}"


def describe_side(ref):
    return f"({ref[1]} - {ref[2]})" if isinstance(ref, tuple) else str(ref)


def describe_arm(name, spec):
    if "analyze" in spec:
        return f"`{name}` = the routing analysis of the runs {spec['analyze']}"
    if not spec["run"].endswith("/" + name):
        return f"`{name}` = the run {spec['run']}"
    sets = " ".join(f"--{k}={v}" for k, v in spec["changes"].items())
    return f"`{name}` = `{spec['config']} {sets}`"


def evaluation_check(k, t, got):
    """(shift, sd): how far re-scoring training seed 0 under a second evaluation seed moves a comparison's
    difference, beside the difference's sd over training seeds; None until both are known. The comparison, not each
    arm's level, is what the check is about: a level moves with the held-out draws (some code is easier to predict
    than other code) alike for every arm, and the arms share their draws."""
    diffs = differences(k, t, got)
    again = differences(k, t, {run: {0: seeds_[0]["_rescored"]} for run, seeds_ in got.items()
                               if (seeds_.get(0) or {}).get("_rescored")})
    if 0 not in diffs or 0 not in again or len(diffs) < 2:
        return None
    return abs(again[0] - diffs[0]), float(np.std(list(diffs.values()), ddof=1))


def mean_sd(values):
    return "pending" if not values else f"{np.mean(values):.4f}" + (f" ± {np.std(values, ddof=1):.4f}"
                                                                    if len(values) > 1 else "")


def comparison_row(r):
    """A comparison as a table row: per-seed differences, mean and interval, p, verdict, the paper's verdict."""
    t, s = r["test"], r["stats"]
    diffs = ", ".join(show_diff(d, t) for d in r["diffs"].values()) or "-"
    interval = "-" if s["lo"] is None else \
        f"{show_diff(s['mean'], t)} [{show_diff(s['lo'], t)}, {show_diff(s['hi'], t)}]"
    p = "-" if s["n"] < 2 else f"{r.get('p_zero_holm', s['p_zero']):.3g}"
    delta = f"{100 * t['delta']:g}%" if t["relative"] else f"{t['delta']:g}"
    what = {"lower": "<", "higher": ">"}[t["better"]]
    return (f"| a = {describe_side(t['a'])} {what} b = {describe_side(t['b'])} | {t['metric']} | {delta} | "
            f"{'yes' if t['primary'] else 'no'} | {diffs} | {interval} | {p} | **{r['verdict']}** | {t['expect']} |")


def claim_section(k, rows, got, planned):
    """Claim k's part of docs/claims.md: the paper's words, arms, their numbers, the comparisons, the evaluation's
    noise; and its thread-minutes so far and the seeds every arm has (those its comparisons pair)."""
    cl, specs = CLAIMS[k], arms(k)
    runs = {name: got.get(sp["run"], {}) for name, sp in specs.items()}
    finished = [m for sp in own_runs(k) for m in got.get(sp["run"], {}).values()]
    minutes = sum(m["_wall_s"] for m in finished) / 60
    larger = ", ".join(f"{v:,} {what}" for what, v in cl["evaluation"].items()
                       if what in ("batches", "prompts", "episodes"))
    lines = [f"## {k}. {cl['title']}", "", f"Paper ({cl['paper']}): “{cl['quote']}”", "",
             f"Command: `python claims.py --claim={k}`; {len(finished)} runs finished, {minutes:.0f} thread-minutes; "
             f"planned seeds: {planned[k]}.", "",
             "Arms: " + "; ".join(describe_arm(n, sp) for n, sp in specs.items()) + ".", "",
             *([cl["note"], ""] if "note" in cl else []),
             *([f"Its fixed evaluation is larger than the suite's: {larger}.", ""] if larger else []),
             "| arm | seeds | " + " | ".join(cl["show"]) + " |", "| --- | ---: |" + " ---: |" * len(cl["show"])]
    lines += [f"| {name} | {len(seeds_) or 'pending'} | " +
              " | ".join(mean_sd([m[x] for m in seeds_.values() if x in m]) for x in cl["show"]) + " |"
              for name, seeds_ in runs.items()]
    lines += ["", "| comparison | metric | δ | primary | per-seed difference (+: a beats b) | mean [95% interval] | "
              "p (Holm for primary) | verdict | paper |", "| --- | --- | ---: | --- | --- | --- | ---: | --- | --- |"]
    lines += [comparison_row(r) for r in rows if r["claim"] == k]
    problems = unmet(k, got)
    if problems:
        lines += ["", "Not yet a test of the claim (its verdicts read inconclusive): " + "; ".join(problems) + "."]
    checks = [(r, evaluation_check(k, r["test"], got)) for r in rows if r["claim"] == k and r["test"]["primary"]]
    if any(x for _, x in checks):
        lines += ["", "Evaluation noise: re-scoring seed 0 under evaluation seed 1 moves each primary difference by "
                  + "; ".join(f"{show_diff(x[0], r['test'], '')} ({r['test']['metric']}; its sd over training seeds "
                              f"is {show_diff(x[1], r['test'], '')})" for r, x in checks if x) + "."]
    return lines + [""], minutes, min(len(seeds_) for seeds_ in runs.values())


def sweep_section(got):
    """Claim 8 on the CPU: the IsoFLOP minima and exponents of the sweep's runs, once two budgets have three runs."""
    runs = [dict(m, D=m["tokens"] if "tokens" in m else m["C"] / (6 * m["N"]), text=m["text_text_loss"],
                 vision=m["caption_to_image_flow_loss"])
            for run, seeds_ in got.items() if run.startswith("8/") for m in seeds_.values()
            if "text_text_loss" in m and "caption_to_image_flow_loss" in m]
    if sum(sum(r["budget"] == b for r in runs) >= 3 for b in {r["budget"] for r in runs}) < 2:
        return [f"CPU demonstration: {len(runs)} of {len(sweep_arms())} sweep runs finished "
                f"(`python claims.py --claim=8`, one seed per point)."]
    lines = ["CPU demonstration of the machinery (configs/toy.py, aspect 32; not evidence for or against the claim):",
             "", "| modality | b (D_opt ~ C^b) | 95% bootstrap interval | a (N_opt ~ C^a) | budgets whose minimum lies "
             "at an end of the sweep |", "| --- | ---: | --- | ---: | ---: |"]
    for key in ("text", "vision"):
        rows, a, b = scaling.compute_optimal(runs, key)
        _, (lo, hi) = scaling.bootstrap(runs, key)
        lines.append(f"| {key} | {b:.3f} | [{lo:.3f}, {hi:.3f}] | {a:.3f} | {sum(not x['fitted'] for x in rows)} of "
                     f"{len(rows)} |")
    return lines


GPU_RECIPE = """Claim 8 needs at least 2.5 decades of compute and real text, which a CPU cannot give (one thread-hour is
about 2e14 FLOPs here): it is a GPU recipe, on the data of the README's "Real data" section (FineWeb-Edu token
shards for text, CC12M for caption->image, each with held-out shards) in SigLIP 2 latents (configs/real.py):

```bash
cat > out/real_scaling.py <<'END'    # configs/real.py with a held-out visual source: scaling.py fits vision too
exec(open("configs/real.py").read())
val_data = {"text": "data/fineweb/edu_fineweb_val_*.bin", "caption_to_image": "data/cc12m-val/*.tar"}
END
for part in 3e16,1e17:4,5,6,8 3e17,1e18:6,8,10,12 3e18,1e19:10,12,16,20; do   # budgets:depths, bracketing N_opt
  python scaling.py plan out/real_scaling.py --budgets=${part%:*} --depths=${part#*:} --aspect=64 \\
      --sweep_dir=out/sweep_dense/${part%%,*}                         # Fig. 23, dense: 24 runs in all
done
cat out/sweep_dense/*/plan.jsonl > out/sweep_dense/plan.jsonl       # one sweep for the fit
cat out/sweep_dense/*/sweep.sh | sed 's/^python /torchrun --standalone --nproc_per_node=8 /' | bash
python scaling.py fit --sweep_dir=out/sweep_dense                     # b of text and vision, bootstrap intervals
# Fig. 25: the same with --ffn=moe --moe_granularity=16 --moe_experts=256 --moe_top_k=16 into out/sweep_moe
```

Compute: each budget's four runs cost four times the budget, 5.8e19 FLOPs for the dense sweep; at an assumed 35%
MFU of an H100's 989 TFLOP/s bf16 peak (to be replaced by the MFU `bench/bench_train.py configs/real.py ...`
measures at these sizes), about 46 GPU-hours: 6 hours on 8 GPUs; the MoE sweep about as much. `scaling.py fit`
flags a budget whose minimum lies at an end of its depths: extend those. Verdict: *holds* when vision's b exceeds
text's with their 95% bootstrap intervals apart (stricter than a test of the difference). Table 2's shared-expert
variants (none, global, per-modality; differences of about 0.001 nats) are a GPU-scale comparison too: `python
train.py configs/real.py --ffn=moe --moe_experts=256 --moe_granularity=16 --moe_shared=none|global|per_modality`,
five seeds each, read with paired_stats as claims 1-7 are."""


def plan_section(c, got, planned):
    rows = ["| claim | runs per seed | steps per run | thread-min per seed | seeds needed (sd from) | seeds planned | "
            "thread-hours |", "| ---: | ---: | --- | ---: | --- | ---: | ---: |"]
    total = 0.0
    for k in (k for k in CLAIMS if k != 8):
        own = own_runs(k)
        per_seed = sum(estimate_s(sp, got) for sp in own) / 60
        n, source = needed_seeds(k, got)
        total += per_seed * planned[k] / 60
        steps = ", ".join(str(sp["changes"]["max_iters"]) for sp in own if "changes" in sp) or "analysis only"
        rows.append(f"| {k} | {len(own)} | {steps} | {per_seed:.0f} | {n} ({source}) | {planned[k]} | "
                    f"{per_seed * planned[k] / 60:.1f} |")
    sweep = sum(estimate_s(sp, got) for sp in sweep_arms().values()) / 3600
    over = " (over the budget: lower a claim's fraction)" if total > BUDGET_HOURS else ""
    rows.append(f"| all 1-7 | | | | | | {total:.1f} of {BUDGET_HOURS:g}{over}; {total / 2:.1f} h of wall time with "
                f"`--jobs=2` |")
    return rows + ["", f"Claim 8's CPU demonstration, one seed per point: {len(sweep_arms())} runs, {sweep:.1f} "
                   f"thread-hours, outside the budget."]


HOW = """Written by `python claims.py` from `results/claims.jsonl` (one line per finished run, suite {suite}), not by
hand. Procedure, declared before any run:

- **Arms** train on the toy recipe as `configs/toy.py` (claims 1-5, 7) or `configs/toy_nav.py` (claim 6) stand,
  plus each claim's changes, one thread per run; {fractions}. Where a claim adds data, the other arm trains as many
  steps as give it equal in-task positions (measured on packed batches); mixtures given as shares are shares of
  positions.
- **Fixed evaluation** (evaluation.py): every arm and seed of a claim is scored on the same validation examples
  ({batches} batches of 16 rows per source, data seed {eval_seed}, never the training seed; Python's source as a
  systematic sample of the held-out files), the same flow noise and flow times (a fixed grid of the training
  distribution's quantiles: with x-prediction a frame near t = 1 weighs up to 400 times more, so random times made
  the flow loss swing), the same {prompts} oracle prompts of unseen scenes of trained bindings (`gen_unseen_scenes`,
  `caption_unseen_scenes`) and of held-out bindings (`*_held_out_bindings`), the same {episodes} maze episodes; a
  claim whose metric needs more says so under its heading (its checkpoints are then re-scored, not retrained).
  Each arm's seed 0 is re-scored under evaluation seed {eval_seed1}; under each claim, how far that moves each
  primary difference, beside the difference's spread over training seeds. (The level of a loss moves more, with
  which documents are drawn, but alike for every arm.)
- **Text that does not saturate**: claims 1, 2 and 4 train on Python's own source as text (`text_source="stdlib"`,
  stdlib_text.py; held-out files, a tenth of them by a hash of their path, are never drawn in training), and report
  `text_text_loss` on those held-out files. An arm that mixes kinds of documents pays, after BOS, for not knowing
  which kind comes: ln(1 / the kind's share of documents) on the first token (the suite's first version measured
  this as a "reversed" claim 4). No document-type marker (the paper has none): the fixed evaluation leaves each
  document's first target out, and a document then says what it is (Python source, or BOI for video). The toy
  grammar stays where claims need captions (3, 5, 6); its text loss is no claim's metric, and a caption given its
  clean image has an entropy floor of 0 (the caption is a function of the scene).
- **Statistics** (stats.py): per comparison, per-seed differences a - b (seeds pair the arms; oriented so that +
  means a beats b; relative ones in units of b), a 95% t-interval, and a verdict against δ, the smallest effect that
  matters: *holds* (different from 0, Holm-corrected, on the paper's side, and |mean| ≥ δ), *reversed* (the same,
  other side), *no effect* (the 95% interval inside ±δ, Holm-corrected), *inconclusive* (anything else). Holm runs
  over the suite's primary comparisons ({primaries}); the others are read uncorrected. A claim whose models have not
  learned its task (claim 6: an arm not beating the mean training frame) reads inconclusive. Each comparison's
  "paper" column is the verdict the paper predicts.
- **Seeds**: seeds 0-{last_pilot} of every arm are the pilot; each claim then gets the fewest seeds (at least
  {least}) whose 95% interval is narrower than δ at the pilot's standard deviation of its primary differences
  (an assumed one before the pilot), within {budget:g} thread-hours for claims 1-7; claims that share runs share the
  count. Pilot seeds count in the result. Runs of an earlier recipe (another fingerprint) are never mixed in.
- The suite's first version (56 trainings, two seeds per arm, verdicts from non-overlapping min-max ranges, each
  run evaluated on its own seed's draws) is kept in `results/claims-v1.jsonl`; its table is this file's history."""


def write_table(c):
    lines, stale = current(c)
    got = by_run(lines)
    rows = analysis(got)
    planned = plan_seeds(c, got)
    summary, sections = [], []
    for k in (k for k in CLAIMS if k != 8):
        part, minutes, paired = claim_section(k, rows, got, planned)
        sections += part
        verdicts = [r["verdict"] + ("" if r["test"]["expect"] == "holds" else f" (paper: {r['test']['expect']})")
                    for r in rows if r["claim"] == k and r["test"]["primary"]]
        summary.append(f"| {k} | {CLAIMS[k]['title']} | {CLAIMS[k]['paper']} | **{'; '.join(verdicts)}** | "
                       f"{paired} | {minutes:.0f} |")
    cl8 = CLAIMS[8]
    sections += [f"## 8. {cl8['title']}", "", f"Paper ({cl8['paper']}): “{cl8['quote']}”", "", GPU_RECIPE, "",
                 *sweep_section(got), ""]
    summary.append(f"| 8 | {cl8['title']} | {cl8['paper']} | **GPU recipe** (CPU: a demonstration) | - | - |")
    where = "; ".join(sorted({m["_machine"] for s in got.values() for m in s.values()})) or "-"
    head = ["# The paper's claims in miniature", "",
            HOW.format(suite=SUITE, eval_seed=evaluation.EVAL_SEED, eval_seed1=evaluation.EVAL_SEED + 1,
                       batches=c.eval_batches, prompts=c.eval_prompts, episodes=c.episodes,
                       last_pilot=PILOT_SEEDS - 1, least=LEAST_SEEDS,
                       budget=BUDGET_HOURS, primaries=sum(t["primary"] for k in CLAIMS for t in CLAIMS[k]["tests"]),
                       fractions="claims " + ", ".join(f"{k}" for k in CLAIMS if "fraction" in CLAIMS[k]) +
                       " train " + ", ".join(f"{cl['fraction']:g}" for cl in CLAIMS.values() if "fraction" in cl) +
                       " of their config's max_iters (the budget's lever; an arm that trains a multiple of "
                       "it says so in its claim's note)"),
            "", f"Machines: {where}." + (f" {stale} lines of the results file were measured under another recipe or "
                                         f"procedure and are left out." if stale else ""), "",
            "| claim | finding | paper | verdict of the primary comparisons | seeds | thread-min |",
            "| ---: | --- | --- | --- | ---: | ---: |", *summary, "", "## Plan", "",
            "Pilot, then the suite (each resumes where it stopped; `--commit=True` commits each finished run):", "",
            "```bash", "python claims.py --seeds=3 --jobs=2      # seeds 0-2 of every arm: the spread the plan reads",
            "python claims.py --jobs=2                # every claim up to its planned seeds", "```", "",
            "Estimated at one thread per run on the 2-core CPU (from each run's FLOPs until runs have finished, then "
            "their measured wall time):", "", *plan_section(c, got, planned), ""]
    os.makedirs(os.path.dirname(c.table) or ".", exist_ok=True)
    return write_lines(c.table, head + sections)


def main(argv):
    c = configure(settings(globals()), argv, [__file__],
                  "usage: python claims.py [--claim=all|1,...,8] [--jobs=1] [--seeds=0] [--table_only=True]")
    ks = list(CLAIMS) if c.claim == "all" else c.claim.split(",")
    if not set(map(str, ks)) <= set(map(str, CLAIMS)):
        raise SystemExit(f"unknown claim '{c.claim}': use all, or some of {', '.join(map(str, CLAIMS))} (e.g. 1,4,5)")
    if c.seeds < 0 or c.jobs < 1 or c.iters_scale <= 0:
        raise SystemExit("seeds must be >= 0 (0: as planned), jobs >= 1 and iters_scale > 0")
    torch.set_num_threads(1)   # the evaluations in this process, beside the train.py processes
    if not c.table_only:
        run_claims([int(k) for k in ks], c)
    print(f"wrote {write_table(c)}")


if __name__ == "__main__":
    cli(main, sys.argv[1:])
