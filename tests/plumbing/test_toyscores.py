"""toyscores.py: the intervals of the held-out scores, and the scores of a tiny model on both splits."""
import numpy as np
import pytest
import torch

from plumbing import toyscores
import train


def test_intervals_wilson_for_right_or_wrong_normal_for_graded():
    mean, (lo, hi) = toyscores.interval([1.0] * 256)
    assert mean == 1.0 and lo == pytest.approx(0.9852, abs=1e-3) and hi == pytest.approx(1.0)   # not empty at 1
    mean, (lo, hi) = toyscores.interval([0.0, 1.0] * 128)        # p = 0.5, n = 256: about +-0.061
    assert mean == 0.5 and (lo, hi) == pytest.approx((0.439, 0.561), abs=1e-3)
    graded = np.random.default_rng(0).uniform(0, 1, 400)
    mean, (lo, hi) = toyscores.interval(graded)
    half = 1.96 * graded.std(ddof=1) / 20
    assert (lo, hi) == pytest.approx((graded.mean() - half, graded.mean() + half))


def test_a_tiny_model_is_scored_on_both_splits_with_a_picture(tmp_path):
    c = train.configure(train.DEFAULTS, ["--n_layer=1", "--d_model=32", "--n_head=2", "--n_kv_head=1",
                                         "--seq_len=128", "--image_size=16", "--patch_size=4", "--max_shapes=1",
                                         "--sample_steps=2", "--device=cpu",
                                         "--mixture={'caption_to_image': 0.4, 'image_to_caption': 0.3, 'vqa': 0.3}"])
    tok, enc, data, model = train.build(c, "cpu")
    scores = toyscores.oracle_scores(model.eval(), tok, enc, data, c, 3, torch.Generator().manual_seed(0),
                                     str(tmp_path / "samples.png"))
    names = {f"{task}_{split}" for task in ("gen", "caption", "vqa") for split in toyscores.SPLITS}
    assert set(scores) == names | {n + "_ci" for n in names}
    assert all(0 <= scores[n] <= 1 and scores[n + "_ci"][0] <= scores[n] <= scores[n + "_ci"][1] for n in names)
    assert (tmp_path / "samples.png").stat().st_size > 1000
    assert "gen_unseen_scenes" in toyscores.summary(scores) and "_ci" not in toyscores.summary(scores)
