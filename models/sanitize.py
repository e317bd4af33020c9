"""Turn raw model output into runnable code or a pytest module, or say why it cannot be done.

Small models wrap code in markdown fences and prose, mix tabs and spaces, indent whole blocks, stop
mid-line at the token budget, and add example calls or their own copy of the function under test.
These are repaired here. What cannot be repaired comes back with `ok=False` and a reason: it feeds the
format term of the reward and is never silently replaced by something else.
"""
from __future__ import annotations

import ast
import re
import sys
import textwrap
from dataclasses import dataclass, field

from sandbox.executor import parse_source  # bounded: a response nested too deeply does not parse

# ```python ... ``` (or ```py, ```pytest, a bare ```), the last one possibly unterminated (budget hit)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)(?:```|\Z)", re.DOTALL)
_CODE_LANGS = {"", "python", "py", "python3", "pytest"}
_CODE_START = re.compile(r"^\s*(def |async def |class |import |from |@)")
# pytest's own fixtures that a test may take as arguments
_BUILTIN_FIXTURES = {"tmp_path", "tmpdir", "capsys", "capfd", "monkeypatch", "caplog", "recwarn", "request"}
_ALLOWED_IMPORTS = set(sys.stdlib_module_names) | {"pytest", "solution"}


@dataclass
class SanitizedCode:
    """Code pulled out of a response."""

    code: str  # runnable source ("" when not ok)
    ok: bool  # parses and defines the entry point at top level
    reason: str = ""  # why not ok
    repairs: list[str] = field(default_factory=list)  # what was fixed, e.g. ["fence", "tabs"]


@dataclass
class SanitizedTests:
    """A pytest module pulled out of a response."""

    tests: str  # "from solution import *" + imports + test_* functions ("" when not ok)
    ok: bool  # at least one test function that calls the entry point
    reason: str = ""
    test_names: list[str] = field(default_factory=list)
    repairs: list[str] = field(default_factory=list)


def extract_blocks(text: str) -> list[str]:
    """Contents of the non-empty Python (or untagged) markdown code blocks, in order."""
    return [m.group(2) for m in _FENCE.finditer(text) if m.group(1).lower() in _CODE_LANGS and m.group(2).strip()]


