"""scaling.py: exponents from synthetic Chinchilla-like sweeps, the paper's worked example, flags, the commands."""
import json
import os

import numpy as np
import pytest

import scaling


def chinchilla_sweep(a, budgets=np.geomspace(1e18, 1e22, 5), key="text", E=1.7, A=400.0, B=410.0):
    """L(N, D) = E + A / N^alpha + B / D^beta with beta / (alpha + beta) = a, so N_opt ~ C^a exactly; nine
    models per budget spread over x30 on each side of the optimum."""
    alpha = 0.34
    beta = a * alpha / (1 - a)
    results = []
    for C in budgets:
        ns = np.geomspace(1e6, 1e12, 400)
        loss = E + A / ns ** alpha + B / (C / (6 * ns)) ** beta
        n_star = ns[np.argmin(loss)]
        for n in n_star * np.geomspace(1 / 30, 30, 9):
            D = C / (6 * n)
            results.append(dict(budget=C, C=C, N=n, D=D, **{key: E + A / n ** alpha + B / D ** beta}))
    return results


def test_exponents_recovered_from_chinchilla_like_data():
    rows, a, b = scaling.compute_optimal(chinchilla_sweep(0.47), "text")
    assert abs(a - 0.47) <= 0.02 and abs(b - 0.53) <= 0.02 and abs(a + b - 1) < 1e-9
    assert all(r["fitted"] for r in rows)
    (a_lo, a_hi), _ = scaling.bootstrap(chinchilla_sweep(0.47), "text", n=50)
    assert a_lo <= a <= a_hi


def test_d_opt_is_fitted_from_the_tokens_the_runs_trained_on():
    """When C is not 6 N D (attention FLOPs, padding), D_opt comes from the runs' own token counts, so b is measured,
    not 1 - a: here the real tokens fall behind C / (6 N) as C^-0.2, and b with them."""
    results = chinchilla_sweep(0.47)
    for r in results:
        r["D"] *= (r["C"] / 1e18) ** -0.2
    _, a, b = scaling.compute_optimal(results, "text")
    assert abs(a - 0.47) <= 0.02 and abs(b - 0.33) <= 0.02


def test_paper_worked_example_vision_language_data_ratio():
    """Language a ~ 0.47, vision a ~ 0.37: the optimal vision/language data ratio grows as N^0.57, x14 from 1B to
    100B parameters (and ~x51 at 1T), here from exponents fitted to synthetic sweeps."""
    _, a_text, b_text = scaling.compute_optimal(chinchilla_sweep(0.47), "text")
    _, a_vision, b_vision = scaling.compute_optimal(chinchilla_sweep(0.37, key="vision"), "vision")
    k = scaling.data_ratio_exponent(a_text, b_text, a_vision, b_vision)
    assert abs(k - 0.57) < 0.05
    assert 12 < (100e9 / 1e9) ** k < 16
    assert abs(scaling.data_ratio_exponent(0.47, 0.53, 0.37, 0.63) - 0.57) < 0.01 and round(100 ** 0.57) == 14


def test_data_ratio_uses_the_fitted_data_exponents():
    """D_opt ~ N_opt^(b/a): when C is not 6 N D, b is not 1 - a, and the ratio's exponent follows the fitted b.
    Text keeps b = 1 - a = 0.53 while vision's real tokens fall behind C / (6 N) as C^-0.2 (b = 0.43): the ratio then
    grows as N^(0.43/0.37 - 0.53/0.47) = N^0.035, not the N^0.57 that 1 - a would claim."""
    _, a_t, b_t = scaling.compute_optimal(chinchilla_sweep(0.47), "text")
    vision = chinchilla_sweep(0.37, key="vision")
    for r in vision:
        r["D"] *= (r["C"] / 1e18) ** -0.2
    _, a_v, b_v = scaling.compute_optimal(vision, "vision")
    assert abs(b_v - 0.43) <= 0.02
    assert abs(scaling.data_ratio_exponent(a_t, b_t, a_v, b_v) - (0.43 / 0.37 - 0.53 / 0.47)) < 0.08


