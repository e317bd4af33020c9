"""Evaluation metrics: diversity of Discriminator tests (`scoring/test_diversity.py`, re-exported) and
coherence of Generator reasoning chains (`reasoning_coherence`).

Every function is pure and deterministic (no model, no sandbox); every score is in [0, 1].
pass@k lives in `scoring/pass_at_k.py`.
"""
from __future__ import annotations

import ast
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from scoring.test_diversity import TestDiversity, compute_test_diversity  # noqa: F401 (re-exported)
from reasoning.stages import STAGE_NAMES

if TYPE_CHECKING:
    from data.problems import Problem

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
