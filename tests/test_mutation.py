"""Mutation testing: hand-made sources whose mutants are listed by hand, then the sandbox filter and its cache."""
import ast
import logging

import pytest

from data.problems import Problem
from scoring.mutation import Mutant, make_mutants, nonequivalent_mutants


def by_description(source):
    return {m.description: m for m in make_mutants(source)}


def test_compare_swap_and_early_return_are_the_only_mutants_of_a_comparison():
    mutants = make_mutants("def f(a, b):\n    return a < b\n")
    assert mutants == [
        Mutant("def f(a, b):\n    return None\n    return a < b", "early_return", 1,
               "line 1: return None at the top of f()"),
        Mutant("def f(a, b):\n    return a <= b", "compare", 2, "line 2: < -> <="),
    ]


@pytest.mark.parametrize("expr, swapped", [
    ("a <= b", "a < b"), ("a > b", "a >= b"), ("a >= b", "a > b"), ("a == b", "a != b"), ("a != b", "a == b"),
    ("a in b", "a not in b"), ("a not in b", "a in b"), ("a is b", "a is not b"), ("a is not b", "a is b"),
    ("a + b", "a - b"), ("a - b", "a + b"), ("a * b", "a // b"), ("a / b", "a * b"), ("a % b", "a // b"),
    ("a and b", "a or b"), ("a or b", "a and b"), ("not a", "a"),
])
def test_each_operator_swap(expr, swapped):
    sources = {m.source for m in make_mutants(f"def f(a, b):\n    return {expr}\n")}
    assert f"def f(a, b):\n    return {swapped}" in sources


def test_floor_division_becomes_multiplication_or_modulo():
    assert {m.description for m in make_mutants("def f(a, b):\n    return a // b\n") if m.operator == "arith"} \
        == {"line 2: // -> *", "line 2: // -> %"}


def test_augmented_assignment_is_swapped():
    m = by_description("def f(x):\n    x *= 3\n    return x\n")["line 2: *= -> //="]
    assert m.operator == "arith" and m.line == 2
    assert m.source == "def f(x):\n    x //= 3\n    return x"


def test_integer_constants_move_by_one_but_bools_strings_and_floats_do_not():
    mutants = by_description("def f(x):\n    y = x + 0 + 2.5\n    return 'a1' if True else y\n")
    constant = {d: m.source for d, m in mutants.items() if m.operator == "constant"}
    assert constant == {
        "line 2: 0 -> 1": "def f(x):\n    y = x + 1 + 2.5\n    return 'a1' if True else y",
        "line 2: 0 -> -1": "def f(x):\n    y = x + -1 + 2.5\n    return 'a1' if True else y",
    }


def test_dropped_branches():
    src = "def sign(x):\n    if x > 0:\n        return 1\n    else:\n        return -1\n"
    mutants = by_description(src)
    assert mutants["line 2: if body -> pass"].source == \
        "def sign(x):\n    if x > 0:\n        pass\n    else:\n        return -1"
    assert mutants["line 2: else removed"].source == "def sign(x):\n    if x > 0:\n        return 1"
    assert mutants["line 2: else removed"].operator == "drop_branch"
    # returns 1 and -1 are both int literals, so the int's empty value is an early return too
    assert mutants["line 1: return 0 at the top of sign()"].source.startswith("def sign(x):\n    return 0\n    if")


def test_a_mutant_equal_to_the_original_is_dropped():
    # the `if` body is already `pass`: dropping it changes nothing
    descriptions = {m.description for m in make_mutants("def f(x):\n    if x:\n        pass\n    return x\n")}
    assert descriptions == {"line 1: return None at the top of f()"}


def test_mutants_with_the_same_text_are_kept_once():
    # removing either `not` gives `return not x`
    mutants = make_mutants("def f(x):\n    return not not x\n")
    assert [m.source for m in mutants if m.operator == "boolop"] == ["def f(x):\n    return not x"]


