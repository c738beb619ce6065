"""Tests for the toy world: determinism, the caption grammar, the oracle and the scores."""
import os
import re

import numpy as np
import pytest

import toyworld as tw


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of an [H, W, C] image (edge padding), as float."""
    radius = int(np.ceil(3 * sigma))
    kernel = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    kernel /= kernel.sum()
    out = image.astype(np.float64)
    for axis in (0, 1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        n = out.shape[axis]
        out = sum(k * np.take(padded, np.arange(i, i + n), axis=axis) for i, k in enumerate(kernel))
    return out


def degrade(image: np.ndarray, rng: np.random.Generator, sigma=0.7, noise_std=10.0) -> np.ndarray:
    noisy = gaussian_blur(image, sigma) + rng.normal(0.0, noise_std, image.shape)
    return np.clip(np.round(noisy), 0, 255).astype(np.uint8)


def scenes(n, seed=0, image_size=32):
    rng = np.random.default_rng(seed)
    return [tw.random_scene(rng, max_shapes=3, image_size=image_size) for _ in range(n)]


# ---- determinism ----


def test_same_seed_same_data_different_seed_different_data():
    def draw(seed):
        rng = np.random.default_rng(seed)
        scene = tw.random_scene(rng)
        return scene, tw.render(scene), tw.random_video(rng), [tw.random_sentence(rng) for _ in range(20)]

    a, b, c = draw(7), draw(7), draw(8)
    assert a[0] == b[0] and a[3] == b[3]
    assert np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert a[0] != c[0] and a[3] != c[3]
    assert not np.array_equal(a[1], c[1]) and not np.array_equal(a[2], c[2])


# ---- scenes and rendering ----


def test_scenes_are_canonical():
    for scene in scenes(300):
        cells = [s.cell(32) for s in scene]
        assert 1 <= len(scene) <= 3
        assert cells == sorted(cells) and len(set(cells)) == len(cells)
        for s in scene:
            row, col = divmod(s.cell(32), 3)
            assert abs(s.x - (col + 0.5) * 32 / 3) <= 1.0 and abs(s.y - (row + 0.5) * 32 / 3) <= 1.0
            assert s.kind in tw.SHAPES and s.color in tw.COLORS and s.size in tw.SIZES


def test_render_draws_exact_colours_on_black():
    scene = [tw.Shape("square", "blue", "big", 16.0, 16.0), tw.Shape("circle", "red", "small", 5.3, 5.3)]
    image = tw.render(scene)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8
    blue = np.all(image == tw.COLORS["blue"], axis=-1)
    red = np.all(image == tw.COLORS["red"], axis=-1)
    rows, cols = np.nonzero(blue)
    assert rows.max() - rows.min() + 1 in (8, 9) and cols.max() - cols.min() + 1 in (8, 9)  # 0.8 of a cell
    assert blue.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)  # filled square
    assert 10 <= red.sum() <= 30  # a small disc
    assert np.all(image[~(blue | red)] == 0)


# ---- captions ----


def test_caption_text_is_canonical_english():
    scene = [tw.Shape("circle", "red", "small", 5.0, 5.0), tw.Shape("square", "blue", "big", 16.0, 16.0)]
    assert tw.caption(scene) == "a small red circle at the top left and a big blue square at the center"
    triangle = [tw.Shape("triangle", "cyan", "big", 30.0, 30.0)]
    assert tw.caption(triangle) == "a big cyan triangle at the bottom right"
    assert tw.caption(triangle, image_size=64) == "a big cyan triangle at the center"  # cells scale
    assert tw.score_caption("a big cyan triangle at the center", triangle, image_size=64) == 1.0


def test_caption_parse_round_trip():
    for scene in scenes(500, seed=1):
        assert tw.parse_caption(tw.caption(scene)) == tw.as_tuples(scene)


@pytest.mark.parametrize("text, fragment", [
    ("a small red circle at the top left and a huge blue square at the center",
     "a huge blue square at the center"),
    ("a small red circle at the middle", "a small red circle at the middle"),
    ("", ""),
])
def test_parse_rejects_text_outside_the_grammar(text, fragment):
    with pytest.raises(ValueError, match=re.escape(repr(fragment))):
        tw.parse_caption(text)


# ---- the oracle ----


@pytest.mark.slow
def test_oracle_reads_true_renders():
    scores = [tw.score_image(tw.render(s), tw.caption(s)) for s in scenes(500, seed=2)]
    assert np.mean(scores) >= 0.95


@pytest.mark.slow
def test_oracle_tolerates_blur_and_noise():
    rng = np.random.default_rng(3)
    scores = [tw.score_image(degrade(tw.render(s), rng), tw.caption(s)) for s in scenes(500, seed=3)]
    assert np.mean(scores) >= 0.9


@pytest.mark.slow
def test_oracle_on_noise_and_mismatched_captions_is_near_chance():
    rng = np.random.default_rng(4)
    truth, other = scenes(500, seed=4), scenes(500, seed=5)
    noise = [tw.score_image(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), tw.caption(s))
             for s in truth]
    mismatch = [tw.score_image(tw.render(s), tw.caption(o)) for s, o in zip(truth, other)]
    assert np.mean(noise) < 0.15
    assert np.mean(mismatch) < 0.3


@pytest.mark.slow
def test_oracle_works_at_64_pixels():
    rng = np.random.default_rng(6)
    clean, blurred = [], []
    for s in scenes(100, seed=6, image_size=64):
        image, text = tw.render(s, 64), tw.caption(s, 64)
        clean.append(tw.score_image(image, text))
        blurred.append(tw.score_image(degrade(image, rng, sigma=1.4), text))
    assert np.mean(clean) >= 0.95 and np.mean(blurred) >= 0.9


def test_perceive_reads_each_kind_colour_and_size():
    for kind in tw.SHAPES:
        for color in tw.COLORS:
            for size in tw.SIZES:
                shape = tw.Shape(kind, color, size, 16.0 + 0.3, 16.0 - 0.4)
                assert tw.perceive(tw.render([shape])) == [(kind, color, size, 4)]


def test_perceive_sees_nothing_in_black():
    assert tw.perceive(np.zeros((32, 32, 3), np.uint8)) == []


# ---- scores ----


def test_match_score_by_hand():
    reference = [("circle", "red", "small", 0), ("square", "blue", "big", 4)]
    candidate = [("circle", "red", "small", 0), ("triangle", "blue", "big", 4)]
    # 3 checks for the circle, 2 of 3 for the square (shape wrong), and the count: 6 of 7.
    assert tw.match_score(reference, candidate) == pytest.approx(6 / 7)
    # Wrong colour in the right cell fails the gate, so shape and size are not credited either.
    assert tw.match_score(reference, [("circle", "green", "small", 0)]) == pytest.approx(0 / 7)
    assert tw.match_score(reference, reference) == 1.0
    assert tw.match_score(reference, []) == 0.0


def test_score_caption():
    scene = [tw.Shape("circle", "red", "small", 5.0, 5.0), tw.Shape("square", "blue", "big", 16.0, 16.0)]
    text = tw.caption(scene)
    assert tw.score_caption(text, scene) == 1.0
    assert tw.score_caption(text, tw.render(scene)) == 1.0
    wrong = text.replace("blue", "green")
    assert 0.0 < tw.score_caption(wrong, scene) < 1.0
    assert tw.score_caption("purple elephants dance", scene) == 0.0


# ---- video ----


def test_video_moves_and_bounces_but_stays_in_view():
    rng = np.random.default_rng(9)
    for _ in range(50):
        video = tw.random_video(rng, n_frames=12, image_size=32, max_shapes=2)
        assert video.shape == (12, 32, 32, 3) and video.dtype == np.uint8
        assert all(not np.array_equal(video[t], video[t + 1]) for t in range(11))
        assert all(frame.any() for frame in video)  # never leaves the frame
    # Long videos too: 40 frames at 1.5-3 px/frame cross the frame, so shapes must bounce back.
    video = tw.random_video(np.random.default_rng(10), n_frames=40, max_shapes=1)
    assert all(frame.any() for frame in video)


def test_bounce_reflects_off_walls():
    positions = np.array([-3.0, 0.0, 10.0, 32.0, 35.0, 64.0, 70.0])
    assert np.allclose(tw.bounce(positions, 32.0), [3.0, 0.0, 10.0, 32.0, 29.0, 0.0, 6.0])


# ---- text-only data ----


def test_sentences_are_lowercase_ascii_and_varied():
    rng = np.random.default_rng(11)
    sentences = [tw.random_sentence(rng) for _ in range(400)]
    for s in sentences:
        assert s.isascii() and s == s.lower() and s.endswith(".")
    assert any(s.startswith("there is ") for s in sentences)
    assert any(s.startswith("i see ") for s in sentences)
    assert any(" is left of " in s or " is above " in s or " is below " in s or " is right of " in s
               for s in sentences)
    assert any(s in tw.FACTS for s in sentences)


def test_comparisons_are_true():
    red_circle, blue_square = ("circle", "red", "small", 0), ("square", "blue", "big", 4)
    rng = np.random.default_rng(12)
    said = {tw.compare(red_circle, blue_square, rng) for _ in range(50)}
    assert said == {"the red circle is left of the blue square.", "the red circle is above the blue square."}
    said = {tw.compare(blue_square, red_circle, rng) for _ in range(50)}
    assert said == {"the blue square is right of the red circle.", "the blue square is below the red circle."}


# ---- the navigation world ----


def open_room(n=7):
    """A walled n x n room with nothing inside: motion there is never blocked."""
    wall = np.ones((n, n), bool)
    wall[1:-1, 1:-1] = False
    return tw.Maze(wall, np.full((n, n, 3), 100.0), np.full((2 * n, 2 * n), 0.5))


def test_move_is_a_body_frame_step_then_a_turn():
    room = open_room()
    x, y, yaw = tw.move(room, (2.5, 2.5, np.pi / 2), (0.5, 0.2, 0.3))
    # facing +y: forward 0.5 is +y, left 0.2 is -x; then the heading turns counter-clockwise by 0.3
    assert np.allclose([x, y, yaw], [2.3, 3.0, np.pi / 2 + 0.3])
    x, y, yaw = tw.move(room, (3.0, 3.0, 3.0), tw.NAV_KEYS["a"])   # A: +0.2 forward, +0.5 yaw, wrapped to [-pi, pi)
    assert np.allclose([x, y, yaw], [3.0 + 0.2 * np.cos(3.0), 3.0 + 0.2 * np.sin(3.0), 3.5 - 2 * np.pi])


def test_walls_block_motion_and_are_never_entered():
    room = open_room()
    room.wall[3, 4] = True                                  # one block right in front of (3.5, 3.5) facing +x
    assert np.allclose(tw.move(room, (3.5, 3.5, 0.0), tw.NAV_KEYS["w"]), (3.5, 3.5, 0.0))     # blocked: stays
    assert np.allclose(tw.move(room, (3.5, 3.5, -np.pi), tw.NAV_KEYS["w"]), (3.0, 3.5, -np.pi))  # other way: moves
    d = 0.5 / np.sqrt(2)                                     # heading north-east: east is blocked, it slides north
    assert np.allclose(tw.move(room, (3.5, 3.5, np.pi / 4), tw.NAV_KEYS["w"]), (3.5, 3.5 + d, np.pi / 4))
    maze = tw.random_maze(np.random.default_rng(3))
    poses, _ = tw.walk(np.random.default_rng(4), maze, tw.random_pose(np.random.default_rng(5), maze), 400)
    assert tw.is_free(maze, poses[:, :2]).all()
    blocked = np.linalg.norm(np.diff(poses[:, :2], axis=0), axis=1) == 0
    assert 0 < blocked.mean() < 0.9                          # walls were met, and the walk still got around


def test_mazes_are_connected_deterministic_and_split_by_parity():
    a, b = tw.maze_for(7), tw.maze_for(7)
    assert np.array_equal(a.wall, b.wall) and np.array_equal(a.color, b.color)
    assert not np.array_equal(tw.maze_for(7).wall, tw.maze_for(7, held_out=True).wall)
    assert a.wall[0].all() and a.wall[-1].all() and a.wall[:, 0].all() and a.wall[:, -1].all()
    free = [tuple(c) for c in np.argwhere(~a.wall)]
    assert all(tw.path_to(a, free[0], c)[-1] == c for c in free)   # every free block is reachable


def test_walks_and_views_are_deterministic_and_motion_is_visible():
    def draw(seed):
        rng = np.random.default_rng(seed)
        maze = tw.random_maze(rng)
        poses, actions = tw.walk(rng, maze, tw.random_pose(rng, maze), 6, goal_directed=True)
        return poses, actions, np.stack([tw.render_view(maze, p) for p in poses])

    a, b, c = draw(1), draw(1), draw(2)
    assert all(np.array_equal(x, y) for x, y in zip(a, b)) and not np.array_equal(a[2], c[2])
    assert a[2].shape == (7, 32, 32, 3) and a[2].dtype == np.uint8
    room = open_room(9)
    room.color[:, 8] = (200, 60, 60)                        # a red east wall, 3 blocks ahead of (4.5, 4.5)
    near, far = tw.render_view(room, (5.0, 4.5, 0.0)), tw.render_view(room, (4.5, 4.5, 0.0))
    sky_or_floor = [(40, 40, 70), (80, 70, 50)]              # the sky, and the floor at shade 0.5
    wall_rows = lambda im: sum(~np.any([np.all(im[:, 16] == c, -1) for c in sky_or_floor], 0))
    assert wall_rows(near) > wall_rows(far) + 1 > 1           # a W step makes the wall ahead visibly taller
    maze = tw.maze_for(0)
    for pose in (tw.random_pose(np.random.default_rng(s), maze) for s in range(5)):   # in a maze, any step shows
        for key in "wad":
            after = tw.render_view(maze, tw.move(maze, pose, tw.NAV_KEYS[key])).astype(int)
            assert np.abs(after - tw.render_view(maze, pose)).mean() > 3


def test_nwm_layout_round_trips_the_executed_actions(tmp_path):
    import pickle

    from plumbing import realdata
    from data import robot_frame_actions
    rng = np.random.default_rng(0)
    maze = open_room(30)                                     # 12 steps from the middle never reach a wall
    poses, actions = tw.walk(rng, maze, (15.0, 15.0, 0.3), 12)
    frames = np.stack([tw.render_view(maze, p) for p in poses])
    folder = realdata.write_nwm_trajectory(str(tmp_path / "traj0"), frames, poses[:, :2], poses[:, 2])
    assert sorted(os.listdir(folder)) == sorted([f"{t}.jpg" for t in range(13)] + ["traj_data.pkl"])
    data = pickle.load(open(os.path.join(folder, "traj_data.pkl"), "rb"))
    assert data["position"].shape == (13, 2) and data["yaw"].shape == (13,)
    executed = robot_frame_actions(data["position"], data["yaw"])
    assert np.allclose(executed, actions, atol=1e-9) and np.abs(actions[:, :2]).sum() > 1   # steps were taken


def test_topdown_view_turns_and_moves_with_the_robot():
    room = open_room(9)
    room.wall[4, 6], room.color[4, 6] = True, (200, 60, 60)   # a red block 1.5 to 2.5 blocks east of (4.5, 4.5)
    red = lambda im, r, c: tuple(im[r, c]) == (200, 60, 60)
    east = tw.view(room, (4.5, 4.5, 0.0), kind="topdown")      # facing it: straight above the robot (row 24, col 16)
    assert red(east, 11, 16) and not red(east, 24, 16) and not red(east, 11, 28)
    north = tw.view(room, (4.5, 4.5, np.pi / 2), kind="topdown")   # facing +y (counter-clockwise): now on its right
    assert red(north, 24, 28) and not red(north, 11, 16)
    closer = tw.view(room, tw.move(room, (4.5, 4.5, 0.0), tw.NAV_KEYS["w"]), kind="topdown")
    assert red(closer, 16, 16) and not red(east, 16, 16)      # a W step slides it 0.5 blocks (3.2 px) down
    assert np.array_equal(tw.view(room, (4.5, 4.5, 0.0)), tw.render_view(room, (4.5, 4.5, 0.0)))   # "ray"
    with pytest.raises(ValueError, match="unknown navigation view"):
        tw.view(room, (4.5, 4.5, 0.0), kind="sonar")


# ---- questions (VQA) ----


def test_every_question_is_answered_by_the_scene():
    """The oracle's answers follow from the scene itself, for every kind of question; in "held_out_bindings" the
    question is about a held-out object."""
    import re
    counts = {}
    for split in tw.SPLIT_NAMES:
        rng = np.random.default_rng(1)
        for _ in range(300):
            scene = tw.random_scene(rng, 3, 32, split)
            objects = tw.as_tuples(scene)
            q, a = tw.random_question(rng, scene, 32, split)
            at = {tw.POSITIONS[cell]: (kind, color, size) for kind, color, size, cell in objects}
            if m := re.fullmatch(r"what (color|shape|size) is (?:the shape )?at the (.+)\?", q):
                kind, color, size = at[m[2]]
                assert a == {"color": color, "shape": kind, "size": size}[m[1]]
                asked = (kind, color)
            elif m := re.fullmatch(r"where is the (\w+) (\w+)\?", q):
                assert [tw.POSITIONS[c] for k, col, _, c in objects if (col, k) == (m[1], m[2])] == [a]
                asked = (m[2], m[1])
            elif m := re.fullmatch(r"is there a (\w+) (\w+)\?", q):
                assert a == ("yes" if (m[2], m[1]) in {(k, c) for k, c, *_ in objects} else "no")
                asked = None
            else:
                assert q == "how many shapes are there?" and a == tw.NUMBER_WORDS[len(objects)]
                asked = None
            if split == "held_out_bindings" and asked:
                assert asked in tw.HELD_OUT
            counts[q.split()[0] + q.split()[1]] = counts.get(q.split()[0] + q.split()[1], 0) + 1
    assert len(counts) == 6 and min(counts.values()) > 40      # every kind of question is asked
