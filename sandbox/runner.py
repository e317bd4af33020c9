"""The tests' side of an execution: runs the test source against the candidate's module (`remote.py`) and
reports one outcome per test to the host.

Plain test functions (asserts, `pytest.raises`, `@pytest.mark.parametrize`) run in a small runner here;
anything else (fixtures, classes, other marks) runs under real pytest in this process, with conftest files,
ini files, plugin autoloading and output capture switched off (a passing test's output is kept). Before
any test runs it reports how many cases each test has; the host decides which tests were expected, from
the source's syntax tree, and fails every case that never reports. An exception object cannot break the
reporting (`_describe`); a fixture's teardown failure fails its test.
This process never learns which code it is testing: the candidate's process answers it with plain values.
"""
import ast
import inspect
import itertools
import json
import linecache
import os
import sys
import traceback

import pytest  # imported once in the fork server, inherited by every execution

import remote
import wire
from wire import COLLECTED, DONE, ERROR, FAILED, PASSED, PROTOCOL, SKIPPED

TESTS = "test_solution.py"
MAX_MESSAGE = 2000


class Reporter:
    """One JSON line per test outcome, on the socket to the host; messages for the first 1000 only (the host
    keeps no more), so that 10,000 failing tests stay well under what the host reads."""

    def __init__(self, sock):
        self.sock = sock
        self.messages = 0

    def send(self, test, outcome, message=""):
        self.messages += bool(message)
        if self.messages > 1000:
            message = ""
        if outcome == DONE:
            wire.flush_output()  # the host kills us once it reads DONE
        line = json.dumps({"t": test, "o": outcome, "m": message[-MAX_MESSAGE:]}) + "\n"
        self.sock.sendall(line.encode())

    def collected(self, counts):
        """How many cases each test has, before any runs: the host fails every case that does not report."""
        self.sock.sendall((json.dumps({"t": COLLECTED, "c": counts}) + "\n").encode())


# ---------------------------------------------------------------- the fast runner
def _case_id(values, index):
    return "-".join(str(v) if isinstance(v, (int, float, str, bool, type(None))) and len(str(v)) < 40 else f"v{index}"
                    for v in values)


def cases(func):
    """(id suffix, kwargs) for each parametrized case of a test function; one plain case if none. Raises
    (anything) on a mark it cannot read: the caller reports the test as an error."""
    axes = []
    for mark in reversed(getattr(func, "pytestmark", [])):
        if mark.name != "parametrize":
            continue
        args, kwargs = tuple(mark.args), dict(mark.kwargs)  # given by position or by keyword
        names = args[0] if args else kwargs["argnames"]
        values = args[1] if len(args) > 1 else kwargs["argvalues"]
        names = [n.strip() for n in names.split(",") if n.strip()] if isinstance(names, str) else list(names)
        rows = []
        for i, row in enumerate(values):
            if hasattr(row, "values") and hasattr(row, "marks"):  # pytest.param(...)
                row = row.values
            row = (row,) if len(names) == 1 else tuple(row)
            if len(row) != len(names):
                raise ValueError(f"parametrize: {len(names)} names but {len(row)} values in case {i}")
            rows.append((_case_id(row, i), dict(zip(names, row))))
        axes.append(rows)
    if not axes:
        return [("", {})]
    return [("[" + "-".join(case for case, _ in combo) + "]", {k: v for _, kw in combo for k, v in kw.items()})
            for combo in itertools.product(*axes)]


def run_fast(reporter, expected, tree):
    skip_types = (pytest.skip.Exception, pytest.xfail.Exception)
    namespace = {"__name__": "test_solution", "__file__": os.path.abspath(TESTS)}
    try:
        exec(compile(tree, os.path.abspath(TESTS), "exec"), namespace)
    except BaseException as e:
        message = "collection error: " + _failure(e)
        reporter.collected({name: 1 for name in expected})
        for name in expected:
            reporter.send(name, ERROR, message)
        return
    plan = {}  # test -> its cases, or the report that stands for them
    for name in expected:
        func = namespace.get(name)
        if not inspect.isfunction(func):
            plan[name] = (ERROR, "test function missing or replaced at import time")
        elif inspect.isgeneratorfunction(func) or inspect.iscoroutinefunction(func):
            plan[name] = (FAILED, "a generator or coroutine test never runs its body: not supported")
        else:
            try:
                plan[name] = cases(func)
            except BaseException as e:  # a mark that cannot be read: this test is an error, the others run
                plan[name] = (ERROR, "collection error: " + _describe(e))
    reporter.collected({name: len(p) if isinstance(p, list) else 1 for name, p in plan.items()})
    for name, func_cases in plan.items():
        if isinstance(func_cases, tuple):
            reporter.send(name, *func_cases)
            continue
        func = namespace[name]
        seen = set()
        for suffix, kwargs in func_cases:
            test_id = name + suffix
            for n in itertools.count():  # colliding ids get a counter, as in pytest: each case counts
                if test_id not in seen:
                    break
                test_id = f"{name}{suffix[:-1]}{n}]"
            seen.add(test_id)
            try:
                func(**kwargs)
                outcome, message = PASSED, ""
            except skip_types as e:
                outcome, message = SKIPPED, "skip/xfail counts as not passed: " + _describe(e)
            except BaseException as e:  # SystemExit, KeyboardInterrupt and BoundaryError are failures too
                outcome, message = FAILED, _failure(e)
            reporter.send(test_id, outcome, message)