def test_early_return_goes_after_the_docstring_with_the_empty_value_of_the_return_type():
    src = 'def f(x):\n    """Return 1 < 2 items."""\n    if x:\n        return [x]\n    return []\n'
    mutants = by_description(src)
    for value in ("None", "[]"):
        assert mutants[f"line 1: return {value} at the top of f()"].source == (
            f'def f(x):\n    """Return 1 < 2 items."""\n    return {value}\n'
            '    if x:\n        return [x]\n    return []')
    # mixed return types: only `return None`
    early = [m for m in make_mutants("def g(x):\n    if x:\n        return 1\n    return 'one'\n")
             if m.operator == "early_return"]
    assert [m.description for m in early] == ["line 1: return None at the top of g()"]


def test_docstrings_imports_decorators_defaults_and_module_code_are_never_mutated():
    src = ('"""Module 1 < 2."""\nimport functools\nLIMIT = 10\n\n\nclass A:\n    SIZE = 3 + 4\n\n'
           '    @functools.lru_cache(maxsize=128)\n    def f(self, x: int = 5) -> int:\n'
           '        """Doc 7 > 6 and 1 + 1."""\n        return x\n')
    mutants = make_mutants(src)
    assert [m.description for m in mutants] == ["line 10: return None at the top of f()"]


def test_nested_functions_and_lambdas_inside_a_function_are_mutated():
    src = "def outer(xs):\n    def key(x):\n        return x - 1\n    return sorted(xs, key=lambda x: x < 2)\n"
    descriptions = {m.description for m in make_mutants(src)}
    assert {"line 2: return None at the top of key()", "line 3: - -> +", "line 4: < -> <="} <= descriptions


def test_every_mutant_parses_differs_from_the_original_and_is_distinct():
    src = ("def search(xs, target):\n    lo, hi = 0, len(xs) - 1\n    while lo <= hi:\n"
           "        mid = (lo + hi) // 2\n        if xs[mid] == target:\n            return mid\n"
           "        elif xs[mid] < target and not xs[mid] is None:\n            lo = mid + 1\n"
           "        else:\n            hi -= 1\n    return -1\n")
    mutants = make_mutants(src)
    original = ast.dump(ast.parse(src))
    assert len(mutants) > 20
    assert all(ast.dump(ast.parse(m.source)) != original for m in mutants)
    assert len({m.source for m in mutants}) == len(mutants)
    assert {m.operator for m in mutants} == {"compare", "arith", "constant", "boolop", "drop_branch", "early_return"}
    assert [m.line for m in mutants] == sorted(m.line for m in mutants)  # source order
    assert make_mutants(src) == mutants


def test_limit_picks_a_seeded_subset_spread_over_operators():
    src = ("def f(a, b):\n    if a < b and b > 0:\n        a += 1\n    elif not a:\n        return a * 2\n"
           "    return a - b == 3\n")
    everything = make_mutants(src)
    for seed in range(5):
        chosen = make_mutants(src, limit=6, seed=seed)
        assert chosen == make_mutants(src, limit=6, seed=seed)  # stable
        assert len(chosen) == 6
        assert {m.operator for m in chosen} == {m.operator for m in everything}  # one of each of the 6 operators
        assert chosen == [m for m in everything if m in chosen]  # a subset, in source order
    subsets = {tuple(m.source for m in make_mutants(src, limit=6, seed=seed)) for seed in range(5)}
    assert len(subsets) > 1  # the seed matters
    assert make_mutants(src, limit=len(everything) + 5) == everything


@pytest.mark.parametrize("source", ["def f(:\n", "x = (", "", "print('no function')\n"])
def test_unparseable_or_function_free_source_gives_no_mutant(source):
    assert make_mutants(source) == []


# ---- with the sandbox ------------------------------------------------------------------------------------

CLAMP = Problem(
    id="clamp",
    title="Clamp",
    description="Return x, or 0 when x is negative.",
    entry_point="clamp",
    reference_solution="def clamp(x):\n    if x < 0:\n        return 0\n    return x\n",
    tests="from solution import *\n\ndef test_negative():\n    assert clamp(-5) == 0\n\n"
          "def test_positive():\n    assert clamp(3) == 3\n",
)


# x <= 0 and x < 1 are equivalent on ints; x < -1 differs only at -1, which no test tries
SURVIVORS = {"line 2: < -> <=", "line 2: 0 -> 1", "line 2: 0 -> -1"}
KILLED = {"line 1: return None at the top of clamp()", "line 2: if body -> pass", "line 3: 0 -> 1", "line 3: 0 -> -1"}


