"""
The claims suite's runs: each arm resolved against the recipe into train.py settings and a fingerprint, one run
trained (a train.py process at one thread) and scored by the fixed evaluation (findings/evaluation.py), its cost,
the results file's lines that match the recipe as it stands, and the loop that runs every missing (run, seed).

Every function that needs the claims' declarations takes the claims module (claims.py: CLAIMS, SWEEP, SUITE,
PILOT_SEEDS, LEAST_SEEDS, BUDGET_HOURS) as its first argument, `suite`: findings/ never imports claims.py.
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

import scaling
import train
from data import Tokenizer, ToyWorldData
from encoders import build_encoder
from findings import evaluation
from findings.declare import EQUAL_ACTIVE, EqualData, Shares, TextShare, Without
from model import FORMER_DEFAULTS
from plumbing.build import build
from plumbing.logs import read_log
from plumbing.outputs import write_lines
from plumbing.settings import configure, run_config_file, settings

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))   # the repository root, one folder up

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
    """An arm's concrete train.py changes (mixture as example weights, max_iters, MoE's active experts). done: the
    claim's arms resolved so far, which steps=equal(source, other) reads."""
    base, _ = recipe(config)
    changes = dict(changes)
    c = SimpleNamespace(**{**base, **changes})
    mix = changes.get("mixture")
    if isinstance(mix, TextShare):   # the recipe's shares of positions, text's set to mix.share
        rest = {s: v for s, v in token_shares(SimpleNamespace(**base)).items() if s != "text"}
        changes["mixture"] = example_weights({"text": mix.share, **{s: (1 - mix.share) * v / sum(rest.values())
                                                                    for s, v in rest.items()}}, c)
    elif isinstance(mix, Without):
        changes["mixture"] = {s: w for s, w in base["mixture"].items() if s != mix.source}
    elif isinstance(mix, Shares):
        changes["mixture"] = example_weights(mix.of_positions, c)
    c = SimpleNamespace(**{**base, **changes})
    if changes.get("moe_top_k") == EQUAL_ACTIVE:
        changes["moe_top_k"] = c.moe_top_k = equal_active_top_k(c)
    if isinstance(steps, EqualData):
        other = done[steps.other]
        o = SimpleNamespace(**{**recipe(other["config"])[0], **other["changes"]})
        steps = o.max_iters * task_positions(o, steps.source) / task_positions(c, steps.source)
    else:
        steps = steps * fraction * base["max_iters"]
    changes["max_iters"] = max(1, round(steps))
    return changes


@functools.cache
def arms(suite, k):
    """{arm: spec} of claim k: spec = run name, config, changes (max_iters included) and evaluation; or, for an
    analysis, the run it analyses. An arm that is another claim's run is that run's spec."""
    k, out = int(k), {}
    if k == 8:
        return sweep_arms(suite)
    claim = suite.CLAIMS[k]
    for name, sp in claim["arms"].items():
        if isinstance(sp, str):                      # another claim's run, trained once
            out[name] = arms(suite, sp.split("/")[0])[sp.split("/")[1]]
        elif "analyze" in sp:
            out[name] = dict(run=f"{k}/{name}", analyze=sp["analyze"],
                             evaluation={**claim["evaluation"], **sp.get("evaluation", {})})
        else:
            changes = resolve_changes(sp["config"], {**claim.get("common", {}), **sp["changes"]}, sp["steps"], out,
                                      claim.get("fraction", 1.0))
            out[name] = dict(run=f"{k}/{name}", config=sp["config"], changes=changes, evaluation=claim["evaluation"])
    return out


@functools.cache
def sweep_arms(suite):
    """Claim 8's runs: scaling.plan's sweep as suite.SWEEP declares it, named like its runs (C1e13_L2)."""
    sw, out = suite.SWEEP, {}
    for budgets, depths in sw["points"]:
        c = configure({**settings(vars(scaling)), **train.DEFAULTS}, [os.path.join(REPO, sw["config"]),
                      f"--budgets={budgets}", f"--depths={depths}", f"--aspect={sw['aspect']}"])
        for r in scaling.plan(c, []):
            changes = {**resolve_changes(sw["config"], {**sw["changes"], **scaling.family(r["depth"], sw["aspect"])},
                                         1.0, {}), "max_iters": r["steps"]}
            out[r["name"]] = dict(run=f"8/{r['name']}", config=sw["config"], changes=changes, sweep=dict(
                budget=r["budget"], N=r["N"], C=r["C"]), evaluation=sw["evaluation"])
    return out


