"""Evaluation metrics: pass and failure rates of sandbox results, diversity of Discriminator tests,
coherence of Generator reasoning chains, and `aggregate_report`, which puts them in one `eval/...` dict.

Every function is pure and deterministic (no model, no sandbox); every score is in [0, 1].
pass@k lives in `evaluation/pass_at_k.py`.
"""
from __future__ import annotations

import ast
import builtins
import copy
import itertools
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from evaluation.pass_at_k import estimate_pass_at_k
from reasoning.stages import STAGE_NAMES
from sandbox.executor import ExecutionResult

if TYPE_CHECKING:
    from data.problems import Problem

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- pass and failure rates
def _flat_results(results: Any) -> list[ExecutionResult] | None:
    """`results` as a flat list when it holds `ExecutionResult`s (flat, or nested like `Sandbox.run_matrix`)."""
    if isinstance(results, np.ndarray):
        return None
    items = [results] if isinstance(results, ExecutionResult) else list(results)
    if items and isinstance(items[0], (list, tuple)) and items[0] and isinstance(items[0][0], ExecutionResult):
        items = [r for row in items for r in row]
    return items if items and all(isinstance(r, ExecutionResult) for r in items) else None


def _per_execution(results: Any) -> tuple[np.ndarray, np.ndarray]:
    """(fraction of tests passed, all passed) per execution, from `ExecutionResult`s or a pass matrix
    (rows executions, columns tests; a 1-D vector is one single-test execution per entry)."""
    flat = _flat_results(results)
    if flat is not None:
        return np.array([r.pass_rate for r in flat]), np.array([r.all_passed for r in flat])
    m = np.asarray(results)
    if m.size == 0:
        return np.zeros(0), np.zeros(0, dtype=bool)
    m = m[:, None] if m.ndim == 1 else m
    if m.ndim != 2 or m.dtype == object or not np.isin(m, (0, 1)).all():
        raise ValueError("expected ExecutionResults or a 0/1 pass matrix (rows: executions, columns: tests)")
    return m.astype(bool).mean(axis=1), m.astype(bool).all(axis=1)


def compute_pass_rate(results: Any, strict: bool = False) -> float:
    """Pass rate over E executions (0.0 for none):

        strict=False:  (1/E) Σ_e passed_e / total_e     mean fraction of tests passed (`ExecutionResult.pass_rate`,
                                                        the generator reward's pass rate; 0 when nothing ran)
        strict=True:   (1/E) Σ_e 1[e passed all tests]  fraction of executions that pass outright (pass@1)
    """
    fraction, all_passed = _per_execution(results)
    return float((all_passed if strict else fraction).mean()) if fraction.size else 0.0


def compute_failure_rate(results: Any, strict: bool = True) -> float:
    """`1 − compute_pass_rate(results, strict)` (0.0 for no execution). By default (strict) the fraction of
    executions that fail at least one test, error or time out: for the Generator's codes run on the
    Discriminator's tests, the share of codes those tests catch."""
    fraction, all_passed = _per_execution(results)
    return 1.0 - float((all_passed if strict else fraction).mean()) if fraction.size else 0.0


# ---------------------------------------------------------------- test diversity
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
        memo: dict[int, Any] = {}
        dup = copy.deepcopy(part, memo)
        target = memo[id(call)]

        class _Blank(ast.NodeTransformer):
            def visit_Call(self, node):
                return ast.Name("__call__", ast.Load()) if node is target else self.generic_visit(node)

        return ast.unparse(_Blank().visit(dup))

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
                items = _elements(sub(st.iter)) or [None]
                for item in items:
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
    funcs: list[ast.FunctionDef] = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            defined.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)) and getattr(node, "module", "") != "solution":
            defined.update((a.asname or a.name).split(".")[0] for a in node.names)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test"):
            funcs.append(node)
        elif isinstance(node, ast.ClassDef) and node.name.startswith("Test"):
            funcs += [f for f in node.body if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                      and f.name.startswith("test")]
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


