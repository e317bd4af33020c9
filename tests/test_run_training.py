"""run_training.py end to end through subprocess (tiny preset): options, errors, a run, a SIGKILL and resume."""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = [sys.executable, str(ROOT / "run_training.py")]


def run(*args, timeout=300):
    return subprocess.run(SCRIPT + list(args), capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_help_documents_every_option():
    out = run("--help").stdout
    for flag, doc in [("--learning-rate", "AdamW learning rate"), ("--n-steps", "N: discriminator steps"),
                      ("--timeout-s", "wall-clock limit"), ("--preset", "tiny"), ("--resume", "latest"),
                      ("--validity-floor", "tau"), ("--train-last-layers", "transformer blocks")]:
        assert flag in out and doc in out, flag
    flat = " ".join(out.split())  # argparse wraps the help text
    # the defaults shown are what `python run_training.py` runs (the demo preset), and every preset is listed
    assert "then generator steps, per stage (default: 1)" in flat  # n_steps: the field's default is 2
    assert "(0 = the stage's own budget) (default: 32)" in flat
    assert "tiny: --generator-model=tiny" in flat and "gpu: --generator-model=" in flat


def test_lora_rank_replaces_the_presets_last_layers():
    import argparse

    from training.config import add_config_arguments, config_from_args

    parser = argparse.ArgumentParser()
    add_config_arguments(parser)
    config = config_from_args(parser.parse_args(["--lora-rank", "16"]), "gpu")  # gpu trains the last 8 layers
    assert config.lora_rank == 16 and config.train_last_layers == 0
    with pytest.raises(ValueError, match="not both"):
        config_from_args(parser.parse_args(["--lora-rank", "16", "--train-last-layers", "2"]), "demo")


def test_bad_arguments_exit_nonzero_with_one_line(tmp_path):
    for args, code, words in [
        (["--n-steps", "-1"], 2, "n_steps"),
        (["--stages", "bogus"], 2, "unknown stages"),
        (["--preset", "tiny", "--problems", str(tmp_path / "none.json"), "--output-dir", str(tmp_path / "r")], 1, "none.json"),
        (["--resume"], 2, "--output-dir"),
        # numbers that would pass every comparison (NaN) or leave the rewards' range: refused before any model loads
        (["--kl-coef", "nan"], 2, "kl_coef"),
        (["--timeout-s", "nan"], 2, "timeout_s"),
        (["--learning-rate", "inf"], 2, "learning_rate"),
        (["--save-every", "-1"], 2, "save_every"),
        (["--gen-pass-coef", "1.2", "--gen-format-coef", "-0.2"], 2, "gen_format_coef"),
        (["--temperature", "0"], 2, "temperature"),
    ]:
        r = run(*args)
        assert r.returncode == code, (args, r.stderr)
        last = r.stderr.strip().splitlines()[-1]
        assert "error" in last and words in last and "Traceback" not in r.stderr


def test_a_second_trainer_on_a_locked_run_folder_is_refused_without_resume_advice(tmp_path):
    sys.path.insert(0, str(ROOT))
    from training.checkpoint_manager import lock_run_folder

    held = lock_run_folder(tmp_path / "run")  # as a live trainer holds it, with a checkpoint saved
    (tmp_path / "run" / "checkpoints").mkdir()
    (tmp_path / "run" / "checkpoints" / "latest.json").write_text('{"name": "step-000004"}')
    try:
        r = run("--preset", "tiny", "--output-dir", str(tmp_path / "run"))
    finally:
        held.close()
    assert r.returncode == 1 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert f"in use by another trainer (pid {os.getpid()}): wait for it to end, stop it (kill {os.getpid()})" in lines[-1]
    assert "resume" not in r.stderr  # the run is still going: nothing to resume
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".lock", "checkpoints"]  # nothing else written


