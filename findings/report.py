"""
What the claims suite's results say, and docs/claims.md written from them alone: every comparison's per-seed
differences, intervals and verdicts (plumbing/stats.py; the suite's primary comparisons one family), how many seeds
each claim gets (80% power where a verdict can still change, within the budget), and the table.

Like findings/runs.py, every function that needs the claims' declarations takes the claims module as `suite`.
"""
import os

import numpy as np

import scaling
from findings import evaluation
from findings.declare import Minus
from findings.runs import REPO, analysed, arms, by_run, current, estimate_s, read_lines, sweep_arms
from plumbing import stats
from plumbing.outputs import write_lines

# ----------------------------------------------------------------------------------------------------------------
# The statistics: every comparison's per-seed differences, its interval and its verdict.

def side(ref, metric, runs, seed):
    """One side of a comparison at one seed: a number, an arm's metric, or minus(p, q)."""
    if isinstance(ref, (int, float)):
        return float(ref)
    if isinstance(ref, Minus):
        p, q = side(ref.a, metric, runs, seed), side(ref.b, metric, runs, seed)
        return None if p is None or q is None else p - q
    return runs.get(ref, {}).get(seed, {}).get(metric)


def differences(suite, k, t, got):
    """{seed: the comparison's difference}, oriented so that positive means a beats b (relative: in units of b)."""
    runs = {name: got.get(spec["run"], {}) for name, spec in arms(suite, k).items()}
    out = {}
    for seed in sorted({s for r in runs.values() for s in r}):
        a, b = side(t["a"], t["metric"], runs, seed), side(t["b"], t["metric"], runs, seed)
        if a is not None and b is not None:
            out[seed] = stats.log_ratio(a, b, t["better"]) if t["relative"] else (a - b if t["better"] == "higher"
                                                                                   else b - a)
    return out


def delta_of(t):
    """A comparison's delta on the scale of its differences: a relative delta as a log ratio."""
    return float(np.log1p(t["delta"])) if t["relative"] else t["delta"]


def at_bound(suite, k, t, got):
    """The arms of a comparison that sit where its effect cannot show, as short phrases: within delta of their
    metric's declared floor or ceiling (suite.BOUNDS), on the side that matters: the arm to be beaten at the best
    value, or the arm to beat it at the worst; for a no-effect claim either arm at either bound (a bound squeezes
    every difference toward 0). Differences of differences (minus) and relative comparisons are not bounded."""
    bounds = suite.BOUNDS.get(t["metric"])
    if bounds is None or t["relative"] or isinstance(t["a"], Minus) or isinstance(t["b"], Minus):
        return []
    best, worst = (bounds[1], bounds[0]) if t["better"] == "higher" else (bounds[0], bounds[1])
    out = []
    for name, side in ((t["a"], "a"), (t["b"], "b")):
        values = [m[t["metric"]] for m in got.get(arms(suite, k)[name]["run"], {}).values()] \
            if isinstance(name, str) else []
        if not values:
            continue
        mean = float(np.mean(values))
        ends = (best, worst) if t["expect"] == "no effect" else ((best,) if side == "b" else (worst,))
        if stats.at_bound(mean, ends, t["delta"]):
            out.append(f"{name}'s {t['metric']} {mean:.3f} lies within δ = {t['delta']:g} of its bound "
                       f"{min(ends, key=lambda e: abs(mean - e)):g}")
    return out


def read_by(t):
    """The arms a comparison reads (its sides, and the sides of a minus)."""
    return {n for ref in (t["a"], t["b"]) for n in ((ref.a, ref.b) if isinstance(ref, Minus) else (ref,))
            if isinstance(n, str)}


