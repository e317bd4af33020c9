"""How different a Discriminator's tests are: distinct inputs and asserted behaviours, not distinct strings.

`compute_test_diversity` reads each test with `ast` into the checks it makes (see its docstring); it is
pure and deterministic. Re-exported by `scoring.metrics`.
"""
from __future__ import annotations

import ast
import builtins
import copy
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scoring.mutation import edited_copy
from sandbox.executor import test_functions

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TestDiversity:
    """How different a set of tests is in behaviour (see `compute_test_diversity`)."""

    num_tests: int  # N: test cases; a test function, or each case of a literal parametrize
    num_distinct_tests: int  # distinct check sets among the N tests
    num_checks: int  # checks (inputs, expectation) summed over tests
    num_distinct_checks: int  # distinct checks over all tests
    num_distinct_inputs: int  # distinct argument lists passed to the function under test
    score: float  # num_distinct_tests / N (0 with no test)

    __test__ = False  # not a pytest class, despite its name


_BUILTINS = frozenset(dir(builtins))
_FLIP = {ast.Eq: ast.Eq, ast.NotEq: ast.NotEq, ast.Is: ast.Is, ast.IsNot: ast.IsNot,
         ast.Lt: ast.Gt, ast.Gt: ast.Lt, ast.LtE: ast.GtE, ast.GtE: ast.LtE}
_UNBOUND = "_"  # what a name without a known value becomes: variable names never matter
_MAX_CASES = 64  # literal loops and parametrize lists longer than this are not unrolled
_MAX_NODES = 500  # a variable whose value is bigger than this counts as unknown (`s = s + s` cannot explode)


def _canon(node: ast.AST) -> str:
    """Canonical text of an expression: a literal by value (quotes, spacing, `1_000`, set order don't
    matter), anything else by `ast.unparse` (no comments, normal spacing)."""
    try:
        value = ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return ast.unparse(node)
    if isinstance(value, (set, frozenset)):
        return "{" + ", ".join(sorted(map(repr, value))) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(sorted(f"{k!r}: {v!r}" for k, v in value.items())) + "}"
    return repr(value)


class _Substitute(ast.NodeTransformer):
    """Replace each name by its known value (`env`), keep the names in `keep`, blank the rest."""

    def __init__(self, env: dict[str, ast.expr], keep: frozenset[str]):
        self.env, self.keep = env, keep

    def visit_Name(self, node: ast.Name) -> ast.AST:
        if not isinstance(node.ctx, ast.Load):
            return node
        if node.id in self.env:
            return copy.deepcopy(self.env[node.id])
        return node if node.id in self.keep else ast.Name(_UNBOUND, ast.Load())


def _bind(target: ast.AST, value: ast.expr | None, env: dict[str, ast.expr]) -> None:
    """Record `target = value` in `env`; None (or a value too big to copy around) binds to `_`."""
    if isinstance(target, ast.Name):
        small = value is not None and sum(1 for _ in itertools.islice(ast.walk(value), _MAX_NODES + 1)) <= _MAX_NODES
        env[target.id] = value if small else ast.Name(_UNBOUND, ast.Load())
    elif isinstance(target, (ast.Tuple, ast.List)):
        parts = value.elts if isinstance(value, (ast.Tuple, ast.List)) else None
        if parts is not None and len(parts) == len(target.elts) and not any(isinstance(p, ast.Starred) for p in parts):
            for t, v in zip(target.elts, parts):
                _bind(t, v, env)
        else:
            for t in target.elts:
                _bind(t, None, env)


def _unparam(node: ast.expr) -> ast.expr:
    """`pytest.param(1, 2, id=...)` -> `(1, 2)`; anything else unchanged."""
    if isinstance(node, ast.Call) and ast.unparse(node.func).endswith("param") and node.args:
        return node.args[0] if len(node.args) == 1 else ast.Tuple(node.args, ast.Load())
    return node


def _elements(node: ast.expr) -> list[ast.expr] | None:
    """The items of a literal list/tuple/set or of `range(constants)`, if short enough to unroll."""
    if isinstance(node, (ast.List, ast.Tuple, ast.Set)) and len(node.elts) <= _MAX_CASES:
        return [_unparam(e) for e in node.elts]
    if isinstance(node, ast.Call) and ast.unparse(node.func) == "range" and not node.keywords:
        try:
            values = range(*[ast.literal_eval(a) for a in node.args])
        except (ValueError, TypeError, SyntaxError):
            return None
        return [ast.Constant(v) for v in values] if len(values) <= _MAX_CASES else None
    return None


