"""`InferenceConfig`, apart from the engine so that the command line reads it without importing torch."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class InferenceConfig:
    """How problems are solved. `solve_problem` / `solve_batch` can override the first two per call."""

    num_candidates: int = 1  # codes per problem; >1 samples them and ranks by dual agreement with the tests
    max_attempts: int = 1  # code attempts; >1 repairs the chosen code from the discriminator tests it fails
    num_test_suites: int = 4  # discriminator test suites per problem (written only to rank or repair)
    temperature: float = 0.7  # sampling temperature when sampling (several candidates or test suites)
    top_p: float = 0.95  # nucleus sampling mass when sampling
    stage_tokens: int = 0  # max new tokens of each reasoning stage (0 = the stage's own budget)
    code_tokens: int = 0  # max new tokens of the code (0 = the generator's default, 320)
    test_tokens: int = 0  # max new tokens of a test suite (0 = the discriminator's default, 320)
    shared_chain: bool = False  # candidates share one greedy chain and differ only in the code (faster)
    repair_with_problem_tests: bool = False  # rank and repair with the problem's own tests too (leaks them)
    seed: int = 0  # seeds each sampling call (reproducible answers); -1 uses the global RNG

    def __post_init__(self):
        if self.num_candidates < 1 or self.max_attempts < 1 or self.num_test_suites < 1:
            raise ValueError("num_candidates, max_attempts and num_test_suites must be >= 1")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be > 0 and top_p in (0, 1]")
        if min(self.stage_tokens, self.code_tokens, self.test_tokens) < 0:
            raise ValueError("token budgets must be >= 0 (0 = the default budget)")
