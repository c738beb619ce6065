"""Sequences: tokenizer, packing (BOI/EOI, ids, targets) and the deterministic toy-world stream."""
import numpy as np
import pytest

import data as data_module
from data import (FRAME, Tokenizer, ToyWorldData, caption_to_image, collate, image_to_caption, pack_rows,
                  text_example, video_example)

N = 4


def test_byte_tokenizer_roundtrip_and_specials():
    tok = Tokenizer()
    text = "a small red circle at the top left"
    ids = tok.encode(text)
    assert ids == list(text.encode()) and tok.decode(ids) == text
    assert len({tok.bos, tok.eos, tok.boi, tok.eoi, tok.pad}) == 5 and min(tok.bos, tok.pad) >= 256
    assert tok.vocab_size == 261
    assert tok.encode("<|boi|>") == list(b"<|boi|>")   # special tokens never come from plain text


def test_toy_tokenizer_makes_each_word_one_token_and_round_trips_anything():
    """The toy world's byte-level BPE, built in code: every word its sentences, captions and questions use is one
    token (with or without the space before it), while any other text still encodes, byte by byte, and decodes
    back exactly."""
    import re
    import toyworld
    tok = Tokenizer("toy")
    rng = np.random.default_rng(5)
    for _ in range(200):
        scene = toyworld.random_scene(rng, 3, 32, "held_out_bindings")
        text = " ".join([toyworld.random_sentence(rng), toyworld.caption(scene),
                         *toyworld.random_question(rng, scene, 32, "held_out_bindings")])
        assert tok.decode(tok.encode(text)) == text
        assert len(tok.encode(text)) == len(re.findall(r" ?[a-z]+| ?[^\sa-z]+", text))   # a token per word
    for odd in ("Ünïcode ✓ and CAPS", "def f(x):\n    return x  # code", ""):
        assert tok.decode(tok.encode(odd)) == odd
    assert tok.vocab_size == len(data_module.toy_ranks()) + 5 and tok.encode("<|eos|>") != [tok.eos]


def test_packing_places_boi_eoi_ids_and_targets():
    tok = Tokenizer()
    img = np.zeros((8, 8, 3), np.uint8)
    t2i = caption_to_image(tok, "ab", img)
    i2t = image_to_caption(tok, img + 1, "cd")
    b = collate([[t2i, i2t]], 32, N, tok.pad)
    tokens, targets, doc, frame = b["tokens"][0], b["targets"][0], b["doc"][0], b["frame"][0]
    # caption -> image: bos a b BOI [4 latents] EOI eos | bos BOI [4 latents] EOI c d eos | pad...
    assert tokens[:4].tolist() == [tok.bos, ord("a"), ord("b"), tok.boi]
    assert (frame[4:8] == 0).all() and tokens[8] == tok.eoi and tokens[9] == tok.eos
    assert tokens[10:12].tolist() == [tok.bos, tok.boi] and (frame[12:16] == 1).all() and tokens[16] == tok.eoi
    assert tokens[17:20].tolist() == [ord("c"), ord("d"), tok.eos] and (tokens[20:] == tok.pad).all()
    assert (frame[frame >= 0].size == 8) and (frame[:4] == -1).all() and (frame[16:] == -1).all()
    assert doc[:10].tolist() == [0] * 10 and doc[10:20].tolist() == [1] * 10 and (doc[20:] == -1).all()
    assert b["vis_idx"].tolist() == [4, 5, 6, 7, 12, 13, 14, 15]
    assert b["cond"].tolist() == [False, True]
    assert (b["images"][1] == 1).all()
    # targets: next text token; none into or out of a frame, none across documents or into padding
    assert targets[:3].tolist() == [ord("a"), ord("b"), tok.boi]
    assert (targets[3:8] == -1).all() and targets[8] == tok.eos and targets[9] == -1
    assert targets[10] == tok.boi and targets[16:19].tolist() == [ord("c"), ord("d"), tok.eos]
    assert (targets[19:] == -1).all()


def test_unconditional_branch_drops_the_caption():
    tok = Tokenizer()
    ex = caption_to_image(tok, "ab", None, drop_caption=True, prompt_only=True)
    assert ex.ids == [tok.bos, tok.boi, FRAME]


def test_video_frames_are_separate_blocks():
    tok = Tokenizer()
    frames = [np.full((8, 8, 3), i, np.uint8) for i in range(3)]
    b = collate([[video_example(tok, frames)]], 24, N, tok.pad)
    assert [int(f) for f in b["frame"][0] if f >= 0] == [0] * N + [1] * N + [2] * N
    assert (b["tokens"][0][b["frame"][0] < 0][:8] == [tok.bos, tok.boi, tok.eoi, tok.boi, tok.eoi, tok.boi,
                                                     tok.eoi, tok.eos]).all()
    assert [int(b["images"][i, 0, 0, 0]) for i in range(3)] == [0, 1, 2]


