"""`LLMGenerator`: writes the reasoning stages and the final code (prompts from `reasoning/stages.py`).

Every method takes a list of problems and returns one list of `num_samples` records per problem; all
samples of all problems of a call go into ONE batched `generate` call.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Union

from data.problems import Problem
from models.base import CodeGeneration, Generation, LLMBase, as_batch, sanitized_records
from models.sampling import SamplingConfig
from models.sanitize import sanitize_code
from reasoning.stages import Chain, ReasoningStage, code_prompt, format_feedback, generator_prompt, get_stage

CODE_MAX_NEW_TOKENS = 320  # default budget of the final code (stages have their own, in STAGES)
# Prefill of the code reply: the prompt asks for one ```python block, so we open it. Small models then
# write code at once instead of prose; the tokens are part of the prompt, never sampled or trained on.
CODE_PREFIX = "```python\n"

# Earlier failed attempts for multi-attempt repair: a formatted string (`format_feedback`), or a list of
# (code, names or messages of the tests it failed) pairs, oldest first.
Feedback = Union[str, Sequence[tuple[str, Sequence[str]]], None]


def feedback_text(feedback: Feedback) -> str:
    """The feedback block of the code prompt ("" for none)."""
    if not feedback or isinstance(feedback, str):
        return feedback or ""
    return "".join(format_feedback(code, list(failures)) for code, failures in feedback)


class LLMGenerator(LLMBase):
    """The Generator: `LLMGenerator(model="default", device="auto", dtype="auto", sampling=None)`.

    model: "default", "tiny", a Hugging Face id, a local folder, or a loaded (model, tokenizer) pair.
    Sampling settings come from `sampling` (a `SamplingConfig`) and can be overridden per call by keyword:
    `temperature`, `top_p`, `top_k`, `top_k_first`, `max_new_tokens`, `do_sample`, `seed`."""

    system_prompt = "You are an expert Python programmer. You reason step by step and write correct, simple code."

    def generate_stage_output(
        self,
        problems: Sequence[Problem],
        stage: ReasoningStage | str,
        chain: Chain | Sequence[Chain] | None = None,
        num_samples: int = 1,
        sampling: SamplingConfig | None = None,
        **overrides,
    ) -> list[list[Generation]]:
        """Sample the text of `stage` given the stages before it in `chain` (per problem, or shared).
        `max_new_tokens` defaults to the stage's budget."""
        stage = get_stage(stage) if isinstance(stage, str) else stage
        problems, args = as_batch(problems, chain=chain)
        prompts = [generator_prompt(p, stage, c or {}) for p, c in zip(problems, args["chain"])]
        settings = self.settings(sampling, **overrides)
        groups = self.sample(prompts, num_samples, settings, stage.max_new_tokens)
        for p, group in zip(problems, groups):
            for g in group:
                g.task, g.stage, g.problem_id = "stage", stage.name, p.id
        return groups

    def generate_code(
        self,
        problems: Sequence[Problem],
        chain: Chain | Sequence[Chain] | None = None,
        num_samples: int = 1,
        feedback: Sequence[Feedback] | None = None,
        sampling: SamplingConfig | None = None,
        greedy_first: bool = False,
        **overrides,
    ) -> list[list[CodeGeneration]]:
        """Sample the final code after the chain, sanitized (`models.sanitize.sanitize_code`).

        feedback: one entry per problem, its earlier attempts and their failing tests (see `Feedback`).
        greedy_first: each problem's first code is the greedy one, then its `num_samples` sampled codes (one
        decoding for both; `LLMBase.sample`)."""
        problems, args = as_batch(problems, chain=chain)
        feedbacks = list(feedback) if feedback else [None] * len(problems)
        if len(feedbacks) != len(problems):
            raise ValueError(f"{len(problems)} problems but {len(feedbacks)} feedback entries")
        prompts = [
            code_prompt(p, c or {}, feedback_text(f)) for p, c, f in zip(problems, args["chain"], feedbacks)
        ]
        settings = self.settings(sampling, **overrides)
        prefix = CODE_PREFIX if self.prefill else ""
        groups = self.sample(prompts, num_samples, settings, CODE_MAX_NEW_TOKENS, code_block=True, prefixes=prefix,
                             greedy_first=greedy_first)
        return sanitized_records(problems, groups, "code", sanitize_code, CodeGeneration)

    def complete_chains(
        self,
        problems: Sequence[Problem],
        chains: Sequence[Chain],
        stages: Sequence[ReasoningStage | str],
        sampling: SamplingConfig | None = None,
        **overrides,
    ) -> Sequence[Chain]:
        """The chain loop: fill `chains[k]` (a chain of `problems[k]`, changed in place) with each of `stages`
        it lacks, in order, each stage written after the ones before it. Each stage is one batched call over
        the chains that lack it (greedy or sampled as the settings say). Returns `chains`."""
        for stage in stages:
            stage = get_stage(stage) if isinstance(stage, str) else stage
            todo = [k for k, chain in enumerate(chains) if stage.name not in chain]
            if not todo:
                continue
            outs = self.generate_stage_output([problems[k] for k in todo], stage, [dict(chains[k]) for k in todo],
                                              1, sampling, **overrides)
            for k, out in zip(todo, outs):
                chains[k][stage.name] = out[0].text.strip()
        return chains
