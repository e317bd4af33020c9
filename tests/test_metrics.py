"""Metrics on hand-made sandbox results, test modules and reasoning chains."""
import itertools

import numpy as np
import pytest

from evaluation.metrics import (
    aggregate_report,
    compute_failure_rate,
    compute_pass_rate,
    compute_reasoning_coherence,
    compute_test_diversity,
    reasoning_coherence,
)
from sandbox.executor import ExecutionResult

# ---------------------------------------------------------------- pass and failure rates
RESULTS = [
    ExecutionResult(status="passed", passed=3, total=3),  # 3/3
    ExecutionResult(status="failed", passed=1, failed=3, total=4),  # 1/4
    ExecutionResult(status="error"),  # nothing ran: 0
    ExecutionResult(status="timeout", failed=2, total=2, timed_out=True),  # 0/2
]


def test_pass_and_failure_rates_of_execution_results():
    # mean fraction of tests passed: (1 + 1/4 + 0 + 0) / 4 = 0.3125; outright passes: 1 of 4
    assert compute_pass_rate(RESULTS) == pytest.approx(0.3125)
    assert compute_pass_rate(RESULTS, strict=True) == pytest.approx(0.25)
    assert compute_failure_rate(RESULTS) == pytest.approx(0.75)
    assert compute_failure_rate(RESULTS, strict=False) == pytest.approx(0.6875)
    # Sandbox.run_matrix's nested rows give the same numbers
    assert compute_pass_rate([RESULTS[:2], RESULTS[2:]]) == pytest.approx(0.3125)


def test_pass_and_failure_rates_of_pass_matrices():
    matrix = np.array([[1, 1, 0], [1, 1, 1]], dtype=bool)  # rows: codes, columns: tests
    assert compute_pass_rate(matrix) == pytest.approx((2 / 3 + 1) / 2)
    assert compute_pass_rate(matrix, strict=True) == 0.5
    assert compute_failure_rate(matrix) == 0.5
    assert compute_pass_rate([True, False, False, True]) == 0.5  # 1-D: one outcome per execution
    assert compute_pass_rate([]) == 0.0 and compute_failure_rate([]) == 0.0
    with pytest.raises(ValueError, match="pass matrix"):
        compute_pass_rate([[0, 2]])


# ---------------------------------------------------------------- test diversity
BASE = """
from solution import *

def test_two_words():
    assert reverse_words("hello world") == "world hello"
"""
RENAMED = """
from solution import *
import pytest

def test_something_else():   # same behaviour: new name, variables, quotes, spacing and a comment
    sentence = 'hello world'
    out = reverse_words( sentence )
    assert 'world hello' == out
"""
NEW_INPUT = """
def test_empty():
    assert reverse_words("") == ""
"""


def test_renaming_or_reformatting_does_not_raise_diversity():
    base = compute_test_diversity(BASE)
    assert (base.num_tests, base.num_distinct_tests, base.num_distinct_inputs, base.score) == (1, 1, 1, 1.0)
    renamed = compute_test_diversity(RENAMED)
    assert (renamed.num_distinct_inputs, renamed.num_distinct_checks) == (1, 1)
    both = compute_test_diversity([BASE, RENAMED])
    # two tests, one behaviour: 1/2
    assert (both.num_tests, both.num_distinct_tests, both.num_distinct_inputs) == (2, 1, 1)
    assert both.score == 0.5


def test_a_new_input_raises_diversity():
    with_new = compute_test_diversity([BASE, NEW_INPUT])
    with_copy = compute_test_diversity([BASE, RENAMED])
    assert with_new.num_distinct_inputs == 2 > with_copy.num_distinct_inputs
    assert with_new.score == 1.0 > with_copy.score


def test_a_new_expected_value_is_a_new_check_but_not_a_new_input():
    other = 'def test_x():\n    assert reverse_words("hello world") != "hello world"\n'
    d = compute_test_diversity([BASE, other])
    assert (d.num_distinct_tests, d.num_distinct_checks, d.num_distinct_inputs) == (2, 2, 1)


def test_parametrize_loops_raises_and_asserts_are_read():
    source = """
import pytest
from solution import *

@pytest.mark.parametrize("s, want", [("a b", "b a"), pytest.param("", "", id="empty")])
def test_cases(s, want):
    assert reverse_words(s) == want

def test_loop():
    for s, want in [("a b", "b a"), ("x", "x")]:
        assert reverse_words(s) == want

def test_raises():
    with pytest.raises(TypeError):
        reverse_words(None)

def test_properties():
    assert len(reverse_words("a b c").split()) == 3 and not reverse_words("   ")

class TestGroup:
    def test_method(self):
        assert reverse_words(s="a b") == "b a"

def test_nothing():
    assert True
"""
    d = compute_test_diversity(source, entry_point="reverse_words")
    # 2 parametrize cases + loop + raises + properties + method + nothing = 7 tests, all different
    assert (d.num_tests, d.num_distinct_tests) == (7, 7)
    # checks: ('a b'->'b a') x2 (same check), (''->''), ('x'->'x'), (None raises), ('a b c' len), ('   ' not),
    # (s='a b' -> 'b a'): 8 checks, 7 distinct; inputs 'a b', '', 'x', None, 'a b c', '   ', s='a b' = 7
    assert (d.num_checks, d.num_distinct_checks, d.num_distinct_inputs) == (8, 7, 7)


