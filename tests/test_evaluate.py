"""`python -m evaluation`: paired comparison with bootstrap intervals, the measures, checkpoints as models,
the training-overlap refusal, bad input."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from evaluation.evaluate import compare, main, markdown_report, paired_bootstrap
from scoring.measure import EvalSettings, evaluate_problems

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--stage-tokens", "6", "--code-tokens", "8", "--test-tokens", "8", "--mutants", "2"]


def test_paired_bootstrap_by_hand():
    a = np.array([0.0, 1.0, 0.0, 1.0])
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)
    assert paired_bootstrap(a, a + 0.25) == pytest.approx((0.25, 0.25, 0.25))
    rng = np.random.default_rng(1)
    base = rng.random(200)
    diff, low, high = paired_bootstrap(base, base + 0.1 + 0.05 * rng.standard_normal(200))
    assert 0.08 < low < diff < high < 0.12  # a consistent gain: the interval excludes 0
    assert 0.01 < high - low < 0.02  # ≈ 2 · 1.96 · 0.05 / √200, the normal-theory width
    diff, low, high = paired_bootstrap(base, rng.random(200))  # unrelated values: the interval spans 0
    assert low < 0 < high


def result(pid, greedy, c, ranked, valid, mutation):
    return dict(id=pid, greedy_passed=greedy, greedy_ok=True, n=2, c=c, ranked_passed=ranked, num_tests=3.0,
                valid_test_rate=valid, mutation_score=mutation, test_diversity=0.5, coherence=None)


def test_compare_pairs_by_problem_and_skips_undefined():
    base = {"model": "base", "seconds": 60, "per_problem": [result("a", False, 0, False, 0.5, None),
                                                           result("b", True, 1, True, 0.5, 0.5)]}
    trained = {"model": "trained", "seconds": 60, "per_problem": [result("a", True, 2, True, 1.0, 1.0),
                                                                 result("b", True, 2, True, 0.5, 1.0)]}
    table = compare([base, trained], num_samples=2)
    greedy = table["pass@1 (greedy)"]
    assert [r["mean"] for r in greedy] == [0.5, 1.0] and greedy[1]["diff"] == 0.5
    assert table["pass@1 (sampled)"][0]["mean"] == 0.25 and table["pass@2"][1]["mean"] == 1.0
    mutation = table["mutation score"]  # undefined on problem a for the base: only b is compared
    assert mutation[0]["problems"] == 1 and mutation[1]["diff"] == 0.5
    text = markdown_report([base, trained], table, "t")
    assert "| pass@1 (greedy) (n=2) | 0.500 | 1.000 (Δ +0.500 [+0.000, +1.000]) |" in text


def test_a_pooled_run_is_its_seeds_mean_per_problem():
    base = {"model": "base", "seconds": 60, "per_problem": [result("a", False, 0, False, 0.5, 0.5),
                                                           result("b", False, 0, False, 0.5, 0.5)]}
    seed1 = {"model": "s1", "seconds": 60, "per_problem": [result("a", True, 2, True, 1.0, 1.0),
                                                          result("b", False, 0, False, 0.5, None)]}
    seed2 = {"model": "s2", "seconds": 60, "per_problem": [result("a", False, 1, True, 0.0, 0.5),
                                                          result("b", True, 2, False, 1.0, 1.0)]}
    table = compare([base, {"model": "pooled", "seconds": 120, "seeds": [seed1, seed2]}], num_samples=2)
    greedy = table["pass@1 (greedy)"][1]  # per problem (1 + 0) / 2 and (0 + 1) / 2
    assert greedy["mean"] == 0.5 and greedy["diff"] == 0.5 and greedy["ci_low"] == greedy["ci_high"] == 0.5
    assert table["valid test rate"][1]["mean"] == pytest.approx(0.625)  # a: 0.5, b: 0.75
    mutation = table["mutation score"]  # undefined for seed 1 on b: b leaves the measure for the pool
    assert mutation[0]["problems"] == mutation[1]["problems"] == 1 and mutation[1]["mean"] == 0.75


def test_two_models_one_report(tmp_path, capsys):
    code = main(["--models", "tiny", "tiny", "--problems", "examples", "--limit", "2", "--num-samples", "2",
                 "--num-test-suites", "2", "--out", str(tmp_path), *TINY])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [m["model"] for m in report["models"]] == ["tiny", "tiny"]
    first = report["models"][0]["per_problem"]
    assert [p["n"] for p in first] == [2, 2] and all(p["valid_test_rate"] is not None for p in first)
    # the same model twice with the same seed: every paired difference is exactly 0
    assert all(rows[1]["diff"] == 0 for rows in report["measures"].values())
    assert "pass@2" in (tmp_path / "report.md").read_text() and "mutation score" in capsys.readouterr().out

    # --reuse: the same settings take the earlier per-problem results; other settings are refused
    again = ["--models", "tiny", "--problems", "examples", "--limit", "2", "--num-samples", "2",
             "--num-test-suites", "2", "--reuse", str(tmp_path / "report.json"), *TINY]
    assert main([*again, "--out", str(tmp_path / "again")]) == 0
    reused = json.loads((tmp_path / "again" / "report.json").read_text())["models"][0]
    assert reused["reused"] and reused["per_problem"] == first
    assert "(reused)" in (tmp_path / "again" / "report.md").read_text()
    assert main([*again, "--seed", "1", "--out", str(tmp_path / "other")]) == 2
    assert "other problems, settings or batch size" in capsys.readouterr().err
    older = {**json.loads((tmp_path / "report.json").read_text()), "eval_version": 1}  # another decoding, mutants
    (tmp_path / "older.json").write_text(json.dumps(older))
    assert main([*again[:-len(TINY) - 2], "--reuse", str(tmp_path / "older.json"), *TINY,
                 "--out", str(tmp_path / "older")]) == 2
    assert "another version of the evaluation" in capsys.readouterr().err


def test_measures_count_passes_validity_and_mutants(sandbox, example_problems, tiny_generator, tiny_discriminator,
                                                    monkeypatch):
    """The tiny model never passes, so the measures are checked with outputs put in its place: the greedy
    code and one sampled code are the reference, the other sampled code is wrong; the discriminator's
    suites are the problem's own tests (valid, and they kill every non-equivalent mutant) and `assert False`."""
    from models.base import CodeGeneration, TestsGeneration
    from models.sanitize import sanitize_tests

    def codes(self, problems, chains, num_samples, greedy_first=False, **kw):
        wrong = lambda p: f"def {p.entry_point}(*args, **kwargs):\n    return None\n"  # noqa: E731
        right = lambda p: p.reference_solution  # noqa: E731
        pick = [right] * greedy_first + ([right] if num_samples == 1 else [wrong, right])
        return [[CodeGeneration("", [1], [1], "", code=f(p), ok=True) for f in pick] for p in problems]

    def tests(self, problems, chains, num_samples, **kw):
        out = []
        for p in problems:
            good = sanitize_tests(p.tests, p.entry_point)
            bad = sanitize_tests(f"def test_bad():\n    assert {p.entry_point} is None\n", p.entry_point)
            out.append([TestsGeneration("", [1], [1], "", tests=s.tests, ok=s.ok, test_names=s.test_names)
                        for s in (good, bad)])
        return out

    monkeypatch.setattr(type(tiny_generator), "generate_code", codes)
    monkeypatch.setattr(type(tiny_discriminator), "generate_tests", tests)
    problems = example_problems[:2]
    results = evaluate_problems(tiny_generator, tiny_discriminator, problems, sandbox,
                                EvalSettings(chain="none", num_samples=2, num_test_suites=2, mutants_per_problem=3))
    for r in results:
        assert (r.greedy_passed, r.n, r.c, r.ranked_passed) == (True, 2, 1, True)
        assert r.valid_test_rate == 0.5  # suite 1: all valid, suite 2: its one test fails on the reference
        assert r.mutation_score == 0.5  # suite 1 kills every mutant (they were kept because it does), suite 2 none