def train_settings(spec, c):
    """What a run's train.py is given, beyond its config file: the claim's changes with max_iters scaled, an own
    evaluation kept cheap (the suite scores every run itself), and the suite's extra settings."""
    base, _ = recipe(spec["config"])
    steps = max(1, round(spec["changes"]["max_iters"] * c.iters_scale))
    return dict(spec["changes"], max_iters=steps, warmup_iters=min(base["warmup_iters"], steps),
                eval_interval=max(1, steps // 4), eval_iters=1, eval_samples=1)


def analysed(suite, spec):
    """The spec of the run an analysis reads."""
    k, name = spec["analyze"].split("/")
    return arms(suite, k)[name]


def fingerprint(suite, spec, c, evaluated=True):
    """A digest of everything that makes a run what it is: the config file's own settings, the train.py settings
    the suite gives it, the Python version when its text is Python's source, and (evaluated) the fixed
    evaluation. A results line carries the whole digest; a checkpoint's folder only the training's, so that a
    larger evaluation re-scores the kept checkpoints instead of training them again."""
    what = dict(evaluation=[spec["evaluation"], c.eval_batches, c.eval_prompts, c.episodes, evaluation.EVAL_SEED])
    if "analyze" in spec:   # an analysis is what it analyses
        return hashlib.sha1(json.dumps([what, fingerprint(suite, analysed(suite, spec), c)]).encode()).hexdigest()[:8]
    base, own = recipe(spec["config"])
    sets = train_settings(spec, c)
    # a default that changed (model.FORMER_DEFAULTS) counts only where the run resolves to another value than it
    # did: a config that now names the former value is the run it was, one that takes the new default is not
    own = {k for k in own if FORMER_DEFAULTS.get(k, object()) != base[k]} | \
        {k for k, v in FORMER_DEFAULTS.items() if k not in sets and base[k] != v}
    what.update(config=spec["config"], recipe={k: base[k] for k in sorted(own)}, settings=sets, extra=c.extra)
    if {**base, **sets}.get("text_source") == "stdlib":
        what["python"] = platform.python_version()
    if not evaluated:
        del what["evaluation"]
    return hashlib.sha1(json.dumps(what, sort_keys=True, default=str).encode()).hexdigest()[:8]


# ----------------------------------------------------------------------------------------------------------------
# Running and measuring one run, and what it costs.

def one_thread(cmd, **kw):
    """A command of this repository (train.py) run from its folder on one thread."""
    return subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=REPO, **kw)


def out_dir(suite, spec, seed, c):
    name = spec["run"].replace("/", os.sep) + "-" + fingerprint(suite, spec, c, evaluated=False)
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


def measure(suite, spec, seed, c):
    """The fixed evaluation of the run's checkpoint; for seed 0, also under a second evaluation seed (`rescored`),
    which shows how far evaluation noise alone moves each number."""
    where = out_dir(suite, analysed(suite, spec) if "analyze" in spec else spec, seed, c)
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


# one thread's training FLOP/s on the 2-core development CPU shared with one other job, as the suite's first version
# measured it (700 steps of configs/toy.py, 27.8 GFLOPs each, in ~0.43 s); MoE's dispatch costs 1.4x its FLOPs
# there (bench/bench_train.py, 64 experts of width 32); the fixed evaluation's seconds per source, per kind of
# oracle prompts (256), for 100 episodes' prediction, for planning them (plan.py's default CEM) and for a routing
# analysis (32 batches per source and task), on toy-sized checkpoints
THREAD_FLOPS, MOE_OVERHEAD, EVAL_S = 6.5e10, 1.4, dict(sources=12, oracle=65, predict=90, plan=240, routing=120)


@functools.cache
def _step_flops(config, changes):
    c = SimpleNamespace(**{**recipe(config)[0], **json.loads(changes)})
    with torch.device("meta"):
        model = build(c, "meta")[3]
    return model.flops_per_token(c.seq_len) * c.batch_size * c.seq_len * c.gradient_accumulation_steps, c.ffn


def step_flops(spec):
    """Training FLOPs of one step of the run (model.flops_per_token, padding included), and its FFN kind."""
    return _step_flops(spec["config"], json.dumps(spec["changes"], sort_keys=True))


def estimate_s(suite, spec, got):
    """Thread-seconds of one run: the mean of its finished pilot seeds when there are some (so that the plan stays
    put once the pilot is in), else from its FLOPs."""
    measured = [m["_wall_s"] for s, m in got.get(spec["run"], {}).items() if s < suite.PILOT_SEEDS]
    if measured:
        return float(np.mean(measured))
    ev = spec["evaluation"]
    evals = sum(v * (len(ev[key]) if key in ("sources", "oracle") else 1) for key, v in EVAL_S.items() if ev.get(key))
    evals *= 1 + 1 / suite.LEAST_SEEDS   # seed 0 is scored twice
    if "analyze" in spec:
        return evals
    flops, ffn = step_flops(spec)
    return spec["changes"]["max_iters"] * flops / THREAD_FLOPS * (MOE_OVERHEAD if ffn == "moe" else 1) + evals


# ----------------------------------------------------------------------------------------------------------------
# The results file: one line per finished run.

def read_lines(path):
    return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


def current(suite, c):
    """{(run, seed): line} of the results lines measured under this suite's procedure and the current recipe, and
    how many other lines the file holds."""
    want = {spec["run"]: fingerprint(suite, spec, c) for k in suite.CLAIMS for spec in arms(suite, k).values()}
    lines = read_lines(c.results)
    ok = [r for r in lines if r.get("suite") == suite.SUITE and want.get(r.get("run")) == r.get("fingerprint")]
    return {(r["run"], r["seed"]): r for r in ok}, len(lines) - len(ok)


def by_run(lines):
    """{run: {seed: its metrics, and its wall seconds, machine and re-scored metrics under keys starting with _}}."""
    got = {}
    for (run, seed), r in lines.items():
        got.setdefault(run, {})[seed] = {**r["metrics"], "_wall_s": r["wall_s"], "_machine": r["machine"],
                                         "_rescored": r.get("rescored")}
    return got


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


def run_claims(suite, ks, c, planned, settled=()):
    """Trains and scores every missing (run, seed) of the claims ks, `jobs` at a time, then the analyses; each
    finished run appends its line to the results file at once. A run an analysis reads whose checkpoint is gone (a
    fresh clone keeps none) trains again first, in the same pool, without a new line. planned: {claim: seeds},
    where --seeds is 0, and settled: the runs it then gives no more seeds (findings/report.py's settled_runs)."""
    done, todo = current(suite, c)[0], {}
    for k in ks:
        n = c.seeds or planned[k]
        for spec in (sp for sp in arms(suite, k).values() if c.seeds or sp["run"] not in settled):
            todo.update({(spec["run"], s): spec for s in range(n) if (spec["run"], s) not in done})
            if "analyze" in spec:
                read = analysed(suite, spec)
                todo.update({(read["run"], s): read for s in range(n) if (spec["run"], s) not in done and (
                    (read["run"], s) not in done or not os.path.exists(os.path.join(out_dir(suite, read, s, c),
                                                                                      "ckpt.pt")))})
    lock, deadline, retrained = threading.Lock(), time.time() + (c.hours * 3600 or float("inf")), {}
    say = progress(todo, {key: estimate_s(suite, spec, {}) * c.iters_scale for key, spec in todo.items()}, c.jobs)

    def one(key):
        (run, seed), spec = key, todo[key]
        if time.time() + estimate_s(suite, spec, {}) * c.iters_scale > deadline:   # leave it to the next session
            return say(f"{run} seed {seed}: not started, it would end after --hours={c.hours}", key)
        if "analyze" in spec and (analysed(suite, spec)["run"], seed) not in current(suite, c)[0]:
            return say(f"{run} seed {seed}: not analysed, {spec['analyze']} has not finished", key)
        if key in done:   # recorded, but its checkpoint is gone: trained again for an analysis, no new line
            retrained[key] = train_run(spec, seed, out_dir(suite, spec, seed, c), c)
            return say(f"{run} seed {seed}: trained again for its analysis in {retrained[key]:.0f} s", key)
        wall = retrained.pop((spec["analyze"], seed), 0.0) if "analyze" in spec else \
            train_run(spec, seed, out_dir(suite, spec, seed, c), c)
        say(f"{run} seed {seed}: scoring")
        t0 = time.time()
        metrics, rescored = measure(suite, spec, seed, c)
        scoring = time.time() - t0
        line = dict(suite=suite.SUITE, run=run, claim=int(run.split("/")[0]), arm=run.split("/")[1], seed=seed,
                    fingerprint=fingerprint(suite, spec, c), config=spec.get("config"),
                    settings=train_settings(spec, c) if "config" in spec else {"analyze": spec["analyze"]},
                    extra=c.extra, metrics=metrics, rescored=rescored, eval_seed=evaluation.EVAL_SEED,
                    train_s=round(wall, 1), eval_s=round(scoring, 1), wall_s=round(wall + scoring, 1),
                    machine=machine(), python=platform.python_version(),
                    finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
        record(line, c, lock)
        say(f"{run} seed {seed}: done in {line['wall_s']:.0f} s", key)

    with ThreadPoolExecutor(c.jobs) as pool:
        # seed by seed, every arm of a seed before the next: a session that stops early leaves paired seeds
        list(pool.map(one, sorted((k for k in todo if "analyze" not in todo[k]), key=lambda k: k[1])))
    for key in (k for k in todo if "analyze" in todo[k]):
        one(key)
    say.close()


def progress(todo, estimates, jobs):
    """say(line, key=None): prints a line above a progress bar over the runs to do ("run k of n"), and with the key
    of a run that has ended, moves the bar on. Beside it, the time left by the unfinished runs' estimates
    (estimate_s, thread-seconds, shared among `jobs`): tqdm's own would extrapolate from runs of other sizes.
    say.close() ends the bar."""
    from tqdm import tqdm
    lock, left = threading.Lock(), dict(estimates)
    bar = tqdm(total=len(todo), desc="claims", dynamic_ncols=True,
               bar_format="{desc}: run {n} of {total} ended |{bar}| {elapsed}{postfix}")

    def show():
        seconds = sum(left.values()) / jobs
        bar.set_postfix_str(f"about {seconds / 3600:.1f} h left by estimate" if seconds >= 3600 else
                            f"about {seconds / 60:.0f} min left by estimate")

    def say(line, key=None):
        with lock:
            bar.write(line, file=sys.stdout)
            sys.stdout.flush()
            if key is not None:
                left.pop(key, None)
                bar.update(1)
                show()
    show()
    say.bar, say.close = bar, bar.close
    return say
