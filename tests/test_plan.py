"""plan.py: trajectory errors, CEM with the simulator and with a tiny model, rollouts, the command line."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import plan
import toyworld as tw
import train
from data import Tokenizer
from encoders import PixelPatches
from model import ModelConfig, UnifiedTransformer
from plumbing.stats import bootstrap_ci

ENC = PixelPatches(32, 8)


def test_ate_and_rpe_by_hand():
    truth = np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 2.0]])
    pred = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    assert plan.ate(pred, truth) == pytest.approx(np.sqrt((0 + 1 + 4) / 3))
    assert plan.rpe(pred, truth) == pytest.approx(1.0)         # both steps off by (0, 1)
    shifted = truth + [3.0, 0.0]                                # no alignment: a shifted copy is 3 off, its steps exact
    assert plan.ate(shifted, truth) == pytest.approx(3.0) and plan.rpe(shifted, truth) == 0.0


def test_prediction_errors_on_hand_made_frames():
    """One white 8x8 patch on black: 1/16 of the pixels off by the full range, one of 16 tokens off by 2 in [-1, 1]."""
    black = np.zeros((2, 32, 32, 3), np.uint8)
    patch = black.copy()
    patch[1, 8:16, 16:24] = 255
    pixel, latent = plan.frame_errors(patch, black, ENC)
    assert np.allclose(pixel, [0, 1 / 16]) and np.allclose(latent, [0, 4 / 16])
    assert plan.psnr(1 / 16) == pytest.approx(10 * np.log10(16)) and plan.psnr(0.0) > 90


def test_episodes_need_turns_that_the_baselines_cannot_make():
    start_errors, forward_errors = [], []
    for i in range(12):
        ep = plan.episode(i, horizon=8)
        assert plan.needs_turn(ep["start"], ep["truth"][-1]) and ep["frames"].shape == (8, 32, 32, 3)
        assert np.array_equal(ep["goal"], ep["frames"][-1])
        assert np.array_equal(ep["frames"], plan.true_frames(ep["maze"], ep["start"], ep["actions"], 32))
        went = tw.rollout_poses(ep["maze"], ep["start"], np.tile(plan.CEM_START, (8, 1)))[-1, :2]
        forward_errors.append(np.linalg.norm(went - ep["truth"][-1, :2]))
        start_errors.append(np.linalg.norm(ep["start"][:2] - ep["truth"][-1, :2]))
        d = ep["truth"][-1, :2] - ep["start"][:2]   # around a corner or behind: >= 45 degrees off the start heading
        assert abs(tw.wrap_angle(np.arctan2(d[1], d[0]) - ep["start"][2])) >= np.pi / 4
    assert min(start_errors) >= 1.0 and np.mean(forward_errors) > 1.4
    origin = np.zeros(3)   # facing +x: a turned goal straight on, or one too near, needs no turn; one to the left does
    assert plan.needs_turn(origin, np.array([0.2, 2.0, 2.0]))
    for goal in ([2.0, 0.2, np.pi / 2], [0.5, 0.5, np.pi], [0.2, 2.0, 0.3]):
        assert not plan.needs_turn(origin, np.array(goal))


def test_bootstrap_interval_of_the_mean():
    assert bootstrap_ci([0.7] * 20) == pytest.approx((0.7, 0.7))
    coins = np.array([0, 1] * 200)        # mean 0.5, standard error 0.5 / sqrt(400) = 0.025: 95% within +-0.049
    lo, hi = bootstrap_ci(coins)
    assert lo == pytest.approx(0.451, abs=0.01) and hi == pytest.approx(0.549, abs=0.01)
    lo4, hi4 = bootstrap_ci(coins[:100])   # a quarter of the episodes: twice as wide
    assert (hi4 - lo4) == pytest.approx(2 * (hi - lo), rel=0.2)
    pairs = bootstrap_ci(np.stack([coins, 2 * coins], 1))   # columns resampled together, by episode
    assert np.allclose(pairs[1], [hi, 2 * hi])


@pytest.mark.slow
def test_cem_with_the_simulator_reaches_easy_goals():
    """Goals two W steps straight ahead in an open room: the simulator as world model must end far closer to them
    than standing still does (in mazes and at horizon 8 CEM on a pixel-latent score is much weaker; see plan.py)."""
    errors, still = [], []
    for seed in range(6):
        m = tw.random_maze(np.random.default_rng(seed), 6)
        wall = np.ones((9, 9), bool)
        wall[1:-1, 1:-1] = False
        room, start = tw.Maze(wall, m.color[:9, :9], m.floor[:18, :18]), np.array([1.5, 4.5, 0.0])
        truth = tw.rollout_poses(room, start, [tw.NAV_KEYS["w"]] * 2)[1:]
        world = plan.oracle_world(room, start, ENC, 32)
        score = plan.goal_distance("latent", ENC, tw.render_view(room, truth[-1]))
        actions = plan.cem(world, score, np.random.default_rng(seed), horizon=2, samples=60, elites=5, iterations=3)
        assert actions.shape == (2, 3) and (actions >= tw.ACTION_LOW).all() and (actions <= tw.ACTION_HIGH).all()
        errors.append(np.linalg.norm(tw.rollout_poses(room, start, actions)[-1, :2] - truth[-1, :2]))
        still.append(np.linalg.norm(start[:2] - truth[-1, :2]))
    assert np.mean(errors) < 0.4 * np.mean(still)


def tiny_model():
    torch.manual_seed(0)
    model = UnifiedTransformer(ModelConfig(vocab_size=Tokenizer().vocab_size, n_layer=2, n_head=2, n_kv_head=1,
                                           d_model=32, latent_dim=ENC.latent_dim, tokens_per_frame=16,
                                           attention="sdpa"))
    torch.nn.init.normal_(model.flow_head.weight, std=0.1)   # zero-initialised heads would make every frame equal
    return model.eval()


def test_cem_scores_each_candidate_by_its_mean_over_repeated_rollouts():
    """NWM's num_repeat_eval: a stochastic world model is rolled out `repeats` times per candidate and the candidates
    are ranked by their mean score. Here the first rollout ranks candidate 0 best and the mean ranks candidate 1."""
    draws = iter([np.array([0.0, 1.0]), np.array([3.0, 1.0])])
    calls = []
    predict = lambda a: calls.append(a.copy()) or a
    plan_ = plan.cem(predict, lambda final: next(draws), np.random.default_rng(0), horizon=2, samples=2, elites=1,
                     iterations=1, repeats=2)
    assert len(calls) == 2 and np.array_equal(calls[0], calls[1])          # the same candidates, rolled out twice
    assert np.allclose(plan_, calls[0][1])                                  # the mean's best, not the first draw's


def test_model_planner_end_to_end_and_rows_do_not_see_each_other():
    model, tok, ep = tiny_model(), Tokenizer(), plan.episode(0, horizon=2)
    context = ENC.encode(ep["context"])
    world = plan.model_world(model, tok, context, steps=2, generator=torch.Generator().manual_seed(0))
    frames = world(np.zeros((3, 2, 3)))
    assert frames.shape == (3, 2, 16, ENC.latent_dim) and torch.isfinite(frames).all()
    actions = plan.cem(world, plan.goal_distance("latent", ENC, ep["goal"]), np.random.default_rng(0), horizon=2,
                       samples=6, elites=2, iterations=2)
    assert actions.shape == (2, 3) and (np.abs(actions) <= tw.ACTION_HIGH).all()
    # rows of different text lengths share one batch: padding must not change another row's frames
    texts = lambda other: [["dx=+0.50 dy=+0.00 dyaw=+0.00", "w"], [other, other]]
    a, b = (plan.imagine(model, tok, context, texts(o), 2, torch.Generator().manual_seed(1))
            for o in ("go", "turn around and walk to the red wall"))
    assert torch.allclose(a[0], b[0], atol=1e-5) and not torch.allclose(a[1], b[1], atol=1e-3)


@torch.no_grad()
def test_imagined_frame_equals_the_sampler_without_cache():
    """imagine (shared prefill, per-row text appended, Euler steps against the cache) against the obvious sampler
    that reruns the whole sequence, context and action text included, at every Euler step."""
    from data import Example, collate, navigation_example, to_device
    from model import shift_time, velocity
    model, tok, ep = tiny_model(), Tokenizer(), plan.episode(1, horizon=1)
    context, text, steps = ENC.encode(ep["context"]), "dx=+0.50 dy=+0.00 dyaw=-0.25", 3
    cached = plan.imagine(model, tok, context, [[text]], steps, torch.Generator().manual_seed(2))[0, 0]
    ex = navigation_example(tok, list(context), text, prompt_only=True)
    b = to_device(collate([[Example(ex.ids, [None] * 5, ex.cond)]], ex.length(16), 16, tok.pad), "cpu")
    z = torch.randn(1, 16, ENC.latent_dim, generator=torch.Generator().manual_seed(2))
    ts = shift_time(torch.linspace(0, 1, steps + 1), model.cfg.time_shift)
    for i in range(steps):
        _, pred = model(b["tokens"], b["doc"], b["frame"], b["vis_idx"], torch.cat([context, z]),
                        torch.cat([torch.ones(4), ts[i:i + 1]]))
        z = z + (ts[i + 1] - ts[i]) * velocity(pred[4:], z, ts[i:i + 1], model.cfg.prediction)
    assert torch.allclose(cached, z[0], atol=1e-4)


@torch.no_grad()
def test_imagined_frames_get_an_id_no_row_already_uses(monkeypatch):
    """The frame being drawn is numbered after every frame of the prompt batch: with several rows, context frame
    ids run 0 .. 4B - 1, so a fixed id of 4 would be row 1's first context frame."""
    import sample
    model, tok, ep = tiny_model(), Tokenizer(), plan.episode(1, horizon=1)
    seen, draw = [], sample.draw_image

    def spy(model, cache, uncond, rows, pos, frame_id, *rest):
        seen.append((frame_id, set(cache.frame.flatten().tolist())))
        return draw(model, cache, uncond, rows, pos, frame_id, *rest)
    monkeypatch.setattr(plan, "draw_image", spy)
    plan.imagine(model, tok, ENC.encode(ep["context"]), [["w"], ["a"], ["d"]], 1, torch.Generator().manual_seed(0))
    (frame_id, used), = seen
    assert used >= set(range(12)) and frame_id not in used


