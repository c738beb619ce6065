"""The toy world: an infinite, procedural, deterministic-by-seed source of training data.

A scene is a black square picture cut into a 3x3 grid of cells. Each occupied cell holds one shape with a kind
(circle, square, triangle), a colour (six saturated primaries) and a size (small, big). Every scene comes with a
canonical English caption, so the same world provides images (flow matching), text (next-token prediction), and
image-text pairs for generation and understanding.

Because the world is fully known, it can also grade the model: `perceive` reads objects out of pixels,
`parse_caption` out of text, and `match_score` compares them (a miniature GenEval, and a caption accuracy).
Everything is a pure function of the numpy Generator passed in; only numpy and the standard library are used.
"""
from __future__ import annotations

import re
import zlib
from dataclasses import dataclass

import numpy as np

# ---- The vocabulary of the world ----

# Six corners of the RGB cube. Each lies on its own ray from black, so any shade of one (dimmed, or
# blurred into the black background) is still far from every other: they survive blur and noise.
COLORS: dict[str, tuple[int, int, int]] = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
                                           "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255)}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "big")
# The 3x3 grid cells in row-major order: a position's index is its cell id 0..8.
POSITIONS: tuple[str, ...] = ("top left", "top", "top right", "left", "center", "right",
                              "bottom left", "bottom", "bottom right")

# A shape's width as a fraction of a cell's: big leaves a margin the centre jitter never exceeds, so no shape spills
# into another cell; small is 0.48, as at 32 px a 0.45 disc often rasterises to a square 4x4 block.
SIZE_FRACTION = {"small": 0.48, "big": 0.8}
JITTER = 0.08  # largest centre offset, as a fraction of a cell (~0.85 px at 32 px)

# ---- Scenes ----


@dataclass(frozen=True)
class Shape:
    kind: str  # one of SHAPES
    color: str  # a key of COLORS
    size: str  # one of SIZES
    x: float  # centre, in pixels (column)
    y: float  # centre, in pixels (row)

    def cell(self, image_size: int = 32) -> int:
        return cell_of(self.x, self.y, image_size)


