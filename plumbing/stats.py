"""
The statistics of the claims suite (claims.py), written once: seeds pair the arms of a comparison, the per-seed
differences give a 95% t-interval, and each comparison reads one of four verdicts against the smallest effect that
matters (delta), declared before any run:

    holds         the difference is beyond 0 on the paper's side (Holm-corrected) and |mean| >= delta
    reversed      the same, on the other side
    no effect     the 95% interval lies inside +-delta (Holm-corrected): the test for "costs little" claims
    inconclusive  anything else

The t-interval, not an exact sign-flip test: with 5 seeds a sign-flip test cannot reach p < 0.05 (its smallest
two-sided p is 2 / 2^5), let alone after Holm. Also here: how many seeds a comparison needs for its interval to be
narrower than delta, and how a budget is shared between claims. Only numpy and math: no scipy.
"""
import math

import numpy as np

ALPHA = 0.05
VERDICTS = ("holds", "reversed", "no effect", "inconclusive")


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

def paired(diffs, delta, level=0.95):
    """mean, 95% interval (lo, hi), and two p-values of the per-seed differences: p_zero for 'the mean is 0'
    (two-sided t-test) and p_equal for 'the mean lies beyond +-delta' (two one-sided tests, doubled so that
    p_equal < 0.05 exactly when the 95% interval lies inside +-delta)."""
    d = np.asarray(diffs, float)
    if len(d) < 2:
        return dict(n=len(d), mean=float(d.mean()) if len(d) else None, lo=None, hi=None, p_zero=1.0, p_equal=1.0)
    n, mean = len(d), float(d.mean())
    se = float(d.std(ddof=1)) / math.sqrt(n)
    if se == 0.0:   # every seed gave the same difference: no spread to test against
        return dict(n=n, mean=mean, lo=mean, hi=mean, p_zero=float(mean == 0.0),
                    p_equal=float(abs(mean) >= delta))
    half = t_quantile(1 - (1 - level) / 2, n - 1) * se
    p_zero = 2 * t_tail(abs(mean) / se, n - 1)
    p_equal = min(1.0, 2 * max(1 - t_tail((mean - delta) / se, n - 1), t_tail((mean + delta) / se, n - 1)))
    return dict(n=n, mean=mean, lo=mean - half, hi=mean + half, p_zero=min(1.0, p_zero), p_equal=p_equal)


def holm(pvalues):
    """Holm's step-down adjustment: the smallest p is multiplied by m, the next by m - 1, ..., kept monotone. A
    comparison passes at level alpha when its adjusted p is below alpha; the family's error stays below alpha."""
    p = np.asarray(pvalues, float)
    adjusted, running = np.empty(len(p)), 0.0
    for rank, i in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (len(p) - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def verdict(stats, delta, p_zero=None, p_equal=None, alpha=ALPHA):
    """The comparison's verdict from paired()'s numbers; p_zero and p_equal are the Holm-adjusted ones for a primary
    comparison (the raw ones otherwise). 'pending' until two seeds are in."""
    if stats["n"] < 2:
        return "pending"
    p_zero = stats["p_zero"] if p_zero is None else p_zero
    p_equal = stats["p_equal"] if p_equal is None else p_equal
    if p_zero < alpha and abs(stats["mean"]) >= delta:
        return "holds" if stats["mean"] > 0 else "reversed"
    return "no effect" if p_equal < alpha else "inconclusive"


# ----------------------------------------------------------------------------------------------------------------
# How many seeds, and how a budget is shared.

def seeds_needed(sd, delta, level=0.95, least=5, most=64):
    """The fewest seeds (at least `least`) whose t-interval of the mean difference is narrower than delta on either
    side, for per-seed differences of standard deviation sd; `most` if even that many are not enough."""
    for n in range(max(2, least), most + 1):
        if t_quantile(1 - (1 - level) / 2, n - 1) * sd / math.sqrt(n) < delta:
            return n
    return most


def allocate(needed, cost, budget, least=5):
    """Seeds per claim within a budget: each claim gets what it needs, up to one common ceiling, the highest that
    keeps sum(seeds x cost) within the budget, never below `least` (then the plan is over budget, and says so)."""
    cap = max(needed.values(), default=least)
    while cap > least and sum(min(n, cap) * cost[k] for k, n in needed.items()) > budget:
        cap -= 1
    return {k: max(least, min(n, cap)) for k, n in needed.items()}


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
