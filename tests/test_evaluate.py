"""`python -m evaluation`: reports, side-by-side table, checkpoints as models, bad input."""
import json
import subprocess
import sys
from pathlib import Path

from evaluation.evaluate import ModelReport, main, markdown_table

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--stage-tokens", "6", "--code-tokens", "8", "--test-tokens", "8"]


def test_markdown_table_is_side_by_side():
    base = ModelReport("default", 10, 4, {"pass@1": 0.25, "pass@4": 0.5}, 0.3, 0.9, 12.0,
                       {"eval/reasoning_coherence": 0.4})
    trained = ModelReport("runs/a/best", 10, 4, {"pass@1": 0.35, "pass@4": 0.6}, None, 0.95, 11.0)
    table = markdown_table([base, trained], "examples")
    rows = table.splitlines()
    assert rows[2] == "| model | pass@1 | pass@4 | ranked@1 | well-formed | coherence | s/problem |"
    assert rows[4].startswith("| default | 0.250 | 0.500 | 0.300 | 0.90 | 0.40 |")
    assert rows[5].startswith("| runs/a/best | 0.350 | 0.600 | – |")


def test_two_models_one_report(tmp_path, capsys):
    code = main(["--models", "tiny", "tiny", "--limit", "2", "--num-samples", "2", "--k", "1,2",
                 "--out", str(tmp_path), *TINY])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert [m["model"] for m in report["models"]] == ["tiny", "tiny"]
    first = report["models"][0]
    assert set(first["pass_at_k"]) == {"pass@1", "pass@2"} and first["num_problems"] == 2
    assert [p["n"] for p in first["per_problem"]] == [2, 2]
    assert (tmp_path / "report.md").read_text().count("| tiny |") == 2
    assert "pass@2" in capsys.readouterr().out


def test_checkpoint_run_folder_as_a_model(tmp_path):
    run = tmp_path / "run"
    r = subprocess.run([sys.executable, str(ROOT / "run_training.py"), "--preset", "tiny", "--stages", "understand",
                        "--output-dir", str(run), "--quiet"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-1500:]
    code = main(["--models", str(run / "latest"), "--limit", "1", "--num-samples", "1", "--k", "1",
                 "--out", str(tmp_path / "out"), *TINY])
    assert code == 0
    assert json.loads((tmp_path / "out" / "report.json").read_text())["models"][0]["model"] == str(run / "latest")


def test_bad_input_exits_nonzero(tmp_path, capsys):
    assert main(["--problems", str(tmp_path / "none.json"), "--out", str(tmp_path)]) == 2
    assert main(["--models", str(tmp_path / "nope" / "best"), "--limit", "1", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "none.json" in err and "nope" in err


def test_passing_candidates_are_counted_and_ranked(tmp_path, monkeypatch):
    """The tiny model never passes, so the counting of passes is checked with candidates put in its place:
    per problem the reference solution (ranked first) and a wrong but well-formed code."""
    from inference.inference_engine import Candidate, InferenceEngine, InferenceResult

    def solve_batch(self, problems, **kwargs):
        results = []
        for p in problems:
            wrong = f"def {p.entry_point}(*args, **kwargs):\n    return None\n"
            candidates = [Candidate(p.reference_solution, True, 1, 0), Candidate(wrong, True, 1, 0)]
            results.append(InferenceResult(p.id, {}, p.reference_solution, True, [], None, 1, 0, 1.0,
                                           candidates, {}))
        return results

    monkeypatch.setattr(InferenceEngine, "solve_batch", solve_batch)
    code = main(["--models", "tiny", "--limit", "3", "--num-samples", "2", "--k", "1,2",
                 "--out", str(tmp_path), *TINY])
    assert code == 0
    report = json.loads((tmp_path / "report.json").read_text())["models"][0]
    assert [(p["n"], p["c"], p["ranked_passed"]) for p in report["per_problem"]] == [(2, 1, True)] * 3
    assert report["pass_at_k"] == {"pass@1": 0.5, "pass@2": 1.0}
    assert report["ranked_at_1"] == 1.0 and report["format_ok"] == 1.0