def test_tests_that_call_nothing_are_one_behaviour_and_bad_sources_count_nothing():
    d = compute_test_diversity(["def test_a():\n    assert True\n\ndef test_b():\n    assert 1 == 1\n", "def ("])
    assert (d.num_tests, d.num_distinct_tests, d.num_checks) == (2, 1, 0)
    assert d.score == 0.5
    assert compute_test_diversity([]).score == 0.0


def test_degenerate_tests_stay_cheap():
    doubling = "def test_x():\n    s = 'a'\n" + "    s = s + s\n" * 60 + "    assert f(s) == 1\n"
    assert compute_test_diversity(doubling).num_checks == 1  # a value 2^60 nodes big is not built
    stacked = "import pytest\n" + "".join(
        f"@pytest.mark.parametrize('b{i}', {list(range(60))})\n" for i in range(3)) + "def test_x(b0, b1, b2):\n" \
        "    assert f(b0, b1, b2) == 1\n"
    assert compute_test_diversity(stacked).num_tests == 1  # 60^3 cases are read as one unknown case


# ---------------------------------------------------------------- reasoning coherence
PROBLEM_RW = "Reverse the words of a sentence. reverse_words(sentence: str) -> str returns the words of sentence in " \
    "reverse order joined by single spaces; leading and trailing spaces are ignored."
CHAIN_RW = {
    "understand": "The input is a sentence string. Return its words in reverse order joined by single spaces; "
                  "leading, trailing and repeated spaces are ignored.",
    "edge_cases": "\"hello world\" -> \"world hello\". Empty string \"\" -> \"\", only spaces \"   \" -> \"\", "
                  "a single word \"python\", extra spaces between words.",
    "algorithm": "Split the sentence on whitespace with `split()`, reverse the list of words, and `join` them "
                 "with one space. Time O(n), space O(n).",
    "pseudocode": "words = sentence.split()\nreversed_words = reversed(words)\nreturn ' '.join(reversed_words)",
    "review": "Dry run: \"hello world\" -> split gives [hello, world] -> reversed -> \"world hello\". Empty "
              "string \"\" -> [] -> \"\". Only spaces \"   \" -> \"\". Single word \"python\" stays. Extra spaces "
              "are dropped by split.",
}
CODE_RW = (
    "def reverse_words(sentence: str) -> str:\n    words = sentence.split()\n    return ' '.join(reversed(words))\n"
)
PROBLEM_FB = "FizzBuzz list. fizzbuzz(n: int) -> list[str] returns the strings for 1..n: Fizz for multiples of 3, " \
    "Buzz for multiples of 5, FizzBuzz for both, the number itself otherwise. For n <= 0 return an empty list."
CHAIN_FB = {
    "understand": "Given n, return the list of strings for 1..n: Fizz for multiples of 3, Buzz for multiples of 5, "
                  "FizzBuzz for both, else the number as a string. For n <= 0 return an empty list.",
    "edge_cases": "n = 0 -> [], negative n = -3 -> [], n = 15 ends with \"FizzBuzz\", n = 5 -> "
                  "[\"1\", \"2\", \"Fizz\", \"4\", \"Buzz\"].",
    "algorithm": "Loop i from 1 to n and test divisibility with modulo: i % 15, then i % 3, then i % 5. O(n) time.",
    "pseudocode": "out = []\nfor i in range(1, n + 1):\n  if i % 15 == 0: append FizzBuzz\n  elif i % 3 == 0: "
                  "append Fizz\n  elif i % 5 == 0: append Buzz\n  else append str(i)\nreturn out",
    "review": "n = 5 gives [\"1\", \"2\", \"Fizz\", \"4\", \"Buzz\"]. n = 0: range is empty -> []. Negative n = -3 "
              "-> []. 15 -> \"FizzBuzz\" since the 15 check comes first.",
}
CODE_FB = (
    "def fizzbuzz(n: int) -> list[str]:\n    out = []\n    for i in range(1, n + 1):\n        if i % 15 == 0:\n"
    "            out.append('FizzBuzz')\n        elif i % 3 == 0:\n            out.append('Fizz')\n"
    "        elif i % 5 == 0:\n            out.append('Buzz')\n        else:\n            out.append(str(i))\n"
    "    return out\n"
)
CASES = [(CHAIN_RW, CODE_RW, PROBLEM_RW), (CHAIN_FB, CODE_FB, PROBLEM_FB)]


