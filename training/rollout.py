"""One training step's data for a group of problems: roll out both models, run the sandbox, score.

For each problem at stage s (docs/how-it-works.md):

    chain prefix   stages before s, greedy, cached per problem (given: `AdversarialTrainer.chain_prefixes`)
    generator      n samples of stage s (the action), then (optionally) the remaining stages and the code
    discriminator  m samples: a critique of stage s (optional), then tests written against that chain
    sandbox        codes × test modules, the reference solution × test modules (validity), codes × the
                   problem's own tests (one `run_matrix` call); mutants of the reference × test modules
    rewards        r_gen (n,) and r_disc (m,): `scoring.terms`, weighed by `training.rewards`

All samples of all problems of a step go through each `generate` call together (one call per stage).
Every function here takes what it uses (models, sandbox, config, problems, prefixes, mutants) and nothing else.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from data.problems import Problem
from models.base import CodeGeneration, Generation, TestsGeneration
from reasoning.stages import STAGES, Chain, chain_for_suite, format_chain, stage_index
from sandbox import ExecutionResult, Sandbox
from sandbox.matrix import build_test_matrix, collect_tests, feedback, ground_truth_matrix
from scoring.terms import discriminator_terms, generator_terms
from training.config import TrainingConfig
from training.rewards import discriminator_reward, generator_reward


@dataclass
class ProblemRollout:
    """Everything one problem contributed to a step."""

    problem: Problem
    stage: str
    prefix: Chain  # the cached stages before `stage`
    stage_samples: list[Generation]  # (n) the generator's actions at this stage
    chains: list[Chain]  # (n) prefix + sampled stage (+ remaining stages)
    codes: list[CodeGeneration]  # (n) final code of each chain
    critiques: list[Generation]  # (m) or empty when critiques are off
    tests: list[TestsGeneration]  # (m)
    attempts: list[int] = field(default_factory=list)  # (n) code attempts used per sample
    gen_rewards: np.ndarray | None = None  # (n,)
    disc_rewards: np.ndarray | None = None  # (m,)
    gen_terms: dict = field(default_factory=dict)
    disc_terms: dict = field(default_factory=dict)
    gt_results: list[ExecutionResult] = field(default_factory=list)  # (n) code i on the problem's tests
    validity: list[bool] = field(default_factory=list)  # (m) module j passes on the reference
    mutants: list[str] = field(default_factory=list)  # (K) non-equivalent mutants of the reference solution


def sample_generator(generator, cfg: TrainingConfig, problems: list[Problem], stage: str,
                     prefixes: list[Chain]) -> tuple[list, list, list]:
    """Stage-s samples after each problem's prefix, their chains and codes (one generate call per stage)."""
    n = cfg.group_size
    stage_groups = generator.generate_stage_output(problems, stage, prefixes, num_samples=n,
                                                   max_new_tokens=cfg.stage_tokens or None)
    chains = [[{**prefix, stage: g.text.strip()} for g in group] for prefix, group in zip(prefixes, stage_groups)]
    flat_problems = [p for p in problems for _ in range(n)]
    flat_chains = [c for group in chains for c in group]
    if cfg.rollout_remaining_stages:
        later = [s for s in STAGES[stage_index(stage) + 1:] if s.name in cfg.stages]
        generator.complete_chains(flat_problems, flat_chains, later, max_new_tokens=cfg.stage_tokens or None)
    codes = generator.generate_code(flat_problems, flat_chains, num_samples=1, max_new_tokens=cfg.code_tokens or None)
    code_groups = [[c[0] for c in codes[i * n:(i + 1) * n]] for i in range(len(problems))]
    return stage_groups, chains, code_groups


def sample_discriminator(discriminator, cfg: TrainingConfig, problems: list[Problem], stage: str,
                         chains: list[list[Chain]]) -> tuple[list, list]:
    """Critiques (optional) and test suites: sample j of a problem sees its generator chain j mod n."""
    m = cfg.num_test_samples
    flat_chains = [chain_for_suite(chains[i], j) for i in range(len(problems)) for j in range(m)]
    critiques, tests = discriminator_samples(discriminator, cfg, [p for p in problems for _ in range(m)], stage,
                                             flat_chains)
    groups = range(len(problems))  # (no critiques: an empty list each)
    return [critiques[i * m:(i + 1) * m] for i in groups], [tests[i * m:(i + 1) * m] for i in groups]


