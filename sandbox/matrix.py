"""Code × tests: which test functions a set of pytest modules holds, which of them are the same test, and
the matrix of which code passes which test, built from the sandbox's results. Training's rollouts and
rewards (`training.rollout`, `scoring.terms`), the evaluation (`scoring.measure`), the inference
engine's ranking and repair, and problem loading (`data.problems`) all read tests through here. (Host-side
only: the sandbox's containers never import it, and `code_version` leaves it out.)

    collect_tests      the test functions of a module (`test_x`, `TestC::test_y`) -> a deduplication key
    module_columns     (module, test) columns of several modules in order, with their keys
    unique_columns     the first column of each key: a test written twice counts once
    build_test_matrix  `Sandbox.run_matrix` results -> `TestMatrix` (passes, valid, sample ids, keys, names)
    ground_truth_matrix  codes × the problem's own tests
    feedback           what a code is shown of the tests it failed when it is written again (`describe_test`
                       lines, at most FEEDBACK_TESTS), in training and in inference alike
"""
from __future__ import annotations

import ast
import copy
import functools
import hashlib
import itertools
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

import numpy as np

from sandbox.executor import ExecutionResult, parse_source, test_functions

FEEDBACK_TESTS = 8  # failing tests shown to the generator per repair, in training and in inference


@dataclass
class TestMatrix:
    """Tests as columns (deduplicated later by `keys`), codes as rows: `build_test_matrix`."""

    passes: np.ndarray  # (n, T) bool: code i passes test t
    valid: np.ndarray  # (T,) bool: test t passes on the reference solution
    sample_ids: np.ndarray  # (T,) int: discriminator sample the test came from
    keys: list[str]  # (T,) deduplication key of each test
    names: list[str]  # (T,) test name within its module, as the sandbox reports it

    __test__ = False  # not a pytest test class, despite its name


@functools.lru_cache(maxsize=1024)  # one source has several readers: problem loading, each attempt's scoring, ranking
def collect_tests(source: str) -> Mapping[str, str]:
    """Test names of a pytest module (as the sandbox names them: `test_x`, `TestC::test_y`) -> dedup key.

    The key is a hash of the test's AST with its name blanked and of the AST of the module-level helpers,
    constants and fixtures it refers to (transitively), so two tests are the same only when they run the
    same code: `def test_a(): assert f(1) == 2` in one module and `def test_b(): assert f(1) == 2` in
    another share a key; two tests calling differently defined helpers `check()` do not. Linear in the
    source's size (each definition is hashed once, its references through `_closure_hashes`). Returns {}
    for a source that does not parse or is nested too deeply to read (`parse_source`). Read-only
    (remembered per source)."""
    try:
        tree = parse_source(source)
        top: dict[str, ast.AST] = {}
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                top[node.name] = node
            elif isinstance(node, (ast.Assign, ast.AnnAssign)):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                top.update((n.id, node) for target in targets for n in ast.walk(target) if isinstance(n, ast.Name))
        reached = _closure_hashes({name: (ast.dump(node, annotate_fields=False), _names(node) & top.keys())
                                   for name, node in top.items()})
        classes: dict[int, str] = {}  # a method depends on its class (setup methods, attributes): its key holds it
        keys = {}
        for name, node, cls in test_functions(tree):
            anonymous = copy.copy(node)
            anonymous.name = ""  # the name is not the test
            refs = sorted({reached[n] for n in _names(node) & top.keys() if n != node.name})
            if cls is not None and id(cls) not in classes:
                classes[id(cls)] = _digest(ast.dump(cls))
            keys[name] = _digest(ast.dump(anonymous, annotate_fields=False), *refs,
                                 classes[id(cls)] if cls is not None else "")
    except (SyntaxError, RecursionError, MemoryError):  # a tree too deep for ast.dump's recursion, too
        return MappingProxyType({})
    return MappingProxyType(keys)


def _names(node: ast.AST) -> set[str]:
    """The identifiers a definition reads, writes or declares as arguments."""
    return {n.id if isinstance(n, ast.Name) else n.arg for n in ast.walk(node) if isinstance(n, (ast.Name, ast.arg))}


