"""
The paper's findings in miniature: for each claim, train the arms of its comparison on the toy world at equal
compute (or equal in-task tokens, where the claim is about adding data), two seeds each, and write one table of the
paper's direction beside ours (docs/claims.md).

    python claims.py --claim=1               # one claim: its runs not yet in results/claims.jsonl, then the table
    python claims.py --jobs=2                # every claim, two train.py runs side by side
    python claims.py --table_only=True       # docs/claims.md from results/claims.jsonl alone

Each run is one train.py process (OMP_NUM_THREADS=1) writing to runs_dir/<claim>/<arm>/seed<k>. When it finishes,
its held-out metrics and wall time become one line of the results file, which is committed: a run with a line is
never trained again, and a run with a checkpoint but no line resumes, so a fresh clone picks up where the last
session stopped.
"""
import functools
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

import plan
import scaling
import train
from config import configure, load_for_inference, settings
from data import Tokenizer, ToyWorldData
from files import cli, read_log, write_lines

# ----------------------------------------------------------------------------------------------------------------
# The claims.

TOY, NAV, MOE = "configs/toy.py", "configs/toy_nav.py", "configs/toy_moe.py"
STEPS = 700   # half of configs/toy.py's 1,400, so that the whole suite fits one day of the 2-core CPU
# claim 3 drops video: 4 frames of 64 small patches would not fit a row of 256
NO_VIDEO = {"text": 0.1, "caption_to_image": 0.6, "image_to_caption": 0.3}
MIXED = {"text": 0.5, "caption_to_image": 0.2, "image_to_caption": 0.2, "video": 0.1}
LOSSES = ["val_flow_loss", "val_text_loss", "gen_accuracy", "und_accuracy"]
BOTH = ("caption_to_image", "image_to_caption")


def arm(config=TOY, steps=STEPS, evals=(), predict=False, sweep=None, **overrides):
    return dict(config=config, steps=steps, evals=evals, predict=predict, sweep=sweep, overrides=overrides)


def nav(**mixture):
    """configs/toy_nav.py (650 steps of 8 rows), scored by the world-model prediction error, with another mixture."""
    return arm(NAV, 650, predict=True, **({"mixture": mixture} if mixture else {}))


def text_share(mixture, n=400):
    """The share of positions that pure-text examples fill in a toy mixture: claim 4's mixed arm trains 1 / share
    as many steps as the text-only arm, so that both see the same text tokens."""
    tok, rng = Tokenizer("bytes"), np.random.default_rng(0)
    length = {s: np.mean([ToyWorldData(tok, 256, 16, {s: 1.0}).example(rng).length(16) for _ in range(n)])
              for s in mixture}
    return mixture["text"] * length["text"] / sum(w * length[s] for s, w in mixture.items())


def beats(a, b, metrics, kind="lower"):
    return [(a, b, m, kind) for m in metrics]