class _TestReader:
    """Turns one test (function body plus bindings) into its set of checks (inputs, expectation)."""

    def __init__(self, targets: set[str], keep: frozenset[str]):
        self.targets, self.keep = targets, keep | targets  # the functions under test; names left as they are

    def is_target(self, call: ast.Call) -> bool:
        f = call.func
        if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "solution":
            return f.attr in self.targets
        return isinstance(f, ast.Name) and f.id in self.targets

    def calls(self, node: ast.AST) -> list[ast.Call]:
        """The outermost calls of the function under test in `node`."""
        if isinstance(node, ast.Call) and self.is_target(node):
            return [node]
        return [c for child in ast.iter_child_nodes(node) for c in self.calls(child)]

    def inputs(self, call: ast.Call) -> str:
        name = call.func.attr if isinstance(call.func, ast.Attribute) else call.func.id
        args = [_canon(a) for a in call.args] + sorted(f"{k.arg}={_canon(k.value)}" for k in call.keywords)
        return f"{name}({', '.join(args)})"

    def expectation(self, part: ast.expr, call: ast.Call) -> str:
        """What `part` asserts about `call`: `Eq 3` for `f(x) == 3` or `3 == f(x)`, otherwise the asserted
        expression with the call replaced by `__call__`."""
        if isinstance(part, ast.Compare) and len(part.ops) == 1:
            left, op, right = part.left, part.ops[0], part.comparators[0]
            if right is call and left is not call and type(op) in _FLIP:
                left, op, right = right, _FLIP[type(op)](), left
            if left is call:
                return f"{type(op).__name__} {_canon(right)}"
        return ast.unparse(edited_copy(part, call, lambda _: ast.Name("__call__", ast.Load())))

    def read(self, stmts: list[ast.stmt], env: dict[str, ast.expr], out: set, expect: str | None = None) -> None:
        """Add the checks of `stmts` to `out`; `expect` overrides (inside `pytest.raises`)."""
        sub = lambda node: _Substitute(env, self.keep).visit(copy.deepcopy(node))  # noqa: E731
        for st in stmts:
            if isinstance(st, (ast.Assign, ast.AnnAssign, ast.AugAssign)) and st.value is not None:
                value = sub(st.value)
                if expect is not None:
                    out.update((self.inputs(c), expect) for c in self.calls(value))
                targets = st.targets if isinstance(st, ast.Assign) else [st.target]
                for t in targets:
                    _bind(t, None if isinstance(st, ast.AugAssign) else value, env)
            elif isinstance(st, ast.Assert):
                test = sub(st.test)
                parts = test.values if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) else [test]
                for part in parts:
                    out.update((self.inputs(c), expect or self.expectation(part, c)) for c in self.calls(part))
            elif isinstance(st, ast.Expr):
                out.update((self.inputs(c), expect or "no error") for c in self.calls(sub(st.value)))
            elif isinstance(st, (ast.With, ast.AsyncWith)):
                inner_expect = expect
                for item in st.items:
                    ctx = item.context_expr
                    if isinstance(ctx, ast.Call) and ast.unparse(ctx.func).endswith("raises"):
                        inner_expect = f"raises {_canon(sub(ctx.args[0])) if ctx.args else ''}"
                    if item.optional_vars is not None:
                        _bind(item.optional_vars, None, env)
                self.read(st.body, env, out, inner_expect)
            elif isinstance(st, (ast.For, ast.AsyncFor)):
                for item in _elements(sub(st.iter)) or [None]:
                    inner = dict(env)
                    _bind(st.target, item, inner)
                    self.read(st.body, inner, out, expect)
            elif isinstance(st, (ast.If, ast.While, ast.Try)):
                for block in (st.body, st.orelse, *[h.body for h in getattr(st, "handlers", [])],
                              getattr(st, "finalbody", [])):
                    self.read(block, dict(env), out, expect)


def _parametrize_cases(func: ast.FunctionDef) -> list[dict[str, ast.expr | None]]:
    """One binding of the parameters per case of its `@pytest.mark.parametrize` decorators (product)."""
    axes = []
    for dec in func.decorator_list:
        if not (isinstance(dec, ast.Call) and ast.unparse(dec.func).endswith("parametrize") and len(dec.args) >= 2):
            continue
        names_node, values = dec.args[0], _elements(dec.args[1])
        try:
            names = ast.literal_eval(names_node)
        except (ValueError, SyntaxError):
            continue
        names = [n.strip() for n in names.split(",")] if isinstance(names, str) else names
        if values is None or not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            continue
        axis = []
        for value in values:
            case: dict[str, ast.expr | None] = {}
            _bind(ast.Tuple([ast.Name(n, ast.Store()) for n in names], ast.Store()) if len(names) > 1
                  else ast.Name(names[0], ast.Store()), value, case)
            axis.append(case)
        axes.append(axis)
    if np.prod([len(axis) for axis in axes]) > _MAX_CASES ** 2:  # stacked decorators: too many to read
        return [{}]
    return [dict(kv for case in combo for kv in case.items()) for combo in itertools.product(*axes)]


