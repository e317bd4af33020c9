"""What a code × test matrix says, per code and per test suite: the terms that the rewards
(`training.rewards`) weigh, and that the evaluation reports (valid-test rate, mutation score).

The arrays are `sandbox.matrix.build_test_matrix`'s and `ground_truth_matrix`'s, one column per test function:

    passes[i, t]   bool (n, T)  code i passes test t (a parametrized test passes when all its cases do)
    valid[t]       bool (T,)    test t passes on the reference solution
    sample_ids[t]  int  (T,)    which discriminator sample (module) j test t came from
    keys[t]        str  (T,)    deduplication key: two tests with the same key are the same test
    gt_passes[i,g] bool (n, G)  code i passes ground-truth test g

Per code i (`generator_terms`; V = the valid tests, deduplicated by key; GT = the ground-truth tests):
pass_rate(i, V ∪ GT), format_ok(i). Per suite j (`discriminator_terms`; T_j = its tests deduplicated by
key, V_j ⊆ T_j the valid ones): discrimination (share of the well-formed codes failing a test of V_j),
mutation score (share of the mutants failing one), validity |V_j| / max(τ, |T_j|), format_ok(j). A format
failure scores 0 in every term. Pure functions on arrays, tested on hand-made matrices.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sandbox.matrix import unique_columns


def pass_rates(passes: np.ndarray, columns: np.ndarray | None = None) -> np.ndarray:
    """(n,) fraction of the selected tests each code passes: passes[:, columns].mean(1); 0 with no test."""
    passes = np.asarray(passes, dtype=bool)
    if columns is not None:
        passes = passes[:, np.asarray(columns, dtype=bool)]
    if passes.shape[1] == 0:
        return np.zeros(passes.shape[0])
    return passes.mean(axis=1)


# ---------------------------------------------------------------- generator
def generator_terms(
    passes: np.ndarray,
    valid: np.ndarray,
    format_ok: np.ndarray,
    gt_passes: np.ndarray | None = None,
    keys: Sequence[str] | None = None,
) -> dict[str, np.ndarray]:
    """The generator reward's terms per code: `pass_rate` on V ∪ GT (0 for a format failure) and
    `format_ok`, each (n,) in [0, 1]; also `valid_pass_rate` (V only) and `gt_pass_rate` (GT only)."""
    passes = np.asarray(passes, dtype=bool)  # (n, T)
    n = passes.shape[0]
    format_ok = np.asarray(format_ok, dtype=bool)  # (n,)
    gt = np.zeros((n, 0), dtype=bool) if gt_passes is None else np.asarray(gt_passes, dtype=bool)  # (n, G)
    if format_ok.shape != (n,) or gt.shape[0] != n or np.shape(valid) != passes.shape[1:]:
        raise ValueError(f"shapes: passes {passes.shape}, valid {np.shape(valid)}, format_ok "
                         f"{format_ok.shape}, gt_passes {gt.shape}")
    v = unique_columns(keys, np.asarray(valid, dtype=bool))  # (T,) valid, deduplicated
    scored = np.concatenate([passes[:, v], gt], axis=1)  # (n, |V| + G)
    return {
        "pass_rate": pass_rates(scored) * format_ok,
        "format_ok": format_ok.astype(float),
        "valid_pass_rate": pass_rates(passes, v) * format_ok,
        "gt_pass_rate": pass_rates(gt) * format_ok,
    }


# ---------------------------------------------------------------- discriminator
def discriminator_terms(
    passes: np.ndarray,
    valid: np.ndarray,
    sample_ids: np.ndarray,
    format_ok: np.ndarray,
    validity_floor: int,
    code_format_ok: np.ndarray | None = None,
    keys: Sequence[str] | None = None,
    mutant_passes: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """The discriminator reward's terms per sample j, each (m,) in [0, 1] with m = len(format_ok):
    `discrimination` = share of well-formed codes failing a valid test of j, `mutation_score` = share of
    the mutants (`mutant_passes` (K, T): mutant k passes test t; None or K = 0: 0) failing a valid test
    of j, `validity` = |V_j| / max(τ, |T_j|), `format_ok`; also `num_tests` |T_j|, `num_valid` |V_j| and
    `valid_frac` |V_j| / |T_j|. All terms are 0 for a format failure (format_ok False, or no test)."""
    passes = np.asarray(passes, dtype=bool)  # (n, T)
    valid = np.asarray(valid, dtype=bool)  # (T,)
    sample_ids = np.asarray(sample_ids, dtype=np.int64)  # (T,)
    format_ok = np.asarray(format_ok, dtype=bool)  # (m,)
    n, m = passes.shape[0], len(format_ok)
    codes = np.ones(n, dtype=bool) if code_format_ok is None else np.asarray(code_format_ok, dtype=bool)  # (n,)
    if valid.shape != passes.shape[1:] or sample_ids.shape != valid.shape or codes.shape != (n,):
        raise ValueError(f"shapes: passes {passes.shape}, valid {valid.shape}, sample_ids {sample_ids.shape}, "
                         f"code_format_ok {codes.shape}")
    if sample_ids.size and (sample_ids.min() < 0 or sample_ids.max() >= m):
        raise ValueError(f"sample_ids must index the {m} entries of format_ok")
    mutants = np.zeros((0, passes.shape[1]), dtype=bool) if mutant_passes is None else np.asarray(mutant_passes, dtype=bool)
    if mutants.ndim != 2 or mutants.shape[1] != passes.shape[1]:
        raise ValueError(f"mutant_passes must be (K, {passes.shape[1]}), got {mutants.shape}")
    names = ("discrimination", "mutation_score", "validity", "format_ok", "num_tests", "num_valid", "valid_frac")
    terms = {k: np.zeros(m) for k in names}
    for j in range(m):
        own = sample_ids == j  # (T,)
        tests = unique_columns(keys, own)  # (T,) T_j
        valid_tests = unique_columns(keys, own & valid)  # (T,) V_j
        num_tests, num_valid = int(tests.sum()), int(valid_tests.sum())
        terms["num_tests"][j], terms["num_valid"][j] = num_tests, num_valid
        if not format_ok[j] or num_tests == 0:
            continue
        caught = ~passes[:, valid_tests].all(axis=1)  # (n,) fails at least one valid test
        terms["discrimination"][j] = caught[codes].mean() if codes.any() else 0.0
        if len(mutants):
            terms["mutation_score"][j] = (~mutants[:, valid_tests].all(axis=1)).mean()  # mutants killed
        terms["validity"][j] = num_valid / max(validity_floor, num_tests)
        terms["valid_frac"][j] = num_valid / num_tests
        terms["format_ok"][j] = 1.0
    return terms
