"""Rewards on hand-made code × test matrices; expected numbers worked out by hand in the comments."""
import numpy as np
import pytest

from sandbox import ExecutionResult
from sandbox.matrix import build_test_matrix, collect_tests, ground_truth_matrix
from scoring.terms import discriminator_terms, pass_rates
from training.config import RewardConfig
from training.ppo import compute_advantages
from training.rewards import compute_discriminator_reward, compute_generator_reward

# the hand-computed numbers below use these weights (no mutation term); the mutation term has its own test
CFG = RewardConfig(disc_discrimination_coef=0.85, disc_mutation_coef=0.0, disc_validity_coef=0.05,
                   disc_format_coef=0.10, scale_by_validity=False)  # gen 0.9 / 0.1, disc 0.85 / 0 / 0.05 / 0.10, tau 8
T, F = True, False


# ---------------------------------------------------------------- helpers
def test_pass_rates_selects_columns_and_handles_no_tests():
    passes = np.array([[T, F, T, T], [F, F, F, T]])
    assert pass_rates(passes).tolist() == [0.75, 0.25]
    assert pass_rates(passes, np.array([T, T, F, F])).tolist() == [0.5, 0.0]
    assert pass_rates(passes, np.zeros(4, bool)).tolist() == [0.0, 0.0]


# ---------------------------------------------------------------- generator
def test_generator_reward_hand_computed_with_ground_truth():
    passes = np.array([[T, T, F, F],  # valid: 2/2
                       [T, F, T, T],  # valid: 1/2
                       [F, F, F, F]])  # valid: 0/2
    valid = np.array([T, T, F, F])
    gt = np.array([[T, T], [F, F], [T, F]])
    r = compute_generator_reward(passes, valid, np.array([T, T, T]), CFG, gt_passes=gt)
    # code0: (2 + 2) / 4 = 1    -> 0.9 * 1    + 0.1 = 1.0
    # code1: (1 + 0) / 4 = 0.25 -> 0.9 * 0.25 + 0.1 = 0.325
    # code2: (0 + 1) / 4 = 0.25 -> 0.325
    np.testing.assert_allclose(r, [1.0, 0.325, 0.325])


def test_invalid_tests_never_hurt_the_generator():
    valid = np.array([T, T, F, F])
    good = np.array([[T, T, T, T]])
    # the same code failing the two invalid tests (as a correct code would, since the reference fails them)
    fails_invalid = np.array([[T, T, F, F]])
    ok = np.array([T])
    r_good = compute_generator_reward(good, valid, ok, CFG)
    r_fails = compute_generator_reward(fails_invalid, valid, ok, CFG)
    np.testing.assert_allclose(r_good, [1.0])
    np.testing.assert_allclose(r_fails, [1.0])
    # and adding invalid tests changes nothing compared with not having them at all
    np.testing.assert_allclose(compute_generator_reward(fails_invalid[:, :2], valid[:2], ok, CFG), r_fails)


def test_format_failure_scores_zero_even_when_trivial_tests_pass():
    # test 0 is `assert True`-like: valid and passed by anything, even code that does not parse
    passes = np.array([[T, T], [T, F]])
    valid = np.array([T, T])
    r = compute_generator_reward(passes, valid, np.array([F, T]), CFG)
    np.testing.assert_allclose(r, [0.0, 0.9 * 0.5 + 0.1])


def test_generator_tests_are_deduplicated_across_samples():
    # sample 0 has tests a, b; sample 1 has a (the same test again), c. The code passes only a.
    passes = np.array([[T, F, T, F]])
    valid = np.array([T, T, T, T])
    keys = ["a", "b", "a", "c"]
    ok = np.array([T])
    # without keys: 2/4 -> 0.55; with: unique {a, b, c}, passes 1/3 -> 0.3 + 0.1 = 0.4
    np.testing.assert_allclose(compute_generator_reward(passes, valid, ok, CFG), [0.55])
    np.testing.assert_allclose(compute_generator_reward(passes, valid, ok, CFG, keys=keys), [0.4])


