"""Problem loading: the example set, HumanEval, and clear errors for every kind of bad input."""
import json

import pytest

from data.problems import (
    Problem,
    ProblemFormatError,
    load_humaneval,
    load_problems,
    problem_from_dict,
)


def good_record(**override):
    record = {
        "id": "double",
        "title": "Double",
        "description": "Return twice x.",
        "entry_point": "double",
        "reference_solution": "def double(x):\n    return 2 * x\n",
        "tests": "from solution import *\n\ndef test_two():\n    assert double(2) == 4\n",
        "difficulty": "easy",
        "tags": ["math"],
    }
    record.update(override)
    return record


def write(tmp_path, data, name="problems.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


def test_example_problems_load(example_problems):
    assert len(example_problems) >= 8
    assert {p.difficulty for p in example_problems} == {"easy", "medium", "hard"}
    assert len({p.id for p in example_problems}) == len(example_problems)
    for p in example_problems:
        assert isinstance(p, Problem) and p.signature.startswith(f"def {p.entry_point}(")
        assert p.tests.count("def test_") >= 5


def test_round_trip(tmp_path, example_problems):
    path = tmp_path / "copy.json"
    path.write_text(json.dumps([p.to_dict() for p in example_problems]))  # what a user's file holds
    assert load_problems(path) == example_problems


def test_object_with_problems_list(tmp_path):
    problems = load_problems(write(tmp_path, {"problems": [good_record()]}))
    assert problems[0].id == "double" and problems[0].signature == ""


@pytest.mark.parametrize("data, expected", [
    ("{not json", "invalid JSON at line 1"),
    ([], "holds no problems"),
    ({"x": 1}, "expected a list of problems"),
    ([good_record(), good_record()], "problem 'double': field 'id' is a duplicate"),
    ([{k: v for k, v in good_record().items() if k != "tests"}], "problem 'double': field 'tests' is missing"),
    ([good_record(title=3)], "problem 'double': field 'title' must be str, got int"),
    ([good_record(tags="math")], "field 'tags' must be list"),
    ([good_record(tags=[1])], "field 'tags' must be a list of strings"),
    ([good_record(difficulty="trivial")], "field 'difficulty' is 'trivial'"),
    ([good_record(entry_point="triple")], "field 'entry_point': the reference solution does not define 'triple'"),
    ([good_record(reference_solution="def double(:")], "field 'reference_solution' does not parse"),
    ([good_record(tests="x = 1\n")], "field 'tests' has no test_* function"),
    ([good_record(description="  ")], "field 'description' is empty"),
    ([good_record(extra=1)], "unknown field(s) ['extra']"),
    ([good_record(), "oops"], "problem #1: expected a JSON object"),
])
def test_bad_input_names_file_problem_and_field(tmp_path, data, expected):
    path = write(tmp_path, data)
    with pytest.raises(ProblemFormatError) as info:
        load_problems(path)
    assert str(path) in str(info.value)
    assert expected in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ProblemFormatError, match="cannot read the problem file"):
        load_problems(tmp_path / "nope.json")


def test_one_bad_problem_fails_the_whole_file(tmp_path):
    with pytest.raises(ProblemFormatError):
        load_problems(write(tmp_path, [good_record(), good_record(id="b", entry_point="nope")]))


def test_problem_from_dict_is_the_same_check():
    assert problem_from_dict(good_record()).entry_point == "double"


def test_humaneval_ships_164_problems():
    problems = load_humaneval()
    assert len(problems) == 164
    first = problems[0]
    assert first.id == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert first.reference_solution.startswith(first.description)
    assert "def test_check():" in first.tests and "check(has_close_elements)" in first.tests
    assert first.signature.startswith("def has_close_elements(")
    assert len(load_humaneval(limit=5)) == 5


CYCLIC_TASK = {  # HumanEval/38's shape: the tests call a helper that the prompt defines
    "task_id": "cyclic",
    "prompt": "import string\n\ndef encode(s: str) -> str:\n    return s[1:] + s[:1]\n\n\n"
              "def decode(s: str) -> str:\n    \"\"\"Undo encode.\"\"\"\n",
    "canonical_solution": "    return s[-1:] + s[:-1]\n",
    "test": "def check(candidate):\n    for s in ['abc', 'hello', string.ascii_lowercase]:\n"
            "        assert candidate(encode(s)) == s\n",
    "entry_point": "decode",
}