# Per claim: arms (an arm(...), or "claim/arm": that claim's run, trained once) and comparisons (a, b, metric, kind):
# "lower"/"higher": a beats b; "no_worse": a within 5% of b; ("gap", p, q): (p - q) / p per seed; b a number: a bar.
CLAIMS = {
    1: dict(title="Modality-specific FFNs beat one shared FFN at equal active compute", paper="§2.2, App. C",
            arms={"modality": arm(), "shared": arm("configs/toy_dense.py")}, show=LOSSES,
            tests=beats("modality", "shared", LOSSES[:2])),
    2: dict(title="MoE with per-modality shared experts beats dense at equal active compute, and no or one global "
                  "shared expert", paper="§6.1, Table 2", show=LOSSES,
            arms={"moe_per_modality": arm(MOE), "dense": "1/shared", "moe_global": arm(MOE, moe_shared="global"),
                  "moe_none": arm(MOE, moe_shared="none")},
            tests=sum((beats("moe_per_modality", b, LOSSES[:2]) for b in ("dense", "moe_none", "moe_global")), [])),
    3: dict(title="x-prediction beats v-prediction on high-dimensional latents; the gap shrinks on low-dimensional "
                  "ones (192 vs 48 channels per token)", paper="§6.3, Fig. 15", show=LOSSES,
            arms={f"{p}_{ch}ch": arm(patch_size=ps, prediction=p, mixture=NO_VIDEO)
                  for ch, ps in ((192, 8), (48, 4)) for p in "xv"},
            tests=[*beats("x_192ch", "v_192ch", ["val_flow_loss"]), ("x_192ch", "v_192ch", "gen_accuracy", "higher"),
                   (("gap", "v_192ch", "x_192ch"), ("gap", "v_48ch", "x_48ch"), "val_flow_loss", "higher")]),
    4: dict(title="Adding visual data costs the language model little at equal text tokens", paper="§4.1, Fig. 6",
            arms={"text_only": arm(evals=("text",), mixture={"text": 1.0}),
                  "text_images_video": arm(steps=round(STEPS / text_share(MIXED)), evals=("text",), mixture=MIXED)},
            show=["text_text_loss"], tests=beats("text_images_video", "text_only", ["text_text_loss"], "no_worse")),
    5: dict(title="Understanding and generation help each other (at equal in-task examples)",
            paper="§4.3, Figs. 8-9; §6.2",
            arms={"generation": arm(evals=BOTH, mixture={"caption_to_image": 1.0}),
                  "understanding": arm(evals=BOTH, mixture={"image_to_caption": 1.0}),
                  "both": arm(steps=2 * STEPS, evals=BOTH, mixture={"caption_to_image": 0.5, "image_to_caption": 0.5})},
            show=["caption_to_image_flow_loss", "gen_accuracy", "image_to_caption_text_loss", "und_accuracy"],
            tests=[("both", "generation", "caption_to_image_flow_loss", "lower"),
                   ("both", "generation", "gen_accuracy", "higher"),
                   ("both", "understanding", "image_to_caption_text_loss", "lower"),
                   ("both", "understanding", "und_accuracy", "higher")]),
    6: dict(title="General multimodal data helps world modeling; a small share of navigation suffices",
            paper="§5, Fig. 13 and its data-share ablation", show=["predict_1", "copy_1", "predict_4", "copy_4"],
            arms={"nav_1pct": nav(text=.1, caption_to_image=.35, image_to_caption=.2, video=.34, navigation=.01),
                  "nav_10pct": nav(text=.1, caption_to_image=.3, image_to_caption=.2, video=.3, navigation=.1),
                  "nav_10pct_no_video": nav(text=.1, caption_to_image=.45, image_to_caption=.35, navigation=.1),
                  "nav_90pct": nav()},
            tests=[*beats("nav_10pct", "nav_10pct_no_video", ["predict_1", "predict_4"]),
                   *beats("nav_10pct", "nav_90pct", ["predict_1"], "no_worse"),
                   *beats("nav_1pct", "nav_90pct", ["predict_1"], "no_worse")]),
    7: dict(title="Experts specialize by modality more with depth; generation and understanding share experts",
            paper="§6.2, Figs. 18-20", arms={"routing": dict(analyze="2/moe_per_modality")},
            show=["specialized_first", "specialized_last", "gen_und_r"],
            tests=[("routing", "routing", ("specialized_last", "specialized_first"), "higher"),
                   ("routing", 0.9, "gen_und_r", "higher")]),
    8: dict(title="Vision is more data-hungry than language: a larger data exponent b (D_opt ~ C^b)",
            paper="§7, Fig. 21", arms={}, show=["b", "a"], tests=[("vision", "text", "b", "higher")]),
}
# claim 8 is scaling.py's IsoFLOP sweep of configs/toy.py (aspect 32), each point a run with seeds like the arms;
# the largest budget adds a larger model, and its smallest (28,000 steps) brackets text's minimum there
SWEEP = [("3e12", "1,2,3"), ("1e13", "1,2,3"), ("3e13", "1,2,3,4")]

# ----------------------------------------------------------------------------------------------------------------
# Command line settings.

claim = "all"                      # "all", one claim ("4") or several ("1,4,5")
seeds = 2                          # seeds per arm: train.py --seed=0, 1, ...
jobs = 1                           # train.py runs side by side, each on one thread
iters_scale = 1.0                  # multiplies every run's max_iters (the test's tiny budget)
extra = ""                         # overrides for every train.py run, e.g. "--n_layer=1 --d_model=32" (tests)
runs_dir = "out/claims"            # checkpoints and logs, git-ignored: runs_dir/<claim>/<arm>/seed<k>
results = "results/claims.jsonl"   # one line per finished run, committed: the table is made from it alone
table = "docs/claims.md"           # where the table is written
table_only = False                 # write the table from the results file, train nothing
episodes = 30                      # claim 6: held-out maze episodes for the prediction error
eval_batches = 8                   # claims 4 and 5: held-out batches per source
hours = 0.0                        # start no run whose estimated end lies beyond this many hours (0: no limit)