def test_generator_with_no_valid_test_gets_only_format():
    passes = np.array([[T, F], [F, F]])
    r = compute_generator_reward(passes, np.array([F, F]), np.array([T, F]), CFG)
    np.testing.assert_allclose(r, [0.1, 0.0])


def test_reward_weights_come_from_config():
    cfg = RewardConfig(gen_pass_coef=0.5, gen_format_coef=0.5)
    r = compute_generator_reward(np.array([[T, F]]), np.array([T, T]), np.array([T]), cfg)
    np.testing.assert_allclose(r, [0.5 * 0.5 + 0.5])


def test_reward_config_rejects_weights_that_do_not_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        RewardConfig(gen_pass_coef=0.8)


# ---------------------------------------------------------------- discriminator
def test_discriminator_reward_hand_computed():
    # 4 codes; sample 0: tests 0..7 (8 tests, 6 valid); sample 1: tests 8, 9 (trivial, valid, all pass)
    n = 4
    passes = np.ones((n, 10), dtype=bool)
    passes[0, 0] = F  # code 0 caught by valid test 0
    passes[1, 3] = F  # code 1 caught by valid test 3
    passes[2, 6] = F  # test 6 is invalid: catching code 2 with it does not count
    passes[3, 5] = F  # code 3 caught by valid test 5
    valid = np.array([T, T, T, T, T, T, F, F, T, T])
    sample_ids = np.array([0] * 8 + [1] * 2)
    r = compute_discriminator_reward(passes, valid, sample_ids, np.array([T, T]), CFG)
    # sample 0: discrimination 3/4, validity 6 / max(8, 8): 0.85*0.75 + 0.05*0.75 + 0.1 = 0.775
    # sample 1: discrimination 0, validity 2 / max(8, 2):   0        + 0.05*0.25 + 0.1 = 0.1125
    np.testing.assert_allclose(r, [0.775, 0.1125])


def test_a_few_trivial_tests_cannot_score_high():
    passes = np.ones((4, 12), dtype=bool)  # every code passes every test
    valid = np.ones(12, dtype=bool)
    sample_ids = np.array([0, 0] + [1] * 10)
    keys = ["t0", "t1"] + ["copy"] * 10  # sample 1: one trivial test pasted ten times
    r = compute_discriminator_reward(passes, valid, sample_ids, np.array([T, T]), CFG, keys=keys)
    # sample 0: 0.05 * 2/8 + 0.1 = 0.1125; sample 1: one unique test, 0.05 * 1/8 + 0.1 = 0.10625
    np.testing.assert_allclose(r, [0.1125, 0.10625])
    assert r.max() < 0.15
    # even a single trivial test that happens to catch every code is capped by tau on the validity term
    one = compute_discriminator_reward(np.zeros((4, 1), bool), np.array([T]), np.array([0]), np.array([T]), CFG)
    np.testing.assert_allclose(one, [0.85 + 0.05 / 8 + 0.1])


def test_invalid_tests_earn_the_discriminator_nothing():
    passes = np.zeros((3, 2), dtype=bool)  # both tests fail every code...
    valid = np.array([F, F])  # ...and the reference: they are wrong, not adversarial
    r = compute_discriminator_reward(passes, valid, np.array([0, 0]), np.array([T]), CFG)
    np.testing.assert_allclose(r, [0.1])  # format only


def test_discriminator_format_failures_score_zero():
    passes = np.zeros((2, 2), dtype=bool)
    valid = np.array([T, T])
    # sample 0 failed sanitization (its columns, if any, are ignored); sample 1 wrote no test; sample 2 is fine
    r = compute_discriminator_reward(passes, valid, np.array([0, 2]), np.array([F, T, T]), CFG)
    # sample 2: catches both codes with 1 valid test: 0.85 + 0.05 * 1/8 + 0.1
    np.testing.assert_allclose(r, [0.0, 0.0, 0.85 + 0.05 / 8 + 0.1])