def unmet(suite, k, t, got):
    """Comparison t's unmet requirements (runs of the arms it reads that have not learned what the claim is
    about), as short phrases. A requirement binds every run, so no later seed lifts one that is unmet."""
    bad = []
    for r in suite.CLAIMS[k].get("requires", []):
        names, metric, better, bar = r["arms"], r["metric"], r["better"], r["bar"]
        for name in (n for n in names if n in read_by(t)):
            for seed, m in sorted(got.get(arms(suite, k)[name]["run"], {}).items()):
                value = m.get(bar) if isinstance(bar, str) else bar
                if metric not in m or value is None or (m[metric] < value if better == "lower" else m[metric] > value):
                    continue
                shown = f"{bar} {value:.4f}" if isinstance(bar, str) else f"{bar:g}"
                bad.append(f"{name} seed {seed}: {metric} {m[metric]:.4f}, not {better} than {shown}")
    return bad


def analysis(suite, got):
    """Every comparison of claims 1-7: per-seed differences, the interval and the verdict read off it. The primary
    comparisons are one family over the suite, each interval at the family's level; the secondary ones at 95%,
    read alone."""
    rows = []
    for k in suite.CLAIMS:
        for t in suite.CLAIMS[k]["tests"]:
            rows.append(dict(claim=k, test=t, diffs=differences(suite, k, t, got)))
    level = stats.family_level(sum(r["test"]["primary"] for r in rows))   # one still pending counts in m
    for r in rows:
        t, k = r["test"], r["claim"]
        r["stats"] = stats.paired(list(r["diffs"].values()), level if t["primary"] else 0.95)
        r["unmet"] = unmet(suite, k, t, got)   # one run that has not learned settles it; a bound waits for 2 seeds
        r["why_untestable"] = r["unmet"] + (at_bound(suite, k, t, got) if r["stats"]["n"] >= 2 else [])
        r["verdict"] = stats.verdict(r["stats"], delta_of(t), bool(r["why_untestable"]))
    return rows


def settled_runs(suite, rows):
    """Runs more seeds cannot help: every primary comparison that reads them is untestable by an unmet
    requirement, which no later seed lifts."""
    runs = lambda r: {arms(suite, r["claim"])[n]["run"] for n in read_by(r["test"])}
    read = [r for r in rows if r["test"]["primary"]]
    return set().union(*map(runs, read)) - set().union(*(runs(r) for r in read if not r["unmet"]))


def evaluation_check(suite, k, t, got):
    """(shift, sd): how far re-scoring training seed 0 under a second evaluation seed moves a comparison's
    difference, beside the difference's sd over training seeds; None until both are known. The comparison, not each
    arm's level, is what the check is about: a level moves with the held-out draws (some code is easier to predict
    than other code) alike for every arm, and the arms share their draws."""
    diffs = differences(suite, k, t, got)
    again = differences(suite, k, t, {run: {0: seeds_[0]["_rescored"]} for run, seeds_ in got.items()
                                      if (seeds_.get(0) or {}).get("_rescored")})
    if 0 not in diffs or 0 not in again or len(diffs) < 2:
        return None
    return abs(again[0] - diffs[0]), float(np.std(list(diffs.values()), ddof=1))


# ----------------------------------------------------------------------------------------------------------------
# The plan: seeds per claim by power, costs (findings/runs.py's estimate_s), and the budget.

def needed_seeds(suite, k, got, level):
    """(seeds or None, where the spread came from) for claim k: 80% power at `level` for every primary comparison
    (plumbing/stats.py's seeds_for_power), from the sd of its per-seed differences once PILOT_SEEDS are in (all it
    has), else the assumed sd; None when no count up to 64 gives it."""
    n, source = suite.LEAST_SEEDS, "assumed"
    for t in (t for t in suite.CLAIMS[k]["tests"] if t["primary"]):
        d = list(differences(suite, k, t, got).values())
        sd = float(np.std(d, ddof=1)) if len(d) >= suite.PILOT_SEEDS else t["sd"]
        source = f"{len(d)} seeds" if len(d) >= suite.PILOT_SEEDS else source
        need = stats.seeds_for_power(sd, delta_of(t), level, t["expect"], least=suite.LEAST_SEEDS)
        if need is None:
            return None, source
        n = max(n, need)
    return n, source


