"""Metrics on hand-made test modules and reasoning chains."""
import itertools

import numpy as np
import pytest

from scoring.metrics import compute_test_diversity, reasoning_coherence

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
    coherent = reasoning_coherence(chain, code, problem).score
    names = list(chain)
    swaps = (["review", "edge_cases", "algorithm", "pseudocode", "understand"],
             ["understand", "pseudocode", "algorithm", "edge_cases", "review"])
    for order in (names[::-1], names[1:] + names[:1], *swaps):
        assert reasoning_coherence(permuted(chain, order), code, problem).score < coherent, order
    scores = [reasoning_coherence(permuted(chain, p), code, problem).score
              for p in itertools.permutations(names) if list(p) != names]
    assert np.mean([s < coherent for s in scores]) > 0.9  # nearly every one of the 119 shuffles scores lower


def test_coherent_chain_beats_stages_from_another_problem():
    for (chain, code, problem), (other, _, _) in ((CASES[0], CASES[1]), (CASES[1], CASES[0])):
        coherent = reasoning_coherence(chain, code, problem)
        foreign = reasoning_coherence(other, code, problem)
        assert foreign.score < coherent.score
        assert foreign.flow < coherent.flow and foreign.code_alignment < coherent.code_alignment
        half = {**chain, "algorithm": other["algorithm"], "pseudocode": other["pseudocode"]}
        assert reasoning_coherence(half, code, problem).score < coherent.score


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
    assert reasoning_coherence(CHAIN_RW, commented, PROBLEM_RW).score == reasoning_coherence(
        CHAIN_RW, CODE_RW, PROBLEM_RW).score


def test_edge_cases_dropped_from_review_lower_coverage():
    review = "Dry run: \"hello world\" -> \"world hello\"."
    partial = reasoning_coherence({**CHAIN_RW, "review": review}, CODE_RW, PROBLEM_RW)
    assert 0.0 < partial.edge_coverage < 1.0