def test_checkpoint_as_a_model_and_overlap_refused(tmp_path, capsys):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ROOT / "run_training.py"), "--preset", "tiny", "--stages", "understand",
                        "--output-dir", str(run), "--quiet"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    args = ["--models", str(run / "latest"), str(run), "--problems", "examples", "--limit", "1", "--num-samples", "1",
            "--out", str(tmp_path / "out"), *TINY]
    assert main(args) == 2  # trained on the example problems: refused
    capsys.readouterr()
    assert main(args + ["--allow-overlap"]) == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["models"][0]["model"] == str(run / "latest") and report["models"][0]["overlap"] == 1
    # which checkpoint each run folder gave, and why: said, and recorded with its step
    ckpt = run / "checkpoints" / json.loads((run / "checkpoints" / "latest.json").read_text())["name"]
    step = int(ckpt.name.split("-")[1])
    assert [m["checkpoint"] for m in report["models"]] == [{"path": str(ckpt), "step": step}] * 2  # one checkpoint: both
    err = capsys.readouterr().err
    assert f"{run / 'latest'}: checkpoint {ckpt} (step {step}): the latest of {run}" in err
    assert f"{run}: checkpoint {ckpt} (step {step}): the best of {run} by validation score" in err
    assert report["isolation"]["level"] in ("bwrap", "unshare", "process")
    assert f"sandbox isolation: {report['isolation']['description']}" in (tmp_path / "out" / "report.md").read_text()