def test_malformed_codes_do_not_count_as_caught():
    passes = np.array([[F], [T], [F]])  # code 2 does not parse and fails everything
    valid = np.array([T])
    code_ok = np.array([T, T, F])
    terms = discriminator_terms(passes, valid, np.array([0]), np.array([T]), 8, code_format_ok=code_ok)
    assert terms["discrimination"].tolist() == [0.5]  # 1 of the 2 well-formed codes, not 2 of 3
    r = compute_discriminator_reward(passes, valid, np.array([0]), np.array([T]), CFG, code_format_ok=code_ok)
    np.testing.assert_allclose(r, [0.85 * 0.5 + 0.05 / 8 + 0.1])


def test_all_pass_and_all_fail_groups():
    n, t = 4, 8
    valid = np.ones(t, dtype=bool)
    sample_ids = np.array([0] * 4 + [1] * 4)
    ok_codes, ok_samples = np.ones(n, bool), np.ones(2, bool)

    all_pass = np.ones((n, t), dtype=bool)
    gen = compute_generator_reward(all_pass, valid, ok_codes, CFG)
    disc = compute_discriminator_reward(all_pass, valid, sample_ids, ok_samples, CFG)
    np.testing.assert_allclose(gen, [1.0] * n)
    np.testing.assert_allclose(disc, [0.05 * 4 / 8 + 0.1] * 2)  # nothing caught
    assert compute_advantages(gen, [0] * n).abs().sum() == 0 == compute_advantages(disc, [0, 0]).abs().sum()  # no signal

    all_fail = np.zeros((n, t), dtype=bool)
    gen = compute_generator_reward(all_fail, valid, ok_codes, CFG)
    disc = compute_discriminator_reward(all_fail, valid, sample_ids, ok_samples, CFG)
    np.testing.assert_allclose(gen, [0.1] * n)
    np.testing.assert_allclose(disc, [0.85 + 0.05 * 4 / 8 + 0.1] * 2)  # every code caught
    for r in (gen, disc):
        assert ((0 <= r) & (r <= 1)).all()


def test_rewards_stay_in_unit_interval_on_random_matrices():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n, t, m = rng.integers(1, 6), rng.integers(0, 12), rng.integers(1, 4)
        passes = rng.random((n, t)) < 0.5
        valid = rng.random(t) < 0.6
        sample_ids = rng.integers(0, m, t)
        gen = compute_generator_reward(passes, valid, rng.random(n) < 0.8, CFG, gt_passes=rng.random((n, 3)) < 0.5)
        disc = compute_discriminator_reward(passes, valid, sample_ids, rng.random(m) < 0.8, CFG,
                                            code_format_ok=rng.random(n) < 0.8)
        for r in (gen, disc):
            assert ((0 <= r) & (r <= 1 + 1e-12)).all()


def test_shape_mismatch_raises():
    with pytest.raises(ValueError):
        compute_generator_reward(np.ones((2, 3), bool), np.ones(2, bool), np.ones(2, bool), CFG)
    with pytest.raises(ValueError):
        compute_discriminator_reward(np.ones((2, 3), bool), np.ones(3, bool), np.array([0, 1, 5]), np.ones(2, bool), CFG)


# ---------------------------------------------------------------- from sandbox results
def result(outcomes):
    passed = sum(o == "passed" for o in outcomes.values())
    return ExecutionResult(status="passed" if passed == len(outcomes) and outcomes else "failed",
                           passed=passed, total=len(outcomes), test_outcomes=outcomes)


