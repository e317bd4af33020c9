"""InferenceEngine and run_inference.py on the tiny model (CPU, seconds each).

Ranking and repair are checked twice: the pure functions on hand-made pass matrices, and the engine end to
end with the models' code and test writers replaced by fixed answers run in the real sandbox.
"""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from data.problems import Problem
from inference import InferenceConfig, InferenceEngine, InferenceResult, repair_feedback
from sandbox.matrix import describe_test
from models.base import CodeGeneration, TestsGeneration
from models.sanitize import sanitize_code, sanitize_tests
from reasoning.stages import STAGE_NAMES
from scoring.ranking import dual_agreement
from training.checkpoint_manager import CheckpointError, CheckpointManager

ROOT = Path(__file__).resolve().parents[1]
BUDGET = dict(stage_tokens=4, code_tokens=8, test_tokens=8, num_test_suites=2)
CLI_BUDGET = ["--stage-tokens", "4", "--code-tokens", "8", "--test-tokens", "8", "--num-test-suites", "2"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_pair):
    """A run folder with two checkpoints of tiny models: step 1 is the best, step 2 the latest. The
    discriminator has other weights than the generator (seed 1), so loading the wrong one shows."""
    from models.loading import build_tiny_model

    model, tokenizer = tiny_pair
    disc, _ = build_tiny_model(seed=1, tokenizer=tokenizer)
    run = tmp_path_factory.mktemp("run")
    manager = CheckpointManager(run)
    for step, reward in ((1, 0.9), (2, 0.1)):
        manager.save_checkpoint(step, model, disc, None, None, {"step": step}, tokenizer, tokenizer, score=reward)
    return run


@pytest.fixture(scope="module")
def engine(tiny_run, sandbox):
    with InferenceEngine.from_checkpoint(tiny_run / "checkpoints" / "step-000001", device="cpu", sandbox=sandbox,
                                         config=InferenceConfig(**BUDGET)) as e:
        yield e


def count_generate(monkeypatch, wrapper) -> list[int]:
    """Wrap the decoding loop (`models.base.decode`) for `wrapper`'s model; the returned list gets each
    call's batch size."""
    import models.base as base

    calls, original = [], base.decode

    def counted(model, batch, *args, **kwargs):
        if model is wrapper.model:
            calls.append(batch.input_ids.shape[0])
        return original(model, batch, *args, **kwargs)

    monkeypatch.setattr(base, "decode", counted)
    return calls


# ---------------------------------------------------------------- loading
def test_from_checkpoint_folder_and_run_folder(tiny_run, tiny_pair, sandbox):
    saved = dict(tiny_pair[0].named_parameters())
    for spec, which, expected in ((tiny_run / "checkpoints" / "step-000002", None, "step-000002"),
                                  (tiny_run, "best", "step-000001"), (tiny_run, "latest", "step-000002"),
                                  (f"{tiny_run}/best", None, "step-000001"),
                                  (tiny_run, None, "step-000001")):  # a run folder means its best, as in evaluation
        e = InferenceEngine.from_checkpoint(spec, which=which, device="cpu", dtype="float32", sandbox=sandbox)
        assert e.checkpoint.name == expected
        gen = dict(e.generator.model.named_parameters())
        disc = dict(e.discriminator.model.named_parameters())
        name = "model.embed_tokens.weight"
        assert torch.equal(gen[name], saved[name])
        assert not torch.equal(disc[name], saved[name])  # the discriminator's own weights


def test_bad_checkpoints_raise_one_line_errors(tiny_run, tmp_path, sandbox):
    with pytest.raises(CheckpointError, match="does not exist"):
        InferenceEngine.from_checkpoint(tmp_path / "missing")
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        InferenceEngine.from_checkpoint(tmp_path)  # neither a checkpoint nor a run folder
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run / "checkpoints" / "step-000001", broken)
    with open(broken / "generator" / "model.safetensors", "r+b") as f:
        f.seek(100)
        f.write(b"\0\1\2\3")
    with pytest.raises(CheckpointError, match="sha256") as info:
        InferenceEngine.from_checkpoint(broken, sandbox=sandbox)
    assert "\n" not in str(info.value)


# ---------------------------------------------------------------- the pipeline on the tiny model
def test_solve_problem_runs_five_stages_code_and_tests(engine, example_problems):
    problem = example_problems[0]
    result = engine.solve_problem(problem)
    assert isinstance(result, InferenceResult) and result.problem_id == problem.id
    assert list(result.chain) == list(STAGE_NAMES)
    assert result.attempts == 1 and len(result.candidates) == 1 and result.tests == []  # no tests needed
    assert result.execution is not None and result.execution.total == 6  # the problem's 6 tests ran
    assert result.passed is False  # a random model does not solve it
    assert {f"stage/{s}" for s in STAGE_NAMES} | {"code", "execute", "total"} <= set(result.timings)
    data = json.loads(json.dumps(result.to_dict()))
    assert data["execution"]["total"] == 6 and data["chain"].keys() == result.chain.keys()
    assert engine.solve_problem(problem, execute=False).execution is None


