"""The five reasoning stages the Generator walks through before it writes code, and their prompts.

A chain is a `dict[str, str]` from stage name to that stage's text, in stage order. The Generator
writes stage s given the problem and stages 1..s-1; the Discriminator critiques stage s and writes tests.

Adding a stage is one entry in `STAGES` below: its name, goal, token budget and templates (`_GEN` by default).
Templates are `str.format` strings. Both may use `{problem}`, `{chain}` (the stages before this one),
`{title}`, `{goal}` and `{goal_lower}` (the goal with a lower-case first letter and no full stop); the
critique template also `{stage_output}` (the text it critiques).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from data.problems import Problem

Chain = dict[str, str]


_GEN = (
    "{problem}\n\n{chain}"
    "Now write only the next step, \"{title}\": {goal} Be concise. Do not write the final code yet."
)
_CRITIQUE = (
    "{problem}\n\n{chain}"
    "A student wrote this \"{title}\" step ({goal_lower}):\n\n{stage_output}\n\n"
    "Critique it: {focus} Name concrete inputs where possible. Be concise."
)


@dataclass(frozen=True)
class ReasoningStage:
    """One step of the Generator's reasoning chain."""

    name: str  # identifier used in chains, configs and metrics, e.g. "edge_cases"
    title: str  # heading shown to models and people, e.g. "Edge cases"
    goal: str  # one sentence: what this stage must produce
    max_new_tokens: int  # generation budget for this stage's text
    critique_template: str  # prompt for the Discriminator to critique this stage's text
    generator_template: str = _GEN  # prompt for the Generator to write this stage (by default the shared one)


STAGES: tuple[ReasoningStage, ...] = (
    ReasoningStage(
        name="understand",
        title="Understand the problem",
        goal="Restate the task: the inputs, the output, and every constraint.",
        max_new_tokens=96,
        critique_template=_CRITIQUE.replace(
            "{focus}", "what did it misread or leave out about the inputs, output or constraints?"
        ),
    ),
    ReasoningStage(
        name="edge_cases",
        title="Edge cases",
        goal="List worked examples and the inputs most likely to break a solution.",
        max_new_tokens=128,
        critique_template=_CRITIQUE.replace(
            "{focus}", "which breaking inputs (empty, single, duplicates, negative, huge) are missing?"
        ),
    ),
    ReasoningStage(
        name="algorithm",
        title="Algorithm",
        goal="Choose the approach and state its time and space complexity.",
        max_new_tokens=128,
        critique_template=_CRITIQUE.replace(
            "{focus}", "is the approach correct on every case, and fast enough for the largest input?"
        ),
    ),
    ReasoningStage(
        name="pseudocode",
        title="Pseudocode",
        goal="Write a step-by-step plan of the function.",
        max_new_tokens=160,
        critique_template=_CRITIQUE.replace(
            "{focus}", "which step is wrong, missing, or off by one?"
        ),
    ),
    ReasoningStage(
        name="review",
        title="Review",
        goal="Dry-run the plan on the examples and edge cases, and fix any mistake found.",
        max_new_tokens=128,
        critique_template=_CRITIQUE.replace(
            "{focus}", "which example would the plan still get wrong?"
        ),
    ),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)

CODE_TEMPLATE = (
    "{problem}\n\n{chain}{feedback}"
    "Now write the complete Python solution: the function `{signature}` and any imports or helpers it "
    "needs. Reply with one ```python code block and nothing else."
)
FEEDBACK_TEMPLATE = (
    "An earlier attempt failed.\n\nCode:\n```python\n{code}\n```\n\nFailing tests:\n{failures}\n\n"
)
TESTS_TEMPLATE = (
    "{problem}\n\n{context}"
    "Write pytest tests that a wrong solution of `{entry_point}` would fail but a correct one passes: "
    "edge cases, boundaries and tricky inputs. Each test is a `def test_...():` function with plain "
    "`assert` statements calling `{entry_point}` directly; `from solution import *` is already done. "
    "Reply with one ```python code block and nothing else."
)