@torch.no_grad()
def test_rollout_slides_the_four_frame_window():
    """Frame 2 of a rollout is what one step draws from the window [context 2..4, frame 1], as training's layout
    (4 frames, one action, one frame) shows it; the first frame is drawn from the true context alone."""
    model, tok, ep = tiny_model(), Tokenizer(), plan.episode(2, horizon=2)
    context, texts = ENC.encode(ep["context"]), [["w", "dx=+0.20 dy=+0.00 dyaw=+0.50"]]
    two = plan.imagine(model, tok, context, texts, 2, torch.Generator().manual_seed(3))[0]
    g = torch.Generator().manual_seed(3)
    first = plan.imagine(model, tok, context, [texts[0][:1]], 2, g)[0, 0]
    second = plan.imagine(model, tok, torch.cat([context[1:], first[None]]), [texts[0][1:]], 2, g)[0, 0]
    assert torch.allclose(two[0], first, atol=1e-5) and torch.allclose(two[1], second, atol=1e-4)
    other = plan.imagine(model, tok, torch.cat([context[1:], first[None]]), [texts[0][1:]], 2,
                         torch.Generator().manual_seed(4))[0, 0]
    assert not torch.allclose(other, second, atol=1e-3)     # another noise draw differs: the equality is no accident


def test_nwm_candidates_hold_one_translation_and_turn_at_the_last_step():
    """NWM's parameterisation: each candidate is one (dx, dy) over the whole horizon and a yaw at its last step only,
    inside the action bounds; the default draws every step on its own."""
    calls = []
    predict = lambda a: calls.append(a.copy()) or a
    for candidates in ("nwm", "steps"):
        plan.cem(predict, lambda final: final[:, 0], np.random.default_rng(0), horizon=5, samples=64, elites=4,
                 iterations=2, repeats=1, candidates=candidates)
    nwm, steps = calls[:2], calls[2:]
    for a in nwm:   # both iterations, the refit one too
        assert np.all(a[:, :, :2] == a[:, :1, :2]) and np.all(a[:, :-1, 2] == 0) and a[:, -1, 2].std() > 0.05
        assert np.all(a >= tw.ACTION_LOW) and np.all(a <= tw.ACTION_HIGH)
    assert not np.all(steps[0][:, :, :2] == steps[0][:, :1, :2]) and np.any(steps[0][:, :-1, 2] != 0)


