"""Is a change real? A figure against its baseline, with a significance test suited to its kind.

One definition for every comparison (the previous window, or another checkpoint); the minimums and the
tests are the API's documentation (MetricChange in analytics.proto): two-sided at 95%, and never
significant when either side has too few samples for its test to mean anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from generation_analytics.service import sketches
from generation_analytics.service.queries.totals import Totals

Z_95 = 1.959963984540054  # two-sided 95%: the normal quantile 0.975
MIN_COMPLETIONS = 30  # rates: completions on each side
MIN_EXPECTED = 5  # rates and counts: expected count of each outcome on each side (normal approximation)
MIN_DURATIONS = 30  # percentiles: durations on each side (and the rank interval inside the sample)
MIN_EVENTS = 30  # counts: events on both sides together

TWO_PROPORTIONS = "two_proportions"
QUANTILE_INTERVALS = "quantile_intervals"
POISSON = "poisson"
NONE = "none"


@dataclass
class MetricChange:
    metric: str
    value: float
    baseline: float
    absolute_change: float
    relative_change_pct: float | None
    significant: bool
    test: str
    value_samples: int
    baseline_samples: int


def change(
    metric: str,
    value: float,
    baseline: float,
    *,
    significant: bool = False,
    test: str = NONE,
    samples: tuple[int, int] = (0, 0),
) -> MetricChange:
    """`value` against `baseline`: the differences, and the verdict of `test` on `samples`."""
    return MetricChange(
        metric=metric,
        value=float(value),
        baseline=float(baseline),
        absolute_change=float(value - baseline),
        relative_change_pct=(value - baseline) / baseline * 100 if baseline else None,
        significant=significant,
        test=test,
        value_samples=samples[0],
        baseline_samples=samples[1],
    )


def proportions_differ(x1: int, n1: int, x2: int, n2: int) -> bool:
    """Pooled two-proportion z-test of x1/n1 against x2/n2 (|z| >= 1.96), with the minimum samples."""
    if min(n1, n2) < MIN_COMPLETIONS:
        return False
    pooled = (x1 + x2) / (n1 + n2)
    if min(n1 * pooled, n1 * (1 - pooled), n2 * pooled, n2 * (1 - pooled)) < MIN_EXPECTED:
        return False
    error = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n2))
    return abs(x1 / n1 - x2 / n2) / error >= Z_95


def counts_differ(c1: int, hours1: float, c2: int, hours2: float) -> bool:
    """Two Poisson counts over exposures of hours1 and hours2: given their sum, under equal rates c1 is
    binomial with p = hours1 / (hours1 + hours2); normal approximation, |z| >= 1.96."""
    total = c1 + c2
    if total < MIN_EVENTS or hours1 <= 0 or hours2 <= 0:
        return False
    share = hours1 / (hours1 + hours2)
    if min(total * share, total * (1 - share)) < MIN_EXPECTED:
        return False
    return abs(c1 - total * share) / math.sqrt(total * share * (1 - share)) >= Z_95


def rank_interval(n: int, q: float) -> tuple[int, int] | None:
    """1-based ranks (j, k) with [x(j), x(k)] a distribution-free 95% confidence interval of the
    q-quantile of n values (the count below it is binomial(n, q)); None when it does not fit in n."""
    if n < MIN_DURATIONS:
        return None
    spread = Z_95 * math.sqrt(n * q * (1 - q))
    low, high = math.floor(n * q - spread), math.ceil(n * q + spread) + 1
    return (low, high) if low >= 1 and high <= n else None


def bucket_interval(dense: sketches.Dense, q: float) -> tuple[int, int] | None:
    """The histogram buckets holding the order statistics of `rank_interval` (None: too few values)."""
    n = int(dense.sum()) if dense.size else 0
    ranks = rank_interval(n, q)
    if ranks is None:
        return None
    cumulative = np.cumsum(dense)
    low, high = np.searchsorted(cumulative, ranks)  # the first bucket whose cumulative count reaches the rank
    return int(low), int(high)


def quantiles_differ(value: sketches.Dense, baseline: sketches.Dense, q: float) -> bool:
    """Whether the two q-quantile confidence intervals are apart. Compared by bucket, and a shared
    bucket counts as overlap: a difference seen here is one of the exact durations too."""
    a, b = bucket_interval(value, q), bucket_interval(baseline, q)
    if a is None or b is None:
        return False
    return a[1] < b[0] or b[1] < a[0]


def compare_totals(
    value: Totals,
    baseline: Totals,
    figures: Sequence[tuple[str, float, float]],
    *,
    hours: tuple[float, float],
    rate: str = "success_rate_pct",
) -> list[MetricChange]:
    """Every figure (name, value, baseline) of two Totals, each with the test for its kind: the success
    rate, pNN_duration_ms, event counts (over `hours` of exposure each); anything else untested."""
    counts = {
        "total_requests": (value.requests, baseline.requests),
        "successful_generations": (value.successes, baseline.successes),
        "failed_generations": (value.failures, baseline.failures),
        "cancelled_generations": (value.cancellations, baseline.cancellations),
        "total_generations": (value.completions, baseline.completions),
        "total_completions": (value.completions, baseline.completions),
        "total_failures": (value.failures, baseline.failures),
    }
    hists: tuple[sketches.Dense, sketches.Dense] | None = None
    changes = []
    for metric, now, before in figures:
        if metric == rate:
            x1, x2 = (
                (value.successes, baseline.successes)
                if rate == "success_rate_pct"
                else (value.failures, baseline.failures)
            )
            n1, n2 = value.completions, baseline.completions
            significant = proportions_differ(x1, n1, x2, n2)
            changes.append(change(metric, now, before, significant=significant, test=TWO_PROPORTIONS, samples=(n1, n2)))
        elif metric.startswith("p") and metric.endswith("_duration_ms"):
            hists = hists or (sketches.merge(value.hists), sketches.merge(baseline.hists))
            q = int(metric[1:3]) / 100
            significant = quantiles_differ(hists[0], hists[1], q)
            samples = (value.duration_count, baseline.duration_count)
            changes.append(
                change(metric, now, before, significant=significant, test=QUANTILE_INTERVALS, samples=samples)
            )
        elif metric in counts:
            c1, c2 = counts[metric]
            significant = counts_differ(c1, hours[0], c2, hours[1])
            changes.append(change(metric, now, before, significant=significant, test=POISSON, samples=(c1, c2)))
        else:
            changes.append(change(metric, now, before))
    return changes