def test_build_test_matrix_from_execution_results():
    names = [["test_a", "test_p"], [], ["TestC::test_m"]]  # sample 1 failed sanitization: no tests
    reference = [
        result({"test_a": "passed", "test_p[1]": "passed", "test_p[2]": "passed"}),
        result({}),
        result({"TestC::test_m": "failed"}),
    ]
    results = [
        [result({"test_a": "passed", "test_p[1]": "passed", "test_p[2]": "failed"}), result({}),
         result({"TestC::test_m": "passed"})],
        [result({"test_a": "failed", "test_p[1]": "passed", "test_p[2]": "passed"}), result({}),
         ExecutionResult(status="error")],  # nothing ran (collection error, dead worker): every test failed
    ]
    m = build_test_matrix(results, names, reference)
    assert m.names == ["test_a", "test_p", "TestC::test_m"]
    assert m.sample_ids.tolist() == [0, 0, 2]
    assert m.valid.tolist() == [T, T, F]
    assert m.passes.tolist() == [[T, F, T], [F, T, F]]  # a parametrized test passes only if all cases do
    assert len(set(m.keys)) == 3

    r = compute_discriminator_reward(m.passes, m.valid, m.sample_ids, np.array([T, F, T]), CFG)
    # sample 0 catches both codes with 2 valid tests: 0.85 + 0.05 * 2/8 + 0.1; sample 2 only invalid: 0.1
    np.testing.assert_allclose(r, [0.85 + 0.0125 + 0.1, 0.0, 0.1])


def test_test_functions_keys_identify_the_same_test_across_modules():
    a = "from solution import *\nK = 3\ndef helper(x):\n    return x + K\ndef test_a():\n    assert helper(1) == 4\n"
    b = "from solution import *\ndef test_b():\n    assert helper(1) == 4\nK = 3\ndef helper(x):\n    return x + K\n"
    c = "from solution import *\nK = 4\ndef helper(x):\n    return x + K\ndef test_c():\n    assert helper(1) == 4\n"
    d = ("import pytest\n@pytest.mark.parametrize('x', [1, 2])\ndef test_p(x):\n    assert x\n"
         "class TestK:\n    def test_m(self):\n        assert 1\n")
    ka, kb, kc, kd = map(collect_tests, (a, b, c, d))
    assert list(kd) == ["test_p", "TestK::test_m"]
    assert ka["test_a"] == kb["test_b"]  # same code, different name and order
    assert ka["test_a"] != kc["test_c"]  # same body, a helper that behaves differently
    assert collect_tests("def test_x(:\n") == {}


def test_a_test_class_named_alone_passes_when_all_its_methods_do():
    r = result({"TestC::test_a": "passed", "TestC::test_b": "failed", "TestD::test_a": "passed"})
    assert r.passed_test("TestD") and not r.passed_test("TestC") and not r.passed_test("TestE")
    assert r.passed_test("TestC::test_a") and not r.passed_test("TestC::test_b")


def test_ground_truth_matrix():
    gt = ground_truth_matrix([result({"test_1": "passed", "test_2": "failed"}), result({})], ["test_1", "test_2"])
    assert gt.tolist() == [[T, F], [F, F]]


