"""
What the claims suite's results say, and docs/claims.md written from them alone: every comparison's per-seed
differences, intervals and verdicts (plumbing/stats.py; Holm across the suite's primary comparisons), how many seeds
each claim gets (the pilot's spread within the budget), and the table.

Like findings/runs.py, every function that needs the claims' declarations takes the claims module as `suite`.
"""
import os

import numpy as np

import scaling
from findings import evaluation
from findings.declare import Minus
from findings.runs import arms, by_run, current, estimate_s, sweep_arms
from plumbing import stats
from plumbing.outputs import write_lines

# ----------------------------------------------------------------------------------------------------------------
# The statistics: every comparison's per-seed differences, Holm across the primary ones.

def side(ref, metric, runs, seed):
    """One side of a comparison at one seed: a number, an arm's metric, or minus(p, q)."""
    if isinstance(ref, (int, float)):
        return float(ref)
    if isinstance(ref, Minus):
        p, q = side(ref.a, metric, runs, seed), side(ref.b, metric, runs, seed)
        return None if p is None or q is None else p - q
    return runs.get(ref, {}).get(seed, {}).get(metric)


def differences(suite, k, t, got, seeds_=None):
    """{seed: the comparison's difference}, oriented so that positive means a beats b (relative: in units of b)."""
    runs = {name: got.get(spec["run"], {}) for name, spec in arms(suite, k).items()}
    out = {}
    for seed in sorted(seeds_ if seeds_ is not None else {s for r in runs.values() for s in r}):
        a, b = side(t["a"], t["metric"], runs, seed), side(t["b"], t["metric"], runs, seed)
        if a is not None and b is not None:
            d = (a - b) / abs(b) if t["relative"] else a - b
            out[seed] = d if t["better"] == "higher" else -d
    return out


def unmet(suite, k, got):
    """A claim's unmet requirements (runs that have not learned what the claim is about), as short phrases."""
    bad = []
    for r in suite.CLAIMS[k].get("requires", []):
        names, metric, better, bar = r["arms"], r["metric"], r["better"], r["bar"]
        for name in names:
            for seed, m in sorted(got.get(arms(suite, k)[name]["run"], {}).items()):
                value = m.get(bar) if isinstance(bar, str) else bar
                if metric not in m or value is None or (m[metric] < value if better == "lower" else m[metric] > value):
                    continue
                shown = f"{bar} {value:.4f}" if isinstance(bar, str) else f"{bar:g}"
                bad.append(f"{name} seed {seed}: {metric} {m[metric]:.4f}, not {better} than {shown}")
    return bad


def analysis(suite, got):
    """Every comparison of claims 1-7: differences, interval, p-values (Holm-adjusted for the primary ones, over the
    whole suite) and verdict."""
    rows = []
    for k in suite.CLAIMS:
        for t in suite.CLAIMS[k]["tests"]:
            d = differences(suite, k, t, got)
            rows.append(dict(claim=k, test=t, diffs=d, stats=stats.paired(list(d.values()), t["delta"])))
    primary = [r for r in rows if r["test"]["primary"]]   # all of them: one still pending counts with p = 1
    for key in ("p_zero", "p_equal"):
        for r, p in zip(primary, stats.holm([r["stats"][key] for r in primary])):
            r[key + "_holm"] = p
    for r in rows:
        r["verdict"] = stats.verdict(r["stats"], r["test"]["delta"], r.get("p_zero_holm"), r.get("p_equal_holm"))
        if r["verdict"] != "pending" and unmet(suite, r["claim"], got):
            r["verdict"] = "inconclusive"   # the models have not learned what the claim is about
    return rows


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
# The plan: seeds per claim from the pilot's spread, costs (findings/runs.py's estimate_s), and the budget.

def groups(suite):
    """Claims that share runs (2's dense arm is 1's; 7 analyses 2's MoE runs) share one number of seeds."""
    parent = {k: k for k in suite.CLAIMS if k != 8}
    for k in parent:
        for sp in suite.CLAIMS[k]["arms"].values():
            ref = sp if isinstance(sp, str) else sp.get("analyze", "")
            if ref:
                parent[k] = parent[int(ref.split("/")[0])]
    return {k: parent[parent[k]] for k in parent}


def needed_seeds(suite, k, got):
    """(seeds, where the spread came from) for claim k: enough for every primary comparison's 95% interval to be
    narrower than its delta, from the sd of its first PILOT_SEEDS seeds once measured, else the assumed sd."""
    n, source, pilot = suite.LEAST_SEEDS, "assumed", suite.PILOT_SEEDS
    for t in (t for t in suite.CLAIMS[k]["tests"] if t["primary"]):
        d = list(differences(suite, k, t, got, range(pilot)).values())
        sd = float(np.std(d, ddof=1)) if len(d) == pilot else t["sd"]
        source = "pilot" if len(d) == pilot else source
        n = max(n, stats.seeds_needed(sd, t["delta"]))
    return n, source