def recorded(suite, k, got, settled=()):
    """The seeds every arm of claim k has (those its comparisons pair), settled runs aside."""
    return min((len(got.get(sp["run"], {})) for sp in arms(suite, k).values() if sp["run"] not in settled), default=0)


def seed_cost(suite, k, got, settled=()):
    """Thread-seconds of one more seed of claim k: every run it reads (shared ones too) but settled ones, and for an
    analysis the run it reads, whose checkpoints a fresh clone does not have (they are not committed)."""
    return sum(estimate_s(suite, sp, got) + (estimate_s(suite, analysed(suite, sp), got) if "analyze" in sp else 0)
               for sp in arms(suite, k).values() if sp["run"] not in settled)


def plan_seeds(suite, c, got=None):
    """The plan within BUDGET_HOURS of seeds beyond those recorded: first every claim's LEAST_SEEDS; then only a
    claim whose verdict can still change asks for more (a primary comparison reading inconclusive or pending): as
    many as give each such comparison 80% power at the family's level; the cheapest to settle first, while the
    budget lasts (a seed of a claim costs every run it reads, shared ones included). A claim it cannot settle stays
    at its first seeds and is listed as not affordable; a run two claims read trains to the larger count. The
    budget counts what the runs recorded since BUDGET_SINCE have spent. Returns dict(seeds={claim: n}, level, open,
    short, settled, spent)."""
    got = by_run(current(suite, c)[0]) if got is None else got
    rows = analysis(suite, got)
    level = stats.family_level(sum(r["test"]["primary"] for r in rows))
    open_ = {r["claim"] for r in rows if r["test"]["primary"] and r["verdict"] in ("inconclusive", "pending")}
    settled = settled_runs(suite, rows)
    cost = {k: seed_cost(suite, k, got, settled) for k in suite.CLAIMS if k != 8}
    has = {k: recorded(suite, k, got, settled) for k in cost}
    least = {k: max(suite.LEAST_SEEDS, has[k]) for k in cost}   # every claim's first seeds first
    spent = sum(r["wall_s"] for r in read_lines(c.results) if r.get("finished", "") >= suite.BUDGET_SINCE)
    budget = suite.BUDGET_HOURS * 3600 - spent - sum((least[k] - has[k]) * cost[k] for k in cost)
    need = {k: needed_seeds(suite, k, got, level)[0] if k in open_ else least[k] for k in cost}
    given, short = stats.allocate(need, least, cost, budget)
    return dict(seeds={**given, 8: 1}, level=level, open=open_, short=set(short), settled=settled, spent=spent)


def own_runs(suite, k):
    """The runs claim k trains itself (not those it shares with an earlier claim)."""
    return [sp for name, sp in arms(suite, k).items() if sp["run"].startswith(f"{k}/")]

# ----------------------------------------------------------------------------------------------------------------
# The table: from the results file alone.

def show_diff(d, t, sign="+"):
    """A difference as the table prints it: a log ratio as the percentage it stands for (e^d - 1)."""
    return f"{100 * np.expm1(d):{sign}.2f}%" if t["relative"] else f"{d:{sign}.4f}"


def show_verdict(r):
    """The verdict, with the side a 'below δ' effect lies on."""
    if r["verdict"] != "below δ":
        return r["verdict"]
    return "below δ, " + ("on the paper's side" if r["stats"]["mean"] > 0 else "against the paper's side")


def describe_side(ref):
    return f"({ref.a} - {ref.b})" if isinstance(ref, Minus) else str(ref)


def describe_arm(name, spec):
    if "analyze" in spec:
        return f"`{name}` = the routing analysis of the runs {spec['analyze']}" + (
            " at the weights each seed drew before training" if spec["evaluation"].get("untrained") else "")
    if not spec["run"].endswith("/" + name):
        return f"`{name}` = the run {spec['run']}"
    sets = " ".join(f"--{k}={v}" for k, v in spec["changes"].items())
    return f"`{name}` = `{spec['config']} {sets}`"


