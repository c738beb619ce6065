"""
The statistics of the claims suite (claims.py), written once. Seeds pair the arms of a comparison; the per-seed
differences (oriented so that + is the paper's side; relative ones as log ratios) give a t-interval, and every
verdict is read off that interval alone, against the smallest effect that matters (delta), declared per comparison:

    holds            the interval lies above 0 and the estimate is at least delta
    reversed         the interval lies below 0 and the estimate is at most -delta
    below delta      the interval excludes 0 but the estimate is smaller than delta: an effect, too small to matter
    no effect        the interval contains 0 and lies inside +-delta: the test of "costs little" claims
    inconclusive     anything else: the interval is too wide to say
    untestable here  an arm has not learned the task, or sits within delta of its metric's declared floor or ceiling
                     on the side where the effect would have to show

The suite's primary comparisons are one family: each interval is at level 1 - alpha / m (Bonferroni), so all m
intervals cover their true values together with probability >= 1 - alpha, and every verdict read off them shares
that guarantee. (Holm's step-down sharpens tests, not intervals: the intervals compatible with it are Bonferroni's for
every comparison it does not reject.) The t-interval, not an exact sign-flip test: with 5 seeds a sign-flip test
cannot reach p < 0.05 (its smallest two-sided p is 2 / 2^5). Also here: how many seeds give 80% power at the family's
level, and how a budget is spent. Only numpy and math: no scipy.
"""
import math

import numpy as np

ALPHA = 0.05
VERDICTS = ("holds", "reversed", "below δ", "no effect", "inconclusive", "untestable here")


# ----------------------------------------------------------------------------------------------------------------
# Student's t distribution, through the regularized incomplete beta function.

def incomplete_beta(a, b, x):
    """I_x(a, b), by its continued fraction (modified Lentz), on the side where that converges fast."""
    if x <= 0.0 or x >= 1.0:
        return float(x >= 1.0)
    if x > (a + 1) / (a + b + 2):
        return 1.0 - incomplete_beta(b, a, 1.0 - x)
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    f = d
    for m in range(1, 500):
        for num in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                    -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            f *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return front * f / a


def t_tail(t, df):
    """P(T >= t) for Student's t with df degrees of freedom."""
    half = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))
    return half if t >= 0 else 1.0 - half


def t_quantile(q, df):
    """The t with P(T <= t) = q, by bisection (q in (0.5, 1))."""
    lo, hi = 0.0, 1.0
    while t_tail(hi, df) > 1 - q:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_tail(mid, df) > 1 - q else (lo, mid)
    return (lo + hi) / 2


# ----------------------------------------------------------------------------------------------------------------
# One comparison: per-seed differences, oriented so that positive is the paper's side.

def family_level(m, alpha=ALPHA):
    """The level of each of m intervals that hold together with probability >= 1 - alpha (Bonferroni)."""
    return 1 - alpha / max(1, m)


def log_ratio(a, b, better):
    """A relative difference as a log ratio, + when a beats b: ln(b / a) for a loss, ln(a / b) for a score. Log
    ratios add and are symmetric, where a mean of per-seed ratios (a - b) / b swings when b is near 0."""
    return float(np.log(b / a) if better == "lower" else np.log(a / b))


def paired(diffs, level=0.95):
    """n, mean and the t-interval (lo, hi) at `level` of the per-seed differences; no interval below two seeds."""
    d = np.asarray(diffs, float)
    if len(d) < 2:
        return dict(n=len(d), mean=float(d.mean()) if len(d) else None, lo=None, hi=None, level=level)
    n, mean = len(d), float(d.mean())
    half = t_quantile(1 - (1 - level) / 2, n - 1) * float(d.std(ddof=1)) / math.sqrt(n)
    return dict(n=n, mean=mean, lo=mean - half, hi=mean + half, level=level)


def verdict(stats, delta, untestable=False):
    """The verdict read off paired()'s interval alone (the table above); 'pending' until two seeds are in."""
    if untestable:
        return "untestable here"
    if stats["n"] < 2:
        return "pending"
    mean, lo, hi = stats["mean"], stats["lo"], stats["hi"]
    if lo > 0 or hi < 0:
        return ("holds" if mean > 0 else "reversed") if abs(mean) >= delta else "below δ"
    return "no effect" if -delta < lo and hi < delta else "inconclusive"


def at_bound(mean, ends, delta):
    """Whether an arm's mean lies within delta of one of its metric's bounds (`ends`: the floor, the ceiling or
    both, whichever limit the effect asked about): there a difference of delta cannot show."""
    return any(abs(mean - end) < delta for end in ends)


# ----------------------------------------------------------------------------------------------------------------
# How many seeds, and how a budget is spent.

def seeds_for_power(sd, delta, level, expect="holds", power=0.8, least=2, most=64):
    """The fewest seeds (at least `least`) that give `power` at a true effect of delta (expect "holds": the
    interval at `level` excludes 0) or of 0 ("no effect": it lies inside +-delta), for per-seed differences of
    standard deviation sd; None when even `most` are not enough. The usual normal-approximation rule with t
    quantiles: t(level) + t(power) <= delta sqrt(n) / sd, with power's quantile two-sided for equivalence."""
    q = power if expect == "holds" else (1 + power) / 2
    for n in range(max(2, least), most + 1):
        if t_quantile(1 - (1 - level) / 2, n - 1) + t_quantile(q, n - 1) <= delta * math.sqrt(n) / max(sd, 1e-12):
            return n
    return None


def allocate(needed, have, cost, budget):
    """Seeds per claim within a budget of thread-seconds, the cheapest to settle first: a claim gets the seeds it
    needs (needed: {claim: n or None}) if what it lacks beyond `have` fits what is left, else it keeps what it has
    and is listed as not affordable (so is one that no count settles). Returns ({claim: seeds}, [not affordable])."""
    extra = {k: (max(0, n - have[k]) * cost[k] if n is not None else float("inf")) for k, n in needed.items()}
    given, left, dropped = dict(have), budget, []
    for k in sorted(needed, key=lambda k: extra[k]):
        if extra[k] <= left:
            given[k], left = max(have[k], needed[k]), left - extra[k]
        else:
            dropped.append(k)
    return given, dropped


# ----------------------------------------------------------------------------------------------------------------
# Intervals over episodes (plan.py's tables): the bootstrap, where the rows are many and no pairing is needed.

def bootstrap_ci(values, level=0.95, resamples=2000, seed=0):
    """Percentile bootstrap interval of the mean, resampling rows of values (e.g. episodes) with replacement."""
    values = np.asarray(values, float)
    idx = np.random.default_rng(seed).integers(len(values), size=(resamples, len(values)))
    return tuple(np.quantile(values[idx].mean(1), [(1 - level) / 2, (1 + level) / 2], axis=0))


def mean_ci(values, digits):
    """'mean [lo, hi]' with the bootstrap interval, to `digits` decimals."""
    values = np.asarray(values, float)
    return "{:.{d}f} [{:.{d}f}, {:.{d}f}]".format(values.mean(), *bootstrap_ci(values), d=digits)
