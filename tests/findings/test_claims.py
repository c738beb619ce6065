"""claims.py, its machinery in findings/ and plumbing/stats.py: the verdicts on constructed differences (each of
the four, and Holm), the seed count, one fixed evaluation for every arm, and the runner on a tiny budget (it trains,
scores, reuses finished runs, resumes unfinished ones, and writes the table from the results file alone)."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import claims
import train
from data import Tokenizer
from findings import evaluation, report, runs
from plumbing import stats as ps, toyscores
from plumbing.build import build
from plumbing.checkpoints import save_checkpoint
from plumbing.settings import configure, settings

TINY = "--n_layer=1 --d_model=32 --n_head=1 --n_kv_head=1 --batch_size=2 --sample_steps=2"
RUN = ["--iters_scale=0.004", "--seeds=1", "--eval_batches=1", "--eval_prompts=2", "--episodes=1", f"--extra={TINY}"]


def paths(tmp_path):
    return [f"--runs_dir={tmp_path / 'runs'}", f"--results={tmp_path / 'claims.jsonl'}",
            f"--table={tmp_path / 'claims.md'}"]


def lines(path):
    return [json.loads(x) for x in open(path)]


# ---- statistics -------------------------------------------------------------------------------------------------

def test_t_quantiles_match_the_tables():
    for df, t in ((1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423)):
        assert ps.t_quantile(0.975, df) == pytest.approx(t, abs=1e-4)
    assert ps.t_tail(2.7764451, 4) == pytest.approx(0.025, abs=1e-7)
    assert ps.t_tail(-1.0, 3) == pytest.approx(1 - ps.t_tail(1.0, 3))


def test_each_verdict_on_constructed_differences():
    """The six verdicts, each read off the interval alone: holds needs the interval above 0 and the estimate (not
    the lower end) at least delta; an effect beyond 0 but smaller than delta is 'below δ', whichever side."""
    delta = 0.01
    cases = {"holds": [0.05, 0.06, 0.055, 0.052, 0.058], "reversed": [-0.05, -0.06, -0.055, -0.052, -0.058],
             "below δ": [0.004, 0.005, 0.0045, 0.0042, 0.0048], "no effect": [0.001, -0.001, 0.0005, -0.0005, 0.0],
             "inconclusive": [0.02, -0.015, 0.03, -0.02, 0.01]}
    for want, diffs in cases.items():
        assert ps.verdict(ps.paired(diffs), delta) == want, want
    assert ps.verdict(ps.paired([-d for d in cases["below δ"]]), delta) == "below δ"
    one_side = ps.paired([0.0, 0.015, -0.003, 0.01, 0.004])   # around 0, but reaching past delta on one side
    assert one_side["lo"] < 0 < delta < one_side["hi"] and ps.verdict(one_side, delta) == "inconclusive"
    assert ps.verdict(ps.paired(cases["holds"]), delta, untestable=True) == "untestable here"
    crossing = ps.paired([0.008, 0.035, 0.012, 0.03, 0.015])   # lower end below delta, estimate above it
    assert crossing["lo"] < delta <= crossing["mean"] and ps.verdict(crossing, delta) == "holds"
    claim4 = ps.paired([0.004, 0.009, 0.012, 0.018, 0.007])     # beyond 0, the interval reaching past delta
    assert claim4["lo"] > 0 and claim4["hi"] > delta > claim4["mean"] and ps.verdict(claim4, delta) == "below δ"
    assert ps.verdict(ps.paired([0.05]), delta) == "pending"
    assert set(ps.VERDICTS) == set(cases) | {"untestable here"}
    s = ps.paired(cases["holds"])   # the interval is the t-interval of the mean
    half = ps.t_quantile(0.975, 4) * np.std(cases["holds"], ddof=1) / np.sqrt(5)
    assert (s["lo"], s["hi"]) == pytest.approx((s["mean"] - half, s["mean"] + half))


def test_one_family_widens_every_primary_interval():
    """Twelve primary comparisons: each interval at 1 - 0.05 / 12, which can take a verdict away."""
    assert ps.family_level(12) == pytest.approx(1 - 0.05 / 12)
    diffs = [0.03, 0.05, 0.01, 0.04, 0.02]
    alone, family = ps.paired(diffs), ps.paired(diffs, ps.family_level(12))
    assert ps.verdict(alone, 0.01) == "holds" and ps.verdict(family, 0.01) == "inconclusive"
    assert family["lo"] < alone["lo"] < alone["hi"] < family["hi"]
    # the intervals cover together: 20,000 suites of 12 true-zero comparisons at 5 seeds, 5% or fewer with a miss
    d = np.random.default_rng(0).normal(0, 1, (20000, 12, 5))
    t = np.abs(d.mean(-1)) / (d.std(-1, ddof=1) / np.sqrt(5))
    assert np.mean((t > ps.t_quantile(1 - 0.05 / 24, 4)).any(-1)) < 0.05 + 0.005


def test_relative_differences_are_log_ratios():
    assert ps.log_ratio(0.9, 1.0, "lower") == pytest.approx(np.log(1 / 0.9))
    assert ps.log_ratio(1.0, 0.9, "lower") == pytest.approx(-ps.log_ratio(0.9, 1.0, "lower"))   # symmetric
    assert ps.log_ratio(0.6, 0.5, "higher") == pytest.approx(np.log(1.2))
    # a loss near 0: ratios of seeds (+9%, +58%) swing; their log ratios add as the losses' logs do
    a, b = np.array([0.011, 0.010]), np.array([0.012, 0.0158])
    assert np.allclose([ps.log_ratio(x, y, "lower") for x, y in zip(a, b)], np.log(b) - np.log(a))


def test_a_metric_at_its_bound_is_untestable():
    assert ps.at_bound(0.99, (1.0,), 0.03) and ps.at_bound(0.13, (0.12, 1.0), 0.03)
    assert not ps.at_bound(0.8, (0.12, 1.0), 0.03) and not ps.at_bound(0.99, (0.12,), 0.03)
    # claim 5's third comparison with understanding alone captioning 0.99: untestable, the others read on
    got = {}
    for name, gen, cap in (("generation", 0.70, 0.0), ("generation_text", 0.80, 0.0), ("understanding", 0.0, 0.99),
                           ("both", 0.80, 0.992)):
        got[runs.arms(claims, 5)[name]["run"]] = {s: dict(gen_unseen_scenes=gen + 0.01 * s,
                                                          caption_unseen_scenes=cap + 0.001 * s) for s in range(5)}
    rows = [r for r in report.analysis(claims, got) if r["claim"] == 5 and r["test"]["primary"]]
    assert [r["verdict"] for r in rows] == ["holds", "holds", "untestable here"]
    assert "understanding's caption_unseen_scenes 0.992 lies within δ = 0.03 of its bound 1" in \
        rows[2]["why_untestable"][0]


def test_seeds_for_power_and_the_budget():
    # t(0.975, 9) + t(0.8, 9) = 3.145 <= sqrt(10) = 3.162, and 3.195 > 3 at n = 9
    assert ps.seeds_for_power(sd=1.0, delta=1.0, level=0.95) == 10
    d = np.random.default_rng(0).normal(1.0, 1.0, (20000, 10))   # 10 seeds detect an effect of delta ~80% of the time
    power = np.mean(d.mean(-1) - ps.t_quantile(0.975, 9) * d.std(-1, ddof=1) / np.sqrt(10) > 0)
    assert 0.78 < power < 0.84
    assert ps.seeds_for_power(1.0, 1.0, ps.family_level(12)) > 10   # a stricter level needs more
    assert ps.seeds_for_power(1.0, 1.0, 0.95, expect="no effect") > 10   # equivalence needs more than a difference
    assert ps.seeds_for_power(10.0, 1.0, 0.95, most=20) is None
    given, short = ps.allocate({1: 20, 2: None, 3: 8}, {1: 5, 2: 5, 3: 5}, {1: 10, 2: 10, 3: 10}, budget=160)
    assert given == {1: 5, 2: 5, 3: 8} and sorted(short) == [1, 2]   # 3 first (30), then 150 does not fit


# ---- the fixed evaluation ----------------------------------------------------------------------------------------

def tiny_checkpoint(folder, **changes):
    c = configure(train.DEFAULTS, ["configs/toy.py", *TINY.split(), *(f"--{k}={v}" for k, v in changes.items())])
    torch.manual_seed(c.seed)
    model = build(c, "cpu")[3]
    os.makedirs(folder, exist_ok=True)
    save_checkpoint(os.path.join(folder, "ckpt.pt"), dict(model=model.state_dict(), config=vars(c),
                                                         model_args=vars(model.cfg)))
    return str(folder)


@pytest.mark.slow
def test_the_evaluation_is_identical_across_arms_and_training_seeds(tmp_path, monkeypatch):
    """Two arms (modality FFNs, seed 0; one shared FFN, seed 7): the same validation batches, flow times and noise,
    prompts and sampler noise reach both models."""
    seen, losses, drawn, bos = {}, evaluation.training_losses, toyscores.draw, Tokenizer("bytes").bos

    def spy_losses(model, batch, generator=None, times=None):
        seen[key].append((batch["tokens"].clone(), batch["latents"].clone(), times, generator.get_state().clone()))
        assert (batch["targets"][batch["tokens"] == bos] == -1).all()   # which kind of document comes: not scored
        return losses(model, batch, generator, times)

    def spy_draw(model, tok, captions, steps, guidance, generator=None):
        seen[key].append((list(captions), generator.get_state().clone()))
        return drawn(model, tok, captions, steps, guidance, generator)

    monkeypatch.setattr(evaluation, "training_losses", spy_losses)
    monkeypatch.setattr(toyscores, "draw", spy_draw)
    sizes = SimpleNamespace(batches=2, prompts=3, episodes=1)
    for key, changes in (("a", dict(seed=0)), ("b", dict(seed=7, ffn="shared"))):
        seen[key] = []
        evaluation.score(tiny_checkpoint(tmp_path / key, **changes),
                         dict(sources=("caption_to_image",), oracle=("unseen_scenes", "held_out_bindings")), sizes)
    assert len(seen["a"]) == len(seen["b"]) == 2 + 2   # two batches, then prompts of trained and held-out bindings
    for x, y in zip(seen["a"], seen["b"]):
        assert all(torch.equal(p, q) if torch.is_tensor(p) else p == q for p, q in zip(x, y))


@pytest.mark.slow
def test_rescoring_under_another_evaluation_seed(tmp_path):
    """The same checkpoint scores the same under one evaluation seed, otherwise under another; the runner sets the
    shift beside the spread over training seeds."""
    folder, sizes = tiny_checkpoint(tmp_path / "run"), SimpleNamespace(batches=2, prompts=2, episodes=1)
    ev = dict(sources=("text", "caption_to_image"))
    first, again = evaluation.score(folder, ev, sizes, 0), evaluation.score(folder, ev, sizes, 0)
    other = evaluation.score(folder, ev, sizes, 1)
    assert first == again and first["caption_to_image_flow_loss"] != other["caption_to_image_flow_loss"]
    # claim 4's difference at seed 0 moves from ln(1 / 1.1) to ln(1 / 1.11) (relative ones are log ratios)
    loss = lambda x, again=None: dict(text_text_loss=x, **({"_rescored": dict(text_text_loss=again)} if again else {}))
    got = {"4/text_only": {0: loss(1.0, 1.0), 1: loss(1.0)}, "4/text_video": {0: loss(1.1, 1.11), 1: loss(1.3)}}
    shift, sd = report.evaluation_check(claims, 4, claims.CLAIMS[4]["tests"][0], got)
    assert shift == pytest.approx(np.log(1.11 / 1.1)) and sd == pytest.approx(np.std(np.log([1 / 1.1, 1 / 1.3]), ddof=1))


# ---- the runner and the table -----------------------------------------------------------------------------------

@pytest.mark.slow
def test_trains_scores_then_reuses_and_resumes(tmp_path, monkeypatch):
    claims.main(["--claim=1", "--jobs=2", *RUN, *paths(tmp_path)])
    results = tmp_path / "claims.jsonl"
    first = lines(results)
    assert sorted(r["run"] for r in first) == ["1/modality", "1/shared"]
    for r in first:
        assert r["suite"] == claims.SUITE and r["seed"] == 0 and r["machine"]
        assert r["metrics"]["step"] == round(runs.arms(claims, 1)[r["arm"]]["changes"]["max_iters"] * 0.004)
        assert {"text_text_loss", "caption_to_image_flow_loss", "gen_unseen_scenes",
                "caption_unseen_scenes"} <= set(r["metrics"])
        assert r["rescored"].keys() == r["metrics"].keys() - {"step", "tokens"}   # seed 0: scored twice
        assert r["settings"]["text_source"] == "stdlib" and r["fingerprint"] == runs.fingerprint(
            claims, runs.arms(claims, 1)[r["arm"]], configure(settings(vars(claims)), [*RUN, *paths(tmp_path)]))
    table = open(tmp_path / "claims.md").read()
    assert "| modality | 1 |" in table and "| shared | 1 |" in table and "**pending**" in table

    # a finished run is never trained again: same lines, train.py not started
    monkeypatch.setattr(runs, "train_run", lambda *a: pytest.fail("a finished run was trained again"))
    claims.main(["--claim=1", *RUN, *paths(tmp_path)])
    assert lines(results) == first

    # a claim that asks for a larger evaluation re-scores the kept checkpoints (their folder names the training
    # alone), keeps their training seconds, and its table reads the new lines only
    monkeypatch.undo()
    monkeypatch.setattr(runs, "one_thread", lambda *a, **k: pytest.fail("a trained run was trained again"))
    monkeypatch.setitem(claims.CLAIMS[1]["evaluation"], "prompts", 3)
    claims.main(["--claim=1", *RUN, *paths(tmp_path)])
    larger = {r["run"]: r for r in lines(results)[2:]}
    assert larger.keys() == {r["run"] for r in first}
    for old in first:
        new = larger[old["run"]]
        assert new["fingerprint"] != old["fingerprint"] and new["train_s"] == pytest.approx(old["train_s"], abs=0.1)
        assert new["metrics"]["step"] == old["metrics"]["step"]
    assert "| modality | 1 |" in open(tmp_path / "claims.md").read()
    monkeypatch.undo()

    # a run with a checkpoint but no line or training time resumes from it: train.py --resume at max_iters trains
    # no step and writes no checkpoint (without --resume it would refuse the out_dir), and the run's line comes back
    c = configure(settings(vars(claims)), [*RUN, *paths(tmp_path)])
    where = runs.out_dir(claims, runs.arms(claims, 1)[first[1]["arm"]], 0, c)
    os.remove(os.path.join(where, "train_s.json"))
    ckpt = os.path.join(where, "ckpt.pt")
    stamp = os.path.getmtime(ckpt)
    results.write_text(json.dumps(first[0]) + "\n")
    claims.main(["--claim=1", *RUN, *paths(tmp_path)])
    again = lines(results)
    assert os.path.getmtime(ckpt) == stamp and [r["run"] for r in again] == [r["run"] for r in first]
    assert again[1]["metrics"] == first[1]["metrics"] and again[1]["train_s"] < first[1]["train_s"]


@pytest.mark.slow
def test_an_analysis_trains_its_missing_checkpoints_again(tmp_path, monkeypatch):
    """Claim 7 analyses claim 2's MoE runs: the trained router and the same seed's untrained one (its initial
    weights, not the checkpoint's). In a fresh clone the MoE's line is there but its checkpoint is not: the runner
    trains it again (no second line) and counts that training in the analysis."""
    monkeypatch.setitem(claims.CLAIMS[7]["evaluation"], "batches", 1)
    claims.main(["--claim=7", *RUN, *paths(tmp_path)])
    results = tmp_path / "claims.jsonl"
    first = {r["run"]: r for r in lines(results)}
    assert sorted(first) == ["2/moe", "7/routing", "7/untrained"]
    assert first["7/routing"]["metrics"]["gen_und_r"] != first["7/untrained"]["metrics"]["gen_und_r"]
    import shutil
    shutil.rmtree(tmp_path / "runs")   # a fresh clone: lines, no checkpoints
    results.write_text(json.dumps(first["2/moe"]) + "\n")
    claims.main(["--claim=7", *RUN, *paths(tmp_path)])
    again = {r["run"]: r for r in lines(results)}
    assert sorted(again) == sorted(first) and len(lines(results)) == 3   # no second 2/moe line
    assert again["7/routing"]["train_s"] > 0 and again["7/untrained"]["train_s"] == 0
    assert again["7/routing"]["metrics"] == first["7/routing"]["metrics"]   # the same training, the same routing


def constructed(tmp_path, values, fingerprint=None):
    """Claim 4's two arms with hand-made text losses, one line per (arm, seed), written as the runner writes them."""
    c = configure(settings(vars(claims)), paths(tmp_path))
    with open(tmp_path / "claims.jsonl", "w") as f:
        for name, losses in values.items():
            spec = runs.arms(claims, 4)[name]
            for seed, loss in enumerate(losses):
                f.write(json.dumps(dict(suite=claims.SUITE, run=spec["run"], seed=seed, metrics=dict(
                    text_text_loss=loss), rescored=dict(text_text_loss=loss + 1e-4) if seed == 0 else None,
                    fingerprint=fingerprint or runs.fingerprint(claims, spec, c), wall_s=60.0,
                    machine="test cpu")) + "\n")


def test_table_from_constructed_results(tmp_path):
    """Text + video within 0.1% of text alone, seed by seed: claim 4 reads 'no effect', which the paper expects; its
    per-seed differences, interval and evaluation noise are in the table; a line of another recipe is left out."""
    only = [1.30, 1.32, 1.29, 1.31, 1.33]
    constructed(tmp_path, {"text_only": only, "text_video": [x * (1 + 0.001 * (-1) ** i) for i, x in enumerate(only)]})
    with open(tmp_path / "claims.jsonl", "a") as f:
        f.write(json.dumps(dict(suite=claims.SUITE, run="4/text_only", seed=5, fingerprint="old", metrics={},
                                wall_s=1.0, machine="x")) + "\n")
    claims.main(["--table_only=True", *paths(tmp_path)])
    table = open(tmp_path / "claims.md").read()
    row = next(ln for ln in table.splitlines() if ln.startswith("| a = text_video < b = text_only"))
    assert "| 2% | yes | -0.10%, +0.10%, -0.10%, +0.10%, -0.10% |" in row and "**no effect** | no effect |" in row
    assert "| text_only | 5 | 1.3100 ± 0.0158 |" in table
    assert "**no effect (paper: no effect)**" in table and "1 lines of the results file" in table
    assert "moves each primary difference by 0.00% (text_text_loss; its sd over training seeds is 0.11%)" in table

    constructed(tmp_path, {"text_only": only, "text_video": [x * 1.05 for x in only]})   # 5% worse: reversed
    claims.main(["--table_only=True", *paths(tmp_path)])
    assert "**reversed (paper: no effect)**" in open(tmp_path / "claims.md").read()


def test_equal_in_task_data_and_equal_active_compute():
    """Claim 4's text + video arm trains as many steps as give it text-only's text positions; claim 2's MoE has the
    dense model's active parameters to within one expert."""
    specs = {n: SimpleNamespace(**{**runs.recipe(sp["config"])[0], **sp["changes"]})
             for n, sp in runs.arms(claims, 4).items()}
    text = {n: runs.task_positions(c, "text") * c.max_iters for n, c in specs.items()}
    assert text["text_video"] == pytest.approx(text["text_only"], rel=0.01)
    assert runs.token_shares(specs["text_video"])["text"] == pytest.approx(0.5, abs=0.02)
    moe = SimpleNamespace(**{**runs.recipe(claims.TOY)[0], **runs.arms(claims, 2)["moe"]["changes"]})
    dense = runs.active_params(SimpleNamespace(**{**vars(moe), "ffn": "shared"}))
    expert = 3 * moe.d_model * (4 * moe.d_model // moe.moe_granularity) * moe.n_layer
    assert abs(runs.active_params(moe) - dense) < expert


def test_bad_input_stops_with_one_line(tmp_path):
    for argv, words in ((["--claim=9"], "unknown claim '9'"), (["--seeds=-1"], "seeds must be"),
                        (["--bogus=1"], "unknown config key 'bogus'")):
        with pytest.raises(SystemExit, match=words):
            claims.main([*argv, *paths(tmp_path)])


def test_sweep_demonstration_from_constructed_runs(tmp_path):
    """Claim 8's CPU sweep from hand-made results (one seed per point): the exponents come out, labelled as a
    demonstration."""
    c = configure(settings(vars(claims)), paths(tmp_path))
    arms = runs.sweep_arms(claims)
    mid = {b: sorted(sp["sweep"]["N"] for sp in arms.values() if sp["sweep"]["budget"] == b)[1]
           for b in {sp["sweep"]["budget"] for sp in arms.values()}}
    with open(tmp_path / "claims.jsonl", "w") as f:
        for name, sp in arms.items():
            s = sp["sweep"]
            m = dict(s, tokens=s["C"] / (6 * s["N"]), text_text_loss=1 + np.log(s["N"] / mid[s["budget"]]) ** 2,
                     caption_to_image_flow_loss=1 + 2 * np.log(s["N"] / mid[s["budget"]]) ** 2)
            f.write(json.dumps(dict(suite=claims.SUITE, run=sp["run"], seed=0, metrics=m, wall_s=1.0, machine="cpu",
                                    fingerprint=runs.fingerprint(claims, sp, c))) + "\n")
    claims.main(["--table_only=True", *paths(tmp_path)])
    table = open(tmp_path / "claims.md").read().split("## 8.")[1]
    assert "not evidence for or against the claim" in table and "| text |" in table and "| vision |" in table


def test_a_claim_whose_models_have_not_learned_is_untestable(tmp_path, monkeypatch):
    """Claim 6 with video clearly ahead in planning: 'holds', until one run of nav_1pct does no better than the mean
    frame: then the comparison reading nav_1pct reads 'untestable here' (already at one seed: the requirement binds
    every run) and says why, the comparisons of the arms that learned read on, and the plan and the runner give
    nav_1pct and nav_25pct (read by that comparison alone) no more seeds."""
    def got(bad_seed=None, seeds=5):
        out = {}
        for name, p in (("nav_2x", 1.0), ("nav_video", 0.8), ("nav_1pct", 1.001), ("nav_25pct", 1.0)):
            mean = {s: 0.01 if (name, s) == ("nav_1pct", bad_seed) else 0.05 for s in range(seeds)}
            out[runs.arms(claims, 6)[name]["run"]] = {
                s: dict(plan_final=p * (1 + 0.01 * s), predict_1=0.03 * p, mean_1=mean[s], _wall_s=60.0)
                for s in range(seeds)}
        return out
    first = [r for r in report.analysis(claims, got()) if r["claim"] == 6][0]
    assert first["test"]["a"] == "nav_video" and first["test"]["metric"] == "plan_final"
    assert first["verdict"] == "holds"
    rows = [r for r in report.analysis(claims, got(bad_seed=2)) if r["claim"] == 6]
    assert [r["verdict"] for r in rows] == ["holds", "untestable here", "holds"]
    assert rows[1]["why_untestable"] == ["nav_1pct seed 2: predict_1 0.0300, not lower than mean_1 0.0100"]
    one = [r for r in report.analysis(claims, got(bad_seed=0, seeds=1)) if r["claim"] == 6]
    assert [r["verdict"] for r in one] == ["pending", "untestable here", "pending"]
    settled = {"6/nav_1pct", "6/nav_25pct"}
    assert report.settled_runs(claims, report.analysis(claims, got(bad_seed=0, seeds=1))) == settled
    c = configure(settings(vars(claims)), paths(tmp_path))
    plan = report.plan_seeds(claims, c, got(bad_seed=0, seeds=1))
    assert plan["settled"] == settled and report.recorded(claims, 6, got(bad_seed=0, seeds=1), settled) == 1
    assert report.seed_cost(claims, 6, got(bad_seed=0, seeds=1), settled) == pytest.approx(120.0)
    trained = []
    monkeypatch.setattr(runs, "train_run", lambda spec, seed, where, c: trained.append((spec["run"], seed)) or 0.0)
    monkeypatch.setattr(runs, "measure", lambda *a: ({"plan_final": 1.0}, None))
    runs.run_claims(claims, [6], c, {6: 2}, plan["settled"])
    assert sorted(trained) == [("6/nav_2x", 0), ("6/nav_2x", 1), ("6/nav_video", 0), ("6/nav_video", 1)]
    # the budget counts what every run recorded since it was set has spent (the runner's 4 lines here, and not a
    # line from before), and leaves that much less for more seeds
    with open(tmp_path / "claims.jsonl", "a") as f:
        f.write(json.dumps(dict(run="6/nav_2x", seed=9, wall_s=5000.0, finished="2026-01-01 00:00 UTC")) + "\n")
    spent = sum(r["wall_s"] for r in lines(tmp_path / "claims.jsonl")[:4])
    assert report.plan_seeds(claims, c, got(bad_seed=0, seeds=1))["spent"] == spent


def test_fixed_flow_times_and_the_times_argument(tmp_path):
    """The evaluation's flow times are the training distribution's n-quantiles, shuffled; training_losses given the
    times its generator would have drawn returns the same losses as drawing them."""
    import model as model_module
    from plumbing.build import load_for_inference
    c = SimpleNamespace(time_sampling="uniform", time_shift=4.0)
    times = evaluation.stratified_times(8, c, torch.Generator().manual_seed(0))
    grid = model_module.shift_time((torch.arange(8) + 0.5) / 8, 4.0)
    assert torch.equal(times.sort().values, grid) and not torch.equal(times, grid)
    model, tok, enc, cfg = load_for_inference(tiny_checkpoint(tmp_path / "run"), "cpu")
    data = evaluation.validation_data(tok, enc, cfg, "caption_to_image", 0)
    batch = train.get_batch(data, enc, 0, 0, cfg, "cpu", "val")
    drawn = model_module.sample_time(len(batch["cond"]), cfg, "cpu", torch.Generator().manual_seed(5))
    with torch.no_grad():
        a = model_module.training_losses(model, batch, torch.Generator().manual_seed(5))
        g = torch.Generator().manual_seed(5)
        model_module.sample_time(len(batch["cond"]), cfg, "cpu", g)          # the draw the times stand for
        b = model_module.training_losses(model, batch, g, drawn)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_the_claims_table_is_the_results_file_under_today_s_code(tmp_path):
    """docs/claims.md as `python claims.py --table_only=True` writes it from results/claims.jsonl: every recorded
    run still carries the fingerprint its arm has under today's code and defaults (a default that changed under a
    config that does not name its former value changes them: model.FORMER_DEFAULTS), and the table is the same."""
    from helpers import ROOT
    c = configure(settings(vars(claims)), [f"--table={tmp_path / 'claims.md'}"])
    report.write_table(claims, c)
    assert open(tmp_path / "claims.md").read() == open(os.path.join(ROOT, "docs", "claims.md")).read()