def mean_sd(values):
    return "pending" if not values else f"{np.mean(values):.4f}" + (f" ± {np.std(values, ddof=1):.4f}"
                                                                    if len(values) > 1 else "")


def comparison_row(r):
    """A comparison as a table row: per-seed differences, mean and interval, verdict, the paper's verdict."""
    t, s = r["test"], r["stats"]
    diffs = ", ".join(show_diff(d, t) for d in r["diffs"].values()) or "-"
    interval = "-" if s["lo"] is None else \
        f"{show_diff(s['mean'], t)} [{show_diff(s['lo'], t)}, {show_diff(s['hi'], t)}]"
    delta = f"{100 * t['delta']:g}%" if t["relative"] else f"{t['delta']:g}"
    what = {"lower": "<", "higher": ">"}[t["better"]]
    return (f"| a = {describe_side(t['a'])} {what} b = {describe_side(t['b'])} | {t['metric']} | {delta} | "
            f"{'yes' if t['primary'] else 'no'} | {diffs} | {interval} | {100 * s['level']:.2f}% | "
            f"**{show_verdict(r)}** | {t['expect']} |")


def layer_table(metric, runs):
    """A per-layer metric (a list per run) for each arm, mean ± sd over seeds, and the first two arms' paired
    difference with its 95% interval, layer by layer."""
    (a, ra), (b, rb) = list(runs.items())[:2]
    seeds = sorted(set(ra) & set(rb))
    depth = max((len(m.get(metric, [])) for r in runs.values() for m in r.values()), default=0)
    head = [f"| {metric} by layer | " + " | ".join(runs) + f" | {a} - {b} [95% interval] |",
            "| ---: |" + " ---: |" * (len(runs) + 1)]
    rows = []
    for i in range(depth):
        cells = [mean_sd([m[metric][i] for m in r.values() if len(m.get(metric, [])) > i]) for r in runs.values()]
        s = stats.paired([ra[x][metric][i] - rb[x][metric][i] for x in seeds if metric in ra[x] and metric in rb[x]])
        diff = "-" if s["lo"] is None else f"{s['mean']:+.3f} [{s['lo']:+.3f}, {s['hi']:+.3f}]"
        rows.append(f"| {i} | " + " | ".join(cells) + f" | {diff} |")
    return head + rows


def claim_section(suite, k, rows, got, planned):
    """Claim k's part of docs/claims.md: the paper's words, arms, their numbers, the comparisons, the evaluation's
    noise; and its thread-minutes so far and the seeds every arm has (those its comparisons pair)."""
    cl, specs = suite.CLAIMS[k], arms(suite, k)
    runs = {name: got.get(sp["run"], {}) for name, sp in specs.items()}
    finished = [m for sp in own_runs(suite, k) for m in got.get(sp["run"], {}).values()]
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
    for metric in cl.get("layers", []):
        lines += ["", *layer_table(metric, runs)]
    lines += ["", "| comparison | metric | δ | primary | per-seed difference (+: a beats b) | mean [interval] | "
              "interval's level | verdict | paper |", "| --- | --- | ---: | --- | --- | --- | ---: | --- | --- |"]
    lines += [comparison_row(r) for r in rows if r["claim"] == k]
    problems = list(dict.fromkeys(p for r in rows if r["claim"] == k for p in r["why_untestable"]))
    if problems:
        lines += ["", "Untestable here (the verdicts it touches): " + "; ".join(problems) + "."]
    checks = [(r, evaluation_check(suite, k, r["test"], got)) for r in rows
              if r["claim"] == k and r["test"]["primary"]]
    if any(x for _, x in checks):
        lines += ["", "Evaluation noise: re-scoring seed 0 under evaluation seed 1 moves each primary difference by "
                  + "; ".join(f"{show_diff(x[0], r['test'], '')} ({r['test']['metric']}; its sd over training seeds "
                              f"is {show_diff(x[1], r['test'], '')})" for r, x in checks if x) + "."]
    return lines + [""], minutes, recorded(suite, k, got, settled_runs(suite, rows))


