"""claims.py: trains both arms of a claim on a tiny budget, reuses finished runs, resumes unfinished ones, and writes
table rows whose verdicts follow the seed spread."""
import json
import os

import numpy as np
import pytest

import claims

TINY = ["--iters_scale=0.004", "--seeds=1",
        "--extra=--n_layer=1 --d_model=32 --n_head=1 --n_kv_head=1 --batch_size=2 --eval_iters=1 --eval_samples=1 "
        "--sample_steps=2"]


def paths(tmp_path):
    return [f"--runs_dir={tmp_path / 'runs'}", f"--results={tmp_path / 'claims.jsonl'}",
            f"--table={tmp_path / 'claims.md'}"]


def lines(path):
    return [json.loads(x) for x in open(path)]


def test_trains_both_arms_then_reuses_and_resumes(tmp_path, monkeypatch):
    claims.main(["--claim=1", "--jobs=2", *TINY, *paths(tmp_path)])
    results = tmp_path / "claims.jsonl"
    first = lines(results)
    assert sorted(r["run"] for r in first) == ["1/modality", "1/shared"]
    for r in first:
        assert r["seed"] == 0 and r["metrics"]["step"] == 3 and r["wall_s"] > 0 and r["machine"]
        assert {"val_text_loss", "val_flow_loss", "gen_accuracy", "und_accuracy"} <= set(r["metrics"])
    assert first[0]["config"] in ("configs/toy.py", "configs/toy_dense.py")
    table = open(tmp_path / "claims.md").read()
    assert "| modality | 1 |" in table and "| shared | 1 |" in table and "python claims.py --claim=1" in table
    assert "**pending**" in table    # one seed each: no verdict yet

    # a finished run is never trained again: same lines, same file, train.py not started
    stamp = os.path.getmtime(results)
    monkeypatch.setattr(claims, "train_run", lambda *a: pytest.fail("a finished run was trained again"))
    claims.main(["--claim=1", *TINY, *paths(tmp_path)])
    assert lines(results) == first and os.path.getmtime(results) == stamp

    # a run with a checkpoint but no line resumes from it: train.py --resume at max_iters trains no step and writes
    # no checkpoint (without --resume it would refuse the out_dir), and the run's line comes back
    monkeypatch.undo()
    ckpt = tmp_path / "runs" / first[1]["run"] / "seed0" / "ckpt.pt"
    stamp = os.path.getmtime(ckpt)
    results.write_text(json.dumps(first[0]) + "\n")
    claims.main(["--claim=1", *TINY, *paths(tmp_path)])
    again = lines(results)
    assert os.path.getmtime(ckpt) == stamp and [r["run"] for r in again] == [r["run"] for r in first]
    assert again[1]["metrics"] == first[1]["metrics"]


def test_verdicts_follow_the_seed_spread():
    assert claims.verdict([1.0, 1.1], [1.2, 1.3], "lower") == "holds"
    assert claims.verdict([1.2, 1.3], [1.0, 1.1], "lower") == "reversed"
    assert claims.verdict([1.0, 1.25], [1.2, 1.3], "lower") == "does not show at this scale"
    assert claims.verdict([0.9, 0.8], [0.5, 0.6], "higher") == "holds"
    assert claims.verdict([1.0], [1.2, 1.3], "lower") == "pending"
    assert claims.verdict([1.02, 1.03], [1.0, 1.01], "no_worse") == "holds"       # within 5%
    assert claims.verdict([1.2, 1.3], [1.0, 1.01], "no_worse") == "reversed"      # costs more than 5%
    assert claims.verdict([0.95, 0.97], [0.9], "higher", constant=True) == "holds"
    assert claims.verdict([0.5, 0.6], [0.9], "higher", constant=True) == "does not show at this scale"


def test_table_rows_from_constructed_results(tmp_path):
    """Results written by hand: the rows carry mean [min, max], the verdict, the command, wall time and machine."""
    results = tmp_path / "claims.jsonl"
    with open(results, "w") as f:
        for arm, losses in (("modality", (0.10, 0.11)), ("shared", (0.13, 0.12))):
            for seed, loss in enumerate(losses):
                m = dict(val_flow_loss=loss, val_text_loss=0.2 - seed * 0.1, gen_accuracy=0.5, und_accuracy=0.5)
                f.write(json.dumps(dict(run=f"1/{arm}", claim=1, arm=arm, seed=seed, metrics=m, wall_s=60.0,
                                        machine="test cpu")) + "\n")
    claims.main(["--table_only=True", *paths(tmp_path)])
    table = open(tmp_path / "claims.md").read()
    assert "| modality | 2 | 0.1050 [0.1000, 0.1100] |" in table
    assert "| a = modality < b = shared | val_flow_loss | 0.1050 [0.1000, 0.1100] | 0.1250 [0.1200, 0.1300] | " \
           "-0.0300, -0.0100 | **holds** |" in table
    assert "| a = modality < b = shared | val_text_loss |" in table and "**does not show at this scale**" in table
    assert "4 runs finished, 4 min of wall time" in table and "machine: test cpu" in table
    assert "| 1 | Modality-specific FFNs beat one shared FFN at equal active compute | §2.2, App. C | **mixed: holds " \
           "1 of 2, does not show at this scale 1 of 2** | `python claims.py --claim=1` | 4 | 4 | test cpu |" in table
    assert "| 4 | Adding visual data" in table and "| text_only | pending |" in table


def test_reading_of_a_claim():
    assert claims.reading(["holds", "holds"]) == "holds"
    assert claims.reading(["holds", "pending", "pending"]) == "pending (1 of 3 comparisons measured)"
    assert claims.reading(["reversed", "holds", "reversed"]) == "mixed: reversed 2 of 3, holds 1 of 3"


def test_bad_input_stops_with_one_line(tmp_path):
    for argv, words in ((["--claim=9"], "unknown claim '9'"), (["--seeds=0"], "seeds and jobs"),
                        (["--bogus=1"], "unknown config key 'bogus'")):
        with pytest.raises(SystemExit, match=words):
            claims.main([*argv, *paths(tmp_path)])


def test_sweep_minima_and_exponent_from_constructed_runs(tmp_path):
    """Claim 8 from hand-made sweep results: a minimum in the middle is fitted, one at the sweep's end is marked,
    and the exponents come out."""
    results = tmp_path / "claims.jsonl"
    arms = claims.sweep_arms()
    mid = {b: sorted(sp["sweep"]["N"] for sp in arms.values() if sp["sweep"]["budget"] == b)[1]
           for b in {sp["sweep"]["budget"] for sp in arms.values()}}
    with open(results, "w") as f:
        for name, sp in arms.items():
            s = sp["sweep"]
            for seed in (0, 1):
                text = 1 + (np.log(s["N"] / mid[s["budget"]])) ** 2
                vision = 1 - np.log(s["N"])             # falls toward the largest model: not bracketed
                m = dict(s, tokens=s["C"] / (6 * s["N"]), val_text_loss=text, val_flow_loss=vision)
                f.write(json.dumps(dict(run=f"8/{name}", seed=seed, metrics=m, wall_s=1.0, machine="cpu")) + "\n")
    claims.main(["--table_only=True", *paths(tmp_path)])
    table = open(tmp_path / "claims.md").read()
    rows = [ln for ln in table.splitlines() if ln.startswith("| 3e+1") or ln.startswith("| 1e+1")]
    assert len(rows) == 3 and all(r.count("(at an end)") == 2 for r in rows)      # vision's two columns only
    runs = 2 * len(arms)
    assert f"| text | {runs} |" in table and f"| vision | {runs} |" in table and "pending" not in table.split("## 8.")[1]
