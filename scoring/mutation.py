"""Mutation testing: small bugs (mutants) planted in a reference solution, to measure how strong a set of
tests is by how many of them it kills (fails).

The operators are a small `ast` mutator of our own: cosmic-ray's `mutate_code` comes closest but pulls in
a dozen dependencies (sqlalchemy, aiohttp, gitpython, ...) and has no dropped-branch or early-return
operator; mutmut and mutatest work on a project on disk through their CLI.

`make_mutants` is pure and deterministic. Only code inside function bodies is mutated, never docstrings,
strings, imports, decorators, annotations or default arguments:

    compare       < <=,  > >=,  == !=,  in / not in,  is / is not            (each way)
    arith         + -,  * //,  % //  (each way);  / -> *;  also in `x += ...` and the like
    constant      an integer literal n -> n + 1 and n - 1 (not bools)
    boolop        and  or;  `not x` -> `x`
    drop_branch   an `if` whose body becomes `pass`; an `if` whose `else` is removed
    early_return  `return None` at the top of a function; also the empty value of its return type (0, '',
                  [], ...) when every other `return` returns a literal of that one type

`nonequivalent_mutants` runs mutants of a problem's reference solution against its ground-truth tests and
keeps those the tests kill: a mutant no ground-truth test fails is treated as equivalent to the reference,
and one that runs into the time limit is dropped too (any test that reaches its loop kills it, whatever the
test asserts, so it says nothing of a suite's strength, and it costs a whole time limit per suite).
With `hardest=True` it keeps the subtlest of them instead of a spread: those that fail the fewest
ground-truth tests (training's mutation reward uses these: a spread of 8 is mostly killed by any 3 tests,
so it stops telling a strong suite from a weak one).
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import hashlib
import itertools
import json
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from data.problems import Problem
    from sandbox import Sandbox

logger = logging.getLogger(__name__)

MUTATOR_VERSION = 2  # bump when the operators or the choice change (part of the cache key); 2: none that times out

_SYMBOL = {ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">=", ast.Eq: "==", ast.NotEq: "!=",
           ast.In: "in", ast.NotIn: "not in", ast.Is: "is", ast.IsNot: "is not", ast.Add: "+", ast.Sub: "-",
           ast.Mult: "*", ast.Div: "/", ast.FloorDiv: "//", ast.Mod: "%", ast.And: "and", ast.Or: "or"}
_SWAPS = {ast.Lt: [ast.LtE], ast.LtE: [ast.Lt], ast.Gt: [ast.GtE], ast.GtE: [ast.Gt],
          ast.Eq: [ast.NotEq], ast.NotEq: [ast.Eq], ast.In: [ast.NotIn], ast.NotIn: [ast.In],
          ast.Is: [ast.IsNot], ast.IsNot: [ast.Is], ast.Add: [ast.Sub], ast.Sub: [ast.Add],
          ast.Mult: [ast.FloorDiv], ast.Div: [ast.Mult], ast.FloorDiv: [ast.Mult, ast.Mod], ast.Mod: [ast.FloorDiv],
          ast.And: [ast.Or], ast.Or: [ast.And]}
_EMPTY = {bool: "False", int: "0", float: "0.0", str: "''", bytes: "b''",
          ast.List: "[]", ast.Tuple: "()", ast.Dict: "{}", ast.Set: "set()"}  # literal type -> its empty value
_NOT_CODE = {"decorator_list", "returns", "annotation", "type_comment", "type_params"}  # fields never mutated
_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
_SCOPES = (*_FUNCS, ast.Lambda, ast.ClassDef)  # a `return` inside one of these is not the outer function's

Edit = Callable[[ast.AST], ast.AST]  # edits a copy of the node in place; returns what replaces it


@dataclass(frozen=True)
class Mutant:
    """One mutated version of a module."""

    source: str  # the whole mutated module (ast.unparse of the mutated tree)
    operator: str  # "compare", "arith", "constant", "boolop", "drop_branch" or "early_return"
    line: int  # line of the mutated node in the original source
    description: str  # e.g. "line 4: < -> <="


def _set(node: ast.AST, field: str, value) -> ast.AST:
    setattr(node, field, value)
    return node


def _int(value: int) -> ast.expr:
    """An int literal as the parser writes it: a negative one is `-` applied to a positive constant."""
    return ast.Constant(value) if value >= 0 else ast.UnaryOp(ast.USub(), ast.Constant(-value))


def _empty_return(func: ast.FunctionDef | ast.AsyncFunctionDef) -> str | None:
    """The empty value of the one literal type every `return` of `func` (not of nested scopes) returns."""
    kinds, stack = set(), list(func.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Return):
            value = node.value
            if isinstance(value, ast.UnaryOp) and isinstance(value.op, (ast.USub, ast.UAdd)):
                value = value.operand  # -1 is an int literal too
            kinds.add(type(value.value) if isinstance(value, ast.Constant) else type(value))
        if not isinstance(node, _SCOPES):
            stack.extend(ast.iter_child_nodes(node))
    return _EMPTY.get(kinds.pop()) if len(kinds) == 1 else None


def _code_nodes(tree: ast.Module) -> Iterator[ast.AST]:
    """Every function definition, and every node of code inside a function body, in source order.
    Docstrings are among them, but no operator touches a string."""
    stack: list[tuple[ast.AST, bool]] = [(tree, False)]  # (node, inside a function body)
    while stack:
        node, inside = stack.pop()
        is_func = isinstance(node, _FUNCS)
        if inside or is_func:
            yield node
        children = []
        for field, value in ast.iter_fields(node):
            if field in _NOT_CODE or (field == "args" and isinstance(node, (*_FUNCS, ast.Lambda))):
                continue
            below = inside or (is_func and field == "body")
            children += [(child, below) for child in (value if isinstance(value, list) else [value])
                         if isinstance(child, ast.AST)]
        stack.extend(reversed(children))


def _edits(node: ast.AST) -> Iterator[tuple[str, str, Edit]]:
    """(operator, what changes, how) for every mutation of `node`."""
    if isinstance(node, ast.Compare):
        for k, op in enumerate(node.ops):
            for new in _SWAPS.get(type(op), []):
                yield "compare", f"{_SYMBOL[type(op)]} -> {_SYMBOL[new]}", \
                    lambda n, k=k, new=new: _set(n, "ops", n.ops[:k] + [new()] + n.ops[k + 1:])
    elif isinstance(node, (ast.BinOp, ast.AugAssign, ast.BoolOp)):
        eq = "=" if isinstance(node, ast.AugAssign) else ""
        for new in _SWAPS.get(type(node.op), []):
            yield "boolop" if isinstance(node, ast.BoolOp) else "arith", \
                f"{_SYMBOL[type(node.op)]}{eq} -> {_SYMBOL[new]}{eq}", lambda n, new=new: _set(n, "op", new())
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        yield "boolop", "not removed", lambda n: n.operand
    elif isinstance(node, ast.Constant) and type(node.value) is int:
        for value in (node.value + 1, node.value - 1):
            yield "constant", f"{node.value} -> {value}", lambda n, value=value: _int(value)
    elif isinstance(node, ast.If):
        yield "drop_branch", "if body -> pass", lambda n: _set(n, "body", [ast.Pass()])
        if node.orelse:
            yield "drop_branch", "else removed", lambda n: _set(n, "orelse", [])
    elif isinstance(node, _FUNCS):
        at = int(ast.get_docstring(node, clean=False) is not None)
        for value in dict.fromkeys(["None", _empty_return(node) or "None"]):
            yield "early_return", f"return {value} at the top of {node.name}()", lambda n, value=value: _set(
                n, "body", n.body[:at] + [ast.Return(ast.parse(value, mode="eval").body)] + n.body[at:])


class _Replace(ast.NodeTransformer):
    def __init__(self, old: ast.AST, new: ast.AST):
        self.old, self.new = old, new

    def visit(self, node: ast.AST) -> ast.AST:
        return self.new if node is self.old else self.generic_visit(node)


def edited_copy(tree: ast.AST, node: ast.AST, edit: Edit) -> ast.AST:
    """A copy of `tree` with `edit` applied to the copy of `node` (a node of `tree`, or `tree` itself);
    the tree itself is left unchanged."""
    memo: dict[int, object] = {}
    new_tree = copy.deepcopy(tree, memo)
    target = memo[id(node)]
    replacement = edit(target)
    return new_tree if replacement is target else _Replace(target, replacement).visit(new_tree)


def _spread(mutants: list[Mutant], limit: int, seed: int) -> list[Mutant]:
    """At most `limit` mutants (all when limit <= 0), taken round-robin over the operators (in an order
    shuffled by `seed`), each operator's mutants shuffled by `seed`; returned in their original order."""
    if limit <= 0 or len(mutants) <= limit:
        return list(mutants)
    rng = random.Random(seed)
    by_operator: dict[str, list[int]] = {}
    for i, m in enumerate(mutants):
        by_operator.setdefault(m.operator, []).append(i)
    queues = [by_operator[op] for op in sorted(by_operator)]
    for queue in queues:
        rng.shuffle(queue)
    rng.shuffle(queues)
    picked = [i for turn in itertools.zip_longest(*queues) for i in turn if i is not None][:limit]
    return [mutants[i] for i in sorted(picked)]