def sweep_section(suite, got):
    """Claim 8 on the CPU: the IsoFLOP minima and exponents of the sweep's runs, once two budgets have three runs."""
    runs = [dict(m, D=m["tokens"] if "tokens" in m else m["C"] / (6 * m["N"]), text=m["text_text_loss"],
                 vision=m["caption_to_image_flow_loss"])
            for run, seeds_ in got.items() if run.startswith("8/") for m in seeds_.values()
            if "text_text_loss" in m and "caption_to_image_flow_loss" in m]
    if sum(sum(r["budget"] == b for r in runs) >= 3 for b in {r["budget"] for r in runs}) < 2:
        return [f"CPU demonstration: {len(runs)} of {len(sweep_arms(suite))} sweep runs finished "
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
five seeds each, read with plumbing/stats.py as claims 1-7 are."""


def plan_section(suite, got, plan):
    rows = ["| claim | runs per seed | steps per run | thread-min per seed | seeds for 80% power (sd from) | seeds "
            "recorded | seeds planned | thread-hours to go |", "| ---: | ---: | --- | ---: | --- | ---: | ---: | ---: |"]
    total = 0.0
    for k in (k for k in suite.CLAIMS if k != 8):
        own, has = own_runs(suite, k), recorded(suite, k, got, plan["settled"])
        per_seed = seed_cost(suite, k, got, plan["settled"]) / 60
        n, source = needed_seeds(suite, k, got, plan["level"]) if k in plan["open"] else (None, "settled")
        to_go = per_seed * max(0, plan["seeds"][k] - has) / 60
        total += to_go
        steps = ", ".join(str(sp["changes"]["max_iters"]) for sp in own
                          if "changes" in sp and sp["run"] not in plan["settled"]) or "analysis only"
        power = "- (settled)" if source == "settled" else f"{n or 'more than 64'} ({source})"
        extended = sum(sp["run"] not in plan["settled"] for sp in own)
        rows.append(f"| {k} | {extended} | {steps} | {per_seed:.0f} | {power}{', not affordable' * (k in plan['short'])}"
                    f" | {has} | {plan['seeds'][k]} | {to_go:.1f} |")
    rows.append(f"| all 1-7 | | | | | | | {total:.1f} more, {plan['spent'] / 3600:.1f} spent since "
                f"{suite.BUDGET_SINCE}, of {suite.BUDGET_HOURS:g}; {total / 2:.1f} h of wall time "
                f"with `--jobs=2` |")
    sweep = sum(estimate_s(suite, sp, got) for sp in sweep_arms(suite).values()) / 3600
    short = ", ".join(map(str, sorted(plan["short"])))
    return rows + ["", f"Every claim first gets {suite.LEAST_SEEDS} seeds; more go only where a verdict can still "
                   f"change (a primary comparison reading inconclusive or pending): as many as give it 80% power at the family's level "
                   f"({100 * plan['level']:.2f}%) against an effect of δ (or, where the paper expects none, at no "
                   f"effect), from the spread of its per-seed differences; the cheapest to settle first, a seed costing "
                   f"every run the claim reads (shared ones too; an analysis, the training it reads)."
                   + (f" Not affordable within the budget: claim(s) {short}, which stay at the seeds planned."
                      if short else "")
                   + (f" No more seeds for {', '.join(sorted(plan['settled']))}: every primary comparison reading them "
                      f"is untestable by a run that has not learned, which no later seed lifts." if plan["settled"]
                      else "")
                   + f" Claim 8's CPU demonstration, one seed per point: {len(sweep_arms(suite))} runs, {sweep:.1f} "
                   f"thread-hours, outside the budget."]


# (a backslash ending a line joins it to the next: the table keeps its line, the source stays within 120 characters)
HOW = """Written by `python claims.py` from `results/claims.jsonl` (one line per finished run, suite {suite}), not by
hand. Procedure (declared before the pilot, except where "Changes after data" below says otherwise):

- **Arms** train on the toy recipe as `configs/toy.py` (claims 1-5, 7) or `configs/toy_nav.py` (claim 6) stand,
  plus each claim's changes, one thread per run; {fractions}. Where a claim adds data, the other arm trains as many
  steps as give it equal in-task positions (measured on packed batches); mixtures given as shares are shares of
  positions.
- **Fixed evaluation** (findings/evaluation.py): every arm and seed of a claim is scored on the same validation examples
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
  plumbing/stdlib_corpus.py; held-out files, a tenth of them by a hash of their path, are never drawn in training), \
