"""pass@k against values worked out by hand and against brute-force enumeration of k-subsets."""
import itertools
import math
from fractions import Fraction

import numpy as np
import pytest

from scoring.pass_at_k import estimate_pass_at_k, pass_at_k


@pytest.mark.parametrize(
    "n, c, k, expected",
    [
        # 1 - C(3,1)/C(5,1) = 1 - 3/5 = 2/5
        (5, 2, 1, 0.4),
        # 1 - C(3,2)/C(5,2) = 1 - 3/10 = 7/10
        (5, 2, 2, 0.7),
        # 1 - C(7,5)/C(10,5) = 1 - 21/252 = 11/12
        (10, 3, 5, 11 / 12),
        # 1 - C(8,2)/C(10,2) = 1 - 28/45 = 17/45
        (10, 2, 2, 17 / 45),
        # no correct sample: 1 - C(4,2)/C(4,2) = 0
        (4, 0, 2, 0.0),
        # n - c = 1 < k = 2: every pair holds a correct sample
        (4, 3, 2, 1.0),
        # all correct
        (3, 3, 3, 1.0),
        # k = n: 1 - C(n-c, n)/C(n, n) = 1 whenever c >= 1
        (6, 1, 6, 1.0),
        # k = 1 is the plain fraction correct: 1 - (n-c)/n = c/n = 1/1000
        (1000, 1, 1, 0.001),
    ],
)
def test_hand_worked_values(n, c, k, expected):
    assert pass_at_k(n, c, k) == pytest.approx(expected, abs=1e-12)


def brute_force(n: int, c: int, k: int) -> float:
    """Fraction of all k-subsets of n samples (the first c correct) that hold a correct sample."""
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(i < c for i in s) for s in subsets) / len(subsets)


def test_matches_brute_force_enumeration():
    for n in range(1, 9):
        for k in range(1, n + 1):
            for c in range(n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(brute_force(n, c, k), abs=1e-12), (n, c, k)


def test_stable_for_large_n():
    # C(1000, 100) has ~140 digits; the exact rational value is the reference.
    n, c, k = 1000, 7, 100
    exact = 1 - Fraction(math.comb(n - c, k), math.comb(n, k))
    assert pass_at_k(n, c, k) == pytest.approx(float(exact), rel=1e-12)
    assert 0.0 <= pass_at_k(100_000, 3, 50) <= 1.0


def test_monotone_in_c_and_k():
    values_c = [pass_at_k(20, c, 5) for c in range(21)]
    assert values_c == sorted(values_c) and values_c[0] == 0.0 and values_c[-1] == 1.0
    values_k = [pass_at_k(20, 3, k) for k in range(1, 21)]
    assert values_k == sorted(values_k)


@pytest.mark.parametrize(
    "n, c, k, message",
    [(3, 1, 5, "n=3 < k=5"), (5, 6, 1, "c=6"), (5, -1, 1, "c=-1"), (5, 1, 0, "k=0"), (5.0, 1, 1, "integer")],
)
def test_invalid_arguments_raise(n, c, k, message):
    with pytest.raises(ValueError, match=message):
        pass_at_k(n, c, k)


def test_estimate_vectorised_over_problems():
    # the same n for every problem: [0, 7/10, 1] from the hand values above
    out = estimate_pass_at_k(5, [0, 2, 5], 2)
    np.testing.assert_allclose(out, [0.0, 0.7, 1.0])
    # one n per problem: 2/5 and 1 - C(7,1)/C(10,1) = 3/10
    out = estimate_pass_at_k(np.array([5, 10]), np.array([2, 3]), 1)
    np.testing.assert_allclose(out, [0.4, 0.3])
    assert out.dtype == np.float64 and out.shape == (2,)
    assert estimate_pass_at_k(4, [], 1).shape == (0,)


def test_estimate_rejects_bad_input():
    with pytest.raises(ValueError, match="2 entries"):
        estimate_pass_at_k([5, 5], [1, 1, 1], 1)
    with pytest.raises(ValueError, match="n=2 < k=3"):
        estimate_pass_at_k([5, 2], [1, 1], 3)
