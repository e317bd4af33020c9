"""Sanitization of model output into code and pytest modules (no model needed)."""
import ast

import pytest

from models.sanitize import extract_blocks, parse_repaired, sanitize_code, sanitize_tests

GOOD = "def add(a, b):\n    return a + b\n"


# ----------------------------------------------------------------------------- code
def test_code_from_fence_with_prose_around():
    text = f"Here is my solution:\n\n```python\n{GOOD}```\n\nIt adds the two numbers."
    s = sanitize_code(text, "add")
    assert s.ok and s.code == GOOD
    assert "fence" in s.repairs


def test_code_picks_the_block_that_defines_the_entry_point():
    text = "```python\nprint(add(1, 2))\n```\nand the function:\n```py\n" + GOOD + "```"
    s = sanitize_code(text, "add")
    assert s.ok and "def add" in s.code and "print" not in s.code


def test_code_unterminated_fence_is_taken_to_the_end():
    s = sanitize_code("```python\n" + GOOD, "add")
    assert s.ok and s.code == GOOD


def test_code_without_fence_drops_leading_and_trailing_prose():
    text = "Sure, here it is.\n" + GOOD + "This function returns the sum."
    s = sanitize_code(text, "add")
    assert s.ok and s.code == GOOD
    assert any("trailing" in r for r in s.repairs)


def test_code_tabs_and_common_indentation_repaired():
    text = "```python\n    def add(a, b):\n    \treturn a + b\n```"
    s = sanitize_code(text, "add")
    assert s.ok, s.reason
    assert "\t" not in s.code and s.code.startswith("def add")
    namespace = {}
    exec(s.code, namespace)
    assert namespace["add"](2, 3) == 5


def test_code_off_grid_indentation_snapped():
    text = "def add(a, b):\n    x = a\n     return x + b\n"  # 5 spaces on the last line
    s = sanitize_code(text, "add")
    assert s.ok and "indentation" in s.repairs
    namespace = {}
    exec(s.code, namespace)
    assert namespace["add"](2, 3) == 5


def test_code_example_calls_and_main_block_removed():
    text = GOOD + "\nprint(add(1, 2))\nassert add(1, 1) == 2\nif __name__ == '__main__':\n    add(input(), 1)\n"
    s = sanitize_code(text, "add")
    assert s.ok
    tree = ast.parse(s.code)
    assert [type(n).__name__ for n in tree.body] == ["FunctionDef"]


def test_code_keeps_imports_helpers_and_docstring():
    text = '"""Module doc."""\nimport math\n\ndef helper(x):\n    return math.floor(x)\n\ndef add(a, b):\n    return helper(a) + b\n'
    s = sanitize_code(text, "add")
    assert s.ok and s.code == text


def test_code_missing_entry_point_is_a_format_failure():
    s = sanitize_code("```python\ndef plus(a, b):\n    return a + b\n```", "add")
    assert not s.ok and s.code == ""
    assert "add" in s.reason and "plus" in s.reason


def test_code_method_of_a_class_is_not_the_entry_point():
    s = sanitize_code("class Solution:\n    def add(self, a, b):\n        return a + b\n", "add")
    assert not s.ok and "Solution" in s.reason


def test_code_that_never_parses_is_a_format_failure():
    s = sanitize_code("```python\ndef add(a, b)\n    return a +\n```", "add")
    assert not s.ok and s.reason.startswith("does not parse")


def test_code_prose_only_is_a_format_failure():
    s = sanitize_code("I am not sure how to solve this problem.", "add")
    assert not s.ok and "no code" in s.reason


def test_code_lambda_assignment_counts_as_definition():
    assert sanitize_code("add = lambda a, b: a + b\n", "add").ok


def test_extract_blocks_ignores_other_languages():
    text = "```bash\npip install x\n```\n```python\nx = 1\n```\n```\ny = 2\n```"
    assert extract_blocks(text) == ["x = 1\n", "y = 2\n"]


def test_parse_repaired_reports_error_when_nothing_parses():
    tree, _, _, error = parse_repaired("((((")
    assert tree is None and error


# ----------------------------------------------------------------------------- tests
RESPONSE = '''Here are some tests:

```python
from solution import add
from mymodule import helper
import math

def add(a, b):
    return 0

def test_small():
    assert add(1, 2) == 3

def test_small():
    assert add(0, 0) == 0

def test_copy():
    assert add(1, 2) == 3

def test_needs_fixture(numbers):
    assert add(*numbers) == 3

def test_unrelated():
    assert math.pi > 3

assert add(2, 2) == 4
print(add(1, 1))

def test_cut_off():
    assert add(
```
These tests cover the basics.'''