and report
  `text_text_loss` on those held-out files. An arm that mixes kinds of documents pays, after BOS, for not knowing
  which kind comes: ln(1 / the kind's share of documents) on the first token (the suite's first version measured
  this as a "reversed" claim 4). No document-type marker (the paper has none): the fixed evaluation leaves each
  document's first target out, and a document then says what it is (Python source, or BOI for video). The toy
  grammar stays where claims need captions (3, 5, 6); its text loss is no claim's metric, and a caption given its
  clean image has an entropy floor of 0 (the caption is a function of the scene).
- **Statistics** (plumbing/stats.py): per comparison, per-seed differences a - b (seeds pair the arms; oriented so \
that +
  means a beats b; relative ones as log ratios, printed as the percentage they stand for) and their t-interval. The
  suite's {primaries} primary comparisons are one family: each interval at {level:.2f}% (Bonferroni: all cover
  together with probability >= 95%); the others at 95%, read alone. Each verdict is read off its interval alone,
  against δ, the smallest effect that matters: *holds* (the interval above 0 and the estimate >= δ), *reversed*
  (below 0 and <= -δ), *below δ* (the interval excludes 0, the estimate is smaller than δ: an effect too small to
  matter, on the side named), *no effect* (the interval contains 0 and lies inside ±δ), *inconclusive* (anything
  else), *untestable here* (an arm it reads has not learned the task in some run, as claim 6's requirement states;
  or sits within δ of its metric's declared floor or ceiling on the side where the effect would show). The "paper"
  column is the verdict the paper predicts.
- **Seeds**: seeds 0-{last_pilot} of every arm were the pilot, then every claim had {least}. More go only where a
  verdict can still change: as many as give 80% power at the family's level, within {budget:g} thread-hours
  counted from {since} (every run recorded since then), cheapest first (the plan below). Runs of an earlier recipe (another fingerprint) are never mixed in.
- The suite's first version (56 trainings, two seeds per arm, verdicts from non-overlapping min-max ranges, each
  run evaluated on its own seed's draws) is kept in `results/claims-v1.jsonl`; its table is this file's history."""


def findings_sentence(suite, rows, got):
    """The README's findings, written from the results as docs/claims.md is (tests/test_readme.py checks the README
    holds it): each claim's primary verdicts, and the interval of every one that is not inconclusive or pending."""
    parts = []
    for k in (k for k in suite.CLAIMS if k != 8):
        said = []
        for r in (r for r in rows if r["claim"] == k and r["test"]["primary"]):
            t, st = r["test"], r["stats"]
            shown = show_verdict(r).replace("on the paper's side", "paper's side").replace("against the paper's side",
                                                                                         "against the paper")
            if r["verdict"] not in ("inconclusive", "pending", "untestable here"):
                f = (lambda d: f"{100 * np.expm1(d):+.1f}%") if t["relative"] else \
                    (lambda d, n=2 if abs(st["mean"]) >= 0.1 else 3: f"{d:+.{n}f}")
                shown += (f" ({describe_side(t['a'])} vs {describe_side(t['b'])}, {t['metric']}: "
                          f"{f(st['mean'])} [{f(st['lo'])}, {f(st['hi'])}])")
            said.append(shown)
        n = recorded(suite, k, got, settled_runs(suite, rows))
        parts.append(f"claim {k} ({n} seed{'s' * (n != 1)}) " + ", ".join(said))
    return "; ".join(parts) + "."


HISTORY = "### The claims suite: changes after data"