# ---------------------------------------------------------------- reasoning coherence
@dataclass(frozen=True)
class Coherence:
    """Components of `reasoning_coherence`; a component is None when the chain lacks what it needs."""

    flow: float | None  # mean share of each stage's terms already in the problem or the stage before
    code_alignment: float | None  # overlap of algorithm and pseudocode with the final code, both ways
    edge_coverage: float | None  # share of the edge cases named in `edge_cases` that `review` names
    score: float  # mean of the components present; 0 when none is


_STOP = frozenset(
    "the and for with that this then than from into are was were will would should can could has have had "
    "not but its each all any use using used when where which while what who how also just only our you your "
    "they them their there here such very more most less some one two step first next last may must need "
    "given returns value values number numbers function input output result example examples write "
    "otherwise itself both else since because give gives get gets come comes make makes like case cases".split()
)  # generic words; a few of them also have operation meanings below, which restore them where they matter
_OPERATIONS = frozenset(
    "sort sorted reverse reversed split join append pop push stack queue heap dict dictionary map hash set "
    "array index loop iterate iteration while count sum max min len length range zip enumerate slice modulo "
    "remainder divide recursion recursive pointer left right middle binary search counter memo cache prefix "
    "window str int float bool char character digit key strip lower upper replace find filter "
    "return list string".split()
)
_EDGE_WORDS = frozenset(
    "empty single zero negative duplicate duplicates none null large huge long overflow boundary space spaces "
    "whitespace unicode punctuation uppercase lowercase odd even repeated equal same invalid missing "
    "minimum maximum".split()
)
_NODE_WORDS = {ast.For: "loop iterate each", ast.While: "loop while", ast.comprehension: "loop iterate each",
               ast.Dict: "dict dictionary map hash", ast.DictComp: "dict dictionary map", ast.Set: "set",
               ast.SetComp: "set", ast.Mod: "modulo remainder divisible", ast.FloorDiv: "divide half",
               ast.Slice: "slice", ast.Subscript: "index", ast.Return: "return", ast.If: "check condition"}
_LITERAL = re.compile(r"\"[^\"\n]*\"|'[^'\n]*'|-?\d+(?:\.\d+)?|\[\s*\]|\{\s*\}|\(\s*\)")


def _stem(word: str) -> str:
    """Crude suffix stripping so `sorted`/`sorting`/`sort` and `cases`/`case` meet."""
    for _ in range(3):
        for suffix in ("ing", "ed", "es", "s", "e"):
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)]
                break
        else:
            break
    return word