def _digest(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def _closure_hashes(graph: dict[str, tuple[str, set[str]]]) -> dict[str, str]:
    """For each name of `graph` (name -> (its code, the names it refers to)), a hash of its code and of the
    code of everything it reaches. Names that reach each other (a cycle) share one hash over all their code;
    computed over the strongly connected components (Tarjan's algorithm, without recursion), so linear in
    the graph's size however its definitions name each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: dict[str, str] = {}
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root][1])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            name, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child][1]))))
                elif child in on_stack:
                    low[name] = min(low[name], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[name])
            if low[name] == index[name]:  # `name` roots a component: pop it, hash it with what it reaches
                members = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.append(member)
                    if member == name:
                        break
                inside = set(members)
                reached = {out[r] for m in members for r in graph[m][1] if r not in inside}
                digest = _digest(*sorted(graph[m][0] for m in members), "->", *sorted(reached))
                for member in members:
                    out[member] = digest
    return out


def module_columns(
    modules: Sequence[tuple[Hashable, Sequence[str] | None, str | None]],
) -> tuple[list[tuple], list[str]]:
    """For modules given as (id, test names or None for every test of the source, source or None): every
    (id, name) column in order (a name listed twice is one test) and its deduplication key, the
    `collect_tests` key from the source, else "id::name" (distinct from every other test)."""
    columns, keys = [], []
    for module, names, source in modules:
        source_keys = collect_tests(source) if source is not None else {}
        for name in dict.fromkeys(source_keys if names is None else names):
            columns.append((module, name))
            keys.append(source_keys.get(name, f"{module}::{name}"))
    return columns, keys


def build_test_matrix(
    results: Sequence[Sequence[ExecutionResult]],
    test_names: Sequence[Sequence[str]],
    reference_results: Sequence[ExecutionResult],
    test_sources: Sequence[str] | None = None,
) -> TestMatrix:
    """Arrays from `Sandbox.run_matrix(codes, test_sources)` (`results[i][j]`: code i on module j) and
    `reference_results[j]` (the reference solution on module j).

    `test_names[j]`: the test functions of module j, named as the sandbox names them (`test_x`,
    `TestC::test_y`, as `collect_tests` lists them; a bare class name `TestC` is one test over all its
    methods); a parametrized test is one column that passes when all its cases pass
    (`ExecutionResult.passed_test`).
    A test missing from a result (the module did not collect, the worker died, a timeout) counts as not
    passed: a failure for a code, invalid on the reference. Give a sample that failed sanitization an
    empty list. With `test_sources`, tests are deduplicated by `collect_tests` keys (the same test written
    in two modules counts once); without, every (module, name) is distinct."""
    n, m = len(results), len(test_names)
    if len(reference_results) != m or any(len(row) != m for row in results):
        raise ValueError(f"need results[i][j] and reference_results[j] for all {m} test samples")
    if test_sources is not None and len(test_sources) != m:
        raise ValueError("need one test source per test sample")
    columns, keys = module_columns([(j, names, test_sources[j] if test_sources is not None else None)
                                  for j, names in enumerate(test_names)])
    passes = np.array([[results[i][j].passed_test(name) for j, name in columns] for i in range(n)], dtype=bool)
    return TestMatrix(
        passes=passes.reshape(n, len(columns)),
        valid=np.array([reference_results[j].passed_test(name) for j, name in columns], dtype=bool),
        sample_ids=np.array([j for j, _ in columns], dtype=np.int64),
        keys=keys,
        names=[name for _, name in columns],
    )


def ground_truth_matrix(gt_results: Sequence[ExecutionResult], gt_names: Sequence[str]) -> np.ndarray:
    """(n, G) bool: code i (`gt_results[i]`, its run on the problem's tests) passes ground-truth test g.
    `gt_names` from `collect_tests(problem.tests)` (names the sandbox reports)."""
    names = list(dict.fromkeys(gt_names))
    passes = [[r.passed_test(g) for g in names] for r in gt_results]
    return np.array(passes, dtype=bool).reshape(len(gt_results), len(names))


def unique_columns(keys: Sequence[str] | None, columns: np.ndarray) -> np.ndarray:
    """(T,) bool: the selected columns, keeping only the first of each deduplication key."""
    columns = np.asarray(columns, dtype=bool)
    if keys is None:
        return columns.copy()
    out, seen = np.zeros_like(columns), set()
    for t in np.flatnonzero(columns):
        if keys[t] not in seen:
            seen.add(keys[t])
            out[t] = True
    return out


def describe_test(source: str, name: str, limit: int = 160) -> str:
    """`name: <its first assert>` for repair feedback (the name alone when there is none)."""
    try:
        for node in parse_source(source).body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name:
                assert_ = next((s for s in ast.walk(node) if isinstance(s, ast.Assert)), None)
                if assert_ is not None:
                    text = ast.unparse(assert_)
                    return f"{name}: {text[:limit]}{'...' if len(text) > limit else ''}"
    except (SyntaxError, RecursionError, MemoryError):  # unparse recurses: a deep tree ends here too
        pass
    return name


def feedback(failing: Iterable[tuple[str, str, bool]]) -> list[str]:
    """Repair feedback from the failed tests, given as (module source, test name, the problem's own test?) in
    the order to show them: a `describe_test` line each, at most `FEEDBACK_TESTS`."""
    return [describe_test(source, name) + (" (problem's test)" if own else "")
            for source, name, own in itertools.islice(failing, FEEDBACK_TESTS)]