def _module_tests(source: str, entry_point: str | None) -> list[frozenset]:
    """The check set of every test case in one pytest module ([] when it cannot be read)."""
    try:
        return _read_module(ast.parse(source), entry_point)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        logger.debug("test diversity: a test module does not parse; it counts no test")
        return []


def _read_module(tree: ast.Module, entry_point: str | None) -> list[frozenset]:
    env: dict[str, ast.expr] = {}
    defined = {"solution"}  # module-level functions, classes and imports (not `from solution import`)
    funcs = [f for _, f, _ in test_functions(tree)]
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "module", "") != "solution":
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
    # names never bound in the module come from elsewhere (builtins, the solution): they stay; the rest
    # are variables, replaced by their values or blanked
    nodes = list(ast.walk(tree))
    stored = {n.id for n in nodes if isinstance(n, ast.Name) and not isinstance(n.ctx, ast.Load)}
    stored |= {n.arg for n in nodes if isinstance(n, ast.arg)}
    free = {n.id for n in nodes if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load)} - stored
    keep = frozenset(free | defined | _BUILTINS)
    for node in tree.body:
        if isinstance(node, ast.Assign):
            value = _Substitute(env, keep).visit(copy.deepcopy(node.value))
            for t in node.targets:
                _bind(t, value, env)
    if entry_point:
        targets = {entry_point}
    else:  # every called name from elsewhere that is not a builtin (`from solution import *` hides them)
        called = {n.func.id for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        targets = (called & free) - defined - _BUILTINS
        targets |= {n.func.attr for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
                    and isinstance(n.func.value, ast.Name) and n.func.value.id == "solution"}
    reader = _TestReader(targets, keep)
    tests = []
    for func in funcs:
        for case in _parametrize_cases(func):
            bound = dict(env)
            for a in func.args.args + func.args.kwonlyargs:  # fixtures and parameters: unknown unless given
                bound[a.arg] = case.get(a.arg) or ast.Name(_UNBOUND, ast.Load())
            checks: set = set()
            reader.read(func.body, bound, checks)
            tests.append(frozenset(checks))
    return tests


def compute_test_diversity(test_sources: str | Sequence[str], entry_point: str | None = None) -> TestDiversity:
    """Behavioural diversity of pytest tests (one or more modules, e.g. all a Discriminator wrote for a problem).

    Each test case (a `test_*` function or `Test*` method; each case of a literal `parametrize` counts one)
    is read with `ast` into its set of checks. A check is (inputs, expectation):
      * inputs: the arguments of a call to the function under test (`entry_point`, or when None any called
        name the module does not define or import, or `solution.<name>`), each literal by value;
      * expectation: what is asserted of that call: `Eq 3` for `assert f(x) == 3` (either side; `<` flips
        to `>`), else the assert with the call replaced by `__call__` (`not __call__`, `len(__call__) == 2`),
        `raises ValueError` inside `pytest.raises(ValueError)`, `no error` for a bare call.
    Local variables are replaced by their assigned values (`x = [1]; assert f(x) == 1` is `f([1])`), short
    literal `for` loops are unrolled, and unknown names become `_`, so test names, variable names, spacing,
    quotes and comments never matter; a new argument or a new expected value always makes a new check.

        score = |{checks(t) : t in tests}| / N        (N test cases; 0 when N = 0)

    i.e. the fraction of tests that are not behavioural duplicates of another (all tests that call nothing
    under test share the empty check set). The counts in the result (distinct inputs, distinct checks) grow
    with every new input, while the score is a rate: a renamed copy of a test lowers it."""
    sources = [test_sources] if isinstance(test_sources, str) else list(test_sources)
    tests = [t for source in sources for t in _module_tests(source, entry_point)]
    checks = [c for t in tests for c in t]
    return TestDiversity(
        num_tests=len(tests),
        num_distinct_tests=len(set(tests)),
        num_checks=len(checks),
        num_distinct_checks=len(set(checks)),
        num_distinct_inputs=len({inputs for inputs, _ in checks}),
        score=len(set(tests)) / len(tests) if tests else 0.0,
    )