def test_batch_makes_one_generate_call_per_stage(engine, example_problems, monkeypatch):
    gen_calls = count_generate(monkeypatch, engine.generator)
    disc_calls = count_generate(monkeypatch, engine.discriminator)
    results = engine.solve_batch(example_problems[:3], execute=False)
    assert [r.problem_id for r in results] == [p.id for p in example_problems[:3]]
    assert gen_calls == [3] * (len(STAGE_NAMES) + 1)  # five stages + code, each one call over 3 problems
    assert disc_calls == []  # one greedy candidate: no ranking tests are written
    gen_calls.clear()
    results = engine.solve_batch(example_problems[:3], execute=False, num_candidates=2)
    assert gen_calls == [6] * (len(STAGE_NAMES) + 1)  # 3 problems x 2 sampled candidates per call
    assert disc_calls == [6]  # 3 problems x 2 test suites, one call
    assert all(len(r.candidates) == 2 for r in results)


def test_get_reasoning_chain_has_five_stages_and_runs_no_code(tiny_pair, example_problems, monkeypatch):
    e = InferenceEngine(tiny_pair, None, config=InferenceConfig(**BUDGET))
    calls = count_generate(monkeypatch, e.generator)
    chain = e.get_reasoning_chain(example_problems[0])
    assert list(chain) == list(STAGE_NAMES) and all(isinstance(v, str) for v in chain.values())
    assert len(calls) == len(STAGE_NAMES) and e._sandbox is None  # no code written, no sandbox started
    assert e.get_reasoning_chain(example_problems[0]) == chain  # greedy: the same chain again


# ---------------------------------------------------------------- ranking and repair, hand-made
def test_dual_agreement_picks_the_consensus_group():
    passes = np.array([[1, 0, 0, 0],   # alone, 1 test          -> 1 x 1
                       [1, 1, 1, 0],   # three codes agree on 3 -> 3 x 3
                       [1, 1, 1, 0],
                       [1, 1, 1, 1],   # passes the most tests, but alone -> 1 x 4
                       [1, 1, 1, 0]], dtype=bool)
    scores, chosen = dual_agreement(passes)
    assert chosen == 1 and scores.tolist() == [1, 9, 9, 4, 9]
    scores, chosen = dual_agreement(passes, ok=[True, False, False, True, True])  # two of the group malformed
    assert chosen == 3 and scores.tolist() == [1, 0, 0, 4, 3]
    tie = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=bool)  # 2 x 2 == 1 x 4: larger group
    assert dual_agreement(tie)[1] == 0
    assert dual_agreement(np.zeros((3, 0), dtype=bool), ok=[False, True, True])[1] == 1  # no tests: first ok
    assert dual_agreement(np.ones((2, 2), dtype=bool), ok=[False, False])[1] == 0


def test_repair_feedback_keeps_tests_other_codes_pass():
    passes = np.array([[1, 0, 0, 1],   # chosen: fails t1 (another code passes it) and t2 (nobody does)
                       [1, 1, 0, 0]], dtype=bool)
    assert repair_feedback(passes, [True, True], 0) == [1]
    assert repair_feedback(passes, [True, False], 0) == [1, 2]  # only one well-formed code: no evidence
    src = "from solution import *\n\ndef test_x():\n    y = 2\n    assert f(1) == y\n"
    assert describe_test(src, "test_x") == "test_x: assert f(1) == y"
    assert describe_test(src, "test_missing") == "test_missing"


# ---------------------------------------------------------------- ranking and repair through the engine
PROBLEM = Problem(
    id="reverse_words", title="Reverse words", entry_point="reverse_words",
    description="Return the words of `sentence` in reverse order, joined by single spaces.",
    reference_solution="def reverse_words(sentence):\n    return ' '.join(reversed(sentence.split()))\n",
    tests="from solution import *\n\ndef test_spaces():\n    assert reverse_words('  a   b ') == 'b a'\n\n"
          "def test_two():\n    assert reverse_words('a b') == 'b a'\n")
RIGHT = "def reverse_words(sentence):\n    return ' '.join(reversed(sentence.split()))\n"
SPLIT_ON_SPACE = "def reverse_words(sentence):\n    return ' '.join(reversed(sentence.split(' ')))\n"
IDENTITY = "def reverse_words(sentence):\n    return sentence\n"
T_TWO = "def test_two():\n    assert reverse_words('x y') == 'y x'\n"
T_EMPTY = "def test_empty():\n    assert reverse_words('') == ''\n"
T_SPACES = "def test_spaces():\n    assert reverse_words(' x  y ') == 'y x'\n"


