"""Rewards from the sandbox's code × test matrix (docs/how-it-works.md, after UTRL and CURE). All in [0, 1].

The trainer runs every generator code i against every discriminator test module j (`Sandbox.run_matrix`),
the reference solution against every module (validity), and every code against the problem's own
ground-truth tests. `sandbox.matrix.build_test_matrix` and `ground_truth_matrix` turn those `ExecutionResult`s
into plain arrays (`passes`, `valid`, `sample_ids`, `keys`, `gt_passes`: `scoring.terms` lists them), and
`scoring.terms` computes each reward's terms from them; the rewards below weigh those terms. All of it works
on arrays only, so it is tested on hand-made matrices.

Generator, per code i (V = valid tests of all samples, deduplicated by key; GT = ground-truth tests):

    r_gen(i) = gen_pass_coef · pass_rate(i, V ∪ GT) + gen_format_coef · format_ok(i)
    pass_rate(i, S) = |{t ∈ S : code i passes t}| / |S|          (0 when S is empty)

Discriminator, per sample j (T_j = its tests deduplicated by key, V_j ⊆ T_j the valid ones,
C = the codes that are well formed, M = mutants of the reference solution that fail a ground-truth test,
`scoring.mutation`, in training the hardest of them: `TrainingConfig.hard_mutants`):

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

from scoring.terms import discriminator_terms, generator_terms
from training.config import RewardConfig


# ---------------------------------------------------------------- generator
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