def test_tests_module_keeps_only_runnable_test_functions():
    s = sanitize_tests(RESPONSE, "add")
    assert s.ok, s.reason
    # duplicate names renamed apart, exact duplicate dropped, fixture-needing and unrelated tests dropped,
    # bare assert wrapped, truncated last test dropped
    assert s.test_names == ["test_small", "test_small_2", "test_assert_1"]
    tree = ast.parse(s.tests)
    assert s.tests.startswith("from solution import *\nimport pytest\n")
    assert "import math" in s.tests and "mymodule" not in s.tests
    assert "from solution import add" not in s.tests
    defined = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
    assert defined == s.test_names  # the model's own `add` is gone
    assert not [n for n in tree.body if isinstance(n, ast.Expr)]  # no top-level side effects


def test_tests_module_runs_against_a_solution(tmp_path):
    s = sanitize_tests(RESPONSE, "add")
    (tmp_path / "solution.py").write_text(GOOD)
    namespace = {}
    import sys

    sys.path.insert(0, str(tmp_path))
    try:
        exec(s.tests, namespace)
        for name in s.test_names:
            namespace[name]()  # all pass on the correct solution
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("solution", None)


def test_tests_parametrized_test_kept():
    text = (
        "import pytest\n\n@pytest.mark.parametrize('a,b,c', [(1, 2, 3), (0, 0, 0)])\n"
        "def test_param(a, b, c):\n    assert add(a, b) == c\n"
    )
    s = sanitize_tests(text, "add")
    assert s.ok and s.test_names == ["test_param"]
    assert "@pytest.mark.parametrize" in s.tests


def test_tests_bare_asserts_only_become_tests():
    s = sanitize_tests("assert add(1, 2) == 3\nassert add(0, 0) == 0\n", "add")
    assert s.ok and s.test_names == ["test_assert_1", "test_assert_2"]


def test_tests_without_calls_to_the_entry_point_fail():
    s = sanitize_tests("```python\ndef test_true():\n    assert True\n```", "add")
    assert not s.ok and s.tests == "" and "add" in s.reason


def test_tests_prose_only_fails():
    s = sanitize_tests("I would test small numbers.", "add")
    assert not s.ok and "no code" in s.reason


def test_tests_unparsable_fails_with_reason():
    s = sanitize_tests("```python\ndef test_x(:\n```", "add")
    assert not s.ok and "parse" in s.reason


def test_tests_made_only_of_asserts_are_split_one_per_assert():
    text = (
        "def test_many():\n    '''doc'''\n    assert add(1, 2) == 3\n    assert add(1, 1) == 5\n"
        "    assert add(1, 2) == 3\n    assert True\n\n"
        "def test_with_setup():\n    x = add(1, 2)\n    assert x == 3\n    assert x > 0\n"
    )
    s = sanitize_tests(text, "add")
    # the repeated assert is an exact duplicate (dropped); `assert True` does not call add (dropped)
    assert s.test_names == ["test_many_1", "test_many_2", "test_with_setup"]
    namespace = {"add": lambda a, b: a + b}
    exec(s.tests.replace("from solution import *\n", ""), namespace)
    namespace["test_many_1"]()  # the right expectation stands on its own
    with pytest.raises(AssertionError):
        namespace["test_many_2"]()
    whole = sanitize_tests(text, "add", split_asserts=False)
    assert whole.test_names == ["test_many", "test_with_setup"]


def test_tests_keep_the_suite_s_own_helpers(sandbox):
    response = ("```python\nfrom solution import add\nCASES = [(1, 2, 3), (2, 2, 4)]\n\n"
                "def check(a, b, c):\n    assert add(a, b) == c\n\n"
                "def add(a, b):\n    return 0\n\n"
                "def test_cases():\n    for a, b, c in CASES:\n        check(a, b, c)\n```")
    s = sanitize_tests(response, "add")
    assert s.ok and s.test_names == ["test_cases"], s.reason
    tree = ast.parse(s.tests)
    assert [n.name for n in tree.body if isinstance(n, ast.FunctionDef)] == ["check", "test_cases"]  # not `add`
    assert sandbox.execute_tests("def add(a, b):\n    return a + b\n", s.tests).all_passed
    # a candidate that brings its own `check` and `CASES` (which would pass anything) gets the suite's
    cheat = "def add(a, b):\n    return 0\n\ndef check(*args):\n    pass\n\nCASES = []\n"
    assert sandbox.execute_tests(cheat, s.tests).test_outcomes == {"test_cases": "failed"}