def test_tiny_run_prints_results_and_fills_the_run_folder(tmp_path):
    r = run("--preset", "tiny", "--stages", "understand,edge_cases", "--output-dir", str(tmp_path), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"run folder: {tmp_path}" in r.stdout and "gen_reward" in r.stdout and "whole run" in r.stdout
    assert {"config.json", "metrics.jsonl", "samples.jsonl", "summary.json", "checkpoints"} <= {p.name for p in tmp_path.iterdir()}
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 8 and rows[-1]["stage"] == "edge_cases"
    assert (tmp_path / "checkpoints" / "latest.json").exists()
    config = json.loads((tmp_path / "config.json").read_text())  # beside the settings: how the run was started
    assert config["launch_command"] == f"python run_training.py --preset tiny --stages understand,edge_cases --output-dir {tmp_path} --quiet"
    assert config["isolation"]["level"] in ("bwrap", "unshare", "process") and config["isolation"]["description"]
    assert config["update_precision"] == "fp32"  # the tiny preset's; "auto" is recorded as what it resolved to
    assert "it/s]" not in r.stderr and "step/s]" not in r.stderr  # --quiet: no progress bar, not even weight loading


LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) ")


def test_log_lines_stay_above_the_progress_bars(tmp_path):
    """With the bars on, each log record starts a line of its own: one written through a bar starts after the
    bar's text or its clearing (spaces, a cursor move) on the same line. The checkpoint writer draws no bar."""
    env = {k: v for k, v in os.environ.items() if k != "TQDM_DISABLE"}
    r = subprocess.run(SCRIPT + ["--preset", "tiny", "--stages", "understand", "--output-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "step/s]" in r.stderr and "batch/s]" in r.stderr  # the stage's bar and validation's were drawn
    records = [line for line in re.split(r"[\r\n]", r.stderr) if LOG_RECORD.search(line)]
    assert any("validation: {" in line for line in records)  # logged while the stage's bar was up
    assert [line for line in records if not LOG_RECORD.match(line)] == []
    assert "Writing model shards" not in r.stderr and "saved checkpoint" in r.stderr
    assert "mutants killed" not in r.stderr  # per-problem chatter is DEBUG