def stub_models(monkeypatch, engine, codes, suites):
    """Replace the code and test writers: `codes(call, row, feedback)` gives each code; suites are fixed.
    Returns the list of feedbacks the code writer was called with."""
    seen = []

    def generate_code(problems, chains=None, num_samples=1, feedback=None, **kw):
        seen.append(feedback)
        return [[_code(codes(len(seen) - 1, i * num_samples + s, feedback)) for s in range(num_samples)]
                for i, _ in enumerate(problems)]

    def generate_tests(problems, contexts=None, num_samples=1, **kw):
        return [[_tests(suites[i % len(suites)], p.entry_point)] for i, p in enumerate(problems)]

    monkeypatch.setattr(engine.generator, "generate_code", generate_code)
    monkeypatch.setattr(engine.discriminator, "generate_tests", generate_tests)
    return seen


def _code(src):
    s = sanitize_code(f"```python\n{src}```", "reverse_words")
    return CodeGeneration("", [], [], src, code=s.code, ok=s.ok, reason=s.reason)


def _tests(src, entry_point):
    s = sanitize_tests(f"```python\n{src}```", entry_point)
    return TestsGeneration("", [], [], src, tests=s.tests, ok=s.ok, test_names=s.test_names)


def test_engine_ranks_by_agreement_without_the_hidden_tests(engine, monkeypatch):
    runs = []
    original = engine.sandbox.execute_tests
    monkeypatch.setattr(engine.sandbox, "execute_tests", lambda c, t, *a: runs.append(t) or original(c, t, *a))
    pool = [IDENTITY, SPLIT_ON_SPACE, RIGHT, RIGHT]
    stub_models(monkeypatch, engine, lambda call, row, fb: pool[row], [T_TWO + T_EMPTY, T_SPACES])
    result = engine.solve_problem(PROBLEM, num_candidates=4)
    # groups: identity {empty} 1x1, split(' ') {two, empty} 1x2, right {two, empty, spaces} 2x3
    assert [c.score for c in result.candidates] == [1, 2, 6, 6]
    assert result.chosen == 2 and result.code.strip() == RIGHT.strip() and result.passed is True
    assert len(result.tests) == 2
    assert runs.count(PROBLEM.tests) == 1  # the hidden tests ran once: on the final answer

    # the consensus is wrong when the discriminator misses the multi-space case: the hidden tests
    # would pick RIGHT, but they are not consulted
    pool = [SPLIT_ON_SPACE, SPLIT_ON_SPACE, SPLIT_ON_SPACE, RIGHT]
    stub_models(monkeypatch, engine, lambda call, row, fb: pool[row], [T_TWO + T_EMPTY])
    result = engine.solve_problem(PROBLEM, num_candidates=4)
    assert result.chosen == 0 and result.score == 8 and result.passed is False


def test_repair_loop_runs_max_attempts_and_stops_when_fixed(engine, monkeypatch):
    seen = stub_models(monkeypatch, engine, lambda call, row, fb: IDENTITY, [T_TWO + T_EMPTY])
    result = engine.solve_problem(PROBLEM, max_attempts=3)
    assert len(seen) == 3 and seen[0] is None  # the draft, then two repairs
    assert result.attempts == 3 and len(result.candidates) == 3 and len(result.feedback) == 2
    assert result.feedback[0] == ["test_two: assert reverse_words('x y') == 'y x'"]
    assert len(seen[2][0]) == 2  # the second repair sees both earlier attempts

    seen = stub_models(monkeypatch, engine, lambda call, row, fb: RIGHT if fb else IDENTITY, [T_TWO + T_EMPTY])
    result = engine.solve_problem(PROBLEM, max_attempts=4)
    assert len(seen) == 2 and result.attempts == 2  # fixed by the first repair: no more attempts
    assert result.chosen == 1 and result.score == 2 and result.passed is True


def test_problem_tests_feed_repair_only_when_switched_on(tiny_pair, sandbox, monkeypatch):
    for leak, attempts in ((False, 1), (True, 2)):
        e = InferenceEngine(tiny_pair, tiny_pair, sandbox=sandbox,
                            config=InferenceConfig(**BUDGET, repair_with_problem_tests=leak))
        seen = stub_models(monkeypatch, e, lambda call, row, fb: SPLIT_ON_SPACE if call == 0 else RIGHT, [T_TWO])
        result = e.solve_problem(PROBLEM, max_attempts=2)
        assert result.attempts == attempts and result.passed is (attempts == 2)
        if leak:
            assert seen[1][0][0][1] == ["test_spaces: assert reverse_words('  a   b ') == 'b a' (problem's test)"]


