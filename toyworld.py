"""The toy world: an infinite, procedural, deterministic-by-seed source of training data.

A scene is a black square picture cut into a 3x3 grid of cells. Each occupied cell holds one
shape with a kind (circle, square, triangle), a colour (six saturated primaries) and a size
(small, big). Every scene comes with a canonical English caption, so the same world provides
images (for flow matching), text (for next-token prediction), and image-text pairs for both
directions: text -> image (generation) and image -> text (understanding).

Because the world is fully known, it can also grade the model: `perceive` reads objects out of
pixels, `parse_caption` out of text, and `match_score` compares them (a miniature GenEval for
generated images, an accuracy for captions). Everything is a pure function of the numpy
Generator passed in, and only numpy and the standard library are used: always there offline.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

# ---- The vocabulary of the world ----

# Six corners of the RGB cube. Each lies on its own ray from black, so any shade of one (dimmed, or
# blurred into the black background) is still far from every other: they survive blur and noise.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255),
    "yellow": (255, 255, 0), "magenta": (255, 0, 255), "cyan": (0, 255, 255),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
SIZES: tuple[str, ...] = ("small", "big")
# The 3x3 grid cells in row-major order: a position's index is its cell id 0..8.
POSITIONS: tuple[str, ...] = ("top left", "top", "top right",
                              "left", "center", "right",
                              "bottom left", "bottom", "bottom right")

# A shape's width as a fraction of a cell's width. Big shapes leave a 10% margin on each side,
# which the centre jitter never exceeds, so a shape in a scene never spills into another cell.
# Small is 0.48 rather than 0.45: at 32 px a 0.45 disc often rasterises to a 4x4 pixel block,
# which is a square to anyone, the oracle included.
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
    col = min(max(int(3 * x // image_size), 0), 2)
    row = min(max(int(3 * y // image_size), 0), 2)
    return 3 * row + col


def as_tuples(shapes: list[Shape], image_size: int = 32) -> list[tuple[str, str, str, int]]:
    """Forget exact coordinates: what captions and the oracle talk about is (kind, color, size, cell)."""
    return [(s.kind, s.color, s.size, s.cell(image_size)) for s in shapes]


def random_look(rng: np.random.Generator) -> tuple[str, str, str]:
    """A uniformly random (kind, color, size)."""
    return tuple(str(rng.choice(words)) for words in (SHAPES, list(COLORS), SIZES))


def random_scene(rng: np.random.Generator, max_shapes: int = 3, image_size: int = 32) -> list[Shape]:
    """1..max_shapes random shapes, one per cell, sorted by cell so that the caption is canonical."""
    n = int(rng.integers(1, min(max_shapes, 9) + 1))
    cells = np.sort(rng.choice(9, size=n, replace=False))
    cell = image_size / 3
    shapes = []
    for c in cells:
        row, col = divmod(int(c), 3)
        look = random_look(rng)
        dx, dy = rng.uniform(-JITTER, JITTER, size=2) * cell
        shapes.append(Shape(*look, float((col + 0.5) * cell + dx), float((row + 0.5) * cell + dy)))
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
    # Upward isosceles triangle as tall as it is wide: its half-width grows from 0 at the apex to
    # `half` at the base, so it fills half its bounding box and its mass sits low.
    return (np.abs(dy) <= half) & (np.abs(dx) <= (dy + half) / 2)


def render(shapes: list[Shape], image_size: int = 32) -> np.ndarray:
    """uint8 [H, W, 3] picture on a black background; shapes may lie partly outside the frame."""
    image = np.zeros((image_size, image_size, 3), dtype=np.uint8)
    for shape in shapes:
        image[shape_mask(shape, image_size)] = COLORS[shape.color]
    return image


# ---- Captions: the world in words ----


def describe(kind: str, color: str, size: str, cell: int) -> str:
    return f"a {size} {color} {kind} at the {POSITIONS[cell]}"


def caption(shapes: list[Shape], image_size: int = 32) -> str:
    """Canonical caption, e.g. 'a small red circle at the top left and a big blue square at the center'."""
    return " and ".join(describe(*obj) for obj in as_tuples(shapes, image_size))


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
# Three steps: label each pixel with the colour it is a shade of; in each cell, keep the colour
# whose solid blobs cover the most of it; read that blob's kind and size from the distribution of
# its colour, which survives the blur of generated images far better than its edges do.

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
    """How much of each palette colour every pixel holds, in 0..1: [H, W, len(COLORS)].

    Blur mixes a shape's colour with the black around it and a model may paint a little dim: both
    give shades on the colour's ray from black, which this projection measures. Unlike a hard
    mask it is also what blur conserves: colour is moved around, but its total is kept.
    """
    pixels = image.astype(np.float32)[..., None, :]
    return np.clip((pixels * _RGB).sum(-1) / (_RGB**2).sum(-1), 0.0, 1.0)


def classify_pixels(image: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Label each pixel with the colour it is a shade of (1..6 in COLORS order), 0 for background.

    It must lie close to that colour's ray (greys and muddy mixtures do not) and hold enough of it.
    """
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
    """One boolean mask per colour holding only solid blobs: [len(COLORS), H, W].

    Noise that lands near a palette colour is scattered speckle, shapes are solid: keep pixels
    with at least 4 like-coloured neighbours, which removes speckle, then give back the pixels
    next to them, which restores the corners and tips this shaved off the shapes.
    """
    masks = labels[None] == np.arange(1, len(COLORS) + 1)[:, None, None]
    solid = masks & (neighbour_count(masks) >= 5)
    return masks & (neighbour_count(solid) > 0)