def plan_seeds(suite, c, got=None):
    """{claim: seeds} for claims 1-7 (claim 8: 1), within BUDGET_HOURS."""
    got = by_run(current(suite, c)[0]) if got is None else got
    group, need, cost = groups(suite), {}, {}
    for k in group:
        need[group[k]] = max(need.get(group[k], 0), needed_seeds(suite, k, got)[0])
        cost[group[k]] = cost.get(group[k], 0.0) + sum(estimate_s(suite, sp, got) for sp in own_runs(suite, k))
    given = stats.allocate(need, cost, suite.BUDGET_HOURS * 3600)
    return {**{k: given[group[k]] for k in group}, 8: 1}


def own_runs(suite, k):
    """The runs claim k trains itself (not those it shares with an earlier claim)."""
    return [sp for name, sp in arms(suite, k).items() if sp["run"].startswith(f"{k}/")]

# ----------------------------------------------------------------------------------------------------------------
# The table: from the results file alone.

def show_diff(d, t, sign="+"):
    return f"{100 * d:{sign}.2f}%" if t["relative"] else f"{d:{sign}.4f}"


def describe_side(ref):
    return f"({ref.a} - {ref.b})" if isinstance(ref, Minus) else str(ref)


def describe_arm(name, spec):
    if "analyze" in spec:
        return f"`{name}` = the routing analysis of the runs {spec['analyze']}"
    if not spec["run"].endswith("/" + name):
        return f"`{name}` = the run {spec['run']}"
    sets = " ".join(f"--{k}={v}" for k, v in spec["changes"].items())
    return f"`{name}` = `{spec['config']} {sets}`"


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
    lines += ["", "| comparison | metric | δ | primary | per-seed difference (+: a beats b) | mean [95% interval] | "
              "p (Holm for primary) | verdict | paper |", "| --- | --- | ---: | --- | --- | --- | ---: | --- | --- |"]
    lines += [comparison_row(r) for r in rows if r["claim"] == k]
    problems = unmet(suite, k, got)
    if problems:
        lines += ["", "Not yet a test of the claim (its verdicts read inconclusive): " + "; ".join(problems) + "."]
    checks = [(r, evaluation_check(suite, k, r["test"], got)) for r in rows
              if r["claim"] == k and r["test"]["primary"]]
    if any(x for _, x in checks):
        lines += ["", "Evaluation noise: re-scoring seed 0 under evaluation seed 1 moves each primary difference by "
                  + "; ".join(f"{show_diff(x[0], r['test'], '')} ({r['test']['metric']}; its sd over training seeds "
                              f"is {show_diff(x[1], r['test'], '')})" for r, x in checks if x) + "."]
    return lines + [""], minutes, min(len(seeds_) for seeds_ in runs.values())


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


def plan_section(suite, got, planned):
    rows = ["| claim | runs per seed | steps per run | thread-min per seed | seeds needed (sd from) | seeds planned | "
            "thread-hours |", "| ---: | ---: | --- | ---: | --- | ---: | ---: |"]
    total = 0.0
    for k in (k for k in suite.CLAIMS if k != 8):
        own = own_runs(suite, k)
        per_seed = sum(estimate_s(suite, sp, got) for sp in own) / 60
        n, source = needed_seeds(suite, k, got)
        total += per_seed * planned[k] / 60
        steps = ", ".join(str(sp["changes"]["max_iters"]) for sp in own if "changes" in sp) or "analysis only"
        rows.append(f"| {k} | {len(own)} | {steps} | {per_seed:.0f} | {n} ({source}) | {planned[k]} | "
                    f"{per_seed * planned[k] / 60:.1f} |")
    sweep = sum(estimate_s(suite, sp, got) for sp in sweep_arms(suite).values()) / 3600
    over = " (over the budget: lower a claim's fraction)" if total > suite.BUDGET_HOURS else ""
    rows.append(f"| all 1-7 | | | | | | {total:.1f} of {suite.BUDGET_HOURS:g}{over}; {total / 2:.1f} h of wall time "
                f"with `--jobs=2` |")
    return rows + ["", f"Claim 8's CPU demonstration, one seed per point: {len(sweep_arms(suite))} runs, {sweep:.1f} "
                   f"thread-hours, outside the budget."]


# (a backslash ending a line joins it to the next: the table keeps its line, the source stays within 120 characters)
HOW = """Written by `python claims.py` from `results/claims.jsonl` (one line per finished run, suite {suite}), not by
hand. Procedure, declared before any run:

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


def write_table(suite, c):
    """docs/claims.md (c.table) from the results file alone: the procedure, the verdicts, the plan, each claim."""
    lines, stale = current(suite, c)
    got = by_run(lines)
    rows = analysis(suite, got)
    planned = plan_seeds(suite, c, got)
    claims, summary, sections = suite.CLAIMS, [], []
    for k in (k for k in claims if k != 8):
        part, minutes, paired = claim_section(suite, k, rows, got, planned)
        sections += part
        verdicts = [r["verdict"] + ("" if r["test"]["expect"] == "holds" else f" (paper: {r['test']['expect']})")
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
                       primaries=sum(t["primary"] for k in claims for t in claims[k]["tests"]),
                       fractions="claims " + ", ".join(f"{k}" for k in claims if "fraction" in claims[k]) +
                       " train " + ", ".join(f"{cl['fraction']:g}" for cl in claims.values() if "fraction" in cl) +
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
            "their measured wall time):", "", *plan_section(suite, got, planned), ""]
    os.makedirs(os.path.dirname(c.table) or ".", exist_ok=True)
    return write_lines(c.table, head + sections)