def test_the_score_picks_candidates_far_better_than_chance():
    """plan.py --mode=score: on the simulator's own frames the latent distance to the goal picks a candidate that
    ends nearer the goal than a random pick would (the planning score's quality, with no model in the way)."""
    c = SimpleNamespace(seed=0, episodes=6, horizon=4, samples=24, candidates="steps", score="latent",
                        image_size=32, view="topdown")
    quality, chance = plan.score_quality(ENC, c)
    assert quality.shape == (6, 2) and (np.abs(quality[:, 0]) <= 1).all() and (quality[:, 1] >= 0).all()
    assert quality[:, 0].mean() > 0.2 and quality[:, 1].mean() < 0.5 * chance.mean(), (quality, chance)
    assert "| rank correlation" in "\n".join(plan.score_table(quality, chance, c))


@pytest.fixture(scope="module")
def nav_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("nav")
    train.main(["--n_layer=1", "--d_model=32", "--n_head=2", "--n_kv_head=1", "--batch_size=2", "--patch_size=8",
                "--mixture={'navigation': 1.0}", "--eval_samples=1", "--eval_iters=1", "--sample_steps=1",
                "--max_iters=1", "--eval_interval=1", "--device=cpu", f"--out_dir={d}"])
    return d


@pytest.mark.slow
def test_command_line_table_rollouts_and_errors(nav_run, tmp_path, capsys):
    from PIL import Image
    common = [f"--out_dir={nav_run}", f"--out={tmp_path}", "--steps=1"]
    plan.main([*common, "--episodes=1", "--repeats=1", "--horizon=2", "--samples=4", "--elites=2", "--iterations=1"])
    table = capsys.readouterr().out
    for name in ("CEM, trained model", "CEM, simulator (oracle)", "CEM's start (forward)", "random actions",
                 "no motion"):
        assert f"| {name} |" in table
    plan.main([*common, "--episodes=1", "--planners=forward", "--protocol=paper", "--overwrite"])   # the paper's
    assert "horizon 8, 120 samples, top 5, 1 iterations, each scored over 3 rollouts, score latent, Euler steps 25, " \
        "candidates nwm" in capsys.readouterr().out
    plan.main([*common, "--mode=predict", "--episodes=2", "--horizon=2"])
    table = capsys.readouterr().out
    assert table.count("| trained model |") == 4 and table.count("| copy last context frame |") == 4   # 1, 2, 4, 8
    plan.main([*common, "--mode=rollout", "--actions=w w|d", "--sentences=go to the red wall", "--new_frames=1"])
    gif = Image.open(tmp_path / "rollout.gif")
    assert gif.n_frames == 4 + 2 and gif.size == (4 * 3 * 34, 4 * 2 * 34)   # 3 alternatives, model above truth
    for argv, message in ((["--mode=rollout", "--actions=w x"], r"--actions: cannot read action 'w x'"),
                          (["--planners=model,magic"], "choose from model, oracle"),
                          (["--score=lpips2"], "unknown score 'lpips2'"),
                          (["--protocol=nwm"], "protocol='nwm': use 'paper'"),
                          (["--candidates=one"], "candidates='one': use 'steps' or 'nwm'")):
        with pytest.raises(SystemExit, match=message) as e:
            plan.main([*common, "--episodes=1", "--repeats=1", "--horizon=1", "--samples=2", "--elites=1",
                       "--iterations=1", *argv])
        assert "\n" not in str(e.value)
