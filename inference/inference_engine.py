"""`InferenceEngine`: solve new problems with a trained (or base) Generator, ranked and repaired with the
Discriminator's tests.

One call solves a batch of problems; every model step is ONE `generate` call over all problems and
candidates of the batch:

    chains    the five reasoning stages, stage by stage       greedy for one candidate, sampled for several
    code      one code per candidate
    tests     `num_test_suites` pytest suites from the Discriminator (only when ranking or repairing),
              written against the candidates' chains as in training
    rank      candidate codes x discriminator tests in the sandbox; CodeT dual agreement (`scoring.ranking`)
    repair    up to max_attempts - 1 times: the chosen code and the consensus-backed tests it fails
              (`repair_feedback`) give a new code; it joins the candidates and all are ranked again
    execute   the problem's own tests run on the final answer only, to report the result

The problem's own tests and reference solution never choose or shape the answer, unless
`repair_with_problem_tests` is switched on: then the problem's tests join the discriminator's in ranking
and repair feedback. The hidden tests then leak into the answer and the reported result is no longer a
fair score; use it only when the tests are public examples, or when there is no discriminator.
"""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from data.problems import Problem
from inference.config import InferenceConfig
from models import LLMDiscriminator, LLMGenerator, load_model
from models.base import TestsGeneration
from reasoning.stages import STAGES, Chain, chain_for_suite
from sandbox import ExecutionResult, Sandbox, SandboxConfig
from sandbox.matrix import FEEDBACK_TESTS, feedback, module_columns, unique_columns
from scoring.ranking import dual_agreement
from training.checkpoint_manager import CheckpointError, load_checkpoint, read_resolved

logger = logging.getLogger(__name__)

PROBLEM_TESTS = -1  # results-cache column of the problem's own tests


@dataclass
class Candidate:
    """One code the generator wrote for a problem."""

    code: str  # sanitized, runnable source ("" when not ok)
    ok: bool  # parses and defines the entry point
    attempt: int  # 1 = first draft, 2.. = repairs
    chain_index: int  # which of the problem's chains it was written after
    reason: str = ""  # why it is not ok
    score: float = 0.0  # dual-agreement score of its group: (#codes in group) x (#tests the group passes)
    passed_tests: list[str] = field(default_factory=list)  # tests it passes: "suite2::test_x" ("problem::test_y")


@dataclass
class InferenceResult:
    """The answer to one problem and how it was reached. `to_dict()` is JSON-able."""

    problem_id: str
    chain: Chain  # reasoning stage name -> text, in stage order (the chain the answer was written after)
    code: str  # the answer ("" when no candidate was well formed)
    code_ok: bool  # the answer parses and defines the entry point
    tests: list[str]  # the discriminator's test suites used to rank and repair (sanitized pytest sources)
    execution: ExecutionResult | None  # the problem's own tests on the answer; None when not executed
    attempts: int  # code attempts made (1 = no repair)
    chosen: int  # index of the answer in `candidates`
    score: float  # its dual-agreement score (0 without discriminator tests)
    candidates: list[Candidate]
    timings: dict[str, float]  # seconds per phase, the batch's wall time divided by its size
    feedback: list[list[str]] = field(default_factory=list)  # failing tests given to each repair

    @property
    def passed(self) -> bool | None:
        """Whether the answer passed all of the problem's tests; None when they were not run."""
        return None if self.execution is None else self.execution.all_passed

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def repair_feedback(passes, ok, chosen: int) -> list[int]:
    """The tests to show the generator when repairing code `chosen`: the ones it fails that some other
    well-formed candidate passes (a test no code passes may itself be wrong), most-passed first. When all
    well-formed codes behave alike there is no evidence either way, and every failing test is returned."""
    passes = np.asarray(passes, dtype=bool).reshape(len(ok), -1)
    rows = passes[np.asarray(ok, dtype=bool)]
    failing = [t for t in range(passes.shape[1]) if not passes[chosen, t]]
    if len({r.tobytes() for r in rows}) <= 1:
        return failing
    support = rows.sum(axis=0)
    return sorted((t for t in failing if support[t] > 0), key=lambda t: (-support[t], t))


@dataclass
class _Work:
    """One problem's state inside a batch."""

    problem: Problem
    chains: list[Chain]
    candidates: list[Candidate]
    suites: list[TestsGeneration]
    columns: list[tuple[int, str]]  # discriminator tests: (suite, name), deduplicated by test body
    results: dict = field(default_factory=dict)  # (code, suite or PROBLEM_TESTS) -> ExecutionResult
    passes: np.ndarray | None = None  # (n, T) candidate i passes column t
    chosen: int = 0
    history: list[tuple[str, list[str]]] = field(default_factory=list)  # repairs: (code, failures)
    done: bool = False

    def source(self, j: int) -> str:
        """The pytest source of column group j: a discriminator suite, or the problem's own tests."""
        return self.problem.tests if j == PROBLEM_TESTS else self.suites[j].tests


