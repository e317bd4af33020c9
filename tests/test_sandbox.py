"""Sandbox correctness: counts, runners, matrix, validity, every reference solution passing, and what the tests
can do with the candidate's module across the boundary between their processes."""
import importlib.util
import json
import os
import sys
import time
import types
from dataclasses import asdict
from pathlib import Path

import pytest

from data.problems import load_humaneval, validate_problem
from sandbox import Sandbox, SandboxConfig, isolation, wire
from sandbox.executor import ExecutionResult, add_solution_import, count_outcomes
from sandbox.isolation import LEVELS, detect_level

ADD = "def add(a, b):\n    return a + b\n"


def test_counts_passing_and_failing_tests(sandbox):
    tests = (
        "def test_ok():\n    assert add(1, 2) == 3\n\n"
        "def test_wrong():\n    assert add(1, 2) == 4\n\n"
        "def test_raises():\n    raise ValueError('boom')\n"
    )
    r = sandbox.execute_tests(ADD, tests)
    assert (r.status, r.passed, r.failed, r.errors, r.total) == ("failed", 1, 2, 0, 3)
    assert r.test_outcomes == {"test_ok": "passed", "test_wrong": "failed", "test_raises": "failed"}
    assert r.pass_rate == pytest.approx(1 / 3)
    assert r.failing_tests == ["test_wrong", "test_raises"]
    assert "boom" in r.stderr


def test_all_pass(sandbox):
    r = sandbox.execute_tests(ADD, "from solution import add\n\ndef test_a():\n    assert add(2, 2) == 4\n")
    assert r.status == "passed" and r.all_passed and r.pass_rate == 1.0 and not r.timed_out
    assert r.duration_s > 0


def test_syntax_error_in_code_is_a_collection_error(sandbox):
    r = sandbox.execute_tests("def add(a, b) return a\n", "def test_a():\n    assert add(1, 1) == 2\n")
    assert (r.status, r.passed, r.errors, r.total) == ("error", 0, 1, 1)
    assert "SyntaxError" in r.stderr


def test_syntax_error_in_tests(sandbox):
    r = sandbox.execute_tests(ADD, "def test_a(:\n    pass\n")
    assert r.status == "error" and r.total == 0 and r.passed == 0