def _unfenced_code(text: str) -> str:
    """Without fences: from the first line that starts like code to the end (prose after it is trimmed
    later, when parsing)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if _CODE_START.match(line):
            return "\n".join(lines[i:])
    return ""


def _looks_like_code(text: str) -> bool:
    """Unfenced text holds code when a line starts like code or the whole text parses."""
    if _unfenced_code(text):
        return True
    try:
        return bool(parse_source(text).body)
    except SyntaxError:
        return False


def _snap_indentation(source: str) -> str:
    """Round every line's indentation to a multiple of the smallest indentation used (fixes stray
    off-by-one indents such as 3 or 5 spaces in 4-space code)."""
    lines = source.splitlines()
    indents = [len(l) - len(l.lstrip(" ")) for l in lines if l.strip()]
    unit = min((i for i in indents if i > 0), default=0)
    if unit < 2:
        return source
    return "\n".join(" " * (unit * round((len(l) - len(l.lstrip(" "))) / unit)) + l.lstrip(" ") if l.strip() else ""
                     for l in lines)


def parse_repaired(source: str) -> tuple[ast.Module | None, str, list[str], str]:
    """Parse `source`, repairing what is safe to repair. Returns (tree, repaired source, repairs, error);
    tree is None when nothing parses.

    Repairs, in order: CRLF, tabs → 4 spaces, a common indentation removed, prose before the first code
    line dropped, off-grid indentation snapped, trailing lines that do not parse (prose after the code,
    or a last statement cut off by the token budget) dropped."""
    repairs = []
    source = source.replace("\r\n", "\n")
    if "\t" in source:
        source, _ = source.expandtabs(4), repairs.append("tabs")
    dedented = textwrap.dedent(source)
    if dedented != source:
        source, _ = dedented, repairs.append("dedent")
    source = "\n".join(line.rstrip() for line in source.splitlines()).strip("\n")
    error = ""
    candidates = [(source, [])]
    start = _unfenced_code(source)
    if start and start != source:
        candidates.append((start, ["leading prose"]))
    for text, extra in list(candidates):
        snapped = _snap_indentation(text)
        if snapped != text:
            candidates.append((snapped, extra + ["indentation"]))
    for text, extra in candidates:  # first: a candidate that parses whole
        try:
            tree = parse_source(text)
        except SyntaxError as e:
            error = error or f"{type(e).__name__}: {getattr(e, 'msg', e)} (line {getattr(e, 'lineno', '?')})"
            continue
        if tree.body:
            return tree, text + "\n", repairs + extra, ""
    for text, extra in candidates:  # then: the longest prefix that parses
        lines = text.splitlines()
        for end in range(len(lines) - 1, 0, -1):
            if not lines[end - 1].strip():
                continue
            candidate = "\n".join(lines[:end])
            try:
                tree = parse_source(candidate)
            except SyntaxError:
                continue
            if tree.body:
                return tree, candidate + "\n", repairs + extra + [f"dropped {len(lines) - end} trailing line(s)"], ""
            break
    return None, source, repairs, error or "no code"


def _defines(tree: ast.Module, name: str) -> bool:
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
    return False


def _is_demo(node: ast.stmt) -> bool:
    """Top-level code that runs on import but is not part of a solution: example calls, prints, asserts,
    and `if __name__ == "__main__":` blocks."""
    if isinstance(node, ast.Expr):
        return not (isinstance(node.value, ast.Constant) and isinstance(node.value.value, str))
    if isinstance(node, ast.Assert):
        return True
    if isinstance(node, ast.If):
        return "__name__" in {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
    return False


def sanitize_code(text: str, entry_point: str) -> SanitizedCode:
    """The solution in a model response: fenced or bare code, repaired, example calls removed. `ok` is
    True when it parses and defines `entry_point` at top level."""
    blocks = extract_blocks(text)
    if not blocks and not _looks_like_code(text):
        return SanitizedCode("", False, "no code found in the response")
    first_failure = None
    for source in blocks or [text]:
        tree, source, repairs, error = parse_repaired(source)
        if blocks:
            repairs.insert(0, "fence")
        if tree is None:
            first_failure = first_failure or SanitizedCode("", False, f"does not parse: {error}", repairs)
            continue
        if not _defines(tree, entry_point):
            names = sorted(n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef)))
            first_failure = first_failure or SanitizedCode(
                "", False, f"does not define `{entry_point}` (defines {names or 'nothing'})", repairs
            )
            continue
        demo = [n for n in tree.body if _is_demo(n)]
        if demo:
            lines = source.splitlines()
            drop = {i for n in demo for i in range(n.lineno - 1, n.end_lineno)}
            source = "\n".join(l for i, l in enumerate(lines) if i not in drop).strip("\n") + "\n"
            repairs.append(f"removed {len(demo)} top-level example statement(s)")
        return SanitizedCode(source, True, "", repairs)
    return first_failure


def _calls(node: ast.AST, name: str | set[str]) -> bool:
    """Whether `node` mentions `name` (or one of a set of names) as a variable or an attribute."""
    names = {name} if isinstance(name, str) else name
    return any(isinstance(n, ast.Name) and n.id in names or isinstance(n, ast.Attribute) and n.attr in names
               for n in ast.walk(node))


def _reaching(statements: list[ast.stmt], entry_point: str) -> set[str]:
    """`entry_point` and the suite's helper functions that call it, directly or through one another."""
    helpers = [n for n in statements if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
               and _is_helper(n, entry_point)]
    reaching, grown = {entry_point}, True
    while grown:
        found = {h.name for h in helpers if h.name not in reaching and _calls(h, reaching)}
        reaching |= found
        grown = bool(found)
    return reaching


def _keep_import(node: ast.Import | ast.ImportFrom, entry_point: str) -> bool:
    """Standard-library and pytest imports stay; `solution` is re-imported by us; anything importing the
    entry point from elsewhere, or from a module the sandbox will not have, goes."""
    if isinstance(node, ast.ImportFrom):
        module = (node.module or "").split(".")[0]
        if module == "solution" or node.level or any(a.name == entry_point for a in node.names):
            return False
        return module in _ALLOWED_IMPORTS
    return all(a.name.split(".")[0] in _ALLOWED_IMPORTS for a in node.names)


def _runnable_test(node: ast.FunctionDef) -> bool:
    """A test pytest can run without user fixtures: no arguments, only pytest's own fixtures, or
    decorated (e.g. `@pytest.mark.parametrize`)."""
    args = [a.arg for a in node.args.posonlyargs + node.args.args + node.args.kwonlyargs]
    return bool(node.decorator_list) or set(args) <= _BUILTIN_FIXTURES


def _test_function(name: str, body: list[ast.stmt]) -> ast.FunctionDef:
    test = ast.parse(f"def {name}():\n    pass").body[0]
    test.body = body
    return test