def make_mutants(source: str, limit: int = 0, seed: int = 0) -> list[Mutant]:
    """Every distinct single-change mutant of `source` (see the module docstring for the operators), in
    source order; `limit` > 0 keeps a seeded subset spread over operators and lines (`_spread`). A source
    that does not parse gives []. A mutant always differs from `source` in its AST, and no two are equal."""
    try:
        tree = ast.parse(source)
        original = ast.dump(ast.parse(ast.unparse(tree)))
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return []
    mutants, seen = [], set()
    for node in _code_nodes(tree):
        for operator, change, edit in _edits(node):
            try:  # a mutant that unparse cannot write or that does not parse back (`case --1:`) is skipped
                text = ast.unparse(ast.fix_missing_locations(edited_copy(tree, node, edit)))
                changed = ast.dump(ast.parse(text)) != original
            except (SyntaxError, ValueError, RecursionError, MemoryError):
                continue
            if changed and text not in seen:
                seen.add(text)
                mutants.append(Mutant(text, operator, node.lineno, f"line {node.lineno}: {change}"))
    return _spread(mutants, limit, seed)


# ---- with a sandbox: keep the mutants that the ground-truth tests kill ---------------------------------


def nonequivalent_mutants(problem: Problem, sandbox: Sandbox, limit: int = 8, seed: int = 0,
                          hardest: bool = False) -> list[Mutant]:
    """At most `limit` mutants of the reference solution that fail at least one of `problem.tests`
    (all when limit <= 0): spread over operators as in `make_mutants`, or with `hardest` the ones that fail
    the smallest share of the ground-truth tests (ties broken by `seed`), in source order.

    Up to 4 × limit candidates (8 × limit with `hardest`) run in the sandbox; one that passes every
    ground-truth test is dropped as (probably) equivalent to the reference, and one that runs into the time
    limit as a mutant that measures nothing (module docstring). The answer is cached on disk
    under the model cache folder (`mutants/`), keyed by reference, tests, limit, seed, `hardest`,
    MUTATOR_VERSION and `sandbox.verdict_version` (the sandbox's code and limits), so a second call runs
    nothing."""
    from common.cache import cache_dir, write_cache_file
    from sandbox import verdict_version

    key = json.dumps([problem.reference_solution, problem.tests, limit, seed, MUTATOR_VERSION,
                      verdict_version(getattr(sandbox, "config", None))] + (["hardest"] if hardest else []))
    path = cache_dir() / "mutants" / f"{hashlib.sha256(key.encode()).hexdigest()}.json"
    try:
        return [Mutant(**record) for record in json.loads(path.read_text())["mutants"]]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    candidates = make_mutants(problem.reference_solution, limit=(8 if hardest else 4) * limit, seed=seed)
    rows = sandbox.run_matrix([m.source for m in candidates], [problem.tests]) if candidates else []
    killed = [(m, row[0]) for m, row in zip(candidates, rows) if not (row[0].all_passed or row[0].timed_out)]
    if hardest:
        tiebreak = random.Random(seed).sample(range(len(killed)), len(killed))
        ranked = sorted(range(len(killed)), key=lambda i: (1 - killed[i][1].pass_rate, tiebreak[i]))
        chosen = [killed[i][0] for i in sorted(ranked if limit <= 0 else ranked[:limit])]
    else:
        chosen = _spread([m for m, _ in killed], limit, seed)
    logger.debug("problem %s: %d of %d mutants killed by the ground-truth tests, kept %d%s",
                problem.id, len(killed), len(candidates), len(chosen), " (the hardest)" if hardest else "")
    write_cache_file(path, {"id": problem.id, "mutants": [dataclasses.asdict(m) for m in chosen]})
    return chosen