def permuted(chain, order):
    """The texts of `chain` put under the stage names in `order`'s positions."""
    return {name: chain[source] for name, source in zip(chain, order)}


@pytest.mark.parametrize("chain, code, problem", CASES)
def test_coherent_chain_beats_permuted_stages(chain, code, problem):
    coherent = compute_reasoning_coherence(chain, code, problem)
    names = list(chain)
    swaps = (["review", "edge_cases", "algorithm", "pseudocode", "understand"],
             ["understand", "pseudocode", "algorithm", "edge_cases", "review"])
    for order in (names[::-1], names[1:] + names[:1], *swaps):
        assert compute_reasoning_coherence(permuted(chain, order), code, problem) < coherent, order
    scores = [compute_reasoning_coherence(permuted(chain, p), code, problem)
              for p in itertools.permutations(names) if list(p) != names]
    assert np.mean([s < coherent for s in scores]) > 0.9  # nearly every one of the 119 shuffles scores lower


def test_coherent_chain_beats_stages_from_another_problem():
    for (chain, code, problem), (other, _, _) in ((CASES[0], CASES[1]), (CASES[1], CASES[0])):
        coherent = reasoning_coherence(chain, code, problem)
        foreign = reasoning_coherence(other, code, problem)
        assert foreign.score < coherent.score
        assert foreign.flow < coherent.flow and foreign.code_alignment < coherent.code_alignment
        half = {**chain, "algorithm": other["algorithm"], "pseudocode": other["pseudocode"]}
        assert compute_reasoning_coherence(half, code, problem) < coherent.score


def test_coherence_components_and_range():
    c = reasoning_coherence(CHAIN_RW, CODE_RW, PROBLEM_RW)
    assert all(0.0 <= v <= 1.0 for v in (c.flow, c.code_alignment, c.edge_coverage, c.score))
    assert c.score == pytest.approx(np.mean([c.flow, c.code_alignment, c.edge_coverage]))
    # the review names every edge case the edge_cases stage listed
    assert c.edge_coverage == 1.0
    no_review = reasoning_coherence({k: v for k, v in CHAIN_RW.items() if k != "review"}, CODE_RW, PROBLEM_RW)
    assert no_review.edge_coverage is None
    assert reasoning_coherence({}, "").score == 0.0
    # deterministic, and comments in the code cannot buy alignment
    commented = CODE_RW.replace("    words =", "    # split reverse join words sentence spaces\n    words =")
    assert compute_reasoning_coherence(CHAIN_RW, commented, PROBLEM_RW) == compute_reasoning_coherence(
        CHAIN_RW, CODE_RW, PROBLEM_RW)


def test_edge_cases_dropped_from_review_lower_coverage():
    review = "Dry run: \"hello world\" -> \"world hello\"."
    partial = reasoning_coherence({**CHAIN_RW, "review": review}, CODE_RW, PROBLEM_RW)
    assert 0.0 < partial.edge_coverage < 1.0


# ---------------------------------------------------------------- report
def test_aggregate_report_namespaced_and_consistent():
    report = aggregate_report(
        RESULTS, test_sources=[BASE, RENAMED, NEW_INPUT], chains=[CHAIN_RW], codes=[CODE_RW], problems=[PROBLEM_RW],
        num_samples=5, num_correct=[2, 0], ks=(1, 2, 10),
    )
    assert all(key.startswith("eval/") for key in report)
    assert report["eval/pass_rate"] == pytest.approx(0.3125)
    assert report["eval/strict_pass_rate"] == 0.25 and report["eval/failure_rate"] == 0.75
    assert report["eval/error_rate"] == 0.25 and report["eval/timeout_rate"] == 0.25
    assert report["eval/num_tests"] == 3 and report["eval/distinct_inputs"] == 2
    assert report["eval/test_diversity"] == pytest.approx(2 / 3)
    assert report["eval/reasoning_coherence"] == compute_reasoning_coherence(CHAIN_RW, CODE_RW, PROBLEM_RW)
    # pass@1 = mean(2/5, 0) = 0.2; pass@2 = mean(7/10, 0) = 0.35; k = 10 > n = 5 is left out
    assert report["eval/pass@1"] == pytest.approx(0.2) and report["eval/pass@2"] == pytest.approx(0.35)
    assert "eval/pass@10" not in report
    assert aggregate_report() == {}
    per_problem = aggregate_report(test_sources=[[BASE, RENAMED], [NEW_INPUT]])
    assert per_problem["eval/test_diversity"] == pytest.approx((0.5 + 1.0) / 2)
