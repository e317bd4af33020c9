"""One model on problems, measured per problem: what the evaluation (`python -m evaluation`) compares and
what the trainer's validation slice scores checkpoints by.

`evaluate_problems` runs the five greedy reasoning stages (or none), a greedy code, `num_samples` sampled
codes and `num_test_suites` discriminator test suites per problem, one batched decoding per step of a
batch (the greedy and the sampled codes together; each model's prompts reuse the keys and values of its
previous call's, `LLMBase.reusing_prompts`), and the sandbox on all of them; `ProblemResult` holds what it
measured, `measures` turns results into the reported numbers (pass@k, ranked@1, valid-test rate, mutation
score, test diversity, ...).
"""
from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from reasoning.stages import STAGES
from sandbox.matrix import build_test_matrix, unique_columns
from scoring.metrics import reasoning_coherence
from scoring.mutation import MUTATOR_VERSION, nonequivalent_mutants
from scoring.pass_at_k import pass_at_k
from scoring.ranking import dual_agreement
from scoring.terms import discriminator_terms
from scoring.test_diversity import compute_test_diversity

CHAINS = ("full", "none")
# What `evaluate_problems` measures and how it decodes, with the mutants' version: a report of another version
# does not pair with this one's (`python -m evaluation --reuse` refuses it). 2: prefill without padding, prompts
# reused within a batch, the greedy code decoded with the sampled ones, no mutant that times out (2026-12-07).
EVAL_VERSION = f"2.{MUTATOR_VERSION}"


@dataclass
class EvalSettings:
    """How each model is run on each problem (defaults: the held-out evaluation, 11 min per model on 2 CPU cores)."""

    chain: str = "full"  # "full": the five greedy reasoning stages before the code; "none": the code asked directly
    num_samples: int = 4  # sampled codes per problem for pass@k and ranked@1 (0 = greedy code only)
    num_test_suites: int = 2  # discriminator test suites per problem (greedy when 1; 0 = no discriminator measures)
    temperature: float = 0.7  # sampling temperature of the sampled codes and test suites
    top_p: float = 0.95  # nucleus mass when sampling
    stage_tokens: int = 32  # max new tokens of each reasoning stage
    code_tokens: int = 256  # max new tokens of a code
    test_tokens: int = 256  # max new tokens of a test suite
    mutants_per_problem: int = 8  # non-equivalent mutants of each reference for the mutation score
    seed: int = 0  # seeds every sampling call

    def __post_init__(self):
        if self.chain not in CHAINS:
            raise ValueError(f"chain must be one of {CHAINS}, got {self.chain!r}")
        if min(self.num_samples, self.num_test_suites, self.mutants_per_problem) < 0:
            raise ValueError("num_samples, num_test_suites and mutants_per_problem must be >= 0")
        if min(self.stage_tokens, self.code_tokens, self.test_tokens) < 1:
            raise ValueError("token budgets must be >= 1")
        if not (self.temperature > 0 and 0 < self.top_p <= 1):
            raise ValueError("temperature must be > 0 and top_p in (0, 1]")


@dataclass
class ProblemResult:
    """One model on one problem."""

    id: str
    greedy_passed: bool  # the greedy code passes all of the problem's tests
    greedy_ok: bool  # the greedy code parses and defines the entry point
    n: int  # sampled codes
    c: int  # sampled codes that pass
    ranked_passed: bool | None = None  # the discriminator-ranked sampled code passes (None: no ranking)
    num_tests: float | None = None  # tests per suite (None: no discriminator)
    valid_test_rate: float | None = None  # mean over suites of valid tests / tests (a malformed suite: 0)
    mutation_score: float | None = None  # mean over suites of the share of mutants killed (None: no mutants)
    test_diversity: float | None = None  # `compute_test_diversity` score of the problem's suites
    coherence: float | None = None  # `reasoning_coherence` of the chain and the greedy code (None: no chain)


def _pass_at(k: int):
    return lambda r: pass_at_k(r.n, r.c, k) if r.n >= k else None


def measures(num_samples: int) -> dict:
    """Measure name -> function of a `ProblemResult` giving a float, or None where it is undefined."""
    out = {"pass@1 (greedy)": lambda r: float(r.greedy_passed)}
    if num_samples:
        out["pass@1 (sampled)"] = _pass_at(1)
        out.update({f"pass@{k}": _pass_at(k) for k in (2, 4, 8, 16) if k <= num_samples})
    out.update({
        "ranked@1": lambda r: None if r.ranked_passed is None else float(r.ranked_passed),
        "valid test rate": lambda r: r.valid_test_rate,
        "mutation score": lambda r: r.mutation_score,
        "test diversity": lambda r: r.test_diversity,
        "tests per suite": lambda r: r.num_tests,
        "well-formed": lambda r: float(r.greedy_ok),
    })
    return out


