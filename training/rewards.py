"""Rewards from the sandbox's code × test matrix (docs/how-it-works.md, after UTRL and CURE). All in [0, 1].

The trainer runs every generator code i against every discriminator test module j (`Sandbox.run_matrix`),
the reference solution against every module (validity), and every code against the problem's own
ground-truth tests. `sandbox.matrix.build_test_matrix` and `ground_truth_matrix` turn those `ExecutionResult`s
into plain arrays, one column per test *function*:

    passes[i, t]   bool (n, T)  code i passes test t (a parametrized test passes when all its cases do)
    valid[t]       bool (T,)    test t passes on the reference solution
    sample_ids[t]  int  (T,)    which discriminator sample (module) j test t came from
    keys[t]        str  (T,)    deduplication key: two tests with the same key are the same test
    gt_passes[i,g] bool (n, G)  code i passes ground-truth test g

The reward functions below work on those arrays only, so they are tested on hand-made matrices.

Generator, per code i (V = valid tests of all samples, deduplicated by key; GT = ground-truth tests):

    r_gen(i) = gen_pass_coef · pass_rate(i, V ∪ GT) + gen_format_coef · format_ok(i)
    pass_rate(i, S) = |{t ∈ S : code i passes t}| / |S|          (0 when S is empty)

Discriminator, per sample j (T_j = its tests deduplicated by key, V_j ⊆ T_j the valid ones,
C = the codes that are well formed, M = mutants of the reference solution that fail a ground-truth test,
`evaluation.mutation`, in training the hardest of them: `TrainingConfig.hard_mutants`):

    r_disc(j) = s_j · (disc_discrimination_coef · |{i ∈ C : i fails some t ∈ V_j}| / |C|
                     + disc_mutation_coef       · |{μ ∈ M : μ fails some t ∈ V_j}| / |M|)   (mutation score)
              + disc_validity_coef       · |V_j| / max(τ, |T_j|)
              + disc_format_coef         · format_ok(j)

    s_j = 1 − |T_j \\ V_j| / max(φ, |T_j|) with `scale_by_validity`, else 1; φ = `invalid_floor`. An invalid
    test is a false alarm: it fails a correct solution. Without the scale a suite gains kills by adding tests
    whether or not they are right, and a run learned exactly that (more tests per suite, a lower valid-test
    rate on held-out problems: docs/experiments.md, run 1). With φ = 1 (s_j = the valid fraction |V_j| / |T_j|) an
    invalid test costs a small suite more than a large one (1/2 of a 2-test suite's credit, 1/8 of an 8-test
    one's), and the next run learned to write fewer tests, which killed fewer mutants; with φ = 8 each
    invalid test costs the same 1/8 of the credit in any suite of up to 8 tests, but a run with it wrote
    fewer tests as well and killed fewer mutants still (docs/experiments.md, run 3), so φ = 1 stays the default.

The mutation score is discrimination measured on known-wrong codes: when every generator code is right
(or every one is wrong in the same way) discrimination cannot tell good tests from weak ones, the
mutants still can, the subtle ones (that fail few ground-truth tests) best: a spread of easy mutants is
killed whole by most 3-test suites. A problem without mutants gives every sample 0 for it (no signal, no bias).

Format failures (decided by the caller's sanitizer/parser, passed in as `format_ok`):
  * a code that failed to parse or lacks the entry point scores exactly 0 (its pass rate is not counted:
    trivially valid tests such as `assert True` would otherwise pay an unparseable answer); it is also left
    out of C, so catching it earns the discriminator nothing;
  * a test sample that failed sanitization scores exactly 0 and contributes no test to the generator
    (give it an empty name list so it has no columns); a sample with no test function counts as a
    format failure too.
Invalid tests never touch the generator's reward: they are outside V, so they neither hurt nor help it.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sandbox.matrix import unique_columns
from training.config import RewardConfig


# ---------------------------------------------------------------- helpers
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


def compute_generator_reward(
    passes: np.ndarray,
    valid: np.ndarray,
    format_ok: np.ndarray,
    config: RewardConfig,
    gt_passes: np.ndarray | None = None,
    keys: Sequence[str] | None = None,
) -> np.ndarray:
    """(n,) r_gen(i) = gen_pass_coef · pass_rate(i, V ∪ GT) + gen_format_coef · format_ok(i), in [0, 1].

    passes (n, T), valid (T,): all discriminator samples' tests of the problem (`TestMatrix`); V = the
    valid ones, deduplicated by `keys`; gt_passes (n, G) the ground-truth tests. A code with
    format_ok False scores 0. With no valid test and no ground-truth test the pass rate is 0."""
    return generator_reward(generator_terms(passes, valid, format_ok, gt_passes, keys), config)


def generator_reward(terms: dict[str, np.ndarray], config: RewardConfig) -> np.ndarray:
    """(n,) r_gen from its terms (`generator_terms`): what the rollout computes once and keeps."""
    return config.gen_pass_coef * terms["pass_rate"] + config.gen_format_coef * terms["format_ok"]


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


def compute_discriminator_reward(
    passes: np.ndarray,
    valid: np.ndarray,
    sample_ids: np.ndarray,
    format_ok: np.ndarray,
    config: RewardConfig,
    code_format_ok: np.ndarray | None = None,
    keys: Sequence[str] | None = None,
    mutant_passes: np.ndarray | None = None,
) -> np.ndarray:
    """(m,) r_disc(j) = s_j · (disc_discrimination_coef · discrimination(j) + disc_mutation_coef · mutation_score(j))
    + disc_validity_coef · |V_j| / max(τ, |T_j|) + disc_format_coef · format_ok(j), in [0, 1],
    τ = `config.validity_floor`, s_j = 1 − (|T_j| − |V_j|) / max(φ, |T_j|) when `config.scale_by_validity`
    else 1, φ = `config.invalid_floor`; mutant_passes (K, T) as in `discriminator_terms`.

    passes (n, T), valid (T,), sample_ids (T,) as in `TestMatrix`; format_ok (m,) per discriminator
    sample; code_format_ok (n,) per generator code (None: all well formed). discrimination(j) is the share
    of the well-formed codes that fail at least one of j's valid tests (0 when none is well formed).
    A sample with format_ok False or no test scores 0. Duplicate tests (same key) count once in T_j and V_j,
    so copies cannot lift a sample over the floor τ."""
    terms = discriminator_terms(passes, valid, sample_ids, format_ok, config.validity_floor, code_format_ok, keys,
                                mutant_passes)
    return discriminator_reward(terms, config)


def discriminator_reward(terms: dict[str, np.ndarray], config: RewardConfig) -> np.ndarray:
    """(m,) r_disc from its terms (`discriminator_terms`, made with `config.validity_floor`)."""
    invalid = terms["num_tests"] - terms["num_valid"]  # (m,)
    scale = 1.0 - invalid / np.maximum(config.invalid_floor, terms["num_tests"]) if config.scale_by_validity else 1.0
    return (scale * (config.disc_discrimination_coef * terms["discrimination"]
                     + config.disc_mutation_coef * terms["mutation_score"])
            + config.disc_validity_coef * terms["validity"]
            + config.disc_format_coef * terms["format_ok"])