def get_stage(name: str) -> ReasoningStage:
    """The stage called `name`; raises `KeyError` listing the known names."""
    for stage in STAGES:
        if stage.name == name:
            return stage
    raise KeyError(f"unknown reasoning stage {name!r}; known stages: {', '.join(s.name for s in STAGES)}")


def stage_index(name: str) -> int:
    """0-based position of a stage in the chain."""
    return [s.name for s in STAGES].index(get_stage(name).name)


def stages_before(name: str) -> tuple[ReasoningStage, ...]:
    """The stages that precede `name`, in order."""
    return STAGES[: stage_index(name)]


def format_problem(problem: Problem) -> str:
    """The problem as a model sees it."""
    text = f"Problem: {problem.title}\n\n{problem.description.strip()}"
    if problem.signature and problem.signature not in problem.description:
        text += f"\n\nSignature: {problem.signature}"
    return text


def chain_for_suite(chains: Sequence[Chain], j: int) -> Chain:
    """The chain a problem's test suite j is written against: chain j mod n of its n chains (training and
    inference pair the discriminator's samples with the generator's this way)."""
    return chains[j % len(chains)]


def format_chain(chain: Chain) -> str:
    """Stages written so far, each under its title, in stage order; '' for an empty chain.
    Unknown names raise `KeyError` (a chain from another stage set cannot be mixed in silently)."""
    parts = [f"## {stage.title}\n{chain[stage.name].strip()}\n\n" for stage in STAGES if stage.name in chain]
    names = [s.name for s in STAGES]
    unknown = set(chain) - set(names)
    if unknown:
        raise KeyError(f"chain has unknown stages {sorted(unknown)}; known stages: {', '.join(names)}")
    return "Reasoning so far:\n\n" + "".join(parts) if parts else ""


def generator_prompt(problem: Problem, stage: ReasoningStage | str, chain: Chain) -> str:
    """Prompt for the Generator to write `stage`, given the stages before it in `chain`."""
    stage = get_stage(stage) if isinstance(stage, str) else stage
    return stage.generator_template.format(**_template_fields(problem, stage, chain))


def critique_prompt(problem: Problem, stage: ReasoningStage | str, stage_output: str, chain: Chain) -> str:
    """Prompt for the Discriminator to critique the Generator's text for `stage`."""
    stage = get_stage(stage) if isinstance(stage, str) else stage
    return stage.critique_template.format(**_template_fields(problem, stage, chain), stage_output=stage_output.strip())


def _template_fields(problem: Problem, stage: ReasoningStage, chain: Chain) -> dict[str, str]:
    """The fields both of a stage's templates may use (module docstring)."""
    prior = {s.name: chain[s.name] for s in stages_before(stage.name) if s.name in chain}
    return dict(problem=format_problem(problem), chain=format_chain(prior), title=stage.title, goal=stage.goal,
                goal_lower=stage.goal[0].lower() + stage.goal[1:].rstrip("."))


def code_prompt(problem: Problem, chain: Chain, feedback: str = "") -> str:
    """Prompt for the final code, after the whole chain; `feedback` is from `format_feedback`."""
    return CODE_TEMPLATE.format(
        problem=format_problem(problem),
        chain=format_chain(chain),
        feedback=feedback,
        signature=problem.signature or problem.entry_point,
    )


def format_feedback(code: str, failures: list[str]) -> str:
    """Earlier attempt and the tests it failed, for multi-attempt repair."""
    listed = "\n".join(f"- {f}" for f in failures) or "- (none reported)"
    return FEEDBACK_TEMPLATE.format(code=code.strip(), failures=listed)


def tests_prompt(problem: Problem, context: str = "") -> str:
    """Prompt for the Discriminator's adversarial tests; `context` is a formatted chain or code."""
    return TESTS_TEMPLATE.format(
        problem=format_problem(problem),
        context=f"{context.strip()}\n\n" if context.strip() else "",
        entry_point=problem.entry_point,
    )