def test_pack_rows_keeps_examples_whole():
    tok = Tokenizer()
    exs = [text_example(tok, "x" * n) for n in (5, 5, 5, 20)]   # lengths 7, 7, 7, 22
    rows = pack_rows(exs, 24, N)
    assert [len(r) for r in rows] == [3, 1]
    rows = pack_rows([exs[0], exs[3], exs[1]], 24, N)               # first fit: the last 7 joins the first row
    assert [[e.length(N) for e in r] for r in rows] == [[7, 7], [22]]
    with pytest.raises(ValueError, match="does not fit"):
        collate([[text_example(tok, "x" * 30)]], 24, N, tok.pad)


def make_toy(**kw):
    args = dict(seq_len=256, tokens_per_frame=64, seed=3, video_frames=3,
                mixture={"text": 1, "caption_to_image": 1, "image_to_caption": 1, "video": 1})
    args.update(kw)
    return ToyWorldData(Tokenizer(), **args)


def test_toy_stream_is_a_pure_function_of_seed_step_and_micro_batch():
    a, b = make_toy(), make_toy()
    x, y = a.batch(5, 1, 4), b.batch(5, 1, 4)
    for k in ("tokens", "targets", "doc", "frame", "vis_idx", "cond", "images"):
        assert np.array_equal(x[k], y[k]), k
    assert not np.array_equal(a.batch(6, 1, 4)["tokens"], x["tokens"])
    assert not np.array_equal(a.batch(5, 2, 4)["tokens"], x["tokens"])
    assert not np.array_equal(make_toy(seed=4).batch(5, 1, 4)["tokens"], x["tokens"])
    assert not np.array_equal(a.batch(5, 1, 4, "val")["tokens"], x["tokens"])


def test_toy_mixture_weights_are_respected():
    toy = make_toy(mixture={"text": 1.0})
    b = toy.batch(0, 0, 4)
    assert b["images"] is None and (b["frame"] == -1).all()


def test_a_token_mixture_fills_its_shares_of_the_tokens():
    """mixture_unit="tokens" (the paper's: 520B text + 520B multimodal tokens): a 3-frame video is four times a
    sentence's length, and drawing by examples would give it most of the tokens; by tokens it fills its share."""
    mixture = {"text": 0.5, "video": 0.5}
    share = {}
    for unit in ("examples", "tokens"):
        toy, rng = make_toy(mixture=mixture, mixture_unit=unit), np.random.default_rng(1)
        lengths = [(ex.length(64), len(ex.frames) > 0)
                   for ex in (toy.example(rng) for _ in range(3000))]
        share[unit] = sum(n for n, video in lengths if video) / sum(n for n, _ in lengths)
    assert abs(share["tokens"] - 0.5) < 0.04 and share["examples"] > 0.7, share


def test_a_navigation_pool_is_a_finite_dataset_shared_by_every_run():
    """nav_pool=n: training draws only n distinct navigation examples, the same n whatever the run's seed (a fixed
    dataset reused over epochs); held-out draws are not from it; 0 draws a fresh one every time."""
    def targets(seed, pool, split="train", n=60):
        toy = make_toy(seq_len=512, tokens_per_frame=16, seed=seed, mixture={"navigation": 1.0}, nav_pool=pool,
                       image_size=16)
        rng = np.random.default_rng(seed)
        return {toy.example(rng, split).frames[-1].tobytes() for _ in range(n)}
    a, b = targets(1, 5), targets(2, 5)
    assert len(a) == 5 and a == b
    assert len(targets(1, 0)) > 50 and len(targets(1, 5, "val")) > 50
    with pytest.raises(ValueError, match="nav_pool=-1"):
        make_toy(nav_pool=-1)


def test_image_to_caption_images_are_noisy_with_flow_loss_by_default():
    # Appendix B: text after an image conditions on its noisy latents, and flow matching applies to every frame
    b = make_toy(mixture={"image_to_caption": 1.0}).batch(0, 0, 4)
    assert not b["cond"].any() and len(b["cond"]) >= 4
    assert make_toy(mixture={"image_to_caption": 1.0}, caption_clean_image=True).batch(0, 0, 4)["cond"].all()


def test_bad_mixture_and_overlong_video_are_refused():
    with pytest.raises(ValueError, match="unknown"):
        make_toy(mixture={"txt": 1.0})
    with pytest.raises(ValueError, match="lower video_frames or raise seq_len"):
        make_toy(video_frames=8)