def _split_asserts(node: ast.FunctionDef, entry_point: str) -> list[ast.FunctionDef]:
    """A plain test made only of asserts becomes one test per assert that calls the entry point, so one
    wrong expectation no longer hides the right ones (each is judged valid or invalid on its own).
    Tests with other statements, arguments or decorators are kept whole."""
    body = node.body[1:] if ast.get_docstring(node) else node.body
    if (node.decorator_list or node.args.args or isinstance(node, ast.AsyncFunctionDef) or len(body) < 2
            or not all(isinstance(stmt, ast.Assert) for stmt in body)):
        return [node]
    asserts = [stmt for stmt in body if _calls(stmt, entry_point)]
    return [_test_function(f"{node.name}_{k}", [stmt]) for k, stmt in enumerate(asserts, 1)] or [node]


def sanitize_tests(text: str, entry_point: str, split_asserts: bool = True) -> SanitizedTests:
    """A pytest module of `test_*` functions from a model response.

    Kept: standard-library/pytest imports, the suite's own helpers (top-level functions other than tests and
    `entry_point`, and assignments that do not call `entry_point`: after `from solution import *`, so the
    tests call these, never the candidate's versions of them) and test functions that mention
    `entry_point`, directly or through those helpers. Removed: prose, fences, other top-level code
    (including the model's own copy of `entry_point`), tests needing unknown fixtures, exact duplicates.
    Bare top-level `assert`s that call
    `entry_point` become one test each; different tests with the same name are renamed apart. With
    `split_asserts`, a test made only of asserts becomes one test per assert (`_split_asserts`).
    `from solution import *` and `import pytest` come first. A response nested too deeply to read fails."""
    try:
        return _sanitize_tests(text, entry_point, split_asserts)
    except (RecursionError, MemoryError):  # a tree that parsed but is too deep to unparse or compare
        return SanitizedTests("", False, "nested too deeply to read")


def _is_helper(node: ast.stmt, entry_point: str) -> bool:
    """A top-level definition of the suite's own that its tests may use."""
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return not node.name.startswith("test") and node.name != entry_point
    if isinstance(node, (ast.Assign, ast.AnnAssign)):
        targets = node.targets if isinstance(node, ast.Assign) else [node.target]
        return (all(isinstance(t, ast.Name) and t.id != entry_point for t in targets) and node.value is not None
                and not _calls(node, entry_point))
    return False


def _sanitize_tests(text: str, entry_point: str, split_asserts: bool) -> SanitizedTests:
    blocks = extract_blocks(text)
    if not blocks and not _looks_like_code(text):
        return SanitizedTests("", False, "no code found in the response")
    repairs = ["fence"] if blocks else []
    statements: list[ast.stmt] = []
    errors = []
    for source in blocks or [text]:
        tree, _, fixed, error = parse_repaired(source)
        repairs += fixed
        if tree is None:
            errors.append(error)
        else:
            statements += tree.body
    if not statements:
        return SanitizedTests("", False, f"does not parse: {errors[0]}", [], repairs)

    reaching = _reaching(statements, entry_point)  # a test that calls one of these tests the entry point
    imports: list[str] = ["from solution import *", "import pytest"]
    helpers: dict[str, str] = {}  # a function's name (an assignment's source) -> source; a later def replaces
    tests: list[ast.FunctionDef] = []
    seen_bodies: set[str] = set()
    names: set[str] = set()
    dropped = wrapped = split = 0
    for node in statements:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            line = ast.unparse(node)
            if _keep_import(node, entry_point) and line not in imports:
                imports.append(line)
            continue
        if _is_helper(node, entry_point):
            name = node.name if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) else ast.unparse(node)
            helpers[name] = ast.unparse(node)
            continue
        if isinstance(node, ast.Assert) and _calls(node, entry_point):
            wrapped += 1
            candidates = [_test_function(f"test_assert_{wrapped}", [node])]
        elif (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name.startswith("test")
              and _calls(node, reaching) and _runnable_test(node)):
            candidates = _split_asserts(node, entry_point) if split_asserts else [node]
            split += len(candidates) - 1
        else:
            dropped += 1
            continue
        for test in candidates:
            body = ast.dump(ast.Module(body=test.body + test.decorator_list, type_ignores=[]))
            if body in seen_bodies:
                dropped += 1
                continue
            seen_bodies.add(body)
            base, n = test.name, 1
            while test.name in names:
                n += 1
                test.name = f"{base}_{n}"
            names.add(test.name)
            tests.append(test)
    if wrapped:
        repairs.append(f"wrapped {wrapped} bare assert(s) into tests")
    if split:
        repairs.append(f"split tests made only of asserts into {split} more test(s)")
    if dropped:
        repairs.append(f"dropped {dropped} statement(s) or test(s)")
    if not tests:
        return SanitizedTests("", False, f"no test_* function that calls `{entry_point}`", [], repairs)
    source = "\n".join(imports) + "\n\n\n" + "\n\n\n".join([*helpers.values(), *map(ast.unparse, tests)]) + "\n"
    return SanitizedTests(source, True, "", [t.name for t in tests], repairs)
