"""
The paper's findings in miniature, tested. Each claim declares before any run its arms (the toy recipe as
configs/toy.py, or configs/toy_nav.py, stands, plus the claim's few changes), its comparisons, which of them are
primary, and for each the smallest effect that matters (delta). Every (arm, seed) is one train.py process at one
thread; one fixed evaluation scores every run of a claim alike (findings/evaluation.py); seeds pair the arms, and
plumbing/stats.py turns the per-seed differences into a 95% interval and a verdict, Holm-corrected across the
suite's primary comparisons. docs/claims.md is written from the results file alone.

This file is the claims' specification: the suite's constants, each claim's declaration (in findings/declare.py's
terms) and the command line. The machinery that reads it is in findings/: runs.py resolves, trains and scores the
runs, report.py draws the verdicts, the plan and the table; both are handed this module.

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
import sys

import torch

from findings import report, runs
from findings.declare import (EQUAL_ACTIVE, HALF_TEXT, NAV, NO_VIDEO, TOY, arm, compare, equal, minus, require, shares,
                              sweep)
from plumbing.settings import cli, configure, settings

SUITE = 2                   # the procedure's version, in every results line
PILOT_SEEDS = 3             # the first seeds of every arm: their spread sets each claim's number of seeds
LEAST_SEEDS = 5
BUDGET_HOURS = 14.0         # thread-hours for seeds beyond the first recorded, claims 1-7: docs/claims.md's plan
BUDGET_SINCE = "2026-12-07"  # ... counting every run recorded since the budget was set (issue 38)
# each metric's floor and ceiling: an arm whose mean lies within delta of one makes a comparison "untestable here"
# (accuracies run from chance, 0.12 for the toy's drawings and captions, to 1)
ACCURACY = (0.12, 1.0)
BOUNDS = {"gen_unseen_scenes": ACCURACY, "caption_unseen_scenes": ACCURACY, "gen_held_out_bindings": ACCURACY,
          "caption_held_out_bindings": ACCURACY}

# ----------------------------------------------------------------------------------------------------------------
# The claims, in findings/declare.py's terms.

# Claims 1 and 2 read text loss, so their text is Python's source, which does not saturate, at half the positions
# (the paper's architecture runs train on 50% text, §6.1 and App. C), the recipe's other sources sharing the rest.
STDLIB = dict(text_source="stdlib", mixture=HALF_TEXT)
MOE = dict(ffn="moe", moe_granularity=16, moe_experts=64, moe_shared="per_modality", moe_top_k=EQUAL_ACTIVE)
LOSSES, TRAINED = ("text", "caption_to_image"), ("unseen_scenes",)   # held-out losses; the oracle on trained bindings
ARCH = ["text_text_loss", "caption_to_image_flow_loss", "gen_unseen_scenes", "caption_unseen_scenes"]
NAV_REST = dict(text=0.25, video=0.25, caption_to_image=0.25, image_to_caption=0.25)   # App. F.1's base mixture
NAV_POOL = 4000     # claim 6's fixed navigation dataset (examples)


def nav_share(share):
    return shares(navigation=share, **{s: (1 - share) * w for s, w in NAV_REST.items()})


# Per claim: the finding (title), where the paper states it (figures named by their captions; the paper's text
# sometimes calls the same figure by the next number) and in its words (quote); arms; what the fixed evaluation
# scores (evaluation) and the metrics tabled per arm (show); the comparisons, primary ones first. Optional: common
# (changes every arm makes), fraction (of the config's max_iters an arm trains: the budget's lever; an arm's steps
# multiply it), requires (what every run of some arms must reach for the claim to be tested at all), layers (a
# metric per layer, tabled layer by layer for each arm with the first two arms' paired difference), and a note.
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
                   compare(minus("x_192ch", "v_192ch"), minus("x_48ch", "v_48ch"), "gen_unseen_scenes", "higher",
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
            # well above chance, which for gen_unseen_scenes is 0.12
            requires=[require(("generation", "generation_text", "both"), "gen_unseen_scenes", "higher", 0.5),
                      require(("understanding", "both"), "caption_unseen_scenes", "higher", 0.5)],
            tests=[compare("generation_text", "generation", "gen_unseen_scenes", "higher", 0.03, primary=True, sd=0.03),
                   compare("both", "generation", "gen_unseen_scenes", "higher", 0.03, primary=True, sd=0.03),
                   compare("both", "understanding", "caption_unseen_scenes", "higher", 0.03, primary=True, sd=0.03),
                   compare("generation_text", "generation", "caption_to_image_flow_loss", "lower", 0.02, True),
                   compare("both", "understanding", "image_to_caption_text_loss", "lower", 0.02, True)]),
    6: dict(title="With a fixed navigation dataset, general video beats twice the navigation data at equal compute; a "
                  "small navigation share does about as well as a large one", paper="§5.2, Figs. 12-13; App. F.1",
            quote="Scaling domain-specific NWM data from 50B to 100B tokens yields moderate improvements ..., but "
                  "multimodal pretraining provides better results. Specifically, adding pure video yields the biggest "
                  "gain ... the model reaches competitive performance with as little as 1% in-domain data",
            # navigation from a fixed pool reused over epochs (nav_2x's twice as large), video of the toy world's
            # shapes (not maze walks: general video, as the paper's is not its navigation world)
            common=dict(nav_pool=NAV_POOL, video_source="shapes"), fraction=0.5,
            note=f"Navigation comes from a fixed pool of {NAV_POOL:,} examples, the same in every run, reused over "
                 "epochs (nav_2x: twice as many); in 2,500 steps nav_2x draws each of its examples about 5.0 times, "
                 "nav_video 4.4, nav_25pct 2.6 and nav_1pct 0.1 (the positions findings/runs.py counts). Primary metric: the final position error of plan.py's CEM with the model as world model, "
                 "on the fixed held-out episodes (the paper's measure, §5.2); one-step pixel error is secondary.",
            arms={"nav_2x": arm(NAV, mixture={"navigation": 1.0}, nav_pool=2 * NAV_POOL),
                  "nav_video": arm(NAV, mixture=shares(navigation=0.5, video=0.5)),
                  "nav_1pct": arm(NAV, mixture=nav_share(0.01)),
                  "nav_25pct": arm(NAV, mixture=nav_share(0.25))},
            evaluation=dict(predict=True, plan=True), show=["plan_final", "predict_1", "mean_1"],
            # a world model at all: better than the mean training frame, in every arm and seed
            requires=[require(("nav_2x", "nav_video", "nav_1pct", "nav_25pct"), "predict_1", "lower", "mean_1")],
            tests=[compare("nav_video", "nav_2x", "plan_final", "lower", 0.05, True, primary=True, sd=0.05),
                   compare("nav_1pct", "nav_25pct", "plan_final", "lower", 0.05, True, primary=True, sd=0.05,
                           expect="no effect"),
                   compare("nav_video", "nav_2x", "predict_1", "lower", 0.05, True)]),
    7: dict(title="Text experts give way to vision and multimodal experts with depth; generation and understanding "
                  "route alike (r >= 0.9 in every layer)", paper="§6.2, Figs. 18 and 20; App. E.8",
            quote="early layers are dominated by text-specific experts, while later layers contain progressively more "
                  "vision and multimodal experts ... very high correlation (r ≥ 0.90) across all layers",
            note="Understanding's images reach the router as the runs trained on them (noisy, at their own flow "
                 "times: App. B's default), like generation's. `untrained` is the same MoE with the weights its seed "
                 "drew before the first step: a router that has learned nothing already sends both tasks' image "
                 "tokens alike, so the secondary comparisons ask what training added to it.",
            arms={"routing": dict(analyze="2/moe"), "untrained": dict(analyze="2/moe", evaluation=dict(untrained=True))},
            evaluation=dict(routing=True, batches=256, understanding="as trained"),
            show=["text_share_change", "gen_und_r_min"], layers=["text_share", "gen_und_r"],
            tests=[compare("routing", 0.0, "text_share_change", "lower", 0.1, primary=True, sd=0.1),
                   compare("routing", 0.9, "gen_und_r_min", "higher", 0.02, primary=True, sd=0.02),
                   compare("routing", "untrained", "text_share_change", "lower", 0.1),
                   compare("routing", "untrained", "gen_und_r_min", "higher", 0.02)]),
    8: dict(title="Vision is more data-hungry than language: a larger data exponent b (D_opt ~ C^b)",
            paper="§7, Figs. 23 (dense) and 25 (MoE)",
            quote="For Vision, a≈0.37 and b≈0.63, indicating that vision is more data-hungry",
            arms={}, evaluation={}, show=["b", "a"], tests=[]),
}
# claim 8 on the CPU is scaling.py's IsoFLOP sweep of configs/toy.py (aspect 32), one seed per point: it shows the
# machinery working, not the paper's finding, which needs a GPU (findings/report.py's GPU_RECIPE)
SWEEP = sweep([("3e12", "1,2,3"), ("1e13", "1,2,3"), ("3e13", "1,2,3,4")], TOY, aspect=32,
              evaluation=dict(sources=LOSSES), **STDLIB)

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


def main(argv):
    c = configure(settings(globals()), argv, [__file__],
                  "usage: python claims.py [--claim=all|1,...,8] [--jobs=1] [--seeds=0] [--table_only=True]")
    ks = list(CLAIMS) if c.claim == "all" else c.claim.split(",")
    if not set(map(str, ks)) <= set(map(str, CLAIMS)):
        raise SystemExit(f"unknown claim '{c.claim}': use all, or some of {', '.join(map(str, CLAIMS))} (e.g. 1,4,5)")
    if c.seeds < 0 or c.jobs < 1 or c.iters_scale <= 0:
        raise SystemExit("seeds must be >= 0 (0: as planned), jobs >= 1 and iters_scale > 0")
    torch.set_num_threads(1)   # the evaluations in this process, beside the train.py processes
    suite = sys.modules[__name__]   # the declarations above, which findings/ is handed and never imports
    if not c.table_only:
        plan = report.plan_seeds(suite, c)
        runs.run_claims(suite, [int(k) for k in ks], c, plan["seeds"], plan["settled"])
    print(f"wrote {report.write_table(suite, c)}")


if __name__ == "__main__":
    cli(main, sys.argv[1:])
