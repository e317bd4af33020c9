"""`LLMDiscriminator`: critiques reasoning stages and writes adversarial pytest tests.

Batched like the Generator: a list of problems in, one list of `num_samples` records per problem out, and
every call is ONE `generate` over all of them.
"""
from __future__ import annotations

from collections.abc import Sequence

from data.problems import Problem
from models.base import Generation, LLMBase, TestsGeneration, as_batch, sanitized_records
from models.sampling import SamplingConfig
from models.sanitize import sanitize_tests
from reasoning.stages import Chain, ReasoningStage, critique_prompt, format_chain, get_stage, tests_prompt

TESTS_MAX_NEW_TOKENS = 320  # default budget of one test suite
# Prefill of the tests reply: an open ```python block that starts the first test function. Without it
# SmolLM2-135M mostly writes (another) solution instead of tests. Part of the prompt, never sampled.
TESTS_PREFIX = "```python\nfrom solution import *\n\n\ndef test_"


def tests_context(chain_or_code: Chain | str | None) -> str:
    """What the tests are written against: the Generator's reasoning (a chain), its code (a string), or
    nothing."""
    if not chain_or_code:
        return ""
    if isinstance(chain_or_code, dict):
        return format_chain(chain_or_code)
    return f"A candidate solution to test:\n```python\n{chain_or_code.strip()}\n```"


class LLMDiscriminator(LLMBase):
    """The Discriminator: `LLMDiscriminator(model="default", device="auto", dtype="auto", sampling=None)`.

    Same model choices and per-call sampling overrides as `LLMGenerator`."""

    system_prompt = "You are a meticulous Python tester. You find the inputs where code breaks."

    def generate_tests(
        self,
        problems: Sequence[Problem],
        chain_or_code: Chain | str | Sequence[Chain | str] | None = None,
        num_samples: int = 1,
        sampling: SamplingConfig | None = None,
        **overrides,
    ) -> list[list[TestsGeneration]]:
        """Sample pytest test suites, sanitized (`models.sanitize.sanitize_tests`)."""
        problems, args = as_batch(problems, context=chain_or_code)
        prompts = [tests_prompt(p, tests_context(c)) for p, c in zip(problems, args["context"])]
        settings = self.settings(sampling, **overrides)
        prefix = TESTS_PREFIX if self.prefill else ""
        groups = self.sample(prompts, num_samples, settings, TESTS_MAX_NEW_TOKENS, code_block=True, prefixes=prefix)
        return sanitized_records(problems, groups, "tests", sanitize_tests, TestsGeneration)

    def generate_critique(
        self,
        problems: Sequence[Problem],
        stage: ReasoningStage | str,
        stage_output: str | Sequence[str],
        chain: Chain | Sequence[Chain] | None = None,
        num_samples: int = 1,
        sampling: SamplingConfig | None = None,
        **overrides,
    ) -> list[list[Generation]]:
        """Sample a critique of the Generator's text for `stage` (the stage's own critique prompt), given
        the stages before it in `chain`. `max_new_tokens` defaults to the stage's budget."""
        stage = get_stage(stage) if isinstance(stage, str) else stage
        problems, args = as_batch(problems, output=stage_output, chain=chain)
        prompts = [
            critique_prompt(p, stage, o, c or {}) for p, o, c in zip(problems, args["output"], args["chain"])
        ]
        settings = self.settings(sampling, **overrides)
        groups = self.sample(prompts, num_samples, settings, stage.max_new_tokens)
        for p, group in zip(problems, groups):
            for g in group:
                g.task, g.stage, g.problem_id = "critique", stage.name, p.id
        return groups