def resolve(k, name):
    """(run name, spec) of claim k's arm: a reference "claim/arm" is that claim's run."""
    spec = all_arms(k)[name]
    return resolve(*spec.split("/")) if isinstance(spec, str) else (f"{k}/{name}", spec)


def all_arms(k):
    k = int(k)
    return CLAIMS[k]["arms"] if k != 8 else sweep_arms()


@functools.cache   # building the sweep's models (on the meta device) to count them takes a moment
def sweep_arms():
    """Claim 8's runs: scaling.plan's sweep of configs/toy.py (aspect 32), named like its runs (C1e13_L2)."""
    arms = {}
    for budgets, depths in SWEEP:
        c = configure({**settings(vars(scaling)), **train.DEFAULTS},
                      [TOY, f"--budgets={budgets}", f"--depths={depths}", "--aspect=32"])
        for r in scaling.plan(c, []):
            arms[r["name"]] = arm(steps=r["steps"], **scaling.family(r["depth"], 32),
                                  sweep=dict(budget=r["budget"], N=r["N"], C=r["C"]))
    return arms


def read_results(path):
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def finished(c):
    return {(r["run"], r["seed"]) for r in read_results(c.results)}


# ----------------------------------------------------------------------------------------------------------------
# Running and measuring one run.

def one_thread(cmd, **kw):
    """A command of this repository (train.py, routing.py) run from its folder on one thread."""
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          cwd=os.path.dirname(os.path.abspath(__file__)), **kw)