def test_exception_at_import_errors_every_test(sandbox):
    r = sandbox.execute_tests("raise RuntimeError('at import')\n", "def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    assert (r.errors, r.passed, r.status) == (2, 0, "error")


def test_timeout(sandbox):
    code = "import time\ndef slow():\n    time.sleep(30)\n"
    r = sandbox.execute_tests(code, "def test_fast():\n    assert 1\n\ndef test_slow():\n    slow()\n", timeout_s=1)
    assert r.timed_out and r.status == "timeout"
    assert r.test_outcomes == {"test_fast": "passed", "test_slow": "missing"}
    assert r.passed == 1 and r.failed == 1
    assert r.duration_s < 5


def test_fast_runner_handles_raises_and_parametrize(sandbox):
    tests = (
        "import pytest\n\n"
        "def test_raises():\n    with pytest.raises(TypeError):\n        add(1, 'a')\n\n"
        "@pytest.mark.parametrize('a,b,c', [(1, 2, 3), (0, 0, 0), (-1, 1, 5)])\n"
        "def test_param(a, b, c):\n    assert add(a, b) == c\n"
    )
    r = sandbox.execute_tests(ADD, tests)
    assert r.runner == "fast"
    assert r.total == 4 and r.passed == 3
    assert r.test_outcomes["test_param[-1-1-5]"] == "failed"
    assert not r.passed_test("test_param") and r.passed_test("test_raises")


def test_fast_runner_reads_keyword_parametrize_and_survives_a_bad_mark(sandbox):
    tests = (
        "import pytest\n\n"
        "@pytest.mark.parametrize('x', argvalues=[1, 2])\n"
        "def test_kw(x):\n    assert add(x, 0) == x\n\n"
        "@pytest.mark.parametrize(argnames='a,b', argvalues=[(1, 1)])\n"
        "def test_both_kw(a, b):\n    assert add(a, b) == 2\n\n"
        "@pytest.mark.parametrize('a,b', [1, 2])\n"  # not pairs: an error for this test only
        "def test_bad(a, b):\n    pass\n\n"
        "def test_plain():\n    assert add(1, 1) == 2\n"
    )
    r = sandbox.execute_tests(ADD, tests)
    assert r.runner == "fast"
    # test_bad's two cases (as its source writes them) count, the one it could report is an error
    assert (r.total, r.passed, r.errors) == (6, 4, 1), r.test_outcomes
    assert r.test_outcomes["test_bad"] == "error" and r.passed_test("test_kw") and r.passed_test("test_both_kw")


def test_pytest_fallback_for_fixtures_and_classes(sandbox):
    tests = (
        "import pytest\n\n"
        "@pytest.fixture\ndef two():\n    return 2\n\n"
        "def test_fixture(two):\n    assert add(two, two) == 4\n\n"
        "class TestAdd:\n    def test_zero(self):\n        assert add(0, 0) == 0\n"
        "    def test_bad(self):\n        assert add(1, 1) == 3\n"
    )
    r = sandbox.execute_tests(ADD, tests)
    assert r.runner == "pytest"
    assert r.test_outcomes == {"test_fixture": "passed", "TestAdd::test_zero": "passed", "TestAdd::test_bad": "failed"}


def test_generator_tests_and_colliding_case_ids_do_not_pass(sandbox):
    tests = (
        "import pytest\n\n"
        "def test_gen():\n    yield\n    assert False\n\n"
        "@pytest.mark.parametrize('x', ['1', 1])\n"  # both cases are named test_same[1]
        "def test_same(x):\n    assert add(x, 1) == 2\n"
    )
    r = sandbox.execute_tests(ADD, tests)
    assert r.runner == "fast"
    assert r.total == 3 and r.passed == 1, r.test_outcomes
    assert r.test_outcomes["test_gen"] == "failed" and not r.passed_test("test_same")


def test_many_tests_are_counted_in_linear_time(sandbox):
    tests = "".join(f"def test_{i}():\n    assert add({i}, 1) == {i + 1}\n" for i in range(3000))
    r = sandbox.execute_tests(ADD, tests, timeout_s=30)
    assert r.all_passed and r.total == 3000
    assert all(r.passed_test(f"test_{i}") for i in range(3000))


def test_counting_is_linear_in_the_number_of_tests():
    n = 50_000  # quadratic counting would take minutes here
    expected = {f"test_{i}": 2 for i in range(n)}
    reported = {f"test_{i}[{c}]": "passed" for i in range(n) for c in "ab"}
    start = time.perf_counter()
    result = ExecutionResult(**count_outcomes(expected, reported, timed_out=False))
    assert result.total == 2 * n and all(result.passed_test(name) for name in expected)
    assert time.perf_counter() - start < 5
    assert "_cases" not in asdict(result)  # the index passed_test built is not part of the result's data


def test_a_broken_sandbox_makes_errors_not_failures():
    expected = {"test_a": 1, "test_b": 1, "test_c": 1}
    out = count_outcomes(expected, {"test_a": "passed", "test_b": "failed"}, timed_out=False, broken=True)
    assert out["status"] == "error" and out["test_outcomes"] == {"test_a": "passed", "test_b": "error", "test_c": "error"}
    assert (out["passed"], out["failed"], out["errors"]) == (1, 0, 2)
    assert count_outcomes({"test_a": 1}, {"test_a": "passed"}, timed_out=False, broken=True)["status"] == "passed"


def test_plain_values_round_trip_and_nothing_else_is_decoded():
    value = [None, True, 0, -1, 2**200, -(2**70), 1.5, -0.0, float("inf"), "é\ud800", b"\x00\xff", bytearray(b"ab"),
             1 + 2j, (1, [2, {3: "x", (4, 5): frozenset({6})}]), {7, 8}, {}]
    def refuse(v):
        raise TypeError(type(v).__name__)
    data = json.loads(json.dumps(wire.encode(value, refuse)))  # what a frame carries
    back = wire.decode(data, lambda h: pytest.fail("no handle was sent"))
    assert back == value and [type(v) for v in back] == [type(v) for v in value]
    assert str(back[7]) == "-0.0" and back[4] == 2**200
    with pytest.raises(TypeError):
        wire.encode([object()], refuse)
    for junk in ([], ["x", []], ["l", "not a list"], {"a": 1}, ["d", [[1]]], ["c", "1", 2], ["h", "1", "f", None]):
        with pytest.raises((ValueError, TypeError)):
            wire.decode(junk, lambda h: None)


BOUNDARY_CODE = """
from collections import namedtuple
Point = namedtuple("Point", "x y")
LIMIT = 10

class EmptyError(ValueError):
    pass

class Stack:
    def __init__(self):
        self.items = []
    def push(self, x):
        self.items.append(x)
    def pop(self):
        if not self.items:
            raise EmptyError("empty stack")
        return self.items.pop()
    def __len__(self):
        return len(self.items)

def helper(x):
    return 2 * x

def sort_in_place(xs, table=None):
    xs.sort()
    if table is not None:
        table["sorted"] = True

def squares(n):
    for i in range(n):
        yield i * i

def point():
    return Point(1, 2)

def apply(f, x):
    return f(x)

def big():
    return 10 ** 5000

class Vec:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __add__(self, other):
        return Vec(self.x + other.x, self.y + other.y)
    def __eq__(self, other):
        return (self.x, self.y) == (other.x, other.y)

class Bag:
    def __init__(self, items):
        self.items = list(items)
    def __iter__(self):
        return iter(self.items)

def _private_helper():
    return "private"
"""


def test_the_candidates_module_across_the_boundary(sandbox):
    tests = """
import pytest
import solution
from solution import *

def test_helpers_and_constants():
    assert helper(3) == 6 and LIMIT == 10 and solution.LIMIT == 10

def test_classes_and_methods():
    s = Stack()
    s.push(1)
    s.push(2)
    assert len(s) == 2 and s.pop() == 2 and s.items == [1]
    assert isinstance(s, Stack) and not isinstance(3, Stack)

def test_exceptions_keep_their_types():
    with pytest.raises(EmptyError, match="empty stack"):
        Stack().pop()
    with pytest.raises(ValueError):
        Stack().pop()
    with pytest.raises(TypeError):
        helper()

def test_in_place_changes_come_back():
    xs, table = [3, 1, 2], {}
    inner = [[2], [1]]
    sort_in_place(xs, table=table)
    sort_in_place(inner)
    assert xs == [1, 2, 3] and table == {"sorted": True} and inner == [[1], [2]]

def test_generators_and_plain_subclasses():
    assert list(squares(4)) == [0, 1, 4, 9] and sum(squares(3)) == 5
    assert point() == (1, 2) and big() == 10 ** 5000

def test_only_plain_values_go_over():
    with pytest.raises(TypeError, match="plain values"):
        apply(lambda x: x, 1)

def test_operators_on_the_candidates_objects():
    assert Vec(1, 2) + Vec(3, 4) == Vec(4, 6)  # between its own objects: forwarded
    with pytest.raises(TypeError):
        Vec(1, 2) + 1  # with a test's value: refused
    with pytest.raises(TypeError):
        1 - Vec(1, 2)
    assert 2 in Bag([1, 2]) and 3 not in Bag([1, 2])  # `in` iterates; each item is compared here

def test_private_top_level_names_are_reachable():
    from solution import _private_helper
    assert _private_helper() == "private"

def test_the_code_itself_is_not_readable():
    assert getattr(solution.helper, "__code__", None) is None
    assert getattr(solution, "__file__", None) is None
    with pytest.raises(AttributeError):
        solution.helper._private
"""
    r = sandbox.execute_tests(BOUNDARY_CODE, tests)
    assert r.all_passed, (r.test_outcomes, r.stderr)


def test_a_crash_of_the_candidate_is_not_an_exception_a_test_expects(sandbox):
    code = "import os\ndef f():\n    os._exit(0)\n"
    tests = "import pytest\n\ndef test_a():\n    with pytest.raises(Exception):\n        f()\n"
    r = sandbox.execute_tests(code, tests)
    assert r.test_outcomes == {"test_a": "failed"}
    assert "ended" in r.stderr


def test_output_is_captured_and_capped():
    with Sandbox(SandboxConfig(num_workers=1, max_output_chars=100)) as sb:
        r = sb.execute_tests("print('x' * 10000)\n", "def test_a():\n    pass\n")
        assert r.all_passed
        assert r.stdout.startswith("x" * 100) and "[output truncated]" in r.stdout and len(r.stdout) < 200
        # a chatty candidate cannot push a passing test's output out: each side is capped on its own
        r = sb.execute_tests("import sys\nprint('x' * 10000)\nsys.stderr.write('y' * 10000)\n",
                             "def test_a():\n    print('said by the test')\n\n"
                             "def test_b():\n    assert add(1, 1) == 3\n")
        assert r.passed == 1 and "said by the test" in r.stdout and len(r.stdout) < 300
        assert "test_b" in r.stderr and "y" * 100 in r.stderr


def test_solution_import_is_added():
    assert add_solution_import("def test_a(): pass").startswith("from solution import *")
    assert add_solution_import("from solution import f\n") == "from solution import f\n"


def test_run_matrix_and_validity(sandbox):
    codes = [ADD, "def add(a, b):\n    return a - b\n", "syntax error here"]
    tests = ["def test_a():\n    assert add(2, 0) == 2\n", "def test_b():\n    assert add(2, 1) == 3\n",
             "def test_c():\n    assert add(1, 1) == 3\n"]
    m = sandbox.run_matrix(codes, tests)
    assert [[r.all_passed for r in row] for row in m] == [
        [True, True, False],
        [True, False, False],
        [False, False, False],
    ]
    assert sandbox.validate_tests_against_solution(tests, ADD) == [True, True, False]


def test_example_problems_validate(sandbox, example_problems):
    assert len(example_problems) >= 8
    for problem in example_problems:
        result = validate_problem(problem, sandbox)
        assert result.all_passed, (problem.id, result.failing_tests, result.stderr)
        assert result.total >= 5


def test_validate_problem_reports_failing_tests(sandbox, example_problems):
    problem = example_problems[0]
    broken = type(problem)(**{**problem.to_dict(), "reference_solution": "def reverse_words(s):\n    return s\n"})
    result = validate_problem(broken, sandbox)
    assert not result.all_passed
    assert "test_two_words" in result.failing_tests and "test_empty" not in result.failing_tests


def test_every_humaneval_canonical_solution_passes(sandbox):
    problems = load_humaneval()
    assert len(problems) == 164
    matrix_rows = [sandbox.execute_tests(p.reference_solution, p.tests) for p in problems]
    failed = [p.id for p, r in zip(problems, matrix_rows) if not r.all_passed]
    assert failed == []


@pytest.mark.parametrize("level", LEVELS)
def test_each_available_isolation_level_runs_tests(level):
    try:
        detect_level(level)
    except RuntimeError:
        pytest.skip(f"isolation {level} not available here")
    with Sandbox(SandboxConfig(num_workers=1, isolation=level, allow_unisolated=True)) as sb:
        assert sb.isolation == level
        r = sb.execute_tests(ADD, "def test_a():\n    assert add(1, 2) == 3\n\ndef test_b():\n    assert add(1, 2) == 0\n")
    assert r.test_outcomes == {"test_a": "passed", "test_b": "failed"}


def test_auto_falls_back_when_the_strongest_level_cannot_start(monkeypatch):
    levels = isolation.available_levels()
    if len(levels) < 2:
        pytest.skip("only one isolation level available here")
    real = isolation.container_command

    def refused(level, *args):  # as in a container that refuses user namespaces: the worker dies at once
        return (["false"], {}) if level == levels[0] else real(level, *args)

    monkeypatch.setattr(isolation, "container_command", refused)
    with Sandbox(SandboxConfig(num_workers=1)) as sb:
        assert sb.isolation == levels[1]
        assert sb.execute_tests(ADD, "def test_a():\n    assert add(1, 2) == 3\n").all_passed
    with pytest.raises(RuntimeError, match=f"isolation {levels[0]!r} failed to start"):
        Sandbox(SandboxConfig(num_workers=1, isolation=levels[0]))


def test_process_level_as_root_needs_the_explicit_flag(monkeypatch):
    if os.geteuid() != 0:
        pytest.skip("only refused as root")
    monkeypatch.setenv("ADVCODE_ALLOW_UNISOLATED", "1")  # no longer a way around the flag
    with pytest.raises(RuntimeError, match="allow_unisolated=True") as refused:
        Sandbox(SandboxConfig(num_workers=1, isolation="process"))
    assert "--allow-unisolated" in str(refused.value) and "ADVCODE" not in str(refused.value)
    with Sandbox(SandboxConfig(num_workers=1, isolation="process", allow_unisolated=True)) as sb:
        assert sb.isolation_record() == {"level": "process", "description": sb.isolation_description}
        assert "running as root, allowed by allow_unisolated" in sb.isolation_description


# ----------------------------------------------------------------- the candidate's side, without a process
def candidate_side(monkeypatch):
    """sandbox/candidate.py as the candidate's process imports it (its `wire` is a top-level module there)."""
    monkeypatch.setitem(sys.modules, "wire", wire)
    spec = importlib.util.spec_from_file_location("candidate_side", Path(wire.__file__).with_name("candidate.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_candidate_side_refuses_introspection(monkeypatch):
    side = candidate_side(monkeypatch)
    code = ("import os, sys\nSECRET = 'hidden'\nFRAME = sys._getframe()\n"
            "def squares(n):\n    for i in range(n):\n        yield i * len(SECRET)\n"
            "def _helper():\n    return 1\n"
            "class Box:\n    _inner = SECRET\n")
    module = types.ModuleType("solution")
    exec(compile(code, "solution.py", "exec"), vars(module))
    server = side.Server(module, None)

    def ask(*request):
        reply = server.answer(list(request))
        return json.loads(json.dumps(reply))  # as a frame carries it

    def handle(reply):
        assert reply[0] == "ok" and reply[1][0] == "h", reply
        return reply[1][1]

    squares = handle(ask("getattr", 0, "squares"))
    generator = handle(ask("call", squares, [3], []))
    box = handle(ask("getattr", 0, "Box"))
    for target, name in [(generator, n) for n in ("gi_frame", "gi_code", "gi_yieldfrom", "gi_running")] + [
            (squares, "__code__"), (squares, "__globals__"), (squares, "__closure__"), (box, "_inner"),
            (box, "__dict__"), (0, "__builtins__"), (0, "__loader__"), (0, "f_globals"), (0, "tb_frame")]:
        reply = ask("getattr", target, name)
        assert reply[0] == "raise" and reply[1]["base"] == "AttributeError", (name, reply)
    assert ask("getattr", 0, "_helper")[0] == "ok"  # the module's own private names are its functions
    assert ask("getattr", 0, "FRAME")[0] == "fail"  # frames (and code, tracebacks) never leave as handles
    assert ask("getattr", 0, "os")[1] == ["h", -1, "m", "os"]  # a module leaves as its name, without a handle
    for bad in (["getattr", -1, "environ"], ["call", squares, [["h", -1, "m", "os"]], []]):
        assert ask(*bad)[0] == "raise"
    # operators that would show the code a test's value, and `in`, are not answered
    for request in (["op", "sub", [["h", generator, "o", None], 1.5]], ["op", "eq", [1, ["h", box, "o", None]]],
                    ["op", "contains", [["h", box, "o", None], 1]]):
        assert ask(*request)[0] == "raise", request
    assert ask("op", "eq", [["h", box, "o", None], ["h", box, "o", None]]) == ["ok", True]
    assert "hidden" not in json.dumps([ask("call", squares, [2], []), ask("getattr", 0, "Box")])