# ---------------------------------------------------------------- the command line
def run_cli(*args, timeout=180):
    return subprocess.run([sys.executable, str(ROOT / "run_inference.py"), *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def test_cli_reads_its_arguments_without_importing_torch():
    """`--help` and bad arguments answer at once: torch and transformers load only after the checks."""
    code = ("import sys; sys.argv = ['run_inference.py', '--help']; import run_inference\n"
            "try:\n    run_inference.parse_args()\nexcept SystemExit:\n    pass\n"
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip().endswith("[]"), out.stderr[-2000:]


def test_cli_json_batch(tiny_run):
    out = run_cli("--checkpoint", tiny_run, "--problems-file", "examples", "--limit", 2,
                  "--execute", "--json", "--device", "cpu", "--num-candidates", 2, *CLI_BUDGET)
    assert out.returncode == 0, out.stderr[-2000:]
    # the run folder's best, said with its step and why (these checkpoints were saved without validation)
    assert (f"checkpoint {tiny_run}/checkpoints/step-000001 (step 1): the best of {tiny_run} by training reward"
            in out.stderr)
    data = json.loads(out.stdout)
    assert data["checkpoint"].endswith("step-000001") and data["summary"]["problems"] == 2
    assert data["isolation"]["level"] in ("bwrap", "unshare", "process") and data["isolation"]["description"]
    for r in data["results"]:
        assert list(r["chain"]) == list(STAGE_NAMES) and len(r["candidates"]) == 2
        assert r["execution"]["total"] == 6 and r["passed"] is False


def test_cli_unisolated_sandbox_as_root_needs_the_flag(monkeypatch, capsys):
    import os

    import run_inference
    from sandbox import isolation

    if os.geteuid() != 0:
        pytest.skip("only refused as root")
    monkeypatch.setattr(isolation, "available_levels", lambda: ["process"])  # no bubblewrap, no unshare
    args = ["--model", "tiny", "--discriminator-model", "none", "--problems-file", "examples", "--limit", "1",
            "--execute", "--json", *CLI_BUDGET]
    assert run_inference.main(args) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--allow-unisolated" in err[0]
    assert run_inference.main(args + ["--allow-unisolated"]) == 0
    recorded = json.loads(capsys.readouterr().out)["isolation"]
    assert recorded["level"] == "process" and "running as root" in recorded["description"]


def test_cli_text_problem_is_readable():
    statement = "Return the sum of xs. " * 20  # longer than a file name may be (255): still read as text
    out = run_cli("--model", "tiny", "--discriminator-model", "none", "--problem", statement,
                  "--entry-point", "total", "--execute", *CLI_BUDGET)
    assert out.returncode == 0, out.stderr[-2000:]
    for heading in ("[Understand the problem]", "[Edge cases]", "[Algorithm]", "[Pseudocode]", "[Review]",
                    "[Code]", "[Tests] none to execute"):
        assert heading in out.stdout


def test_cli_chain_only_prints_the_stages_and_no_code():
    out = run_cli("--model", "tiny", "--problems-file", "examples", "--limit", 2, "--chain-only", *CLI_BUDGET)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.count("[Understand the problem]") == 2 and "[Review]" in out.stdout
    assert "[Code]" not in out.stdout and "reasoning only" in out.stdout
    data = json.loads(run_cli("--model", "tiny", "--problems-file", "examples", "--limit", 1, "--chain-only", "--json",
                              *CLI_BUDGET).stdout)
    assert list(data["results"][0]["chain"]) == list(STAGE_NAMES) and data["summary"]["problems"] == 1


@pytest.mark.parametrize("case", ["missing checkpoint", "corrupt checkpoint", "bad problem file", "no problem",
                                  "batch size 0", "negative limit", "discriminator with a checkpoint",
                                  "chain only with execute"])
def test_cli_errors_are_one_line(case, tiny_run, tmp_path):
    ckpt, problem = tiny_run / "checkpoints" / "step-000002", "examples"
    if case == "missing checkpoint":
        ckpt = tmp_path / "nowhere"
    elif case == "corrupt checkpoint":
        ckpt = tmp_path / "ckpt"
        shutil.copytree(tiny_run / "checkpoints" / "step-000002", ckpt)
        (ckpt / "discriminator" / "config.json").write_text("{}")
    elif case == "bad problem file":
        problem = tmp_path / "bad.json"
        problem.write_text('[{"id": "x", "title": "t"}]')
    args = ["--checkpoint", ckpt] + (["--problem", "text without an entry point"] if case == "no problem"
                                     else ["--problems-file", problem])
    args += {"batch size 0": ["--batch-size", 0], "negative limit": ["--limit", -1],
             "discriminator with a checkpoint": ["--discriminator-model", "tiny"],
             "chain only with execute": ["--chain-only", "--execute"]}.get(case, [])
    out = run_cli(*args)
    assert out.returncode != 0 and out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("run_inference.py: error:"), out.stderr