def test_ground_truth_tests_carry_the_prompt_s_helpers(sandbox):
    from data.problems import humaneval_problem

    problem = humaneval_problem(CYCLIC_TASK)
    assert sandbox.execute_tests(problem.reference_solution, problem.tests).all_passed
    # a candidate that redefines the helper so that any answer passes: the tests use the problem's own
    cheat = "def encode(s):\n    return s\n\ndef decode(s):\n    return s\n"
    r = sandbox.execute_tests(cheat, problem.tests)
    assert r.test_outcomes == {"test_check": "failed"}, (r.test_outcomes, r.stderr)
    by_id = {p.id: p for p in load_humaneval()}
    for pid, helper in (("HumanEval/32", "def poly("), ("HumanEval/38", "def encode_cyclic("),
                        ("HumanEval/50", "def encode_shift(")):
        head, _, rest = by_id[pid].tests.partition("from solution import *")
        assert helper in rest and "import math" in by_id["HumanEval/32"].tests, pid


def test_heldout_is_a_fixed_slice_of_humaneval():
    from data.problems import HELDOUT_SIZE, load_heldout

    heldout = load_heldout()
    assert len(heldout) == HELDOUT_SIZE >= 80 and len({p.id for p in heldout}) == HELDOUT_SIZE
    assert [p.id for p in load_heldout()] == [p.id for p in heldout]  # seeded: the same every time
    ids = [int(p.id.split("/")[1]) for p in heldout]
    assert ids == sorted(ids) and ids != list(range(HELDOUT_SIZE))  # drawn, not the first 80


def test_problem_set_validation_reports_by_id_and_caches(sandbox, example_problems, tmp_path, monkeypatch):
    from dataclasses import replace

    from data.problems import trivial_solution, validate_problem_set

    monkeypatch.setenv("ADVCODE_CACHE_DIR", str(tmp_path))
    good = example_problems[0]
    broken = replace(good, id="broken", reference_solution=f"def {good.entry_point}(s):\n    return 'x'\n")
    empty_tests = replace(good, id="weak", tests="from solution import *\n\ndef test_nothing():\n    assert True\n")
    assert "return None" in trivial_solution(good) and f"def {good.entry_point}(" in trivial_solution(good)
    valid, rejected = validate_problem_set([good, broken, empty_tests], sandbox)
    assert valid == [good]
    assert "reference solution fails its own tests" in rejected["broken"]
    assert "returns None passes every test" in rejected["weak"]

    class NoSandbox:  # a second load is answered from the cache: nothing runs
        num_workers = 1

        def execute_tests(self, *a, **k):
            raise AssertionError("the sandbox ran although every verdict was cached")

    assert validate_problem_set([good, broken, empty_tests], NoSandbox()) == (valid, rejected)
    # a changed sandbox, or other limits, do not trust the old verdicts: it decides again
    import sandbox as sandbox_package
    from sandbox import SandboxConfig

    NoSandbox.config = SandboxConfig(timeout_s=1.0)  # other limits: a verdict (a timeout) may differ
    with pytest.raises(AssertionError, match="every verdict was cached"):
        validate_problem_set([good], NoSandbox())
    monkeypatch.setattr(sandbox_package, "code_version", lambda: "another-sandbox")
    del NoSandbox.config
    with pytest.raises(AssertionError, match="every verdict was cached"):
        validate_problem_set([good], NoSandbox())


def test_a_timed_out_reference_is_rejected_but_not_cached(example_problems, tmp_path, monkeypatch):
    from data.problems import validate_problem_set
    from sandbox import ExecutionResult

    monkeypatch.setenv("ADVCODE_CACHE_DIR", str(tmp_path))

    class SlowSandbox:  # the machine was busy: the reference's run timed out
        num_workers = 1
        calls = 0

        def execute_tests(self, *a, **k):
            SlowSandbox.calls += 1
            return ExecutionResult(status="timeout", failed=1, total=1, timed_out=True)

    problem = example_problems[0]
    for expected_calls in (1, 2):  # not cached: the second load checks it again
        valid, rejected = validate_problem_set([problem], SlowSandbox())
        assert valid == [] and SlowSandbox.calls == expected_calls
        assert "timed out: not cached" in rejected[problem.id]