def _words(text: str) -> list[str]:
    """Lower-case parts of identifiers and words (snake_case and camelCase split), 3+ letters."""
    parts = re.split(r"_+|(?<=[a-z])(?=[A-Z])", " ".join(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", text)))
    return [w.lower() for p in parts for w in p.split() if len(w) >= 3]


def _terms(text: str) -> set[str]:
    """Key terms: stemmed words that are not generic (`_STOP`), plus generic words naming an operation."""
    return {_stem(w) for w in _words(text) if w not in _STOP or w in _OPERATIONS}


def _code_terms(code: str) -> tuple[set[str], set[str]]:
    """(identifier terms, all terms) of code: names, attributes, arguments and non-docstring strings, plus
    words for its constructs (`for` -> loop, `%` -> modulo). Comments and docstrings never count."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        plain = _terms(re.sub(r"#.*", "", code))
        return plain, plain
    names, words = [], []
    docstrings = {id(n.value) for n in ast.walk(tree) if isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)}
    for n in ast.walk(tree):
        names += [getattr(n, a) for a in ("id", "attr", "arg", "name") if isinstance(getattr(n, a, None), str)]
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings:
            words.append(n.value)
        words.append(_NODE_WORDS.get(type(n), ""))
    idents = _terms(" ".join(names))
    return idents, idents | _terms(" ".join(words))


def _edge_cases(text: str) -> set[str]:
    """Edge cases a text names: literals (numbers, quoted strings, empty brackets) and edge words."""
    found = {re.sub(r"\s+", "", m).replace('"', "'") for m in _LITERAL.findall(text)}
    return found | ({_stem(w) for w in _words(text) if w in _EDGE_WORDS})


def _share(part: set, whole: set) -> float:
    return len(part & whole) / len(part) if part else 0.0


def _alignment(plan: str, idents: set[str], code_terms: set[str]) -> float:
    """½ · share of the code-naming terms of `plan` found in the code + ½ · share of the code's
    identifier terms that `plan` mentions."""
    plan_terms = _terms(plan)
    code_like = " ".join(" ".join(m) for m in re.findall(r"`([^`]+)`|(\w*_\w*)|(\w+)\(", plan))
    named = (plan_terms & {_stem(w) for w in _OPERATIONS}) | (_terms(code_like) & plan_terms)
    return 0.5 * _share(named, code_terms) + 0.5 * _share(idents, plan_terms)


def reasoning_coherence(chain: Mapping[str, str], code: str, problem: Problem | str | None = None) -> Coherence:
    """How well each reasoning stage follows from the ones before it and matches the final code.
    Cheap, deterministic, lexical; no model. T(x) are the key terms of x (stemmed identifier parts and
    words, generic words dropped); stages are taken in `STAGE_NAMES` order, unknown names ignored.

        flow           = mean over stages s of |T(s) ∩ (T(problem) ∪ T(stage before s))| / |T(s)|
                         (the first stage counts only when the problem is given)
        code_alignment = mean over plan stages p in (algorithm, pseudocode) of
                         ½ · |P_p ∩ K| / |P_p|  +  ½ · |I ∩ T(p)| / |I|
                         P_p = the terms of p that name code (in backticks, with `_` or `(`, or an operation
                         word such as sort, split, dict, loop); K = the code's terms (identifiers, strings,
                         construct words: `for` -> loop, `%` -> modulo); I = the code's identifier terms
        edge_coverage  = |E(edge_cases) ∩ E(review)| / |E(edge_cases)|
                         E = literals (numbers, quoted strings, `[]`) and edge words (empty, negative, ...)
        score          = mean of the components defined (each in [0, 1]); 0.0 when none is

    A component is None when the chain lacks its stages (no plan or no code; no edge_cases, no review or no
    edge case named). Stages from another problem or in the wrong slots lose flow, alignment and coverage."""
    chain = {name: text for name, text in chain.items() if isinstance(text, str) and text.strip()}
    stages = [(name, chain[name]) for name in STAGE_NAMES if name in chain]
    given = set() if problem is None else _terms(
        problem if isinstance(problem, str) else f"{problem.title} {problem.description} {problem.signature}")
    grounded, previous = [], set()  # consecutive stages: each one against the problem and the stage before
    for _, text in stages:
        if given | previous:
            grounded.append(_share(_terms(text), given | previous))
        previous = _terms(text)
    flow = float(np.mean(grounded)) if grounded else None

    plans = [chain[name] for name in ("algorithm", "pseudocode") if name in chain]
    code_alignment = None
    if plans and code.strip():
        idents, code_terms = _code_terms(code)
        code_alignment = float(np.mean([_alignment(plan, idents, code_terms) for plan in plans]))

    edges = _edge_cases(chain.get("edge_cases", ""))
    edge_coverage = _share(edges, _edge_cases(chain["review"])) if edges and "review" in chain else None

    parts = [p for p in (flow, code_alignment, edge_coverage) if p is not None]
    return Coherence(flow, code_alignment, edge_coverage, float(np.mean(parts)) if parts else 0.0)


def compute_reasoning_coherence(chain: Mapping[str, str], code: str, problem: Problem | str | None = None) -> float:
    """`reasoning_coherence(chain, code, problem).score`, in [0, 1]."""
    return reasoning_coherence(chain, code, problem).score


# ---------------------------------------------------------------- one report
def aggregate_report(
    results: Any = None,
    *,
    test_sources: Sequence[str] | Sequence[Sequence[str]] | None = None,
    entry_point: str | None = None,
    chains: Mapping[str, str] | Sequence[Mapping[str, str]] | None = None,
    codes: str | Sequence[str] | None = None,
    problems: Problem | str | Sequence[Problem | str] | None = None,
    num_samples: int | Sequence[int] | None = None,
    num_correct: Sequence[int] | None = None,
    ks: Sequence[int] = (1, 5, 10),
) -> dict[str, float]:
    """One flat dict of `eval/...` metrics from whatever is given (a missing input adds no key):

      results                   eval/pass_rate, eval/strict_pass_rate, eval/failure_rate, eval/num_executions,
                                and for ExecutionResults eval/error_rate, eval/timeout_rate (status shares)
      test_sources              eval/test_diversity, eval/num_tests, eval/distinct_tests, eval/distinct_inputs,
                                eval/distinct_checks: means over problems (one list of modules per problem,
                                or one flat list for one problem)
      chains, codes, problems   eval/reasoning_coherence and eval/coherence_{flow,code_alignment,edge_coverage}:
                                means over chains (chain i with code i and problem i, or the one problem)
      num_samples, num_correct  eval/pass@k for each k in `ks` that every problem has samples for
    """
    report: dict[str, float] = {}
    if results is not None:
        report["eval/pass_rate"] = compute_pass_rate(results)
        report["eval/strict_pass_rate"] = compute_pass_rate(results, strict=True)
        report["eval/failure_rate"] = compute_failure_rate(results)
        report["eval/num_executions"] = float(_per_execution(results)[0].size)
        flat = _flat_results(results)
        if flat:
            report["eval/error_rate"] = sum(r.status == "error" for r in flat) / len(flat)
            report["eval/timeout_rate"] = sum(r.status == "timeout" for r in flat) / len(flat)
    if test_sources is not None:
        groups = [test_sources] if isinstance(test_sources, str) or all(isinstance(t, str) for t in test_sources) \
            else list(test_sources)
        stats = [compute_test_diversity(g, entry_point) for g in groups]
        for key, field in (("test_diversity", "score"), ("num_tests", "num_tests"),
                           ("distinct_tests", "num_distinct_tests"), ("distinct_inputs", "num_distinct_inputs"),
                           ("distinct_checks", "num_distinct_checks")):
            report[f"eval/{key}"] = float(np.mean([getattr(d, field) for d in stats])) if stats else 0.0
    if chains is not None and codes is not None:
        chains = [chains] if isinstance(chains, Mapping) else list(chains)
        codes = [codes] if isinstance(codes, str) else list(codes)
        if len(codes) != len(chains):
            raise ValueError(f"aggregate_report: {len(chains)} chains but {len(codes)} codes")
        if problems is None or isinstance(problems, str) or not isinstance(problems, Sequence):
            problems = [problems] * len(chains)
        scores = [reasoning_coherence(ch, co, pr) for ch, co, pr in zip(chains, codes, problems)]
        report["eval/reasoning_coherence"] = float(np.mean([c.score for c in scores])) if scores else 0.0
        for part in ("flow", "code_alignment", "edge_coverage"):
            values = [getattr(c, part) for c in scores if getattr(c, part) is not None]
            if values:
                report[f"eval/coherence_{part}"] = float(np.mean(values))
    if num_samples is not None and num_correct is not None and len(num_correct):
        smallest = int(np.min(num_samples))
        for k in ks:
            if k <= smallest:
                report[f"eval/pass@{k}"] = float(estimate_pass_at_k(num_samples, num_correct, k).mean())
    return report
