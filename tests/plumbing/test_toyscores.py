"""toyscores.py: the intervals of the held-out scores, and the scores of a tiny model on both splits."""
import numpy as np
import pytest
import torch

import train
from plumbing import toyscores


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


def oracle(monkeypatch, data, enc, c, n, shift):
    """sample.draw and sample.describe, as toyscores.py calls them, replaced by an oracle that knows every item of
    both held-out splits: it draws the true render of a caption, writes the true caption of a render and gives the
    true answer to its question; with shift > 0, those of the item `shift` places further on instead. Returns the
    calls it answered: (task, the scenes it was asked about), in order."""
    import toyworld
    everything = [item for split in toyscores.SPLITS for item in data.held_out(split, n)]
    by_render = {toyworld.render(s, c.image_size).tobytes(): j for j, (s, _, _) in enumerate(everything)}
    by_caption = {toyworld.caption(s, c.image_size): j for j, (s, _, _) in enumerate(everything)}
    calls = []

    def draw(model, tok, captions, steps, guidance, generator):
        asked = [by_caption[t] for t in captions]
        calls.append(("gen", [everything[j][0] for j in asked]))
        given = [everything[(j + shift) % len(everything)][0] for j in asked]
        return enc.encode(np.stack([toyworld.render(s, c.image_size) for s in given]))

    def describe(model, tok, latents, max_tokens=96, temperature=0.0, top_k=0, generator=None, questions=None):
        asked = [by_render[image.tobytes()] for image in enc.decode(latents)]
        calls.append(("caption" if questions is None else "vqa", [everything[j][0] for j in asked]))
        given = [everything[(j + shift) % len(everything)] for j in asked]
        if questions is None:
            return [toyworld.caption(s, c.image_size) for s, _, _ in given]
        assert questions == [everything[j][1] for j in asked]   # each image's own question
        return [f" {answer}\n" for _, _, answer in given]        # the answer ends its turn, as the model's does
    monkeypatch.setattr(toyscores, "draw", draw)
    monkeypatch.setattr(toyscores, "describe", describe)
    return calls


@pytest.fixture(scope="module")
def world():
    c = train.configure(train.DEFAULTS, ["--n_layer=1", "--d_model=32", "--n_head=2", "--n_kv_head=1", "--device=cpu",
                                         "--mixture={'caption_to_image': 0.4, 'image_to_caption': 0.3, 'vqa': 0.3}"])
    tok, enc, data, _ = train.build(c, "cpu")
    return c, tok, enc, data


def test_the_oracle_scores_one_and_anothers_answers_score_near_chance_on_the_right_splits(world, monkeypatch):
    """An oracle standing in for the model (true drawings, captions and answers; 32 px, where the world perceives
    its own renders exactly) scores 1 on every score; the same oracle answering for another item scores far
    below (each score counts the right things: right is right, and every task is scored on what it was asked);
    every item scored under a split is of that split: each held_out_bindings scene shows a held-out binding, no
    unseen_scenes scene does and each is a reserved scene description."""
    import toyworld
    c, tok, enc, data = world
    n, stand_in = 24, torch.nn.Linear(1, 1)   # toyscores reads the device from the model's parameters
    names = {f"{task}_{split}" for task in ("gen", "caption", "vqa") for split in toyscores.SPLITS}
    calls = oracle(monkeypatch, data, enc, c, n, shift=0)
    right = toyscores.oracle_scores(stand_in, tok, enc, data, c, n, torch.Generator().manual_seed(0))
    assert {k: right[k] for k in names} == dict.fromkeys(names, 1.0)
    assert [task for task, _ in calls] == ["gen", "caption", "vqa"] * 2   # the splits in turn, in SPLITS' order
    for split, (_, scenes) in zip([s for s in toyscores.SPLITS for _ in range(3)], calls):
        assert len(scenes) == n
        if split == "held_out_bindings":
            assert all(toyworld.held_out(s) for s in scenes)
        else:
            assert not any(toyworld.held_out(s) for s in scenes)
            assert all(toyworld.unseen_scene(s, c.image_size) for s in scenes)
    oracle(monkeypatch, data, enc, c, n, shift=1)
    wrong = toyscores.oracle_scores(stand_in, tok, enc, data, c, n, torch.Generator().manual_seed(0))
    assert all(wrong[k] < 0.25 for k in names), wrong   # measured: 0.00 to 0.13
