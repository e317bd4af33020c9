"""One training run over 2 processes (torchrun, gloo on CPU, the tiny model): the same weights in both,
each of a step's problems rolled out by exactly one process, and a killed run that resumes exactly.
The processes run tests/distributed_worker.py (seeded random rewards, as in tests/test_trainer.py)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from training.distributed import Processes, merge_metrics
from training.config import PPOConfig
from training.ppo import train_step

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"


def launch(out: Path, run: Path, *flags: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           str(out), str(run), *flags]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def rows(run: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if not k.startswith("time/") and k != "ppo/time_s"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(out: Path) -> list[dict]:
    return [json.loads((out / f"weights-rank{r}.json").read_text()) for r in (0, 1)]


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """An uninterrupted 2-process run: (its worker output folder, its run folder)."""
    base = tmp_path_factory.mktemp("straight")
    r = launch(base / "out", base / "run")
    assert r.returncode == 0, r.stderr[-3000:]
    return base / "out", base / "run"


@pytest.mark.slow
def test_two_processes_end_with_identical_weights_and_see_each_problem_once(straight):
    out, run = straight
    first, second = weights(out)
    assert first == second
    shares = [[json.loads(line) for line in (out / f"problems-rank{r}.jsonl").read_text().splitlines()] for r in (0, 1)]
    logged = rows(run)
    assert len(logged) == 8 and [row["step"] for row in logged] == list(range(8))
    for row, mine, theirs in zip(logged, *shares):
        assert mine["step"] == theirs["step"] == row["step"]
        assert len(mine["problems"]) == 2 and len(theirs["problems"]) == 1  # 3 problems: shares of 2 and 1
        assert sorted(mine["problems"] + theirs["problems"]) == sorted(row["problems"])  # each exactly once
        assert row["ppo/steps"] == 2 and row["ppo/tokens"] > 0  # both minibatch steps taken, on both processes' tokens
        assert row["ppo/groups"] == 3  # the update's counts are over both processes
        assert row["sandbox/executions"] > 0 and row["attempts/mean"] == 1.0


@pytest.mark.slow
def test_killed_two_process_run_resumes_exactly(straight, tmp_path):
    out, run = tmp_path / "out", tmp_path / "run"
    r = launch(out, run, "--crash-after-first-checkpoint")
    assert r.returncode != 0
    assert [p.name for p in (run / "checkpoints").iterdir() if p.name.startswith("step-")] == ["step-000004"]
    assert not (out / "weights-rank0.json").exists()
    r = launch(out, run, "--resume")
    assert r.returncode == 0, r.stderr[-3000:]
    assert weights(out)[0] == weights(out)[1] == weights(straight[0])[0]
    assert rows(run) == rows(straight[1])


def test_one_process_is_trivial_and_never_imports_accelerate():
    one = Processes()
    assert not one.distributed and one.is_main and one.shard([1, 2, 3]) == [1, 2, 3]
    assert one.gather("x") == ["x"] and one.broadcast(5) == 5
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK")}
    code = ("import sys; from training.distributed import launched_processes; p = launched_processes(); "
            "assert not p.distributed and 'accelerate' not in sys.modules")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env).returncode == 0


def test_merged_metrics_add_counts_take_the_slowest_time_and_average_the_rest():
    rows_ = [{"ppo/groups": 2, "ppo/tokens": 5, "time/step_s": 1.0, "ppo/loss": 0.5, "ppo/steps": 2, "stage": "a"},
             {"ppo/groups": 2, "ppo/tokens": 7, "time/step_s": 3.0, "ppo/loss": float("nan"), "ppo/steps": 2,
              "stage": "a", "time/ref_logprobs_s": 4.0}]
    merged = merge_metrics(rows_, summed=("ppo/groups", "ppo/tokens"))
    assert merged == {"ppo/groups": 4, "ppo/tokens": 12, "time/step_s": 3.0, "ppo/loss": 0.5, "ppo/steps": 2,
                      "stage": "a", "time/ref_logprobs_s": 4.0}  # equal counts are still added; keys of any process
    assert isinstance(merged["ppo/steps"], int)


def test_a_missing_batch_is_refused_in_one_process():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="needs a batch"):
        train_step(model, torch.optim.SGD(model.parameters(), lr=0.1), None, PPOConfig())