def test_sigkill_mid_stage_then_resume_finishes(tmp_path):
    args = ["--preset", "tiny", "--stages", "understand,edge_cases", "--save-every", "1", "--output-dir", str(tmp_path), "--quiet"]
    proc = subprocess.Popen(SCRIPT + args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    checkpoints = tmp_path / "checkpoints"
    while time.time() < deadline:  # wait until a few steps have checkpointed, then kill mid-stage
        if checkpoints.is_dir() and len([p for p in checkpoints.iterdir() if p.name.startswith("step-")]) >= 2:
            break
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    for name in ("metrics.jsonl", "samples.jsonl"):  # a line torn by the kill (or a full disk) is cut on resume
        with open(tmp_path / name, "a") as f:
            f.write('{"step": 99, "generator/rew')
    # the command Ctrl-C prints: nothing but the run folder (the run's own config.json supplies the rest)
    r = run("--output-dir", str(tmp_path), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from checkpoint {tmp_path}/checkpoints/step-" in r.stdout and f": the latest of {tmp_path}" in r.stdout
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == list(range(8))  # every step exactly once
    assert "metrics.jsonl: cut 1 torn line" in r.stderr
    assert json.loads((tmp_path / "summary.json").read_text())["stages"].keys() == {"understand", "edge_cases"}


def test_resume_keeps_the_runs_own_config(tmp_path):
    from training.config import preset_config

    saved = json.dumps(preset_config("tiny", output_dir=str(tmp_path)).to_dict(), indent=2) + "\n"
    (tmp_path / "config.json").write_text(saved)
    for args, words in [(["--seed", "1"], "seed is 0 in its config.json, 1 was given"),
                        (["--preset", "demo"], "cannot change generator_model from 'tiny'"),
                        (["--learning-rate", "1e-3"], "learning_rate")]:
        r = run("--output-dir", str(tmp_path), "--resume", *args)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and words in last and "Traceback" not in r.stderr, r.stderr
        assert "run folder" not in r.stdout  # refused before anything was built
    assert (tmp_path / "config.json").read_text() == saved  # nothing in the run folder changed


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-stage tiny run (4 steps, its checkpoint step-000004), for tests to copy."""
    run_dir = tmp_path_factory.mktemp("finished") / "run"
    r = run("--preset", "tiny", "--stages", "understand", "--validation-problems", "0", "--output-dir", str(run_dir),
            "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    return run_dir


def folder_state(run_dir: Path) -> dict:
    """Every path under the run folder, and the bytes of its own files (config.json, metrics.jsonl, ...)."""
    return {p.relative_to(run_dir).as_posix(): p.read_bytes() if p.parent == run_dir and p.is_file() else None
            for p in run_dir.rglob("*")}


def test_resume_from_a_checkpoint_path_into_its_run_takes_the_runs_own_config(finished_run, tmp_path):
    run_dir = tmp_path / "a"
    shutil.copytree(finished_run, run_dir)
    ckpt = run_dir / "checkpoints" / "step-000004"
    before = folder_state(run_dir)
    r = run("--resume", str(ckpt), "--output-dir", str(run_dir), "--seed", "1")  # the README's form
    assert r.returncode == 2 and "seed is 0 in its config.json, 1 was given" in r.stderr.strip().splitlines()[-1], r.stderr
    assert folder_state(run_dir) == before  # refused before anything was written
    r = run("--resume", str(ckpt), "--output-dir", str(run_dir), "--seed", "1", "--allow-changes", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resuming from checkpoint {ckpt} (step 4)" in r.stdout
    record = json.loads((run_dir / "changes.jsonl").read_text())
    assert record["changes"] == {"seed": [0, 1]} and record["resume"] == str(ckpt)  # nothing else changed
    config = json.loads((run_dir / "config.json").read_text())
    assert config["seed"] == 1 and config["generator_model"] == "tiny"  # the run's settings, not the demo preset's
    # into a new folder: that run's options; a checkpoint they do not fit is refused before anything is written
    r = run("--resume", str(ckpt), "--output-dir", str(tmp_path / "new"))  # (the demo preset's default model)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 2 and "incompatible checkpoint: it was trained with generator_model='tiny'" in last, r.stderr
    assert not (tmp_path / "new").exists()


def test_resume_of_a_folder_without_a_run_names_it_and_the_nearest_run(tmp_path):
    (tmp_path / "learn-1").mkdir()
    (tmp_path / "learn-1" / "config.json").write_text("{}")
    for args in (["--output-dir", str(tmp_path / "lern-1"), "--resume"],
                 ["--resume", str(tmp_path / "lern-1"), "--output-dir", str(tmp_path / "next")]):
        r = run(*args)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        assert str(tmp_path / "lern-1") in last and f"the nearest run folder is {tmp_path / 'learn-1'}" in last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["learn-1"]  # no demo run started, nothing made


def test_launch_command_is_the_launchers_own_up_to_the_script(monkeypatch):
    import training.config
    from training.config import launch_command

    monkeypatch.setattr(sys, "argv", ["run_training.py", "--output-dir", "runs/b"])
    for name in ("RANK", "WORLD_SIZE", "TORCHELASTIC_RUN_ID", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert launch_command() == ["python", "run_training.py"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    for parent, expected in [
        (["/usr/bin/python3", "/usr/local/bin/accelerate", "launch", "--num_processes", "2", "run_training.py",
          "--output-dir", "runs/b"], ["accelerate", "launch", "--num_processes", "2", "run_training.py"]),
        (["/opt/py/bin/python3.11", "-m", "torch.distributed.run", "--nproc_per_node", "2", "./run_training.py"],
         ["python", "-m", "torch.distributed.run", "--nproc_per_node", "2", "./run_training.py"]),
        ([], ["torchrun", "--nproc_per_node", "2", "run_training.py"]),  # the parent cannot be read: the environment
    ]:
        monkeypatch.setattr(training.config, "parent_command_line", lambda: parent)
        assert launch_command() == expected


def test_launch_command_under_torchrun(tmp_path):
    script = tmp_path / "show_launch.py"
    # each rank writes its own file: two ranks printing to one pipe can interleave their lines
    script.write_text(f"import json, os, sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                      "from training.config import launch_command\n"
                      "open(f'shown-{os.environ[\"RANK\"]}.json', 'w').write(json.dumps(launch_command()))\n")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                       env={**env, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-2000:]
    shown = [json.loads((tmp_path / f"shown-{rank}.json").read_text()) for rank in (0, 1)]
    assert shown == [["python", *cmd[1:]]] * 2  # each process names the launcher, not itself


def test_only_the_main_process_prints_the_resume_line_and_it_names_the_launcher(tmp_path, monkeypatch, capsys):
    import run_training
    import training.config
    import training.trainer

    parent = ["/usr/bin/python3", "/usr/local/bin/accelerate", "launch", "--num_processes", "2", "run_training.py"]
    monkeypatch.setattr(training.config, "parent_command_line", lambda: parent)
    monkeypatch.setattr(sys, "argv", ["run_training.py"])
    monkeypatch.setenv("TQDM_DISABLE", "1")  # (a rank > 0 sets it)
    monkeypatch.setenv("WORLD_SIZE", "2")
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "latest.json").write_text('{"name": "step-000004"}')
    launches = []

    def stopped(config, run_dir, **kwargs):  # Ctrl-C reaches every process of the launch, then a crash does
        launches.append(kwargs["launch_command"])
        raise KeyboardInterrupt if len(launches) % 2 else RuntimeError("disk full")

    monkeypatch.setattr(training.trainer, "run_training", stopped)
    args = ["--preset", "tiny", "--output-dir", str(tmp_path)]
    resume = f"accelerate launch --num_processes 2 run_training.py --output-dir {tmp_path} --resume"
    for rank in ("1", "0"):
        monkeypatch.setenv("RANK", rank)
        assert run_training.main(args) == 130
        interrupted = capsys.readouterr().err
        assert run_training.main(args) == 1
        crashed = capsys.readouterr().err
        if rank == "1":
            assert "resume" not in interrupted + crashed and "disk full" in crashed
        else:
            assert interrupted.strip() == f"interrupted; resume with: {resume}"
            assert crashed.strip().splitlines()[-1] == f"the run's checkpoints are kept; resume with: {resume}"
    assert set(launches) == {f"accelerate launch --num_processes 2 run_training.py {' '.join(args)}"}  # for config.json


def test_resume_changes_need_a_flag_except_steps_added_after_the_position():
    import run_training
    from training.config import preset_config, resumed_config

    saved = preset_config("tiny", stages=["understand"]).to_dict()  # schedule: d, g, d, g

    def resume(*args, position=4, start_stage=None):
        a = run_training.parse_args(["--resume", *args])
        return resumed_config(a, saved, None, position, a.allow_changes, start_stage)

    config, changes = resume("--stages", "understand,review")  # a stage after the end: allowed, reported
    assert config.stages == ["understand", "review"] and changes == {"stages": [["understand"], ["understand", "review"]]}
    config, changes = resume("--k-alternations", "3", position=2)  # more steps after position 2
    assert changes == {"k_alternations": [1, 3]}
    with pytest.raises(ValueError, match="cannot change n_steps from 1 to 2: the run has taken 4 steps"):
        resume("--n-steps", "2")  # d, d, g, g: steps already taken would change
    with pytest.raises(ValueError, match="cannot change n_steps"):
        resume("--n-steps", "2", "--allow-changes")  # no flag rewrites what was done
    assert resume("--n-steps", "2", start_stage="understand")[1] == {"n_steps": [1, 2]}  # the stage runs again
    with pytest.raises(ValueError, match="seed is 0 in its config.json, 1 was given; pass --allow-changes"):
        resume("--seed", "1")
    config, changes = resume("--seed", "1", "--learning-rate", "2e-5", "--allow-changes")
    assert config.seed == 1 and changes == {"seed": [0, 1], "learning_rate": [saved["ppo"]["learning_rate"], 2e-5]}
    assert resume("--max-minutes", "5")[1] == {}  # what may always change is not a change


def test_a_finished_run_resumed_with_a_stage_added_runs_only_that_stage(tmp_path):
    r = run("--preset", "tiny", "--stages", "understand", "--validation-problems", "0", "--output-dir", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    r = run("--output-dir", str(tmp_path), "--resume", "--n-steps", "2")  # would rewrite the steps taken
    assert r.returncode == 2 and "cannot change n_steps" in r.stderr.strip().splitlines()[-1], r.stderr[-2000:]
    r = run("--output-dir", str(tmp_path), "--resume", "--stages", "understand,edge_cases")
    assert r.returncode == 0, r.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row["stage"]) for row in rows] == [(i, "understand" if i < 4 else "edge_cases") for i in range(8)]
    record = json.loads((tmp_path / "changes.jsonl").read_text())
    assert record["changes"] == {"stages": [["understand"], ["understand", "edge_cases"]]}
    assert json.loads((tmp_path / "config.json").read_text())["stages"] == ["understand", "edge_cases"]


def test_killed_before_the_first_checkpoint_resumes_from_the_start(tmp_path):
    from training.config import preset_config

    config = preset_config("tiny", output_dir=str(tmp_path), stages=["understand"], validation_problems=0)
    (tmp_path / "config.json").write_text(json.dumps(config.to_dict()))
    (tmp_path / "metrics.jsonl").write_text('{"step": 0, "stage": "understand"}\n')  # a step, then killed
    r = run("--output-dir", str(tmp_path), "--resume")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no checkpoint yet" in r.stderr
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [0, 1, 2, 3]  # step 0 once
    # a new run into a folder that holds one is refused: it would log its steps after the old ones
    again = run("--preset", "tiny", "--output-dir", str(tmp_path))
    assert again.returncode == 1 and "already holds a run" in again.stderr and "Traceback" not in again.stderr


def test_no_valid_problem_stops_with_one_line(tmp_path):
    broken = {"id": "broken", "title": "Broken", "description": "Return twice x.", "entry_point": "double",
              "reference_solution": "def double(x):\n    return x\n",
              "tests": "from solution import *\n\ndef test_two():\n    assert double(2) == 4\n"}
    path = tmp_path / "broken.json"
    path.write_text(json.dumps([broken]))
    r = run("--preset", "tiny", "--problems", str(path), "--output-dir", str(tmp_path / "run"))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "no valid problem" in last and "broken: the reference solution fails its own tests" in last


def test_a_checkpoint_folder_that_cannot_take_a_file_stops_the_run_before_its_first_step(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to("checkpoints")  # a symlink loop
    r = run("--preset", "tiny", "--output-dir", str(run_dir))
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and "cannot hold checkpoints" in last and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert not (run_dir / "metrics.jsonl").exists()  # no step ran


def test_an_unexpected_error_is_one_line_with_the_resume_command_and_a_traceback_file(tmp_path, monkeypatch, capsys):
    import run_training
    import training.trainer

    class SafetensorError(Exception):
        pass

    def crash(config, run_dir, **kwargs):  # a save on a full disk, after checkpoints were written
        (run_dir / "checkpoints").mkdir(parents=True)
        (run_dir / "checkpoints" / "latest.json").write_text('{"name": "step-000008"}')
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)\nmore")

    monkeypatch.setattr(training.trainer, "run_training", crash)
    assert run_training.main(["--preset", "tiny", "--output-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0] == ("run_training.py: error: SafetensorError: Error while serializing: I/O error: "
                      "No space left on device (os error 28)")
    assert err[-1] == f"the run's checkpoints are kept; resume with: python run_training.py --output-dir {tmp_path} --resume"
    assert "SafetensorError" in (tmp_path / "error.log").read_text()
