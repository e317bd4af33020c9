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
    # a changed sandbox does not trust the old verdicts: it decides again
    import sandbox as sandbox_package

    monkeypatch.setattr(sandbox_package, "code_version", lambda: "another-sandbox")
    with pytest.raises(AssertionError, match="every verdict was cached"):
        validate_problem_set([good], NoSandbox())


def test_training_set_is_sound_and_apart_from_humaneval(sandbox):
    import re
    from collections import Counter

    from data.problems import find_test_names, load_problem_set, validate_problem_set

    problems = load_problem_set("train")
    assert len(problems) >= 150
    assert all(len(find_test_names(p.tests)) >= 5 for p in problems)
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