def test_action_text_parses_back_exactly_and_wasd_presets():
    from data import WASD, action_text, parse_actions
    steps = [(0.5, 0.0, 0.25), (-0.13, 1.07, -3.14), (0.0, -0.0, 0.0)]
    text = "; ".join(action_text(*a) for a in steps)
    assert text.startswith("dx=+0.50 dy=+0.00 dyaw=+0.25;") and "-0.00" not in text
    assert parse_actions(text) == [(0.5, 0.0, 0.25), (-0.13, 1.07, -3.14), (0.0, 0.0, 0.0)]
    assert parse_actions("W w A d s") == [WASD["w"], WASD["w"], (0.2, 0.0, 0.5), (0.2, 0.0, -0.5), (-0.5, 0.0, 0.0)]
    for bad in ("w x", "dx=0.5 dy=0 dyaw=0", "", "go left"):
        with pytest.raises(ValueError, match="cannot read action"):
            parse_actions(bad)


def test_robot_frame_actions_against_hand_computed_poses():
    from data import robot_frame_actions
    # facing +y (yaw pi/2): a world step of +1 in y is straight ahead; then a step of +1 in x is to the right
    position = [[0, 0], [0, 1], [1, 1], [1, 1]]
    yaw = [np.pi / 2, np.pi / 2, np.pi / 2, -np.pi + 0.1]
    a = robot_frame_actions(position, yaw)
    np.testing.assert_allclose(a[0], [1, 0, 0], atol=1e-12)
    np.testing.assert_allclose(a[1], [0, -1, 0], atol=1e-12)
    np.testing.assert_allclose(a[2], [0, 0, np.pi / 2 + 0.1], atol=1e-12)   # -3pi/2 + 0.1, wrapped


def test_navigation_example_layout():
    """§5.1's one layout (Fig. 11): BOS, 4 clean context frames, one action as text, the target frame (flow loss), EOS."""
    from data import navigation_example
    tok = Tokenizer()
    img = np.zeros((8, 8, 3), np.uint8)
    ex = navigation_example(tok, [img] * 4, "w", img)
    assert ex.cond == [True] * 4 + [False] and len(ex.frames) == 5
    b = collate([[ex]], 64, N, tok.pad)
    t = b["tokens"][0]
    # bos, 4 x (BOI frame EOI), 'w' BOI frame EOI, eos
    assert t[0] == tok.bos and t[1 + 6 * 4] == ord("w") and t[1 + 6 * 4 + 1] == tok.boi
    assert t[25 + 7] == tok.eos and list(b["cond"]) == [True] * 4 + [False]
    prompt = navigation_example(tok, [img] * 4, "w", prompt_only=True)
    assert prompt.ids[-2:] == [tok.boi, FRAME] and prompt.frames[-1] is None
    assert navigation_example(tok, [img] * 4).ids == ex.ids[:1 + 3 * 4]     # the context alone


def replayed_scenes(config, steps, monkeypatch):
    """Every (kind, color) rendered and every sentence written in the first `steps` training batches of a config."""
    import re
    import toyworld
    import train
    c = train.configure(train.DEFAULTS, [config])
    drawn, real_render = [], toyworld.render
    monkeypatch.setattr(toyworld, "render", lambda shapes, size=32: drawn.append(shapes) or real_render(shapes, size))
    tok = Tokenizer(c.tokenizer)
    data = ToyWorldData(tok, c.seq_len, (c.image_size // c.patch_size) ** 2, c.mixture, c.seed, c.image_size,
                        c.max_shapes, c.video_frames, c.cfg_dropout)
    text = [tok.decode(row) for s in range(steps) for row in data.batch(s, 0, c.batch_size)["tokens"].tolist()]
    pattern = "|".join(f"{color} {kind}" for kind, color in toyworld.HELD_OUT)
    return drawn, [m for t in text for m in re.findall(pattern, t)], data


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(__import__("glob").glob("configs/toy*.py")))
def test_no_evaluation_scene_is_ever_trained_on(config, monkeypatch):
    """Replay training batches of every toy config (VQA fine-tuning's included): no held-out binding is drawn
    (scenes, videos, VQA images) or written (captions, sentences, questions), and no picture shows an unseen scene,
    while every evaluation item belongs to its split: unseen scenes of trained bindings, or held-out bindings."""
    import toyworld
    drawn, mentions, data = replayed_scenes(config, 150, monkeypatch)
    looks = {(s.kind, s.color) for scene in drawn for s in scene}
    assert len(looks) == 18 - len(toyworld.HELD_OUT) and not looks & toyworld.HELD_OUT and not mentions
    assert not any(toyworld.unseen_scene(scene, data.image_size) for scene in drawn)
    unseen, bindings = data.held_out("unseen_scenes", 64), data.held_out("held_out_bindings", 64)
    assert all(toyworld.unseen_scene(s, data.image_size) and not toyworld.held_out(s) for s, _, _ in unseen)
    assert all(toyworld.held_out(s) for s, _, _ in bindings)
    assert len({toyworld.caption(s) for s, _, _ in unseen}) > 40       # many different scenes, not a few