def cell_of(x: float, y: float, image_size: int) -> int:
    """The grid cell (0..8) a point lies in; points outside the image count as the nearest cell."""
    row, col = (min(max(int(3 * v // image_size), 0), 2) for v in (y, x))
    return 3 * row + col


def as_tuples(shapes: list[Shape], image_size: int = 32) -> list[tuple[str, str, str, int]]:
    """Forget exact coordinates: what captions and the oracle talk about is (kind, color, size, cell)."""
    return [(s.kind, s.color, s.size, s.cell(image_size)) for s in shapes]


# Two held-out splits. Compositional, as GenEval's: these colour-shape bindings are never drawn in training (scenes,
# captions, sentences, videos), and every "held_out_bindings" scene shows at least one; each shape and colour is
# still trained with others, so the split measures whether the model composes a known colour with a known shape.
# Unseen scenes: one scene description in SCENE_HOLDOUT (a hash of its objects and cells) is never drawn in training
# either; "unseen_scenes" draws only those, built from trained bindings: the world the model learned, new scenes.
HELD_OUT = frozenset({("circle", "red"), ("square", "green"), ("triangle", "blue")})
SCENE_HOLDOUT = 20
SPLIT_NAMES = ("train", "unseen_scenes", "held_out_bindings")


def held_out(shapes) -> bool:
    """Whether a scene (Shapes or (kind, color, ...) tuples) shows a binding reserved for evaluation."""
    return any((s.kind, s.color) in HELD_OUT if isinstance(s, Shape) else tuple(s[:2]) in HELD_OUT for s in shapes)


def unseen_scene(shapes, image_size: int = 32) -> bool:
    """Whether a scene's description (its objects and their cells, not the jitter) is reserved for evaluation."""
    return zlib.crc32(repr(sorted(as_tuples(shapes, image_size))).encode()) % SCENE_HOLDOUT == 0


def random_look(rng: np.random.Generator, split: str = "train") -> tuple[str, str, str]:
    """A uniformly random (kind, color, size); outside "held_out_bindings", never a held-out binding."""
    while True:
        look = tuple(str(rng.choice(words)) for words in (SHAPES, list(COLORS), SIZES))
        if split == "held_out_bindings" or look[:2] not in HELD_OUT:
            return look


def random_scene(rng: np.random.Generator, max_shapes: int = 3, image_size: int = 32,
                 split: str = "train") -> list[Shape]:
    """1..max_shapes random shapes, one per cell, sorted by cell so that the caption is canonical, drawn uniformly
    among the scenes of the split (SPLIT_NAMES)."""
    if split not in SPLIT_NAMES:
        raise ValueError(f"split {split!r}: use one of {SPLIT_NAMES}")
    while True:
        n = int(rng.integers(1, min(max_shapes, 9) + 1))
        cells = np.sort(rng.choice(9, size=n, replace=False))
        cell = image_size / 3
        shapes = []
        for c in cells:
            row, col = divmod(int(c), 3)
            look = random_look(rng, split)
            dx, dy = rng.uniform(-JITTER, JITTER, size=2) * cell
            shapes.append(Shape(*look, float((col + 0.5) * cell + dx), float((row + 0.5) * cell + dy)))
        if held_out(shapes) if split == "held_out_bindings" else unseen_scene(shapes, image_size) == (split != "train"):
            return shapes


# ---- Rendering ----


def shape_mask(shape: Shape, image_size: int) -> np.ndarray:
    """Boolean [H, W] mask of the pixels whose centres fall inside the shape (crisp, no anti-aliasing)."""
    ys, xs = np.mgrid[0:image_size, 0:image_size] + 0.5
    half = SIZE_FRACTION[shape.size] * image_size / 6  # half the shape's width
    dx, dy = xs - shape.x, ys - shape.y
    if shape.kind == "circle":
        return dx**2 + dy**2 <= half**2
    if shape.kind == "square":
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    # Upward isosceles triangle as tall as it is wide: it fills half its bounding box and its mass sits low.
    return (np.abs(dy) <= half) & (np.abs(dx) <= (dy + half) / 2)


def render(shapes: list[Shape], image_size: int = 32) -> np.ndarray:
    """uint8 [H, W, 3] picture on a black background; shapes may lie partly outside the frame."""
    image = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    for shape in shapes:
        image[shape_mask(shape, image_size)] = COLORS[shape.color]
    return image


# ---- Captions: the world in words ----


def phrase(kind: str, color: str, size: str, cell: int) -> str:
    return f"a {size} {color} {kind} at the {POSITIONS[cell]}"


def caption(shapes: list[Shape], image_size: int = 32) -> str:
    """Canonical caption, e.g. 'a small red circle at the top left and a big blue square at the center'."""
    return " and ".join(phrase(*obj) for obj in as_tuples(shapes, image_size))


_OBJECT = re.compile("a ({}) ({}) ({}) at the ({})".format(
    *("|".join(words) for words in (SIZES, COLORS, SHAPES, POSITIONS))))


def parse_caption(text: str) -> list[tuple[str, str, str, int]]:
    """Inverse of `caption`: a list of (kind, color, size, cell). Raises ValueError outside the grammar."""
    # Model output may carry stray whitespace or a final full stop; anything else must be exact.
    text = " ".join(text.split()).removesuffix(".")
    objects = []
    for fragment in text.split(" and "):
        match = _OBJECT.fullmatch(fragment)
        if match is None:
            raise ValueError(f"not a toy-world object: {fragment!r}")
        size, color, kind, position = match.groups()
        objects.append((kind, color, size, POSITIONS.index(position)))
    return objects


# ---- The oracle's eyes: reading objects out of pixels ----
# Label each pixel with the colour it is a shade of; in each cell, keep the colour whose solid blobs cover the most
# of it; read that blob's kind and size from the distribution of its colour, which survives blur better than edges.

_RGB = np.array(list(COLORS.values()), dtype=np.float32)
COLOR_TOLERANCE = 60.0  # RGB distance from a colour's ray (greys and muddy mixtures are far)
MIN_SHARE = 0.35  # of a colour a pixel must hold to be that colour rather than background
COLOR_FLOOR = 0.1  # a pixel holding less than this share of a colour holds none of it
MIN_COVERAGE = 0.03  # a cell's colour must cover this fraction of it to count as an object
WINDOW_MARGIN = 0.15  # how far around a blob (fraction of a cell) to look for its blurred colour
TRIANGLE_SKEW = 0.2  # skewness of colour down the rows: triangle ~-0.57, circle and square 0
SQUARE_DIAGONAL_RATIO = 0.72  # fourth cumulant, diagonals over axes: square 0.5, circle 1.0
AREA_FRACTION = {"square": 1.0, "circle": np.pi / 4, "triangle": 0.5}  # of the square around it
BIG_WIDTH = 0.62  # fraction of a cell, half-way (geometrically) between small and big


def colour_shares(image: np.ndarray) -> np.ndarray:
    """How much of each palette colour every pixel holds, in 0..1: [H, W, len(COLORS)]. Blur and dim painting both
    give shades on the colour's ray from black, which this projection measures; and blur conserves its total."""
    pixels = image.astype(np.float32)[..., None, :]
    return np.clip((pixels * _RGB).sum(-1) / (_RGB**2).sum(-1), 0.0, 1.0)


def classify_pixels(image: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Label each pixel with the colour it is a shade of (1..6 in COLORS order), 0 for background: it must lie close
    to that colour's ray (greys and muddy mixtures do not) and hold enough of it."""
    distance = np.linalg.norm(image.astype(np.float32)[..., None, :] - shares[..., None] * _RGB, axis=-1)
    labels = distance.argmin(axis=-1)
    share = np.take_along_axis(shares, labels[..., None], axis=-1)[..., 0]
    return np.where((distance.min(axis=-1) <= COLOR_TOLERANCE) & (share >= MIN_SHARE), labels + 1, 0)


def neighbour_count(masks: np.ndarray) -> np.ndarray:
    """How many pixels of each 3x3 neighbourhood (itself included) are set, for [C, H, W] masks."""
    h, w = masks.shape[-2:]
    padded = np.pad(masks.astype(np.int32), ((0, 0), (1, 1), (1, 1)))
    return sum(padded[..., dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))


def colour_blobs(labels: np.ndarray) -> np.ndarray:
    """One boolean mask per colour holding only solid blobs: [len(COLORS), H, W]. Pixels with at least 4 like-coloured
    neighbours (no speckle), then the pixels next to them (the corners and tips this shaved off)."""
    masks = labels[None] == np.arange(1, len(COLORS) + 1)[:, None, None]
    solid = masks & (neighbour_count(masks) >= 5)
    return masks & (neighbour_count(solid) > 0)


def cumulants(weights: np.ndarray, coord: np.ndarray) -> tuple[float, float, float]:
    """Variance, third and fourth cumulant of a coordinate under a distribution of colour."""
    d = coord - (weights * coord).sum()
    var = (weights * d**2).sum()
    return var, (weights * d**3).sum(), (weights * d**4).sum() - 3 * var**2


def read_kind(weights: np.ndarray) -> str:
    """circle, square or triangle, from how colour is distributed (weights sum to 1). Not from edges, which blur
    destroys: a Gaussian blur adds to the variance but leaves the third and fourth cumulants unchanged."""
    y, x = np.indices(weights.shape).astype(np.float64)
    # A triangle is wide at the bottom and thin at the top: colour down its rows is skewed.
    var, third, _ = cumulants(weights, y)
    if third / (var + 1e-9) ** 1.5 <= -TRIANGLE_SKEW:
        return "triangle"
    # A square's profile is flat-topped along the axes, tent-shaped along its diagonals (fourth cumulant halved).
    along_axes = cumulants(weights, x)[2] + cumulants(weights, y)[2]
    along_diagonals = (cumulants(weights, x + y)[2] + cumulants(weights, x - y)[2]) / 4
    square = along_axes < 0 and along_diagonals / along_axes < SQUARE_DIAGONAL_RATIO
    return "square" if square else "circle"


def read_object(mask: np.ndarray, amount: np.ndarray, cell_h: float, cell_w: float) -> tuple[str, str]:
    """(kind, size) of one blob, from the amount of its colour in and around its bounding box."""
    rows, cols = np.nonzero(mask)
    margin = max(1, round(WINDOW_MARGIN * cell_h))  # catches the colour blur spread outwards
    window = amount[max(rows.min() - margin, 0):rows.max() + 1 + margin,
                    max(cols.min() - margin, 0):cols.max() + 1 + margin]
    kind = read_kind(window / window.sum())
    # Size from how much colour there is (blur conserves it; it erodes the extent), in units of the blob's own full
    # colour so that a dim shape is not a small one: the width of a shape of this kind holding that much area.
    area = window.sum() / amount[mask].max()
    width = np.sqrt(area / AREA_FRACTION[kind] / (cell_h * cell_w))
    return kind, "big" if width >= BIG_WIDTH else "small"


def perceive(image: np.ndarray) -> list[tuple[str, str, str, int]]:
    """The objects visible in an image as (kind, color, size, cell), at most one per cell."""
    shares = colour_shares(image)
    labels = classify_pixels(image, shares)
    blobs = colour_blobs(labels)
    h, w = labels.shape
    row_of = np.minimum((np.arange(h) + 0.5) * 3 // h, 2)  # by pixel centre, as in `render`
    col_of = np.minimum((np.arange(w) + 0.5) * 3 // w, 2)
    objects = []
    for cell in range(9):
        inside = np.ix_(row_of == cell // 3, col_of == cell % 3)
        counts = [mask[inside].sum() for mask in blobs]
        dominant = int(np.argmax(counts))
        if counts[dominant] < MIN_COVERAGE * labels[inside].size:
            continue  # an empty cell, or only stray colour from blur and noise
        # Faint tinges (noise on the background) would pile up around a shape and wash out its measurements: not
        # colour. Pixels of another colour do not count either.
        amount = np.clip((shares[inside][..., dominant] - COLOR_FLOOR) / (1 - COLOR_FLOOR), 0.0, 1.0)
        amount *= np.isin(labels[inside], (0, dominant + 1))
        kind, size = read_object(blobs[dominant][inside], amount, h / 3, w / 3)
        objects.append((kind, list(COLORS)[dominant], size, cell))
    return objects


# ---- Scoring: generation and understanding against the same world ----


def match_score(reference, candidate) -> float:
    """Fraction of checks passed, in [0, 1]. Per reference object: is there a candidate of the same colour in the
    same cell, and only if so, the same shape, and the same size? Plus one check that the numbers of objects agree."""
    passed = int(len(candidate) == len(reference))
    for kind, color, size, cell in reference:
        found = [(k, s) for k, c, s, p in candidate if (c, p) == (color, cell)]
        if found:
            passed += 1 + max((k == kind) + (s == size) for k, s in found)
    return passed / (3 * len(reference) + 1)


def score_image(image: np.ndarray, text: str) -> float:
    """GenEval in miniature: how well a generated image shows what its prompt asked for."""
    return match_score(parse_caption(text), perceive(image))


def score_caption(text: str, image_or_shapes, image_size: int = 32) -> float:
    """Understanding accuracy: how well a caption describes an image (or a known scene)."""
    is_image = isinstance(image_or_shapes, np.ndarray)
    truth = perceive(image_or_shapes) if is_image else as_tuples(image_or_shapes, image_size)
    try:
        return match_score(truth, parse_caption(text))
    except ValueError:
        return 0.0  # text outside the grammar describes nothing


# ---- Questions: the toy world's VQA, short answers the oracle checks by string ----

def random_question(rng: np.random.Generator, shapes: list[Shape], image_size: int = 32,
                    split: str = "train") -> tuple[str, str]:
    """(question, answer) about an object of a scene: its colour, shape or size, where it is, whether it (or a look
    not in the scene) is there, how many objects there are. In "held_out_bindings", about a held-out object."""
    objects = as_tuples(shapes, image_size)
    asked = [o for o in objects if split != "held_out_bindings" or tuple(o[:2]) in HELD_OUT]
    kind, color, size, cell = asked[int(rng.integers(len(asked)))]
    where, looks = POSITIONS[cell], {(k, c) for k, c, *_ in objects}
    probe = (kind, color) if rng.random() < 0.5 else random_look(rng, split)[:2]
    questions = [(f"what color is the shape at the {where}?", color), (f"what shape is at the {where}?", kind),
                 (f"what size is the shape at the {where}?", size), ("how many shapes are there?",
                 NUMBER_WORDS[len(objects)]), (f"is there a {probe[1]} {probe[0]}?", "yes" if probe in looks else "no")]
    if sum((k, c) == (kind, color) for k, c, *_ in objects) == 1:   # "where" only when the answer is one cell
        questions.append((f"where is the {color} {kind}?", where))
    return questions[int(rng.integers(len(questions)))]


# ---- Video: the same shapes in motion ----


def bounce(position: np.ndarray, limit: float) -> np.ndarray:
    """Fold straight-line motion into [0, limit], which is exactly reflecting off the walls."""
    phase = np.mod(position, 2 * limit)
    return limit - np.abs(limit - phase)


def random_video(rng: np.random.Generator, n_frames: int = 4, image_size: int = 32,
                 max_shapes: int = 2) -> np.ndarray:
    """uint8 [T, H, W, 3]: 1..max_shapes shapes gliding at constant velocity, centres bouncing off the borders; no
    frame shows an evaluation scene (unseen_scene)."""
    while True:
        n = int(rng.integers(1, max_shapes + 1))
        looks = [random_look(rng) for _ in range(n)]
        start = rng.uniform(0, image_size, size=(n, 2))
        speed = rng.uniform(1.5, 3.0, size=n)  # px per frame
        angle = rng.uniform(0, 2 * np.pi, size=n)
        velocity = speed[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
        scenes = [[Shape(*look, float(x), float(y)) for look, (x, y) in zip(looks, bounce(start + t * velocity,
                  image_size))] for t in range(n_frames)]
        if not any(unseen_scene(shapes, image_size) for shapes in scenes):
            return np.stack([render(shapes, image_size) for shapes in scenes])


# ---- Text-only data: talking about the world without pictures ----

NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
FACTS = (
    "a square has four corners.", "a square has four equal sides.", "a triangle has three corners.",
    "a circle has no corners.", "a circle is round.", "the background is black.",
    "red and green light make yellow.", "red and blue light make magenta.", "green and blue light make cyan.",
    "the picture is split into nine cells.", "each cell holds at most one shape.",
    "a big shape is almost as wide as its cell.", "a small shape is about half as wide as its cell.",
)


def compare(a: tuple, b: tuple, rng: np.random.Generator) -> str:
    """A true relation between objects in two cells: 'the red circle is above the blue square.'"""
    (row_a, col_a), (row_b, col_b) = divmod(a[3], 3), divmod(b[3], 3)
    relations = []
    if col_a != col_b:
        relations.append("left of" if col_a < col_b else "right of")
    if row_a != row_b:
        relations.append("above" if row_a < row_b else "below")
    relation = relations[rng.integers(len(relations))]
    return f"the {a[1]} {a[0]} is {relation} the {b[1]} {b[0]}."


def random_sentence(rng: np.random.Generator, max_shapes: int = 3) -> str:
    """One lower-case sentence about the toy world: a description, a count, a comparison or a fact."""
    objects = as_tuples(random_scene(rng, max_shapes))
    style = rng.integers(4)
    if style == 1:
        listing = " and ".join(phrase(*obj) for obj in objects)
        return f"i see {NUMBER_WORDS[len(objects)]} shape{'s' * (len(objects) > 1)}: {listing}."
    if style == 2 and len(objects) >= 2:
        i, j = rng.choice(len(objects), size=2, replace=False)
        return compare(objects[i], objects[j], rng)
    if style == 3:
        return FACTS[rng.integers(len(FACTS))]
    # Descriptions, also standing in for a comparison when there is only one shape to talk about.
    return f"there is {phrase(*objects[rng.integers(len(objects))])}."


# ---- Navigation world (section 5): an egocentric view of a maze, moved by body-frame actions ----
# A maze is a grid of unit blocks, wall or floor; the pose (x, y, yaw) is continuous, in block units, yaw counter-
# clockwise from +x. Corridors are one block wide; a W step (0.5) is half a corridor. Walls are coloured per block
# with a dark seam, the floor has half-block tiles of random shades: every step changes the picture, and nothing
# repeats with a period a step could match.

FOV = np.pi / 2                  # horizontal field of view; focal length = half the image width
BODY = 0.15                      # half the robot's (square) width: it collides with walls at this distance
ACTION_LOW, ACTION_HIGH = np.array([-0.5, -0.25, -0.5]), np.array([0.5, 0.25, 0.5])   # dx, dy, dyaw bounds
NAV_KEYS = {"w": (0.5, 0.0, 0.0), "s": (-0.5, 0.0, 0.0), "a": (0.2, 0.0, 0.5), "d": (0.2, 0.0, -0.5)}  # App. F.1 WASD
WALL_COLORS = np.array([(200, 60, 60), (60, 170, 70), (70, 90, 210), (210, 180, 50), (170, 70, 190), (50, 180, 190),
                        (220, 120, 40), (150, 150, 150), (240, 150, 190), (110, 60, 30), (30, 100, 90),
                        (150, 210, 90)], np.float32)   # 12, so that neighbouring views rarely look alike by chance


@dataclass(frozen=True)
class Maze:
    wall: np.ndarray             # bool [H, W]: block (row j, column i) covers [i, i+1) x [j, j+1)
    color: np.ndarray            # float [H, W, 3]: each wall block's colour
    floor: np.ndarray            # float [2H, 2W]: the shade of each half-block floor tile


def random_maze(rng: np.random.Generator, cells: int = 4, loops: float = 0.3) -> Maze:
    """A (2 cells + 1)^2 block maze: depth-first carving (a perfect maze), then a share `loops` of the remaining
    inner walls knocked down, so that there are open spots and more than one way round."""
    n = 2 * cells + 1
    wall = np.ones((n, n), bool)
    seen, stack = {(0, 0)}, [(0, 0)]
    wall[1, 1] = False
    while stack:
        r, c = stack[-1]
        nxt = [(r + dr, c + dc) for dr, dc in ((0, 1), (1, 0), (0, -1), (-1, 0))
               if 0 <= r + dr < cells and 0 <= c + dc < cells and (r + dr, c + dc) not in seen]
        if not nxt:
            stack.pop()
            continue
        r2, c2 = nxt[rng.integers(len(nxt))]
        wall[2 * r2 + 1, 2 * c2 + 1] = wall[r + r2 + 1, c + c2 + 1] = False
        seen.add((r2, c2))
        stack.append((r2, c2))
    between = (np.arange(n)[:, None] + np.arange(n)) % 2 == 1          # the blocks that separate two cells
    wall[1:-1, 1:-1] &= ~(between & (rng.random((n, n)) < loops))[1:-1, 1:-1]
    return Maze(wall, WALL_COLORS[rng.integers(len(WALL_COLORS), size=(n, n))], rng.uniform(0.35, 1.0, (2 * n, 2 * n)))


def maze_for(index: int, held_out: bool = False) -> Maze:
    """Training mazes have even seeds, held-out evaluation mazes odd ones: no evaluation layout is ever trained on."""
    return random_maze(np.random.default_rng(2 * int(index) + bool(held_out)))


def is_free(maze: Maze, xy: np.ndarray) -> np.ndarray:
    """Whether the robot's square body centred at xy [..., 2] touches no wall block (checking its 4 corners is
    exact because the body is narrower than a block)."""
    xy = np.asarray(xy, float)[..., None, :] + BODY * np.array([[-1, -1], [-1, 1], [1, -1], [1, 1]])
    i, j = np.floor(xy[..., 0]).astype(int), np.floor(xy[..., 1]).astype(int)
    h, w = maze.wall.shape
    inside = (i >= 0) & (i < w) & (j >= 0) & (j < h)
    return np.all(inside & ~maze.wall[j.clip(0, h - 1), i.clip(0, w - 1)], axis=-1)


def wrap_angle(a):
    """An angle (or array of them) in [-pi, pi)."""
    return (a + np.pi) % (2 * np.pi) - np.pi


def move(maze: Maze, pose, action) -> np.ndarray:
    """One body-frame step: translate by (dx, dy) in the frame of the current heading, then turn by dyaw. A step
    into a wall slides along it (keeps whichever world axis of the move stays free, else stops), as a robot bumping
    into a corridor's side would; the action bounds keep steps shorter than a block, so no wall can be jumped."""
    x, y, yaw = pose
    dx, dy, dyaw = np.clip(action, ACTION_LOW, ACTION_HIGH)
    mx, my = dx * np.cos(yaw) - dy * np.sin(yaw), dx * np.sin(yaw) + dy * np.cos(yaw)
    tries = np.array([[x + mx, y + my], [x + mx, y], [x, y + my], [x, y]])
    x, y = tries[np.argmax(is_free(maze, tries[:3]).tolist() + [True])]
    return np.array([x, y, wrap_angle(yaw + dyaw)])


def rollout_poses(maze: Maze, pose, actions) -> np.ndarray:
    """Poses [T+1, 3] visited by executing actions [T, 3] from pose."""
    poses = [np.asarray(pose, float)]
    for a in actions:
        poses.append(move(maze, poses[-1], a))
    return np.stack(poses)


def render_view(maze: Maze, pose, image_size: int = 32) -> np.ndarray:
    """uint8 [H, W, 3] first-person view: one ray per column, marched in small steps to the first wall block."""
    (x, y, yaw), s = pose, image_size
    focal = s / 2 / np.tan(FOV / 2)
    fwd, left = np.array([np.cos(yaw), np.sin(yaw)]), np.array([-np.sin(yaw), np.cos(yaw)])
    ray = fwd + ((s / 2 - np.arange(s) - 0.5) / focal)[:, None] * left          # [W, 2], forward component 1
    h, w = maze.wall.shape
    depth = np.arange(1, 24 * max(h, w)) / 16                                    # distances along the heading
    pts = np.array([x, y]) + depth[:, None, None] * ray                          # [D, W, 2]
    i, j = np.clip(np.floor(pts[..., 0]).astype(int), 0, w - 1), np.clip(np.floor(pts[..., 1]).astype(int), 0, h - 1)
    hit, cols = maze.wall[j, i].argmax(0), np.arange(s)                          # first wall sample per column
    dist = depth[hit]
    side = i[hit, cols] != i[np.maximum(hit - 1, 0), cols]                       # crossed an x boundary: E/W face
    along = np.where(side, pts[hit, cols, 1], pts[hit, cols, 0]) % 1.0           # where on the face it was hit
    shade = np.where(side, 1.0, 0.7) * np.where(along < 0.15, 0.5, 1.0)          # face light, seam
    wall_rgb = maze.color[j[hit, cols], i[hit, cols]] * shade[:, None] / (1 + 0.15 * dist[:, None])
    # floor: the pixel row below the horizon fixes the distance, the column fixes the ray (camera height 0.5)
    rows = np.arange(s)[:, None] + 0.5 - s / 2
    floor_d = np.where(rows > 0, 0.5 * focal / np.maximum(rows, 1e-6), np.inf)   # [H, 1]
    fp = np.array([x, y]) + np.minimum(floor_d, 50)[..., None] * ray[None]       # [H, W, 2]
    tile = np.clip(np.floor(2 * fp).astype(int), 0, np.array(maze.floor.shape)[::-1] - 1)
    floor_rgb = maze.floor[tile[..., 1], tile[..., 0], None] * np.array([160.0, 140.0, 100.0])
    image = np.where(rows[..., None] > 0, floor_rgb, np.array([40.0, 40.0, 70.0]))   # sky above the horizon
    on_wall = np.abs(rows) <= 0.5 * focal / dist[None, :]                       # wall height 1, eye at 0.5
    return np.clip(np.where(on_wall[..., None], wall_rgb[None], image), 0, 255).astype(np.uint8)


def render_topdown(maze: Maze, pose, image_size: int = 32, span: float = 5.0) -> np.ndarray:
    """uint8 [H, W, 3] egocentric map of span x span blocks, robot at the middle of the bottom quarter facing up, plain
    colours. A turn rotates it and a step slides it: far easier to predict than the ray-cast view for a CPU model."""
    (x, y, yaw), s, (h, w) = pose, image_size, maze.wall.shape
    ahead = (0.75 * s - np.arange(s) - 0.5)[:, None] / s * span                 # [H, 1] blocks ahead of the robot
    left = (s / 2 - np.arange(s) - 0.5)[None, :] / s * span                      # [1, W] blocks to its left
    i = np.floor(x + ahead * np.cos(yaw) - left * np.sin(yaw)).astype(int).clip(0, w - 1)   # the outer blocks are
    j = np.floor(y + ahead * np.sin(yaw) + left * np.cos(yaw)).astype(int).clip(0, h - 1)   # walls: clip onto them
    return np.where(maze.wall[j, i, None], maze.color[j, i], np.array([70.0, 60.0, 50.0])).astype(np.uint8)


NAV_VIEWS = {"ray": render_view, "topdown": render_topdown}   # what the robot sees: first person, or a map


def view(maze: Maze, pose, image_size: int = 32, kind: str = "ray") -> np.ndarray:
    if kind not in NAV_VIEWS:
        raise ValueError(f"unknown navigation view {kind!r}: use one of {list(NAV_VIEWS)}")
    return NAV_VIEWS[kind](maze, pose, image_size)


def random_pose(rng: np.random.Generator, maze: Maze) -> np.ndarray:
    """A free block's centre, jittered, facing anywhere."""
    free = np.argwhere(~maze.wall)
    j, i = free[rng.integers(len(free))]
    return np.array([i + 0.5 + rng.uniform(-0.2, 0.2), j + 0.5 + rng.uniform(-0.2, 0.2), rng.uniform(-np.pi, np.pi)])


def path_to(maze: Maze, start, goal) -> list:
    """Blocks (j, i) of a shortest path over free blocks from block start to block goal (breadth-first)."""
    before, frontier = {start: None}, [start]
    for cell in frontier:
        if cell == goal:
            break
        for dj, di in ((0, 1), (1, 0), (0, -1), (-1, 0)):
            nxt = (cell[0] + dj, cell[1] + di)
            if nxt not in before and not maze.wall[nxt]:
                before[nxt] = cell
                frontier.append(nxt)
    path, cell = [], goal if goal in before else start
    while cell is not None:
        path.append(cell)
        cell = before[cell]
    return path[::-1]


def walk(rng: np.random.Generator, maze: Maze, pose, n_steps: int, goal_directed: bool = False):
    """(poses [n+1, 3], actions [n, 3]). Random walks mix WASD keys with uniform continuous actions; goal-directed
    walks steer along the shortest path to a random free block (turn toward the next block, go when facing it).
    Actions are rounded to 2 decimals, as data.action_text writes them, so the text says exactly what was done."""
    free = np.argwhere(~maze.wall)
    goal = tuple(free[rng.integers(len(free))])
    poses, actions = [np.asarray(pose, float)], []
    for _ in range(n_steps):
        x, y, yaw = poses[-1]
        if goal_directed:
            path = path_to(maze, (int(y), int(x)), goal)
            j, i = path[min(1, len(path) - 1)]
            err = wrap_angle(np.arctan2(j + 0.5 - y, i + 0.5 - x) - yaw)
            a = (0.5 if abs(err) < 0.4 else 0.1, 0.0, np.clip(err, -0.5, 0.5) + rng.normal(0, 0.05))
            if len(path) == 1:                                        # arrived: pick a new goal
                goal = tuple(free[rng.integers(len(free))])
        elif rng.random() < 0.5:
            a = list(NAV_KEYS.values())[rng.integers(4)]
        else:
            a = rng.uniform(ACTION_LOW, ACTION_HIGH)
        actions.append(np.clip(np.round(a, 2), ACTION_LOW, ACTION_HIGH))
        poses.append(move(maze, poses[-1], actions[-1]))
    return np.stack(poses), np.stack(actions)

