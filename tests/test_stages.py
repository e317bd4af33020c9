"""Reasoning stages: the five of docs/problems.md, progression, chain formatting, prompts, and extension."""
import dataclasses

import pytest

from reasoning import stages
from reasoning.stages import (
    STAGES,
    code_prompt,
    critique_prompt,
    format_chain,
    format_feedback,
    generator_prompt,
    get_stage,
    stage_index,
    stages_before,
)


def test_the_five_stages_in_order():
    assert [s.name for s in STAGES] == ["understand", "edge_cases", "algorithm", "pseudocode", "review"]
    for s in STAGES:
        assert s.title and s.goal and s.max_new_tokens > 0
        assert "{problem}" in s.generator_template and "{stage_output}" in s.critique_template


def test_progression():
    assert [s.name for s in stages_before("algorithm")] == ["understand", "edge_cases"]
    assert stages_before("understand") == ()
    with pytest.raises(KeyError, match="known stages: understand"):
        get_stage("nope")


def test_format_chain_orders_by_stage_and_rejects_unknown():
    text = format_chain({"algorithm": "sort it", "understand": "a list"})
    assert text.index("Understand the problem") < text.index("Algorithm")
    assert format_chain({}) == ""
    with pytest.raises(KeyError):
        format_chain({"bogus": "x"})


def test_generator_prompt_sees_only_earlier_stages(example_problems):
    problem = example_problems[0]
    chain = {"understand": "UNDERSTOOD", "edge_cases": "EDGES", "algorithm": "ALGO"}
    prompt = generator_prompt(problem, "edge_cases", chain)
    assert problem.description.strip() in prompt
    assert "UNDERSTOOD" in prompt and "EDGES" not in prompt and "ALGO" not in prompt
    assert "Edge cases" in prompt


def test_critique_code_and_tests_prompts(example_problems):
    problem = example_problems[3]
    crit = critique_prompt(problem, "algorithm", "use a hash map", {"understand": "U"})
    assert "use a hash map" in crit and "U" in crit
    code = code_prompt(problem, {"understand": "U"}, format_feedback("def two_sum(): pass", ["test_basic"]))
    assert problem.signature in code and "test_basic" in code and "```python" in code
    tests = stages.tests_prompt(problem, "some code")  # not imported by name: pytest would collect it
    assert "two_sum" in tests and "some code" in tests


def test_adding_a_stage_is_one_change(monkeypatch, example_problems):
    extra = dataclasses.replace(STAGES[-1], name="complexity_check", title="Complexity check")
    monkeypatch.setattr(stages, "STAGES", STAGES + (extra,))
    assert stages.STAGES[stage_index("review") + 1].name == "complexity_check"
    prompt = generator_prompt(example_problems[0], "complexity_check", {"review": "REVIEWED"})
    assert "REVIEWED" in prompt and "Complexity check" in prompt


def test_both_templates_take_every_documented_field(example_problems):
    from dataclasses import replace

    from reasoning.stages import critique_prompt, generator_prompt, get_stage

    fields = "\x1f".join(["{problem}", "{chain}", "{title}", "{goal}", "{goal_lower}"])
    stage = replace(get_stage("edge_cases"), generator_template=fields, critique_template=fields + "\x1f{stage_output}")
    chain = {"understand": "It adds numbers."}
    gen = generator_prompt(example_problems[0], stage, chain).split("\x1f")
    crit = critique_prompt(example_problems[0], stage, " my cases ", chain).split("\x1f")
    assert gen[2:] == ["Edge cases", stage.goal, "list worked examples and the inputs most likely to break a solution"]
    assert crit[:5] == gen and crit[5] == "my cases" and "It adds numbers." in gen[1]
