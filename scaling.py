"""
Scaling laws: IsoFLOP sweeps and compute-optimal fits for vision and language in one model (section 7).

For each compute budget C, train a family of model sizes N for D = C / (6 N) tokens each; per budget and per
modality, fit a parabola of held-out loss against log N and take its minimum N_opt, and one against log D, the
real (non-padding) tokens each run logged, for D_opt; then regress N_opt ~ C^a and D_opt ~ C^b across budgets.
a + b = 1 only if C = 6 N D held: with attention FLOPs and padding it does not, so a + b checks the fit. The paper
finds language a ~ 0.47 and vision a ~ 0.37 for dense models: vision wants more data per parameter, increasingly so
with scale. The loss frontier is fitted as L(C) = A C^-alpha + E, with E chosen by grid search in log space.

    python scaling.py plan configs/toy.py --budgets=3e12,1e13,3e13 --depths=2,3,4,6   # writes out/sweep/sweep.sh
    bash out/sweep/sweep.sh                                                           # or hand it to a cluster
    python scaling.py fit --sweep_dir=out/sweep                                       # table, results, plots
"""
import json
import os
import sys
import warnings
from types import SimpleNamespace

import numpy as np
import torch

import train
from plumbing.build import build
from plumbing.logs import read_log
from plumbing.outputs import refuse_overwrite, write_lines
from plumbing.pictures import pyplot, save_figure
from plumbing.settings import cli, configure, settings

# ----------------------------------------------------------------------------------------------------------------
# Planning: FLOPs from the model itself (model.flops_per_token), so MoE counts its active parameters only.