def history():
    """The table of designs that changed after their data, as docs/log.md keeps it (the one log page)."""
    log = open(os.path.join(REPO, "docs", "log.md"), encoding="utf-8").read()
    part = log[log.index(HISTORY) + len(HISTORY):] if HISTORY in log else ""
    return [ln for ln in part.split("\n## ")[0].strip().splitlines() if ln.startswith("|")]


def write_table(suite, c):
    """docs/claims.md (c.table) from the results file alone: the procedure, the verdicts, the plan, each claim."""
    lines, stale = current(suite, c)
    got = by_run(lines)
    plan = plan_seeds(suite, c, got)
    planned = plan["seeds"]
    rows = analysis(suite, got)
    claims, summary, sections = suite.CLAIMS, [], []
    for k in (k for k in claims if k != 8):
        part, minutes, paired = claim_section(suite, k, rows, got, planned)
        sections += part
        verdicts = [show_verdict(r) + ("" if r["test"]["expect"] == "holds" else f" (paper: {r['test']['expect']})")
                    for r in rows if r["claim"] == k and r["test"]["primary"]]
        summary.append(f"| {k} | {claims[k]['title']} | {claims[k]['paper']} | **{'; '.join(verdicts)}** | "
                       f"{paired} | {minutes:.0f} |")
    cl8 = claims[8]
    sections += [f"## 8. {cl8['title']}", "", f"Paper ({cl8['paper']}): “{cl8['quote']}”", "", GPU_RECIPE, "",
                 *sweep_section(suite, got), ""]
    summary.append(f"| 8 | {cl8['title']} | {cl8['paper']} | **GPU recipe** (CPU: a demonstration) | - | - |")
    where = "; ".join(sorted({m["_machine"] for s in got.values() for m in s.values()})) or "-"
    head = ["# The paper's claims in miniature", "",
            HOW.format(suite=suite.SUITE, eval_seed=evaluation.EVAL_SEED, eval_seed1=evaluation.EVAL_SEED + 1,
                       batches=c.eval_batches, prompts=c.eval_prompts, episodes=c.episodes,
                       last_pilot=suite.PILOT_SEEDS - 1, least=suite.LEAST_SEEDS, budget=suite.BUDGET_HOURS,
                       since=suite.BUDGET_SINCE,
                       level=100 * stats.family_level(sum(t["primary"] for k in claims for t in claims[k]["tests"])),
                       primaries=sum(t["primary"] for k in claims for t in claims[k]["tests"]),
                       fractions="claims " + ", ".join(f"{k}" for k in claims if "fraction" in claims[k]) +
                       " train " + ", ".join(f"{cl['fraction']:g}" for cl in claims.values() if "fraction" in cl) +
                       " of their config's max_iters (the budget's lever; an arm that trains a multiple of "
                       "it says so in its claim's note)"),
            "", f"Machines: {where}." + (f" {stale} lines of the results file were measured under another recipe or "
                                         f"procedure and are left out." if stale else ""), "",
            "| claim | finding | paper | verdict of the primary comparisons | seeds | thread-min |",
            "| ---: | --- | --- | --- | ---: | ---: |", *summary, "", "## Changes after data", "",
            "Designs that changed after some of their data, with the commit ([log.md](log.md), which keeps this "
            "table):", "", *history(), "", "## Plan", "",
            "Pilot, then the suite (each resumes where it stopped; `--commit=True` commits each finished run):", "",
            "```bash", "python claims.py --seeds=3 --jobs=2      # seeds 0-2 of every arm: the spread the plan reads",
            "python claims.py --jobs=2                # every claim up to its planned seeds", "```", "",
            "Estimated at one thread per run on the 2-core CPU (from each run's FLOPs until runs have finished, then "
            "their measured wall time):", "", *plan_section(suite, got, plan), ""]
    os.makedirs(os.path.dirname(c.table) or ".", exist_ok=True)
    print("the README's findings:", findings_sentence(suite, rows, got))
    return write_lines(c.table, head + sections)