def test_training_set_is_sound_and_apart_from_humaneval(sandbox):
    import re
    from collections import Counter

    from data.problems import load_problem_set, validate_problem_set
    from sandbox.matrix import collect_tests

    problems = load_problem_set("train")
    assert len(problems) >= 150
    assert all(len(collect_tests(p.tests)) >= 5 for p in problems)
    assert min(Counter(p.difficulty for p in problems).values()) >= 30  # easy, medium and hard
    humaneval = load_humaneval()
    assert not {p.entry_point.lower() for p in problems} & {p.entry_point.lower() for p in humaneval}

    def words(text):
        return set(re.findall(r"[a-z]{3,}", text.lower()))

    theirs = [words(p.description) for p in humaneval]
    for p in problems:  # no statement shares most of its words with a HumanEval prompt
        mine = words(p.description)
        assert max(len(mine & w) / len(mine | w) for w in theirs) < 0.35, p.id
    valid, rejected = validate_problem_set(problems, sandbox)
    assert rejected == {} and len(valid) == len(problems)


HUMANEVAL_SHAPED = {"task_id": "Shaped/0", "entry_point": "add",
                    "prompt": "def add(a, b):\n    \"\"\"Return a + b.\"\"\"\n",
                    "canonical_solution": "    return a + b\n",
                    "test": "def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(-1, 1) == 0\n"}
MBPP_SHAPED = {"task_id": 7, "text": "Write a function to find the maximum of two numbers.",
               "code": "def helper(x):\n    return x\n\ndef maximum(a, b):\n    return helper(a) if a > b else b\n",
               "test_list": ["assert maximum(5, 10) == 10", "assert maximum(-1, -2) == -1", "assert maximum(9, 7) == 9"],
               "test_setup_code": "", "challenge_test_list": []}


def test_humaneval_and_mbpp_shaped_records_from_json_and_jsonl(tmp_path, sandbox):
    from data.problems import load_problem_set, validate_problem_set

    jsonl = tmp_path / "mixed.jsonl"
    jsonl.write_text(json.dumps(HUMANEVAL_SHAPED) + "\n\n" + json.dumps(MBPP_SHAPED) + "\n")
    he, mbpp = load_problem_set(str(jsonl))
    assert (he.id, he.entry_point, he.signature) == ("Shaped/0", "add", "def add(a, b):")
    assert he.reference_solution.endswith("return a + b\n") and "check(add)" in he.tests
    assert (mbpp.id, mbpp.entry_point) == ("7", "maximum")  # the function the asserts call, not the helper
    assert mbpp.tests.count("def test_") == 3 and "maximum(5, 10) == 10" in mbpp.description
    valid, rejected = validate_problem_set([he, mbpp], sandbox)  # the same validation as every problem set
    assert valid == [he, mbpp] and not rejected
    same = tmp_path / "mixed.json"
    same.write_text(json.dumps([HUMANEVAL_SHAPED, MBPP_SHAPED]))
    assert load_problem_set(str(same)) == [he, mbpp]


def test_malformed_dataset_records_are_one_line_errors(tmp_path):
    from data.problems import load_problem_set

    for name, text, words in [
        ("bad.jsonl", json.dumps(HUMANEVAL_SHAPED) + "\n{oops\n", "line 2 is not valid JSON"),
        ("other.jsonl", json.dumps({"question": "?", "answer": "42"}) + "\n", "not a problem record"),
        ("nocall.jsonl", json.dumps({**MBPP_SHAPED, "test_list": ["assert True"]}) + "\n", "no function of field 'code'"),
        ("latin1.json", None, "not UTF-8"),
    ]:
        path = tmp_path / name
        if text is None:
            path.write_bytes(b"[{\"id\": \"caf\xe9\"}]")
        else:
            path.write_text(text)
        with pytest.raises(ProblemFormatError, match=words) as info:
            load_problem_set(str(path))
        assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_parquet_and_hub_ids_go_through_datasets(tmp_path, monkeypatch):
    from data.problems import load_problem_set

    datasets = pytest.importorskip("datasets")
    path = tmp_path / "problems.parquet"
    datasets.Dataset.from_list([HUMANEVAL_SHAPED, HUMANEVAL_SHAPED | {"task_id": "Shaped/1"}]).to_parquet(str(path))
    assert [p.id for p in load_problem_set(str(path))] == ["Shaped/0", "Shaped/1"]
    # no network here: an id on the hub fails at once with one line, without datasets' retries
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import time

    start = time.monotonic()
    with pytest.raises(ProblemFormatError, match="cannot reach this dataset on the Hugging Face hub"):
        load_problem_set("no-such-owner/no-such-dataset:train")
    assert time.monotonic() - start < 30