def discriminator_samples(discriminator, cfg: TrainingConfig, problems: list[Problem], stage: str, chains: list[Chain],
                          feedback: list[str] | None = None) -> tuple[list[Generation], list]:
    """One discriminator sample per (problem, chain) pair, all in one batched call per step: a critique of
    `stage` (when `critique` is on) and a test suite, each told its `feedback` text when given. Returns the
    critiques ([] when off) and the test suites."""
    contexts = [format_chain(c) for c in chains]
    critiques: list[Generation] = []
    if cfg.critique:
        outs = discriminator.generate_critique(
            problems, stage, [c[stage] for c in chains],
            [{k: v for k, v in c.items() if k != stage} for c in chains], num_samples=1,
            max_new_tokens=cfg.stage_tokens or None,
        )
        critiques = [o[0] for o in outs]
        contexts = [f"{ctx}A reviewer's critique of the \"{stage}\" step:\n{c.text.strip()}\n\n"
                    for ctx, c in zip(contexts, critiques)]
    if feedback:
        contexts = [ctx + fb for ctx, fb in zip(contexts, feedback)]
    outs = discriminator.generate_tests(problems, contexts, num_samples=1, max_new_tokens=cfg.test_tokens or None)
    return critiques, [o[0] for o in outs]


def run_sandbox(sandbox: Sandbox, rollout: ProblemRollout) -> list[list[ExecutionResult]]:
    """Rows are the codes, the reference, then the mutants; columns the test modules, then the problem's
    own tests (mutants do not run those: they are known to fail them). A code or test sample that failed
    sanitization runs as an empty module."""
    codes = [c.code if c.ok else "" for c in rollout.codes] + [rollout.problem.reference_solution]
    tests = [t.tests if t.ok else "def test_format_failure():\n    assert False\n" for t in rollout.tests]
    matrix = sandbox.run_matrix(codes, tests + [rollout.problem.tests])
    return matrix + (sandbox.run_matrix(rollout.mutants, tests) if rollout.mutants and tests else [])


def score(rollout: ProblemRollout, matrix: list[list[ExecutionResult]], config: TrainingConfig) -> None:
    """Fill the rollout's rewards and their terms from the sandbox matrix (`run_sandbox` layout)."""
    m, n = len(rollout.tests), len(rollout.codes)
    code_rows, reference_row, mutant_rows = matrix[:n], matrix[n], matrix[n + 1:]
    names = [t.test_names if t.ok else [] for t in rollout.tests]
    sources = [t.tests if t.ok else "" for t in rollout.tests]
    tm = build_test_matrix([row[:m] for row in code_rows + mutant_rows], names, reference_row[:m], sources)
    passes, mutant_passes = tm.passes[:n], tm.passes[n:]  # (n, T), (K, T)
    rollout.gt_results = [row[m] for row in code_rows]
    gt = ground_truth_matrix(rollout.gt_results, list(collect_tests(rollout.problem.tests)))
    code_ok = np.array([c.ok for c in rollout.codes], dtype=bool)
    test_ok = np.array([t.ok for t in rollout.tests], dtype=bool)
    rc = config.rewards
    rollout.gen_terms = generator_terms(passes, tm.valid, code_ok, gt, tm.keys)
    rollout.disc_terms = discriminator_terms(passes, tm.valid, tm.sample_ids, test_ok, rc.validity_floor, code_ok,
                                             tm.keys, mutant_passes)
    rollout.gen_rewards = generator_reward(rollout.gen_terms, rc)  # (each term computed once)
    rollout.disc_rewards = discriminator_reward(rollout.disc_terms, rc)
    rollout.validity = [bool(ok and reference_row[j].all_passed) for j, ok in enumerate(test_ok)]


def failing_tests(rollout: ProblemRollout, i: int, matrix: list[list[ExecutionResult]]) -> list[str]:
    """The ground-truth tests, then the valid tests, that code i fails, as `sandbox.matrix.feedback` shows them
    (feedback for another attempt)."""
    m = len(rollout.tests)
    failing = [(rollout.problem.tests, name, True) for name in matrix[i][m].failing_tests]
    failing += [(rollout.tests[j].tests, name, False) for j, valid in enumerate(rollout.validity) if valid
                for name in matrix[i][j].failing_tests]
    return feedback(failing)