class InferenceEngine:
    """Solves problems with a Generator, ranking and repairing with a Discriminator when there is one.

    generator / discriminator: a model name ("default", "tiny", a Hugging Face id, a folder), a loaded
    `(model, tokenizer)` pair, or an `LLMGenerator` / `LLMDiscriminator`; discriminator None means no
    discriminator (no ranking tests), and the generator's name shares its weights. `sandbox`: a `Sandbox`
    to use (the engine starts its own on first need otherwise, with `sandbox_config`). Use as a context
    manager or call `close()`."""

    def __init__(self, generator="default", discriminator=None, device="auto", dtype="auto",
                 sandbox: Sandbox | None = None, config: InferenceConfig | None = None,
                 sandbox_config: SandboxConfig | None = None):
        self.config = config or InferenceConfig()
        self.sandbox_config = sandbox_config or SandboxConfig()

        def pair(spec):  # a loaded (model, tokenizer) pair, or one loaded from a name
            return tuple(spec) if isinstance(spec, (tuple, list)) else load_model(spec, device, dtype)

        gen_pair = None if isinstance(generator, LLMGenerator) else pair(generator)
        self.generator = generator if gen_pair is None else LLMGenerator(gen_pair)
        if discriminator is None or isinstance(discriminator, LLMDiscriminator):
            self.discriminator = discriminator
        elif isinstance(discriminator, str) and discriminator == generator and gen_pair is not None:
            self.discriminator = LLMDiscriminator(gen_pair)  # same weights: nothing trains at inference
        else:
            self.discriminator = LLMDiscriminator(pair(discriminator))
        self._sandbox, self._own_sandbox = sandbox, sandbox is None
        self.checkpoint: Path | None = None  # set by from_checkpoint

    @classmethod
    def from_checkpoint(cls, path, which: str | None = None, device="auto", dtype="auto",
                        sandbox: Sandbox | None = None, config: InferenceConfig | None = None,
                        verify: bool = True, sandbox_config: SandboxConfig | None = None) -> InferenceEngine:
        """Both trained models from a checkpoint folder, or a run folder and `which` ("best" or "latest", also
        spelled "runs/x/best"; None: the run's default, `run_default`). The manifest is verified first (`verify`: sha256 sums too).
        Raises `CheckpointError` with a one-line reason."""
        def read(folder: Path) -> InferenceEngine:
            ckpt = load_checkpoint(folder, verify=verify)
            for part in (ckpt.generator_dir, ckpt.discriminator_dir):
                if not (part / "tokenizer_config.json").is_file():
                    raise CheckpointError(f"{part} has no tokenizer (tokenizer_config.json): save it with the model")
            try:
                engine = cls(str(ckpt.generator_dir), str(ckpt.discriminator_dir), device, dtype, sandbox, config,
                             sandbox_config)
            except Exception as e:  # a damaged or foreign folder: transformers raises many kinds
                raise CheckpointError(f"{ckpt.path}: cannot load the models: {str(e).splitlines()[0]}") from e
            engine.checkpoint = ckpt.path
            logger.info("inference engine from checkpoint %s (step %s)", ckpt.path, ckpt.step)
            return engine

        return read_resolved(path, which, "default", read)  # retried once if a trainer prunes it meanwhile

    @property
    def sandbox(self) -> Sandbox:
        if self._sandbox is None:
            self._sandbox = Sandbox(self.sandbox_config)
        return self._sandbox

    @property
    def isolation(self) -> dict | None:
        """The sandbox's isolation in force (`Sandbox.isolation_record`); None before the engine has started its
        sandbox (no code run yet) and after `close()`."""
        return self._sandbox.isolation_record() if self._sandbox is not None else None

    def close(self):
        if self._own_sandbox and self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def __enter__(self) -> InferenceEngine:
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------ public interface
    def get_reasoning_chain(self, problem: Problem | list[Problem]) -> Chain | list[Chain]:
        """The five stages, greedy, without writing or running code (a list of problems: one call per stage)."""
        batch = isinstance(problem, (list, tuple))
        chains = [c[0] for c in self._chains(list(problem) if batch else [problem], 1, self.config, defaultdict(float))]
        return chains if batch else chains[0]

    def solve_problem(self, problem: Problem, execute: bool = True, num_candidates: int | None = None,
                      max_attempts: int | None = None) -> InferenceResult:
        """Solve one problem (`solve_batch` of one); None takes the value from `self.config` (default 1)."""
        return self.solve_batch([problem], execute, num_candidates, max_attempts)[0]

    def solve_batch(self, problems: list[Problem], execute: bool = True, num_candidates: int | None = None,
                    max_attempts: int | None = None) -> list[InferenceResult]:
        """Solve problems together: one `generate` call per stage, for the codes, for the tests and per
        repair round, over all problems and candidates. `execute` runs each problem's own tests on its
        final answer (problems without tests are not executed)."""
        overrides = {"num_candidates": num_candidates, "max_attempts": max_attempts}
        cfg = replace(self.config, **{k: v for k, v in overrides.items() if v is not None})
        problems = list(problems)
        if not problems:
            return []
        timings: dict[str, float] = defaultdict(float)
        start = time.perf_counter()
        n = cfg.num_candidates
        n_chains = 1 if cfg.shared_chain else n
        # reasoning: one generate call per stage
        chains = self._chains(problems, n_chains, cfg, timings)
        # codes: one generate call
        t = time.perf_counter()
        flat = [(k, c) for k in range(len(problems)) for c in range(n_chains)]
        outs = self.generator.generate_code([problems[k] for k, _ in flat], [chains[k][c] for k, c in flat],
                                            num_samples=n // n_chains,
                                            **self._sampling(cfg, n > 1, cfg.code_tokens))
        candidates = [[] for _ in problems]
        for (k, c), group in zip(flat, outs):
            candidates[k] += [Candidate(g.code, g.ok, 1, c, g.reason) for g in group]
        timings["code"] += time.perf_counter() - t
        # discriminator tests: one generate call, only when they are used
        t = time.perf_counter()
        suites = [[] for _ in problems]
        if self.discriminator is not None and (n > 1 or cfg.max_attempts > 1):
            m = cfg.num_test_suites
            outs = self.discriminator.generate_tests(
                [p for p in problems for _ in range(m)],
                [chain_for_suite(chains[k], j) for k in range(len(problems)) for j in range(m)],
                num_samples=1, **self._sampling(cfg, m > 1, cfg.test_tokens))
            suites = [[o[0] for o in outs[k * m:(k + 1) * m]] for k in range(len(problems))]
        timings["tests"] += time.perf_counter() - t
        works = [_Work(p, ch, cands, s, _columns(s, p if cfg.repair_with_problem_tests else None))
                 for p, ch, cands, s in zip(problems, chains, candidates, suites)]
        # rank, then repair the chosen code from the tests it fails, up to max_attempts
        for attempt in range(1, cfg.max_attempts + 1):
            t = time.perf_counter()
            self._rank(works)
            timings["rank"] += time.perf_counter() - t
            if attempt == cfg.max_attempts or not self._repair(works, cfg, attempt + 1, timings):
                break
        # the problem's own tests on the final answers, to report them
        t = time.perf_counter()
        if execute:
            self._run([(w, w.candidates[w.chosen].code, PROBLEM_TESTS) for w in works if w.problem.tests.strip()])
        timings["execute"] += time.perf_counter() - t
        timings["total"] = time.perf_counter() - start
        per_problem = {k: v / len(problems) for k, v in timings.items()}
        return [self._result(w, execute, per_problem) for w in works]

    # ------------------------------------------------------------------ steps
    def _sampling(self, cfg: InferenceConfig, sampled: bool, max_new_tokens: int) -> dict:
        """Per-call overrides of the wrappers' sampling settings: greedy, or sampled at the temperature."""
        return dict(do_sample=sampled, temperature=cfg.temperature, top_p=cfg.top_p,
                    max_new_tokens=max_new_tokens or None, seed=None if cfg.seed < 0 else cfg.seed)

    def _chains(self, problems: list[Problem], per_problem: int, cfg: InferenceConfig, timings) -> list[list[Chain]]:
        """`per_problem` chains per problem (sampled when more than one), one generate call per stage."""
        chains = [[{} for _ in range(per_problem)] for _ in problems]
        flat_problems = [p for p in problems for _ in range(per_problem)]
        flat_chains = [c for group in chains for c in group]
        for stage in STAGES:  # (a stage at a time, to time each)
            t = time.perf_counter()
            self.generator.complete_chains(flat_problems, flat_chains, [stage],
                                           **self._sampling(cfg, per_problem > 1, cfg.stage_tokens))
            timings[f"stage/{stage.name}"] += time.perf_counter() - t
        return chains

    def _run(self, jobs: list[tuple[_Work, str, int]]) -> None:
        """Run (work, code, suite) jobs not yet in their work's cache, spread over the sandbox workers."""
        todo = list({(id(w), code, j): (w, code, j) for w, code, j in jobs if (code, j) not in w.results}.values())
        if not todo:
            return
        results = self.sandbox.execute_pairs([(code, w.source(j)) for w, code, j in todo])
        for (w, code, j), result in zip(todo, results):
            w.results[(code, j)] = result

    def _rank(self, works: list[_Work]) -> None:
        """Every well-formed candidate against every test column's source (cached), then dual agreement."""
        self._run([(w, c.code, j) for w in works for c in w.candidates if c.ok for j in {j for j, _ in w.columns}])
        for w in works:
            w.passes = np.array([[c.ok and w.results[(c.code, j)].passed_test(name) for j, name in w.columns]
                                 for c in w.candidates], dtype=bool).reshape(len(w.candidates), len(w.columns))
            scores, w.chosen = dual_agreement(w.passes, [c.ok for c in w.candidates])
            for c, score, row in zip(w.candidates, scores, w.passes):
                c.score = float(score)
                c.passed_tests = [f"{'problem' if j == PROBLEM_TESTS else f'suite{j}'}::{name}"
                                  for (j, name), p in zip(w.columns, row) if p]

    def _failures(self, w: _Work, i: int) -> list[str]:
        """What candidate i is told to fix: its format failure and the consensus-backed tests it fails."""
        c = w.candidates[i]
        failing = (w.columns[t] for t in repair_feedback(w.passes, [c.ok for c in w.candidates], i))
        failures = feedback((w.source(j), name, j == PROBLEM_TESTS) for j, name in failing)
        return (([] if c.ok else [f"the code could not be used: {c.reason}"]) + failures)[:FEEDBACK_TESTS]

    def _repair(self, works: list[_Work], cfg: InferenceConfig, attempt: int, timings) -> bool:
        """One repair round, one generate call for all problems whose chosen code still fails: the latest
        attempt (the chosen code at first) is rewritten with every earlier attempt's failures as feedback
        (Self-Debugging, Chen et al., 2023). Returns False when no problem needs it."""
        latest = {id(w): w.chosen if not w.history else len(w.candidates) - 1 for w in works}
        todo = []
        for w in works:
            if w.done or not self._failures(w, w.chosen):
                w.done = True
                continue
            i = latest[id(w)] if self._failures(w, latest[id(w)]) else w.chosen
            w.history.append((w.candidates[i].code or "(no usable code)", self._failures(w, i)))
            todo.append((w, w.candidates[i].chain_index))
        if not todo:
            return False
        t = time.perf_counter()
        outs = self.generator.generate_code([w.problem for w, _ in todo], [w.chains[c] for w, c in todo],
                                            num_samples=1, feedback=[list(w.history) for w, _ in todo],
                                            **self._sampling(cfg, cfg.num_candidates > 1, cfg.code_tokens))
        for (w, chain_index), out in zip(todo, outs):
            w.candidates.append(Candidate(out[0].code, out[0].ok, attempt, chain_index, out[0].reason))
        timings["repair"] += time.perf_counter() - t
        logger.info("repair attempt %d for %d of %d problems", attempt, len(todo), len(works))
        return True

    def _result(self, w: _Work, execute: bool, timings: dict) -> InferenceResult:
        chosen = w.candidates[w.chosen]
        return InferenceResult(
            problem_id=w.problem.id, chain=dict(w.chains[chosen.chain_index]), code=chosen.code,
            code_ok=chosen.ok, tests=[s.tests for s in w.suites if s.ok],
            execution=w.results.get((chosen.code, PROBLEM_TESTS)) if execute else None,
            attempts=max(c.attempt for c in w.candidates), chosen=w.chosen, score=chosen.score,
            candidates=w.candidates, timings=dict(timings), feedback=[f for _, f in w.history])


def _columns(suites: list[TestsGeneration], problem: Problem | None = None) -> list[tuple[int, str]]:
    """The tests of the well-formed suites as (suite, name), then, when `problem` is given, its own tests
    as (PROBLEM_TESTS, name). A test whose body repeats an earlier one's (`sandbox.matrix.collect_tests`
    keys) counts once, so copies cannot outvote distinct tests."""
    modules = [(j, s.test_names, s.tests) for j, s in enumerate(suites) if s.ok]
    if problem is not None and problem.tests.strip():
        modules.append((PROBLEM_TESTS, None, problem.tests))  # every test of the source
    columns, keys = module_columns(modules)
    first = unique_columns(keys, np.ones(len(columns), dtype=bool))
    return [column for column, keep in zip(columns, first) if keep]