def test_the_unisolated_sandbox_as_root_needs_the_flag(tmp_path, monkeypatch, capsys):
    import os

    from sandbox import isolation

    if os.geteuid() != 0:
        pytest.skip("only refused as root")
    monkeypatch.setattr(isolation, "available_levels", lambda: ["process"])  # no bubblewrap, no unshare
    args = ["--models", "tiny", "--problems", "examples", "--limit", "1", "--num-samples", "0", "--no-discriminator",
            "--chain", "none", "--out", str(tmp_path), *TINY]
    assert main(args) == 1
    assert "--allow-unisolated" in capsys.readouterr().err.strip().splitlines()[-1]
    assert not (tmp_path / "report.json").exists()
    assert main(args + ["--allow-unisolated"]) == 0
    isolation_recorded = json.loads((tmp_path / "report.json").read_text())["isolation"]
    assert isolation_recorded["level"] == "process" and "running as root" in isolation_recorded["description"]


def test_bad_input_exits_nonzero(tmp_path, capsys):
    assert main(["--problems", str(tmp_path / "none.json"), "--out", str(tmp_path)]) == 2
    assert main(["--models", str(tmp_path / "nope" / "best"), "--problems", "examples", "--limit", "1",
                 "--out", str(tmp_path)]) == 1
    (tmp_path / "file").write_text("")
    assert main(["--models", "tiny", "--out", str(tmp_path / "file")]) == 2
    assert main(["--models", "tiny", "--chain", "none", "--batch-size", "0"]) == 2
    err = capsys.readouterr().err
    assert "none.json" in err and "nope" in err and "is a file" in err and "--batch-size" in err


def test_replicate_trains_evaluates_pools_and_goes_on_where_it_stopped(tmp_path):
    """Two seeds of the tiny preset (one stage), each evaluated against the base on two problems; a second call
    runs nothing; a seed whose run lost its end is resumed, and its evaluation kept (the same checkpoint)."""
    command = [sys.executable, "-m", "evaluation.replicate", "--seeds", "1", "2", "--preset", "tiny",
               "--out", str(tmp_path), "--problems", "examples", "--train-args", "--stages understand --quiet",
               "--eval-args", " ".join(["--limit", "2", "--num-samples", "2", "--num-test-suites", "1", "--allow-overlap", *TINY])]
    r = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert {"seed-1", "seed-2", "eval-base", "eval-seed-1", "eval-seed-2", "report.md"} <= {p.name for p in tmp_path.iterdir()}
    assert json.loads((tmp_path / "seed-2" / "config.json").read_text())["seed"] == 2
    report = json.loads((tmp_path / "report.json").read_text())
    pooled = report["tables"]["pooled"]["pass@1 (greedy)"]
    per_seed = [report["tables"]["seeds"][s]["pass@1 (greedy)"][1]["mean"] for s in ("1", "2")]
    assert pooled[1]["mean"] == pytest.approx(sum(per_seed) / 2) and pooled[1]["problems"] == 2
    text = (tmp_path / "report.md").read_text()
    assert "pooled over seeds 1, 2" in text and "seed 1 (checkpoint step" in text and "seed 2 (checkpoint step" in text
    again = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert again.returncode == 0 and "replicate: " not in again.stderr  # every step's result was there
    (tmp_path / "seed-2" / "summary.json").unlink()  # as if killed before its end
    resumed = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [line for line in resumed.stderr.splitlines() if line.startswith("replicate: ")]
    assert len(steps) == 1 and "seed 2: resuming its training" in steps[0]
    shutil.rmtree(tmp_path / "seed-1")  # a run folder deleted (checkpoints are large): its evaluation stands for it
    only_2 = [*command[:4], *command[5:]]  # --seeds 2: seed 1, evaluated before, is pooled all the same
    kept = subprocess.run(only_2, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert kept.returncode == 0 and "replicate: " not in kept.stderr and not (tmp_path / "seed-1").exists()
    assert json.loads((tmp_path / "report.json").read_text())["tables"] == report["tables"]
    assert "each seed's Δ to the base" in (tmp_path / "report.md").read_text()
    other = subprocess.run([*command[:-2], "--eval-args", "--limit 1"], capture_output=True, text=True, cwd=ROOT)
    assert other.returncode == 1 and "holds another recipe" in other.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("option, words", [("--train-args=--seed 5", "--seed is set by"),
                                           ("--eval-args=--out x --limit 2", "--out is set by"),
                                           ("--train-args=--output-dir=x --quiet", "--output-dir is set by")])
def test_replicate_refuses_the_options_it_sets_itself(tmp_path, capsys, option, words):
    from evaluation.replicate import main as replicate

    assert replicate(["--seeds", "1", "--out", str(tmp_path / "r"), option]) == 1
    assert words in capsys.readouterr().err and not (tmp_path / "r").exists()  # refused before anything ran