def test_rewards_from_a_real_sandbox_run(sandbox):
    reference = "def add(a, b):\n    return a + b\n"
    codes = [reference, "def add(a, b):\n    return a - b\n", "def add(a, b) return\n"]
    samples = [
        "from solution import *\ndef test_small():\n    assert add(1, 2) == 3\ndef test_wrong():\n    assert add(1, 1) == 3\n",
        "from solution import *\nimport pytest\n@pytest.mark.parametrize('a', [0, 5])\ndef test_zero(a):\n"
        "    assert add(a, 0) == a\ndef test_same():\n    assert add(1, 2) == 3\n",
    ]
    names = [list(collect_tests(s)) for s in samples]
    matrix = build_test_matrix(sandbox.run_matrix(codes, samples), names, sandbox.run_matrix([reference], samples)[0],
                               test_sources=samples)
    assert matrix.valid.tolist() == [T, F, T, T]
    assert matrix.keys[0] == matrix.keys[3]  # test_small and test_same are one test
    assert matrix.passes.tolist() == [[T, F, T, T], [F, F, T, F], [F, F, F, F]]
    gen = compute_generator_reward(matrix.passes, matrix.valid, np.array([T, T, F]), CFG, keys=matrix.keys)
    # unique valid tests {small/same, zero}: reference 2/2 -> 1.0, a - b passes zero only -> 0.45 + 0.1
    np.testing.assert_allclose(gen, [1.0, 0.55, 0.0])
    disc = compute_discriminator_reward(matrix.passes, matrix.valid, matrix.sample_ids, np.array([T, T]), CFG,
                                        code_format_ok=np.array([T, T, F]), keys=matrix.keys)
    # sample 0: catches a - b (1 of 2 well-formed), 1 valid of 2: 0.425 + 0.05/8 + 0.1
    # sample 1: catches a - b via test_same, 2 valid of 2:        0.425 + 0.05*2/8 + 0.1
    np.testing.assert_allclose(disc, [0.425 + 0.00625 + 0.1, 0.425 + 0.0125 + 0.1])


def test_mutation_score_is_discrimination_on_the_mutants():
    """Two samples, three tests: sample 0 owns t0 (valid) and t1 (invalid), sample 1 owns t2 (valid).
    Mutants: m0 fails t0 and t1, m1 fails only t1 (an invalid test kills nothing), m2 fails t2."""
    passes = np.array([[T, T, T]])  # one code, passes everything: discrimination 0
    valid = np.array([T, F, T])
    sample_ids = np.array([0, 0, 1])
    mutants = np.array([[F, F, T], [T, F, T], [T, T, F]])
    terms = discriminator_terms(passes, valid, sample_ids, np.array([T, T]), 8, mutant_passes=mutants)
    assert terms["mutation_score"].tolist() == [1 / 3, 1 / 3]  # m0 by sample 0, m2 by sample 1
    weights = dict(disc_discrimination_coef=0.5, disc_mutation_coef=0.3, disc_validity_coef=0.1, disc_format_coef=0.1)
    cfg = RewardConfig(scale_by_validity=False, **weights)
    r = compute_discriminator_reward(passes, valid, sample_ids, np.array([T, T]), cfg, mutant_passes=mutants)
    # sample 0: 0.3/3 + 0.1 * 1/8 + 0.1 = 0.2125; sample 1: 0.3/3 + 0.1 * 1/8 + 0.1 = 0.2125
    np.testing.assert_allclose(r, [0.2125, 0.2125])
    # scaled by validity (the default, invalid_floor 1: the valid fraction): sample 0 has one invalid test of
    # two, sample 1 none: sample 0: 0.5 · 0.3/3 + 0.1 · 1/8 + 0.1 = 0.1625; sample 1 unchanged
    r = compute_discriminator_reward(passes, valid, sample_ids, np.array([T, T]), RewardConfig(**weights),
                                     mutant_passes=mutants)
    np.testing.assert_allclose(r, [0.1625, 0.2125])
    # invalid_floor 8: the invalid test costs 1/max(8, 2) of the credit: (1 - 1/8) · 0.3/3 + 0.1 · 1/8 + 0.1 = 0.2
    r = compute_discriminator_reward(passes, valid, sample_ids, np.array([T, T]), RewardConfig(invalid_floor=8, **weights),
                                     mutant_passes=mutants)
    np.testing.assert_allclose(r, [0.2, 0.2125])
    none = discriminator_terms(passes, valid, sample_ids, np.array([T, T]), 8)  # no mutants: the term is 0
    assert none["mutation_score"].tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="mutant_passes"):
        discriminator_terms(passes, valid, sample_ids, np.array([T, T]), 8, mutant_passes=np.ones((2, 2), bool))
