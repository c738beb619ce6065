"""
How claims.py declares a claim, before any run: its arms (a config file as it stands plus a few changes), their
mixtures and steps in the claim's own terms (shares of positions, equal in-task data, equal active compute), its
comparisons, and what every run must reach for the claim to be tested at all. These are declarations only:
findings/runs.py resolves them against the recipe into train.py settings, so a run's fingerprint hashes what it
trains, never how the claim said it.
"""
from dataclasses import dataclass

TOY, NAV = "configs/toy.py", "configs/toy_nav.py"
EQUAL_ACTIVE = "equal active"   # moe_top_k: the number of experts that matches the dense FFN's active parameters


@dataclass(frozen=True)
class Shares:
    """A mixture given as each source's share of the positions, not of the examples (findings/runs.py finds the
    example weights that fill them)."""
    of_positions: dict


@dataclass(frozen=True)
class TextShare:
    """The config's own shares of positions, with text's set to `share` and the other sources sharing the rest as
    they did."""
    share: float


@dataclass(frozen=True)
class Without:
    """The config's mixture (example weights) without one source."""
    source: str


@dataclass(frozen=True)
class EqualData:
    """As many steps as give this arm the other arm's positions of one source (equal in-task data)."""
    source: str
    other: str


@dataclass(frozen=True)
class Minus:
    """One side of a comparison: arm a's metric minus arm b's, seed by seed."""
    a: str
    b: str


HALF_TEXT, NO_VIDEO = TextShare(0.5), Without("video")


def shares(**token_shares):
    return Shares(token_shares)


def equal(source, other):
    return EqualData(source, other)


def minus(a, b):
    return Minus(a, b)


def arm(config=TOY, steps=1.0, **changes):
    """An arm: a config file as it stands, plus the claim's changes. steps: a multiple of the config's max_iters,
    or equal(source, other_arm). A mixture may be given as shares of positions (shares(...)), as HALF_TEXT (the
    config's own shares with text at half the positions), or NO_VIDEO (the config's mixture without video)."""
    return dict(config=config, steps=steps, changes=changes)


def compare(a, b, metric, better, delta, relative=False, primary=False, sd=None, expect="holds"):
    """A comparison of a with b on one metric, seed by seed. a, b: an arm, minus(arm1, arm2) (arm1's metric minus
    arm2's), or a number. better: "lower" or "higher", the way a beats b. delta: the smallest difference that
    matters (a fraction of b when relative). expect: the verdict the paper predicts ("holds", or "no effect" for
    costs-little claims). sd: for a primary comparison, the spread of its per-seed differences assumed until the
    pilot has measured it."""
    return dict(a=a, b=b, metric=metric, better=better, delta=delta, relative=relative, primary=primary, sd=sd,
                expect=expect)


def require(arms, metric, better, bar):
    """What every run of some arms must reach for the claim to be tested at all: metric "lower" or "higher" than
    bar, a number or another metric of the same run. A run that falls short makes the claim's verdicts
    inconclusive: its models have not learned what the claim is about."""
    return dict(arms=arms, metric=metric, better=better, bar=bar)


def sweep(points, config=TOY, aspect=32, *, evaluation, **changes):
    """Claim 8 on the CPU: scaling.py's IsoFLOP sweep of a config file, one run per point of its plan. points:
    (budgets, depths) pairs as `scaling.py plan` takes them; aspect: d_model over depth; every run makes the
    changes and is scored by the fixed evaluation `evaluation`."""
    return dict(points=points, config=config, aspect=aspect, evaluation=evaluation, changes=changes)