def _failure(exc: BaseException) -> str:
    """The exception and the last line of the test source it passed through; never raises (`_describe`)."""
    where = ""
    try:
        for frame, line in traceback.walk_tb(exc.__traceback__):
            if frame.f_code.co_filename == os.path.abspath(TESTS):
                where = f"line {line}: {linecache.getline(frame.f_code.co_filename, line).strip()}\n"
    except BaseException:
        pass
    return where + _describe(exc)


def _describe(exc: BaseException) -> str:
    """`Type: text` of any exception object, even one whose text cannot be made (a SyntaxError built with
    malformed arguments, an integer too long to print, arguments nested too deeply): then its type alone.
    The type is always a class of this process (`remote.py` builds the candidate's exceptions here)."""
    try:
        text = "".join(traceback.format_exception_only(type(exc), exc))
        return text if isinstance(text, str) else type(exc).__name__
    except BaseException:
        try:
            return f"{type(exc).__name__} (its description could not be made)\n"
        except BaseException:
            return "an exception (its description could not be made)\n"


# ---------------------------------------------------------------- real pytest
def run_pytest(reporter, expected):
    """Real pytest, reporting each test once, at its teardown: a setup error, else the call's outcome, else
    (the call passed) an error in teardown fails it too. A test whose teardown never comes never reports."""
    class Plugin:  # pluggy passes hook arguments by name, so the parameters must be called so
        def __init__(self):
            self.outcomes = {}  # test id -> (outcome, message) of its setup or call
            self.failed = False  # the module did not collect: each test is one error

        def pytest_collectreport(self, report):
            if report.failed:
                self.failed = True
                reporter.collected({name: 1 for name in expected})
                for name in expected:
                    reporter.send(name, ERROR, "collection error: " + _text(report.longrepr)[-1500:])

        def pytest_collection_finish(self, session):
            if self.failed:
                return
            counts = {}
            for item in session.items:
                base = item.nodeid.split("::", 1)[-1].split("[", 1)[0]
                counts[base] = counts.get(base, 0) + 1
            reporter.collected(counts)

        def pytest_runtest_logreport(self, report):
            name = report.nodeid.split("::", 1)[-1]
            if report.when == "setup" and not report.passed or report.when == "call":
                if report.passed and not hasattr(report, "wasxfail"):
                    self.outcomes[name] = (PASSED, "")
                elif report.skipped or hasattr(report, "wasxfail"):
                    self.outcomes[name] = (SKIPPED, "skip/xfail counts as not passed")
                else:
                    self.outcomes[name] = (ERROR if report.when == "setup" else FAILED, _text(report.longrepr)[-1500:])
            elif report.when == "teardown":
                outcome, message = self.outcomes.pop(name, (ERROR, "the test never ran"))
                if outcome == PASSED and not report.passed:
                    outcome, message = ERROR, "teardown failed: " + _text(report.longrepr)[-1500:]
                reporter.send(name, outcome, message)

    args = [TESTS, "-q", "-s", "-p", "no:cacheprovider", "-p", "no:stepwise", "--noconftest", "-c", os.devnull,
            "--rootdir", os.getcwd(), "-o", "python_files=" + TESTS]
    pytest.main(args, plugins=[Plugin()])


def _text(longrepr) -> str:
    try:
        return str(longrepr)
    except BaseException as e:
        return f"(the failure could not be described: {type(e).__name__})"


def main(host, peer, limits):
    request = wire.FrameReader(host).read()
    source = request["tests"]
    if request["fast"]:  # tracebacks find the source here; only pytest needs the file
        linecache.cache[os.path.abspath(TESTS)] = (len(source), None, source.splitlines(True), TESTS)
    else:
        with open(TESTS, "w", errors="replace") as f:
            f.write(source)
    sys.argv = ["pytest"]
    tree = ast.parse(source)
    channel = remote.install(peer, remote.star_names(tree))
    reporter = Reporter(host)
    if request["fast"]:
        run_fast(reporter, request["expected"], tree)
    else:
        run_pytest(reporter, request["expected"])
    if channel.violated:
        reporter.send(PROTOCOL, FAILED, channel.broken)
    reporter.send(DONE, DONE)
