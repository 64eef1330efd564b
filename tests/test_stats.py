"""stats: the percentile bootstrap of a mean, the paired bootstrap of a difference, and the wording of
a comparison by its interval."""
from __future__ import annotations

import doctest

import numpy as np
import pytest

from adalas import stats


def test_doctests():
    assert doctest.testmod(stats).failed == 0


def test_bootstrap_ci_is_the_percentile_interval_of_1000_resampled_means_seed_0():
    x = np.random.default_rng(3).random(48)
    lo, hi = stats.bootstrap_ci(x)
    idx = np.random.default_rng(0).integers(0, 48, size=(1000, 48))
    assert [lo, hi] == pytest.approx(np.percentile(np.sort(x)[idx].mean(1), [2.5, 97.5]).tolist(), abs=0)
    assert lo < x.mean() < hi and stats.bootstrap_ci(list(x[::-1])) == [lo, hi]  # same numbers, any order
    assert stats.bootstrap_ci([0.5]) == [0.5, 0.5]
    with pytest.raises(ValueError, match="non-empty"):
        stats.bootstrap_ci([])


def test_paired_bootstrap_cancels_what_the_sequences_share():
    rng = np.random.default_rng(1)
    base = rng.random(40)  # large differences between sequences ...
    a, b = base + 0.05, base + rng.normal(0, 0.01, 40)  # ... and a small, consistent gain
    paired = stats.paired_bootstrap(a, b)
    assert paired["n"] == 40 and paired["diff"] == pytest.approx(float((a - b).mean()))
    assert paired["ci95"][0] > 0  # measurable when paired
    lo, hi = stats.bootstrap_ci(a)
    lo_b, hi_b = stats.bootstrap_ci(b)
    assert lo < hi_b  # unpaired intervals of the two means overlap
    assert stats.paired_bootstrap(a, a)["ci95"] == [0.0, 0.0]
    with pytest.raises(ValueError, match="shape"):
        stats.paired_bootstrap([1.0, 2.0], [1.0])


def test_wording_follows_the_interval():
    up = stats.describe_difference("A", "B", {"diff": 0.02, "ci95": [0.01, 0.03], "n": 10})
    down = stats.describe_difference("A", "B", {"diff": -0.02, "ci95": [-0.03, -0.01], "n": 10}, "at 27 layers")
    none = stats.describe_difference("A", "B", {"diff": 0.02, "ci95": [-0.01, 0.05], "n": 10})
    assert up.startswith("A scores 0.020 higher than B (95% CI 0.010 to 0.030")
    assert down.startswith("At 27 layers, A scores 0.020 lower than B")
    assert none.startswith("No measurable difference between A and B (difference 0.020, 95% CI -0.010 to 0.050")