def test_a_non_convex_budget_is_flagged_not_fitted():
    n = [1e6, 1e7, 1e8, 1e9]
    loss = [3.0, 3.5, 3.6, 3.1]   # opens downward in log N: no minimum
    n_opt, coef, fitted = scaling.isoflop_minimum(n, loss)
    assert not fitted and n_opt == pytest.approx(1e6) and coef[0] < 0
    # convex, but its minimum lies beyond the largest model swept: an extrapolation, also flagged
    n_opt, coef, fitted = scaling.isoflop_minimum(n, [(k - 6.0) ** 2 for k in range(4)])
    assert not fitted and n_opt == pytest.approx(1e9) and coef[0] > 0
    # lopsided: the parabola's minimum falls between the two smallest models, but the smallest is the best run
    # (the toy CPU sweep's text losses at 1e12 FLOPs)
    lopsided = [0.203, 0.213, 0.320, 0.738]
    n_opt, coef, fitted = scaling.isoflop_minimum(n, lopsided)
    assert coef[0] > 0 and n[0] < np.exp(-coef[1] / (2 * coef[0])) < n[1]
    assert not fitted and n_opt == pytest.approx(n[0])
    results = chinchilla_sweep(0.47)
    bad = results[0]["budget"]
    for r in results:
        if r["budget"] == bad:
            r["text"] = 5 - (np.log(r["N"]) - 15) ** 2 * 0.01
    rows, _, _ = scaling.compute_optimal(results, "text")
    assert [r["fitted"] for r in rows] == [False, True, True, True, True]


def test_frontier_recovers_its_parameters():
    C = np.geomspace(1e15, 1e21, 8)
    f = scaling.frontier(C, 3.0 * C ** -0.1 + 1.5, grid=400)
    assert f["alpha"] == pytest.approx(0.1, abs=0.01) and f["E"] == pytest.approx(1.5, abs=0.05)


def test_plan_and_fit_commands(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    scaling.main(["plan", "configs/toy.py", "--budgets=1e11,1e12", "--depths=1,2,3", f"--sweep_dir={sweep}"])
    runs = [json.loads(line) for line in open(sweep / "plan.jsonl")]
    assert len(runs) == 6 and (sweep / "sweep.sh").read_text().count("python train.py configs/toy.py") == 6
    for r in runs:
        assert "--n_layer=" in r["command"] and f"--out_dir={r['out_dir']}" in r["command"]
        assert r["C"] == pytest.approx(r["budget"], rel=0.2)           # steps are rounded
        assert r["C"] == pytest.approx(6 * r["N"] * r["D"])
    assert runs[0]["N"] < runs[1]["N"] < runs[2]["N"]
    # pretend the runs finished, with a loss that has its optimum in the middle model
    for r in runs:
        x = np.log(r["N"]) - np.log(runs[1]["N"]) - 0.3 * (r["budget"] > 1e11)
        os.makedirs(r["out_dir"])
        with open(os.path.join(r["out_dir"], "metrics.jsonl"), "w") as f:
            f.write(json.dumps(dict(step=1, val_text_loss=2 + x * x, val_flow_loss=1 + x * x)) + "\n")
    scaling.main(["fit", f"--sweep_dir={sweep}"])
    out = capsys.readouterr().out
    assert "text: N_opt ~ C^" in out and "vision/language data ratio" in out
    assert len(open(sweep / "results.jsonl").readlines()) == 6
    with open(os.path.join(runs[0]["out_dir"], "metrics.jsonl"), "w") as f:   # validation without frames
        f.write(json.dumps(dict(step=1, val_text_loss=2.0)) + "\n")
    with pytest.raises(SystemExit, match="no val_flow_loss .* give val_data a visual source"):
        scaling.main(["fit", f"--sweep_dir={sweep}"])
    with pytest.raises(SystemExit, match="usage"):
        scaling.main(["fitt"])