def cumulants(weights: np.ndarray, coord: np.ndarray) -> tuple[float, float, float]:
    """Variance, third and fourth cumulant of a coordinate under a distribution of colour."""
    d = coord - (weights * coord).sum()
    var = (weights * d**2).sum()
    return var, (weights * d**3).sum(), (weights * d**4).sum() - 3 * var**2


def read_kind(weights: np.ndarray) -> str:
    """circle, square or triangle, from how colour is distributed (weights sum to 1).

    Edges are what blur destroys, so we avoid them: a Gaussian blur adds to the variance but
    leaves the third and fourth cumulants unchanged, and those are what tell the shapes apart.
    """
    y, x = np.indices(weights.shape).astype(np.float64)
    # A triangle is wide at the bottom and thin at the top: colour down its rows is skewed.
    var, third, _ = cumulants(weights, y)
    if third / (var + 1e-9) ** 1.5 <= -TRIANGLE_SKEW:
        return "triangle"
    # A circle looks the same along every direction. A square's profile is flat-topped along the
    # axes but tent-shaped along its diagonals, where its fourth cumulant is exactly half as large.
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
    # Size from how much colour there is, which blur conserves, rather than from the extent, which
    # blur erodes at corners and tips: the width of a shape of this kind holding that much area.
    # Counted in units of the blob's own full colour, so that a dim shape is not a small one.
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
        # Faint tinges (noise on the black background) are not colour: over the many background
        # pixels around a shape they would pile up and wash out its measurements. Pixels that
        # belong to another colour do not count either.
        amount = np.clip((shares[inside][..., dominant] - COLOR_FLOOR) / (1 - COLOR_FLOOR), 0.0, 1.0)
        amount *= np.isin(labels[inside], (0, dominant + 1))
        kind, size = read_object(blobs[dominant][inside], amount, h / 3, w / 3)
        objects.append((kind, list(COLORS)[dominant], size, cell))
    return objects


# ---- Scoring: generation and understanding against the same world ----


def match_score(reference, candidate) -> float:
    """Fraction of checks passed, in [0, 1].

    Per reference object: is there a candidate object of the same colour in the same cell, and
    only if so, does it have the same shape, and the same size? Plus one global check that the
    number of objects agrees, so extra objects cost something too.
    """
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


# ---- Video: the same shapes in motion ----


def bounce(position: np.ndarray, limit: float) -> np.ndarray:
    """Fold straight-line motion into [0, limit], which is exactly reflecting off the walls."""
    phase = np.mod(position, 2 * limit)
    return limit - np.abs(limit - phase)


def random_video(rng: np.random.Generator, n_frames: int = 4, image_size: int = 32,
                 max_shapes: int = 2) -> np.ndarray:
    """uint8 [T, H, W, 3]: 1..max_shapes shapes gliding at constant velocity, bouncing off the borders.

    Centres bounce at the border itself, so a shape may be half outside the frame but never leaves.
    """
    n = int(rng.integers(1, max_shapes + 1))
    looks = [random_look(rng) for _ in range(n)]
    start = rng.uniform(0, image_size, size=(n, 2))
    speed = rng.uniform(1.5, 3.0, size=n)  # px per frame
    angle = rng.uniform(0, 2 * np.pi, size=n)
    velocity = speed[:, None] * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    frames = []
    for t in range(n_frames):
        xy = bounce(start + t * velocity, image_size)
        shapes = [Shape(*look, float(x), float(y)) for look, (x, y) in zip(looks, xy)]
        frames.append(render(shapes, image_size))
    return np.stack(frames)


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
        noun = "shape" if len(objects) == 1 else "shapes"
        listing = " and ".join(describe(*obj) for obj in objects)
        return f"i see {NUMBER_WORDS[len(objects)]} {noun}: {listing}."
    if style == 2 and len(objects) >= 2:
        i, j = rng.choice(len(objects), size=2, replace=False)
        return compare(objects[i], objects[j], rng)
    if style == 3:
        return FACTS[rng.integers(len(FACTS))]
    # Descriptions, also standing in for a comparison when there is only one shape to talk about.
    return f"there is {describe(*objects[rng.integers(len(objects))])}."


# ---- Navigation world (action-conditioned frames) ----
# Comes in a later issue: an egocentric maze world whose trajectories (frames + actions) are
# written in the NWM on-disk layout, so the same loaders serve toy and real navigation data.