def train_run(spec, seed, out_dir, c):
    """One train.py process at one thread; resumes when out_dir holds a checkpoint. Returns its wall seconds."""
    steps = max(1, round(spec["steps"] * c.iters_scale))
    sets = dict(spec["overrides"], max_iters=steps, eval_interval=max(1, steps // 2),
                warmup_iters=min(50, steps // 10), seed=seed, out_dir=out_dir)
    cmd = [sys.executable, "train.py", spec["config"], *(f"--{k}={v}" for k, v in sets.items()), *c.extra.split()]
    cmd += ["--resume"] if os.path.exists(os.path.join(out_dir, "ckpt.pt")) else []
    os.makedirs(out_dir, exist_ok=True)
    t0 = time.time()
    with open(os.path.join(out_dir, "train.log"), "a") as log:
        rc = one_thread(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"{out_dir}: train.py failed (exit {rc}); see {out_dir}/train.log")
    return time.time() - t0


@torch.no_grad()
def source_losses(model, tok, enc, cfg, source, batches):
    """Held-out text and flow loss on one source alone (val split, fixed data seed, no caption dropout), so arms
    trained on different mixtures are scored on the same examples."""
    data = ToyWorldData(tok, cfg.seq_len, enc.tokens_per_frame, {source: 1.0}, 0, cfg.image_size, cfg.max_shapes,
                        cfg.video_frames, 0.0, cfg.caption_clean_image, cfg.nav_view)
    text, flow = train.held_out_losses(model, data, enc, cfg, "cpu", batches, torch.Generator().manual_seed(0))
    return {f"{source}_text_loss": text, **({f"{source}_flow_loss": flow} if flow is not None else {})}


def measure(spec, out_dir, c):
    """The run's final held-out numbers: its last evaluation, plus the claim's own (per-source losses, world-model
    prediction error, routing analysis)."""
    if "analyze" in spec:
        return routing_metrics(out_dir, c)
    last = [r for _, r in read_log(os.path.join(out_dir, "metrics.jsonl")) if "val_text_loss" in r][-1]
    m = {k: last[k] for k in ("step", "tokens", *LOSSES) if k in last}
    m.update(spec["sweep"] or {})
    if spec["evals"] or spec["predict"]:
        model, tok, enc, cfg = load_for_inference(out_dir, "cpu")
        for source in spec["evals"]:
            m.update(source_losses(model, tok, enc, cfg, source, c.eval_batches))
        if spec["predict"]:   # plan.py --mode=predict's measurement, its settings as plan.py's defaults
            p = dict(dev="cpu", seed=0, episodes=c.episodes, steps=1, image_size=cfg.image_size, view=cfg.nav_view)
            quality, steps = plan.predict_quality(model, tok, enc, SimpleNamespace(**p))
            for name, key in (("model", "predict"), ("copy", "copy")):   # copying the last frame: the bar to beat
                m.update({f"{key}_{k}": float(quality[name][:, j, 0].mean()) for j, k in enumerate(steps)})
    return m


def routing_metrics(out_dir, c):
    """routing.py on a trained MoE run: share of routed experts that are modality-specific in the first and last
    layer, and the mean generation/understanding correlation over layers."""
    cmd = [sys.executable, "routing.py", f"--out_dir={out_dir}", "--overwrite", "--device=cpu"]
    one_thread(cmd, check=True, stdout=subprocess.DEVNULL)
    rows = json.load(open(os.path.join(out_dir, "routing.json")))
    spec = [(r["text"] + r["vision"]) / max(1, r["text"] + r["vision"] + r["multimodal"]) for r in rows]
    return dict(specialized_first=spec[0], specialized_last=spec[-1],
                gen_und_r=float(np.mean([r["gen_und_r"] for r in rows])))


def machine():
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")),
               platform.processor()) if os.path.exists("/proc/cpuinfo") else platform.processor()
    return f"{cpu}, {os.cpu_count()} cores, one thread per run, torch {torch.__version__}"


def run_claims(ks, c):
    """Trains every missing (run, seed) of the claims, `jobs` at a time, then runs the analyses; each finished
    run appends its line to the results file at once."""
    done = finished(c)
    todo = {}
    for k in ks:
        for name in all_arms(k):
            run, spec = resolve(k, name)
            needs = [(run, spec)] + ([resolve(*spec["analyze"].split("/"))] if "analyze" in spec else [])
            todo.update({(r, s): sp for r, sp in needs for s in range(c.seeds) if (r, s) not in done})
    lock, deadline = threading.Lock(), time.time() + (c.hours * 3600 or float("inf"))

    def one(key):
        (run, seed), spec = key, todo[key]
        out_dir = os.path.join(c.runs_dir, spec.get("analyze", run), f"seed{seed}")
        if time.time() + estimate_s(spec) * c.iters_scale > deadline:   # a session's end: leave it to the next
            return print(f"{run} seed {seed}: not started, it would end after --hours={c.hours}", flush=True)
        if "analyze" in spec and (spec["analyze"], seed) not in finished(c):
            return print(f"{run} seed {seed}: not analysed, {spec['analyze']} has not finished", flush=True)
        print(f"{run} seed {seed}: {'analysing' if 'analyze' in spec else 'training'} in {out_dir}", flush=True)
        wall = 0.0 if "analyze" in spec else train_run(spec, seed, out_dir, c)
        t0 = time.time()
        m = measure(spec, out_dir, c)
        line = dict(run=run, claim=int(run.split("/")[0]), arm=run.split("/")[1], seed=seed,
                    config=spec.get("config"), overrides={**spec.get("overrides", {}), "extra": c.extra,
                    "iters_scale": c.iters_scale}, metrics=m, wall_s=round(wall + time.time() - t0, 1),
                    machine=machine(), finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        with lock:
            os.makedirs(os.path.dirname(c.results) or ".", exist_ok=True)
            with open(c.results, "a") as f:
                f.write(json.dumps(line) + "\n")
        print(f"{run} seed {seed}: done in {line['wall_s']:.0f} s: {json.dumps(m)}", flush=True)

    train_keys = [k for k in todo if "analyze" not in todo[k]]
    with ThreadPoolExecutor(c.jobs) as pool:
        list(pool.map(one, train_keys))
    for key in (k for k in todo if "analyze" in todo[k]):
        one(key)


# ----------------------------------------------------------------------------------------------------------------
# The table: from the results file alone.

def sweep_runs(got):
    """Claim 8's finished runs in scaling.py's terms, or [] until at least two budgets have three runs each."""
    runs = [dict(m, D=m["tokens"], text=m["val_text_loss"], vision=m["val_flow_loss"])
            for run, seeds in got.items() if run.startswith("8/") for m in seeds.values()]
    return runs if sum(sum(r["budget"] == b for r in runs) >= 3 for b in {r["budget"] for r in runs}) >= 2 else []


def sweep_minima(got):
    """Claim 8's IsoFLOP minima per budget: a minimum the sweep does not bracket (best run at an end) is marked, as
    it only bounds the optimum and should be extended (SWEEP)."""
    runs = sweep_runs(got)
    if not runs:
        return []
    lines = ["| budget (FLOPs) | text N_opt | text D_opt | vision N_opt | vision D_opt |",
             "| ---: | ---: | ---: | ---: | ---: |"]
    (text, _, _), (vision, _, _) = (scaling.compute_optimal(runs, key) for key in ("text", "vision"))
    for t, v in zip(text, vision):
        cells = [f"{r[q]:.3g}{'' if r['fitted'] else ' (at an end)'}" for r in (t, v) for q in ("N_opt", "D_opt")]
        lines.append(f"| {t['C']:.2g} | " + " | ".join(cells) + " |")
    return lines + [""]


def sweep_fit(got):
    """Claim 8's two 'arms', text and vision: the data exponent b of the sweep's runs with its bootstrap 95% interval
    (as three values: low, fit, high), once at least two budgets have three finished runs each."""
    runs = sweep_runs(got)
    if not runs:
        return {"text": {}, "vision": {}}
    out = {}
    for key in ("text", "vision"):
        _, a, b = scaling.compute_optimal(runs, key)
        _, (lo, hi) = scaling.bootstrap(runs, key)
        out[key] = {"lo": {"b": lo}, "fit": {"b": b, "a": a}, "hi": {"b": hi}}   # the verdict reads lo and hi
    return out


def values(ref, metric, arms):
    """Per-seed values of one side of a comparison: an arm's metric, a constant, or ("gap", p, q): (p - q) / p."""
    if isinstance(ref, (int, float)):
        return [float(ref)]
    if isinstance(ref, tuple):
        p, q = arms[ref[1]], arms[ref[2]]
        return [(p[s][metric] - q[s][metric]) / p[s][metric] for s in p if s in q]
    return [m[metric] for m in arms[ref].values() if metric in m]


def paired(a, b, ma, mb, arms, k):
    """a - b seed by seed: both arms of one seed draw their training and validation data from the same seed, so the
    difference is free of the part of the seed spread that the validation draws make."""
    if k == 8 or not (isinstance(a, str) and isinstance(b, str)):
        return "-"
    p, q = arms[a], arms[b]
    return ", ".join(f"{p[s][ma] - q[s][mb]:+.4f}" for s in sorted(p) if s in q and ma in p[s] and mb in q[s]) or "-"


def verdict(a, b, kind, constant=False, need=2):
    """'holds' when a beats b beyond the seed spread (their min-max ranges do not overlap), 'reversed' when b beats
    a so, else 'does not show at this scale'. no_worse: a within 5% of b; a constant b is a threshold to pass."""
    if len(a) < need or len(b) < (1 if constant else need):
        return "pending"
    if kind == "higher":
        a, b = [-x for x in a], [-x for x in b]
    if kind == "no_worse":
        b = [x * 1.05 for x in b]
    if max(a) < min(b):
        return "holds"
    return "reversed" if min(a) > max(b) and not constant else "does not show at this scale"


def reading(verdicts):
    """A claim's verdicts in one phrase: the common one, or how many comparisons gave each."""
    counts = {v: verdicts.count(v) for v in dict.fromkeys(verdicts)}
    if "pending" in counts and len(counts) > 1:
        return f"pending ({len(verdicts) - counts['pending']} of {len(verdicts)} comparisons measured)"
    if len(counts) == 1:
        return verdicts[0]
    return "mixed: " + ", ".join(f"{v} {n} of {len(verdicts)}" for v, n in counts.items())


def fmt(v, center=None):
    """mean [min, max] over seeds (claim 8: the fit in its bootstrap interval)."""
    if len(v) < 2:
        return f"{v[0]:.4f}" if v else "pending"
    return f"{np.mean(v) if center is None else center:.4f} [{min(v):.4f}, {max(v):.4f}]"


def side(ref, metric):
    return f"({ref[1]} - {ref[2]}) / {ref[1]}" if isinstance(ref, tuple) else f"{ref} {metric}".strip()


def describe(n, sp):
    """An arm as its train.py settings (or the run it shares, or the analysis it is)."""
    if isinstance(sp, str):
        return f"`{n}` = the run {sp}"
    if "analyze" in sp:
        return f"`{n}` = routing.py on the runs {sp['analyze']}"
    return f"`{n}` = `{' '.join([sp['config'], *(f'--{o}={v}' for o, v in sp['overrides'].items())])}`, " \
           f"{sp['steps']} steps"


def setup(k):
    if k == 8:
        return f"Setup: `python scaling.py plan configs/toy.py --aspect=32` at (budgets, depths) {SWEEP}."
    return "Setup: " + "; ".join(describe(n, sp) for n, sp in all_arms(k).items()) + "."


def finished_runs(k, got):
    """How many of claim k's runs have finished, their wall minutes (sum) and the machines they ran on."""
    runs = [m for r in {resolve(k, n)[0] for n in all_arms(k)} for m in got.get(r, {}).values()]
    return len(runs), sum(m["_wall_s"] for m in runs) / 60, "; ".join(sorted({m["_machine"] for m in runs})) or "-"


def claim_section(k, got):
    """One claim's markdown (arms, then comparisons with their verdicts) and its row of the summary table."""
    cl = CLAIMS[k]
    arms = sweep_fit(got) if k == 8 else {n: got.get(resolve(k, n)[0], {}) for n in all_arms(k)}
    runs, minutes, where = finished_runs(k, got)
    lines = [f"## {k}. {cl['title']}", "", f"Paper: {cl['paper']}. Command: `python claims.py --claim={k}`: "
             f"{runs} runs finished, {minutes:.0f} min of wall time (sum over runs); machine: {where}.", "",
             setup(k), "", *(sweep_minima(got) if k == 8 else []),
             "| arm | seeds | " + " | ".join(cl["show"]) + " |", "| --- | ---: |" + " ---: |" * len(cl["show"])]
    for n, a in arms.items():
        cells = [fmt(values(n, m, arms), a["fit"][m] if k == 8 and a else None) for m in cl["show"]]
        lines.append(f"| {n} | {(runs if k == 8 else len(a)) or 'pending'} | " + " | ".join(cells) + " |")
    lines += ["", "| comparison | metric | a | b | a - b, seed 0, 1 | verdict |",
              "| --- | --- | ---: | ---: | ---: | --- |"]
    verdicts = []
    for a, b, metric, kind in cl["tests"]:
        (ma, mb), two = (metric, True) if isinstance(metric, tuple) else ((metric, metric), False)
        va, vb = values(a, ma, arms), values(b, mb, arms)
        fit = lambda ref, m: arms[ref]["fit"][m] if k == 8 and arms[ref] else None
        verdicts.append(verdict(va, vb, kind, isinstance(b, (int, float))))
        what = {"lower": "<", "higher": ">", "no_worse": "within 5% of"}[kind]
        lines.append(f"| a = {side(a, ma * two)} {what} b = {side(b, mb * two)} | {'' if two else ma} | "
                     f"{fmt(va, fit(a, ma))} | {fmt(vb, fit(b, mb))} | {paired(a, b, ma, mb, arms, k)} | "
                     f"**{verdicts[-1]}** |")
    row = (f"| {k} | {cl['title']} | {cl['paper']} | **{reading(verdicts)}** | `python claims.py --claim={k}` | "
           f"{runs} | {minutes:.0f} | {where} |")
    return lines + [""], row


# seconds per step at one thread on the 2-core development CPU shared with one other job, as this suite's runs took
# them (results/claims.jsonl: e.g. 700 toy steps in 321-345 s, 700 MoE steps in 369-388 s, with the evaluations);
# the sweep's models by depth
STEP_S = {"toy": 0.45, "moe": 0.5, "nav": 0.22, 1: 0.045, 2: 0.1, 3: 0.22, 4: 0.42}


def estimate_s(spec):
    if "analyze" in spec:
        return 60
    kind = spec["overrides"].get("n_layer") or ("moe" if spec["config"] == MOE else "nav" if spec["predict"] else "toy")
    return spec["steps"] * STEP_S[kind] + (90 if spec["predict"] else 45)   # + the evaluations


def plan_lines(seeds):
    """Runs x minutes per claim, a shared run counted once (claim 2's dense arm is claim 1's shared arm)."""
    seen, total = set(), 0
    lines = ["| claim | runs | steps per run | estimated minutes |", "| ---: | ---: | --- | ---: |"]
    for k in CLAIMS:
        specs = [sp for r, sp in (resolve(k, n) for n in all_arms(k)) if r not in seen and not seen.add(r)]
        minutes = seeds * sum(map(estimate_s, specs)) / 60
        total += minutes
        steps = ", ".join(str(s) for s in sorted({sp["steps"] for sp in specs if "steps" in sp})) or "routing only"
        lines.append(f"| {k} | {seeds * len(specs)} | {steps} | {minutes:.0f} |")
    return lines + [f"| all | | | {total:.0f} ({total / 120:.1f} h with `--jobs=2`) |"]


def write_table(c):
    got = {}
    for r in read_results(c.results):
        got.setdefault(r["run"], {})[r["seed"]] = {**r["metrics"], "_wall_s": r["wall_s"], "_machine": r["machine"]}
    summary, sections = [], []
    for k in CLAIMS:
        lines, row = claim_section(k, got)
        sections, summary = sections + lines, summary + [row]
    head = ["# The paper's claims in miniature", "", HOW.format(episodes=c.episodes), "",
            "| claim | finding | paper | our reading | command | runs | wall min | machine |",
            "| ---: | --- | --- | --- | --- | ---: | ---: | --- |",
            *summary, "", "The plan, estimated at one thread per run on the 2-core CPU:", "", *plan_lines(c.seeds), ""]
    os.makedirs(os.path.dirname(c.table) or ".", exist_ok=True)
    return write_lines(c.table, head + sections)


HOW = ("Written by `python claims.py` from `results/claims.jsonl` (one line per finished run), not by hand. Every arm "
       "trains on the toy world, one thread per run, seeds 0 and 1, at equal compute unless its setup says otherwise; "
       "a cell is the mean over seeds [min, max], and a - b pairs the arms seed by seed (same data seed). A verdict "
       "*holds* when the paper's direction holds beyond the seed spread (the min-max ranges do not overlap), is "
       "*reversed* when the opposite does, and otherwise *does not show at this scale*; *pending* until two seeds of "
       "both sides have finished; a claim's reading is the verdict its comparisons share, or how many gave each. A "
       "claim that adding data costs little or a small share suffices is tested as 'a within 5% of b': it is reversed "
       "when a is worse than b by more than 5% beyond the spread. Every number is held out: the validation split "
       "(claims 1-3); each source alone on its validation split, fixed data seed, no caption dropout (claims 4-5: "
       "`<source>_text_loss`, `<source>_flow_loss`); gen/und accuracy: the oracle on the compositional held-out "
       "scenes; claim 6's `predict_k`: plan.py --mode=predict's pixel MSE k actions ahead on {episodes} held-out mazes"
       " (`copy_k`: copying the last context frame instead); claim 7: routing.py on claim 2's MoE runs (the share of "
       "modality-specific experts in the first and last layer); claim 8: scaling.py's fit of the IsoFLOP sweep (b with"
       " its bootstrap 95% interval).")


def main(argv):
    c = configure(settings(globals()), argv, [__file__],
                  "usage: python claims.py [--claim=all|1,...,8] [--jobs=1] [--seeds=2] [--table_only=True]")
    ks = list(CLAIMS) if c.claim == "all" else c.claim.split(",")
    if not set(map(str, ks)) <= set(map(str, CLAIMS)):
        raise SystemExit(f"unknown claim '{c.claim}': use all, or some of {', '.join(map(str, CLAIMS))} (e.g. 1,4,5)")
    if c.seeds < 1 or c.jobs < 1 or c.iters_scale <= 0:
        raise SystemExit("seeds and jobs must be >= 1 and iters_scale > 0")
    torch.set_num_threads(1)   # the evaluations in this process, beside the train.py processes
    if not c.table_only:
        run_claims([int(k) for k in ks], c)
    print(f"wrote {write_table(c)}")


if __name__ == "__main__":
    cli(main, sys.argv[1:])