def evaluate_problems(generator, discriminator, problems, sandbox, settings: EvalSettings, batch_size: int = 8,
                      desc: str = "evaluating", mutants: dict | None = None) -> list[ProblemResult]:
    """Run one model (an `LLMGenerator`, and an `LLMDiscriminator` or None) on `problems`; one batched
    decoding per stage, for the greedy and sampled codes together, and for the test suites of a batch.
    `mutants`: problem id -> mutant sources (made here, and cached on disk, when missing)."""
    mutants = {} if mutants is None else mutants
    results = []
    for start in tqdm(range(0, len(problems), batch_size), desc=desc, unit="batch", leave=False):
        batch = problems[start:start + batch_size]
        with generator.reusing_prompts(), discriminator.reusing_prompts() if discriminator else nullcontext():
            results += _evaluate_batch(generator, discriminator, batch, sandbox, settings, mutants)
    return results


def _evaluate_batch(generator, discriminator, batch, sandbox, settings: EvalSettings,
                    mutants: dict) -> list[ProblemResult]:
    """`evaluate_problems` on one batch, each model's prompts reused from call to call (`reusing_prompts`)."""
    sample = dict(temperature=settings.temperature, top_p=settings.top_p, seed=settings.seed)
    n, m = settings.num_samples, settings.num_test_suites if discriminator is not None else 0
    results = []
    chains = [{} for _ in batch]
    if settings.chain == "full":  # the five stages, greedy, one batched call per stage
        generator.complete_chains(batch, chains, STAGES, do_sample=False, max_new_tokens=settings.stage_tokens,
                                  seed=settings.seed)
    if n:  # the greedy code and the sampled ones in one decoding
        codes = generator.generate_code(batch, chains, n, greedy_first=True, max_new_tokens=settings.code_tokens,
                                        **sample)
        greedy, sampled = [c[:1] for c in codes], [c[1:] for c in codes]
    else:
        greedy = generator.generate_code(batch, chains, 1, do_sample=False, max_new_tokens=settings.code_tokens)
        sampled = [[] for _ in batch]
    suites = (discriminator.generate_tests(batch, chains, m, max_new_tokens=settings.test_tokens,
                                           do_sample=m > 1, **sample) if m else [[] for _ in batch])
    # sandbox: codes on the problem's tests; reference and mutants on the suites; sampled codes on the suites
    pairs, where = [], []
    for k, p in enumerate(batch):
        if m and settings.mutants_per_problem and p.id not in mutants:
            mutants[p.id] = [mu.source for mu in nonequivalent_mutants(p, sandbox, settings.mutants_per_problem)]
        codes = [c.code if c.ok else "" for c in greedy[k] + sampled[k]]
        modules = [s.tests if s.ok else "def test_format_failure():\n    assert False\n" for s in suites[k]]
        rows = [p.reference_solution, *mutants.get(p.id, [])] + (codes[1:] if n > 1 else []) if m else []
        where.append((len(pairs), len(codes), len(rows), len(modules)))
        pairs += [(code, p.tests) for code in codes] + [(row, mod) for row in rows for mod in modules]
    outcomes = sandbox.execute_pairs(pairs)
    for k, p in enumerate(batch):
        at, n_codes, n_rows, n_mod = where[k]
        gt = outcomes[at:at + n_codes]
        grid = [outcomes[at + n_codes + r * n_mod: at + n_codes + (r + 1) * n_mod] for r in range(n_rows)]
        passed = [g.all_passed and c.ok for g, c in zip(gt, greedy[k] + sampled[k])]
        result = ProblemResult(
            id=p.id, greedy_passed=passed[0], greedy_ok=greedy[k][0].ok, n=n, c=int(sum(passed[1:])),
            coherence=reasoning_coherence(chains[k], greedy[k][0].code, p).score if chains[k] else None)
        if m:
            names = [s.test_names if s.ok else [] for s in suites[k]]
            sources = [s.tests if s.ok else "" for s in suites[k]]
            n_mut = len(mutants.get(p.id, []))
            tm = build_test_matrix(grid[1:], names, grid[0], sources)  # rows: mutants, then sampled codes
            mutant_passes, code_passes = tm.passes[:n_mut], tm.passes[n_mut:]
            code_ok = np.array([c.ok for c in sampled[k]], dtype=bool) if n > 1 else np.zeros(0, dtype=bool)
            terms = discriminator_terms(code_passes, tm.valid, tm.sample_ids, np.array([s.ok for s in suites[k]]),
                                        1, code_ok, tm.keys, mutant_passes)
            result.num_tests = float(terms["num_tests"].mean())
            result.valid_test_rate = float(terms["valid_frac"].mean())
            result.mutation_score = float(terms["mutation_score"].mean()) if n_mut else None
            result.test_diversity = compute_test_diversity(sources, p.entry_point).score  # "" (malformed): no tests
            if n > 1:  # the hidden tests never choose: rank by the discriminator's tests alone
                ranking = code_passes[:, unique_columns(tm.keys, np.ones(len(tm.keys), dtype=bool))]
                chosen = dual_agreement(ranking, code_ok)[1]
                result.ranked_passed = passed[1 + chosen]
        results.append(result)
    return results