def discriminator_feedback(rollout: ProblemRollout) -> list[str]:
    """What the discriminator is told before another attempt ("" = nothing: it keeps its tests): its tests
    were invalid, or they caught nothing although a well-formed code fails the problem's own tests (when
    every code is right or none is well formed there was nothing to catch)."""
    catchable = any(c.ok and not gt.all_passed for c, gt in zip(rollout.codes, rollout.gt_results))
    out = []
    for j, t in enumerate(rollout.tests):
        if not t.ok:
            out.append(f"Your earlier tests could not be used ({t.reason}). Write valid pytest functions.\n\n")
        elif not rollout.validity[j]:
            out.append("Some of your earlier tests failed on a correct solution: check expected values.\n\n")
        elif catchable and rollout.disc_terms["discrimination"][j] == 0:
            out.append("Your earlier tests caught no wrong solution: test harder edge cases.\n\n")
        else:
            out.append("")
    return out


def make_rollouts(generator, discriminator, sandbox: Sandbox, cfg: TrainingConfig, problems: list[Problem],
                  stage: str, prefixes: list[Chain], mutants: list[list[str]]) -> tuple[list[ProblemRollout], dict]:
    """Roll out, run the sandbox and score every problem of a step (`prefixes[i]`: problem i's stages
    before `stage`; `mutants[i]`: its reference's mutants), with up to `max_attempts` attempts: failing
    codes get their failing tests as feedback, and discriminator samples whose tests were invalid or caught
    nothing are told so. Returns the rollouts and timing/attempt metrics."""
    timing = {"time/generation_s": 0.0, "time/sandbox_s": 0.0}
    t = time.perf_counter()
    stage_groups, chains, code_groups = sample_generator(generator, cfg, problems, stage, prefixes)
    critique_groups, test_groups = sample_discriminator(discriminator, cfg, problems, stage, chains)
    timing["time/generation_s"] += time.perf_counter() - t
    rollouts = [
        ProblemRollout(problem=p, stage=stage, prefix=prefix, stage_samples=s,
                       chains=c, codes=codes, critiques=cr, tests=ts, attempts=[1] * len(codes), mutants=mut)
        for p, prefix, s, c, codes, cr, ts, mut in zip(problems, prefixes, stage_groups, chains, code_groups,
                                                       critique_groups, test_groups, mutants)
    ]
    executions = timeouts = 0
    timing["attempts/tests_rewritten"] = 0
    for attempt in range(1, cfg.max_attempts + 1):
        t = time.perf_counter()
        matrices = [run_sandbox(sandbox, r) for r in rollouts]
        for r, mtx in zip(rollouts, matrices):
            score(r, mtx, cfg)
        executions += sum(len(row) for mtx in matrices for row in mtx)
        timeouts += sum(res.timed_out for mtx in matrices for row in mtx for res in row)
        timing["time/sandbox_s"] += time.perf_counter() - t
        if attempt == cfg.max_attempts:
            break
        retry = [(k, i) for k, r in enumerate(rollouts) for i in range(len(r.codes))
                 if r.gen_rewards[i] < cfg.rewards.gen_pass_coef + cfg.rewards.gen_format_coef - 1e-9]
        # discriminator samples that are told something (invalid tests, nothing caught) write new ones
        redo = [(k, j, fb) for k, r in enumerate(rollouts) for j, fb in enumerate(discriminator_feedback(r)) if fb]
        if not retry and not redo:
            break
        t = time.perf_counter()
        if retry:
            feedback = [[(rollouts[k].codes[i].code or rollouts[k].codes[i].text,
                          failing_tests(rollouts[k], i, matrices[k]))] for k, i in retry]
            new = generator.generate_code([rollouts[k].problem for k, _ in retry],
                                          [rollouts[k].chains[i] for k, i in retry], 1, feedback=feedback,
                                          max_new_tokens=cfg.code_tokens or None)
            for (k, i), out in zip(retry, new):
                rollouts[k].codes[i] = out[0]
                rollouts[k].attempts[i] = attempt + 1
        timing["attempts/tests_rewritten"] += len(redo)
        if redo:
            critiques, tests = discriminator_samples(
                discriminator, cfg, [rollouts[k].problem for k, _, _ in redo], stage,
                [chain_for_suite(rollouts[k].chains, j) for k, j, _ in redo], [fb for _, _, fb in redo])
            for x, (k, j, _) in enumerate(redo):
                rollouts[k].tests[j] = tests[x]
                if critiques:
                    rollouts[k].critiques[j] = critiques[x]
        timing["time/generation_s"] += time.perf_counter() - t
    timing["attempts/mean"] = float(np.mean([a for r in rollouts for a in r.attempts]))
    timing["attempts/solved_after_retry"] = sum(
        int(a > 1 and r.gen_terms["pass_rate"][i] == 1.0) for r in rollouts for i, a in enumerate(r.attempts))
    timing["sandbox/executions"], timing["sandbox/timeouts"] = executions, timeouts
    return rollouts, timing