def family(depth, aspect):
    """The model family of a sweep: width grows with depth (d_model = aspect * depth), 64-wide heads."""
    d = aspect * depth
    return dict(n_layer=depth, d_model=d, n_head=max(1, d // 64), n_kv_head=max(1, d // 64))


def model_size(c, depth):
    """(N_active, training FLOPs per token) of the family member at this depth under config c."""
    with torch.device("meta"):   # count parameters without allocating them
        model = build(SimpleNamespace(**{**vars(c), **family(depth, c.aspect)}), "meta")[3]
    n_active = model.num_params()[1]
    return n_active, (model.flops_per_token(c.seq_len) if c.attention_flops else 6 * n_active)


def plan(c, argv_base):
    """One run per (budget, depth): its N, D = C / (flops per token), steps, and the command line."""
    tokens_per_step = c.batch_size * c.seq_len * c.gradient_accumulation_steps
    runs = []
    for budget in [float(b) for b in c.budgets.split(",")]:
        for depth in [int(x) for x in c.depths.split(",")]:
            n, per_token = model_size(c, depth)
            steps = max(1, round(budget / per_token / tokens_per_step))
            name = f"C{budget:.0e}_L{depth}".replace("+", "")
            out = os.path.join(c.sweep_dir, name)
            overrides = {**family(depth, c.aspect), "max_iters": steps, "eval_interval": steps,
                         "warmup_iters": min(c.warmup_iters, steps // 10), "out_dir": out}
            cmd = " ".join(["python train.py", *argv_base, *(f"--{k}={v}" for k, v in overrides.items())])
            runs.append(dict(name=name, out_dir=out, budget=budget, depth=depth, N=n, steps=steps,
                             D=steps * tokens_per_step, C=steps * tokens_per_step * per_token, command=cmd))
    return runs


def collect(sweep_dir):
    """The final evaluation of every planned run that has finished, with its N, C and D, the real tokens it trained
    on (as logged; the plan's D counts padding too). A run without a vision loss stops the fit: it has none to give."""
    results = []
    for run in map(json.loads, open(os.path.join(sweep_dir, "plan.jsonl"))):
        path = os.path.join(run["out_dir"], "metrics.jsonl")
        evals = [r for _, r in read_log(path) if "val_text_loss" in r] if os.path.exists(path) else []
        if evals and "val_flow_loss" not in evals[-1]:
            raise SystemExit(f"{path}: no val_flow_loss (its validation batches held no frames to generate): give "
                             f"val_data a visual source, e.g. val_data={{'caption_to_image': ...}}, and rerun it")
        if evals:
            results.append({**run, "D": evals[-1].get("tokens", run["D"]), "text": evals[-1]["val_text_loss"],
                            "vision": evals[-1]["val_flow_loss"]})
    return results


# ----------------------------------------------------------------------------------------------------------------
# Fitting (numpy only).

def isoflop_minimum(n, loss):
    """The minimum of a parabola of loss against log N: (N_opt, fit coefficients, fitted). When the parabola opens
    downward, its minimum lies outside the sweep, or the best run is the smallest or largest model (the loss may
    still fall toward the sweep's end), fall back to the best run and say so: fitted is False."""
    x, y = np.log(np.asarray(n, float)), np.asarray(loss, float)
    coef, best = None, x[np.argmin(y)]
    if len(set(x)) >= 3:
        with warnings.catch_warnings():    # bootstrap resamples can repeat points: conditioning warnings only
            warnings.simplefilter("ignore")
            coef = np.polyfit(x, y, 2)
        if coef[0] > 0 and x.min() <= -coef[1] / (2 * coef[0]) <= x.max() and x.min() < best < x.max():
            return float(np.exp(-coef[1] / (2 * coef[0]))), coef, True
    return float(np.exp(best)), coef, False


def power_law(x, y):
    """Slope and intercept of log y = slope * log x + intercept."""
    slope, intercept = np.polyfit(np.log(x), np.log(y), 1)
    return float(slope), float(intercept)


def compute_optimal(results, key):
    """Per budget: (C, N_opt, D_opt, fitted, L_best: its lowest loss); then a (N_opt ~ C^a) and b (D_opt ~ C^b)."""
    rows = []
    for budget in sorted({r["budget"] for r in results}):
        runs = [r for r in results if r["budget"] == budget]
        C = float(np.mean([r["C"] for r in runs]))
        n_opt, _, fitted = isoflop_minimum([r["N"] for r in runs], [r[key] for r in runs])
        d_opt, _, d_fitted = isoflop_minimum([r["D"] for r in runs], [r[key] for r in runs])
        rows.append(dict(budget=budget, C=C, N_opt=n_opt, D_opt=d_opt, fitted=fitted and d_fitted,
                         L_best=min(r[key] for r in runs)))
    C, N, D = (np.array([r[k] for r in rows]) for k in ("C", "N_opt", "D_opt"))
    a, b = (power_law(C, N)[0], power_law(C, D)[0]) if len(rows) >= 2 else (float("nan"), float("nan"))
    return rows, a, b


def bootstrap(results, key, n=200, seed=0):
    """95% intervals of a and b: resample the runs within each budget with replacement and refit."""
    rng = np.random.default_rng(seed)
    by_budget = {b: [r for r in results if r["budget"] == b] for b in dict.fromkeys(r["budget"] for r in results)}
    resample = lambda: [runs[i] for runs in by_budget.values() for i in rng.integers(0, len(runs), len(runs))]
    draws = [compute_optimal(resample(), key)[1:] for _ in range(n)]
    lo, hi = np.nanpercentile(np.array(draws), [2.5, 97.5], axis=0)
    return (float(lo[0]), float(hi[0])), (float(lo[1]), float(hi[1]))


def frontier(C, L, grid=200):
    """L(C) = A C^-alpha + E: for each E on a grid below the smallest loss, a line in log(L - E) vs log C gives A
    and alpha; keep the E whose curve has the least squared error in log L."""
    C, L = np.asarray(C, float), np.asarray(L, float)
    best = None
    for E in np.linspace(0, L.min() * (1 - 1e-6), grid):
        slope, intercept = power_law(C, L - E)
        pred = np.exp(intercept) * C ** slope + E
        err = float(np.mean((np.log(L) - np.log(pred)) ** 2))
        if best is None or err < best[3]:
            best = (float(np.exp(intercept)), -slope, float(E), err)
    return dict(A=best[0], alpha=best[1], E=best[2], log_mse=best[3])


def data_ratio_exponent(a_text, b_text, a_vision, b_vision):
    """How the compute-optimal vision/language token ratio grows with model size: eliminating C from N_opt ~ C^a
    and D_opt ~ C^b gives D_opt ~ N_opt^(b/a) per modality (b fitted on its own, not 1 - a), so
    D_vision / D_text ~ N^(b_v/a_v - b_t/a_t)."""
    return b_vision / a_vision - b_text / a_text


# ----------------------------------------------------------------------------------------------------------------
# Plots (matplotlib is optional: the table is always printed).

def plot(results, fits, sweep_dir):
    plt = pyplot()
    if plt is None:
        return []
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for row, (key, (rows, a, b, f)) in enumerate(fits.items()):
        ax = axes[row, 0]
        for budget in sorted({r["budget"] for r in results}):
            runs = sorted((r for r in results if r["budget"] == budget), key=lambda r: r["N"])
            n, loss = [r["N"] for r in runs], [r[key] for r in runs]
            line, = ax.plot(n, loss, "o", label=f"C={budget:.0e}")
            n_opt, coef, fitted = isoflop_minimum(n, loss)
            if coef is not None:
                xs = np.linspace(np.log(min(n)), np.log(max(n)), 50)
                ax.plot(np.exp(xs), np.polyval(coef, xs), "-", color=line.get_color())
            if fitted:
                ax.plot([n_opt], [np.polyval(coef, np.log(n_opt))], "*", ms=14, color=line.get_color())
        ax.set(xscale="log", xlabel="N (active parameters)", ylabel=f"held-out {key} loss", title=f"IsoFLOP: {key}")
        ax.legend(fontsize=7)
        C = [r["C"] for r in rows]
        axes[row, 1].loglog(C, [r["N_opt"] for r in rows], "o-", label=f"N_opt ~ C^{a:.2f}")
        axes[row, 1].loglog(C, [r["D_opt"] for r in rows], "s-", label=f"D_opt ~ C^{b:.2f}")
        axes[row, 1].set(xlabel="C (FLOPs)", title=f"compute-optimal: {key}")
        axes[row, 1].legend()
        axes[row, 2].loglog(C, [x["L_best"] for x in rows], "o")
        cs = np.geomspace(min(C), max(C) * 10, 50)
        axes[row, 2].loglog(cs, f["A"] * cs ** -f["alpha"] + f["E"], "-",
                            label=f"{f['A']:.3g} C^-{f['alpha']:.3f} + {f['E']:.3g}")
        axes[row, 2].set(xlabel="C (FLOPs)", title=f"frontier: {key}")
        axes[row, 2].legend(fontsize=8)
    return [save_figure(fig, os.path.join(sweep_dir, "scaling.png"))]


# ----------------------------------------------------------------------------------------------------------------
# Command line.

budgets = "3e12,1e13,3e13"   # the sweep's compute budgets C, in FLOPs
depths = "2,3,4,6"           # model depths per budget; width = aspect * depth
aspect = 64                  # d_model = aspect * depth
sweep_dir = "out/sweep"      # plan.jsonl, sweep.sh, the runs and the fits
attention_flops = False      # count attention FLOPs in C (6N + 12 L d S), not just 6N
overwrite = False            # plan: replace an existing plan.jsonl and sweep.sh
USAGE = "usage: python scaling.py plan CONFIG [--budgets=... --depths=...] | fit --sweep_dir=..."


def main(argv):
    own = settings(globals())
    keys, sources = {**own, **train.DEFAULTS}, [__file__, train.__file__]
    if not argv or argv[0] not in ("plan", "fit"):
        configure(keys, argv[:1] if argv[:1] in (["-h"], ["--help"]) else [], sources, USAGE)
        raise SystemExit(USAGE)
    action, argv = argv[0], argv[1:]
    c = configure(keys, argv, sources, USAGE)
    if action == "plan":
        refuse_overwrite([os.path.join(c.sweep_dir, n) for n in ("plan.jsonl", "sweep.sh")], c.overwrite)
        base = [a for a in argv if not a.split("=")[0].lstrip("-") in own]
        runs = plan(c, base)
        os.makedirs(c.sweep_dir, exist_ok=True)
        paths = [write_lines(os.path.join(c.sweep_dir, "plan.jsonl"), [json.dumps(r) for r in runs]),
                 write_lines(os.path.join(c.sweep_dir, "sweep.sh"), ["set -e", *(r["command"] for r in runs)])]
        for r in runs:
            print(f"{r['name']:>14}  N={r['N']:.3g}  D={r['D']:.3g}  steps={r['steps']}")
        print(f"wrote {paths[0]} and {paths[1]}")
        return
    if not os.path.isfile(os.path.join(c.sweep_dir, "plan.jsonl")):
        raise SystemExit(f"no plan.jsonl in {c.sweep_dir}: run python scaling.py plan first, or fix --sweep_dir")
    results = collect(c.sweep_dir)
    if len({r["budget"] for r in results}) < 2:
        raise SystemExit(f"{c.sweep_dir}: finished runs at fewer than 2 budgets; run sweep.sh first")
    written = [write_lines(os.path.join(c.sweep_dir, "results.jsonl"), [json.dumps(r) for r in results])]
    fits = {}
    for key in ("text", "vision"):
        rows, a, b = compute_optimal(results, key)
        (a_lo, a_hi), (b_lo, b_hi) = bootstrap(results, key)
        f = frontier([x["C"] for x in rows], [x["L_best"] for x in rows])
        fits[key] = (rows, a, b, f)
        print(f"{key}: N_opt ~ C^{a:.3f} [{a_lo:.3f}, {a_hi:.3f}], D_opt ~ C^{b:.3f} [{b_lo:.3f}, {b_hi:.3f}], "
              f"a + b = {a + b:.3f}; frontier L = {f['A']:.3g} C^-{f['alpha']:.3f} + {f['E']:.3g}")
        for x in rows:
            flag = "" if x["fitted"] else "   (no minimum inside the sweep: best run, flagged)"
            print(f"   C={x['C']:.3g}  N_opt={x['N_opt']:.3g}  D_opt={x['D_opt']:.3g}{flag}")
    (a_text, b_text), (a_vision, b_vision) = fits["text"][1:3], fits["vision"][1:3]
    if a_text > 0 and a_vision > 0:
        print(f"vision/language data ratio ~ N^{data_ratio_exponent(a_text, b_text, a_vision, b_vision):.2f}")
    for path in written + plot(results, fits, c.sweep_dir):
        print(f"wrote {path}")


if __name__ == "__main__":
    cli(main, sys.argv[1:])