class NoSandbox:
    def run_matrix(self, codes, tests):
        raise AssertionError("the sandbox was used on a cache hit")


def test_nonequivalent_mutants_drops_the_mutants_the_tests_cannot_tell_apart(sandbox, monkeypatch, tmp_path):
    monkeypatch.setenv("ADVCODE_CACHE_DIR", str(tmp_path))
    assert {m.description for m in make_mutants(CLAMP.reference_solution)} == SURVIVORS | KILLED

    mutants = nonequivalent_mutants(CLAMP, sandbox, limit=8)
    assert {m.description for m in mutants} == KILLED
    assert len(list((tmp_path / "mutants").glob("*.json"))) == 1

    # cache hit: the same answer and the sandbox is not touched; another limit is another key
    assert nonequivalent_mutants(CLAMP, NoSandbox(), limit=8) == mutants
    with pytest.raises(AssertionError, match="cache hit"):
        nonequivalent_mutants(CLAMP, NoSandbox(), limit=2)


def test_nonequivalent_mutants_limit_keeps_a_spread_subset(sandbox, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("ADVCODE_CACHE_DIR", str(tmp_path))
    with caplog.at_level(logging.DEBUG, logger="scoring.mutation"):
        mutants = nonequivalent_mutants(CLAMP, sandbox, limit=2, seed=0)
    assert [r.levelname for r in caplog.records] == ["DEBUG"]  # one line per problem: not for the console
    assert len(mutants) == 2
    assert len({m.operator for m in mutants}) == 2  # two operators, not the two constants
    assert {m.description for m in mutants} <= KILLED
    assert nonequivalent_mutants(CLAMP, NoSandbox(), limit=2, seed=0) == mutants


def test_hardest_mutants_are_those_failing_the_fewest_ground_truth_tests(sandbox, monkeypatch, tmp_path):
    monkeypatch.setenv("ADVCODE_CACHE_DIR", str(tmp_path))
    # `return None` fails both tests; the other three killed mutants fail only test_negative
    hard = nonequivalent_mutants(CLAMP, sandbox, limit=3, hardest=True)
    assert {m.description for m in hard} == KILLED - {"line 1: return None at the top of clamp()"}
    assert hard == sorted(hard, key=lambda m: m.line)  # source order
    assert nonequivalent_mutants(CLAMP, NoSandbox(), limit=3, hardest=True) == hard  # cached under its own key
    assert len(list((tmp_path / "mutants").glob("*.json"))) == 1
    spread = nonequivalent_mutants(CLAMP, sandbox, limit=3)
    assert "line 1: return None at the top of clamp()" in {m.description for m in spread}  # one per operator


COUNT_UP = Problem(
    id="count_up",
    title="Count up",
    description="Count from 0 up to n.",
    entry_point="count_up",
    reference_solution="def count_up(n):\n    i = 0\n    while i < n:\n        i += 1\n    return i\n",
    tests="from solution import *\n\ndef test_three():\n    assert count_up(3) == 3\n\n"
          "def test_zero():\n    assert count_up(0) == 0\n",
)


def test_a_mutant_that_runs_into_the_time_limit_is_not_kept(monkeypatch, tmp_path):
    from sandbox import Sandbox, SandboxConfig

    monkeypatch.setenv("ADVCODE_CACHE_DIR", str(tmp_path))
    looping = {"line 4: += -> -=", "line 4: 1 -> 0"}  # i -= 1 and i += 0 never reach 3
    candidates = make_mutants(COUNT_UP.reference_solution)
    assert looping <= {m.description for m in candidates}
    with Sandbox(SandboxConfig(num_workers=2, timeout_s=1.0)) as sb:
        rows = sb.run_matrix([m.source for m in candidates], [COUNT_UP.tests])
        timed_out = {m.description for m, row in zip(candidates, rows) if row[0].timed_out}
        assert timed_out == looping  # the ground-truth tests do kill them, by the time limit
        kept = {m.description for m in nonequivalent_mutants(COUNT_UP, sb, limit=0)}
    assert kept and not kept & looping
