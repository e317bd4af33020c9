#!/usr/bin/env python3
"""Train the Generator and the Discriminator against each other (N + N + K schedule, stage by stage).

    python run_training.py                      # demo preset: default model, training set, all 5 stages
    python run_training.py --preset learn --output-dir runs/learn   # 60 minutes that measurably help
    python run_training.py --preset tiny        # tiny random model: a smoke test in under a minute
    python run_training.py --output-dir runs/a --resume          # continue runs/a (its own config.json)
    python run_training.py --resume runs/a/checkpoints/step-000008 --output-dir runs/a
    accelerate launch --num_processes 2 run_training.py --output-dir runs/b   # one run over 2 processes (or torchrun)

Every option below is a field of the configuration (training/config.py); the preset sets the starting
values and the options you give override them. The defaults shown are the demo preset's. The run folder
gets config.json, metrics.jsonl, samples.jsonl, summary.json and checkpoints/ (and changes.jsonl when a resume
changed a setting: --allow-changes, or steps and stages added after the run's position).
"""
import argparse
import json
import logging
import os
import shlex
import sys
import textwrap
import time
from pathlib import Path

from training.config import (PRESETS, TrainingConfig, add_config_arguments, check_checkpoint_fits, config_from_args,
                             launch_command, launch_rank_and_size, preset_overrides, resumed_config)

RESULT_COLUMNS = {  # header -> metric key
    "gen_reward": "generator/reward_mean", "solved": "generator/solved_rate",
    "disc_reward": "discriminator/reward_mean", "valid_tests": "discriminator/valid_test_rate",
    "kl_ref": "ppo/kl_ref", "sec/step": "time/step_s",
}


def parse_args(argv=None):
    epilog = "presets (each sets these on top of the field defaults):\n" + "\n".join(
        textwrap.fill(f"{name}: {preset_overrides(name)}", 100, initial_indent="  ", subsequent_indent="      ",
                      break_on_hyphens=False)
        for name in PRESETS)
    parser = argparse.ArgumentParser(description=__doc__, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default=None,
                        help="starting configuration: demo (the default: default model, all five stages, a short "
                             "run), learn (60 minutes on the training set, then compare with python -m evaluation), "
                             "tiny (tiny random model, under a minute), gpu (a larger coder model on a GPU)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="PATH",
                        help="continue from a checkpoint: alone, the latest one in --output-dir, with that run's "
                             "own config.json (--max-minutes, --keep-last, --save-every, --samples-every and "
                             "--device may change, and steps or stages after the run's position may be added; any other "
                             "setting given must match it, or needs --allow-changes); or a checkpoint folder "
                             "or run folder, whose weights continue --output-dir: with that run's config.json as "
                             "above when it holds one, else as a new run with the options given")
    parser.add_argument("--allow-changes", action="store_true",
                        help="with --resume of a run: continue although a setting differs from the run's config.json "
                             "(seed, problems, learning rate, ...; never the models or the layers trained); each "
                             "change is recorded in the run's changes.jsonl. Steps and stages added after the run's "
                             "position need no flag")
    parser.add_argument("--start-stage", default=None, metavar="STAGE",
                        help="start at the beginning of this stage (with --resume: from that checkpoint's weights)")
    parser.add_argument("--quiet", action="store_true", help="only warnings and the results table (no progress bars)")
    add_config_arguments(parser)
    return parser.parse_args(argv)


def print_results(summary: dict, run_dir: Path) -> None:
    print(f"\nresults ({run_dir}):")
    print(f"{'stage':<12}" + "".join(f"{h:>12}" for h in RESULT_COLUMNS))
    rows = list(summary["stages"].items()) + [("whole run", summary["run"])]
    for stage, metrics in rows:
        print(f"{stage:<12}" + "".join(f"{metrics.get(k, float('nan')):>12.3f}" for k in RESULT_COLUMNS.values()))


def checked_run(args) -> tuple[TrainingConfig, dict, Path | None]:
    """(config, changes, checkpoint): the run's config, its changes to record ({setting: [old, new]}) and the
    checkpoint it resumes from (None: a new run, or one stopped before its first checkpoint). With --resume
    and an --output-dir holding a run, that run's own config.json, whether --resume names a checkpoint or not.
    Everything is checked here, before anything is built or written: ValueError or CheckpointError."""
    run = Path(args.output_dir) if args.output_dir else None
    saved = run / "config.json" if run else None
    own = bool(args.resume) and saved is not None and saved.is_file()
    if args.allow_changes and not own:
        raise ValueError("--allow-changes goes with --resume of a run that has a config.json")
    if not args.resume:
        return config_from_args(args, args.preset or "demo"), {}, None
    from training.checkpoint_manager import (CheckpointError, CheckpointManager, nearest_run_folder,
                                             read_trainer_state, resolve_checkpoint)  # (imports torch)

    def nearest(folder) -> str:  # (for the error of a mistyped run folder)
        found = None if Path(folder).exists() else nearest_run_folder(folder)
        return f"; the nearest run folder is {found}" if found else ""

    checkpoint = None
    if args.resume == "latest":
        if run is None:
            raise ValueError("--resume without a path needs --output-dir (the run to continue)")
        checkpoint = CheckpointManager(run).get_latest_checkpoint()
        if checkpoint is None and not own:
            raise ValueError(f"--resume: {run} holds no run (no config.json, no checkpoint){nearest(run)}")
    else:  # a checkpoint folder, or a run folder (its latest checkpoint)
        try:
            checkpoint = resolve_checkpoint(args.resume, run_folder="latest")
        except CheckpointError as e:
            raise CheckpointError(f"--resume: {e}{nearest(args.resume)}") from None
    state = read_trainer_state(checkpoint) if checkpoint else {}
    position = int(state.get("position", 0)) if state else None
    changes: dict = {}
    if own:
        try:
            data = json.loads(saved.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{saved}: cannot read the run's config: {e}") from None
        config, changes = resumed_config(args, data, args.preset, position, args.allow_changes, args.start_stage)
    else:
        config = config_from_args(args, args.preset or "demo")
    if state:  # the checkpoint fits (the trainer checks again when it loads it)
        try:
            check_checkpoint_fits(state.get("config", {}), config, position, args.start_stage)
        except ValueError as e:
            raise CheckpointError(f"{checkpoint}: incompatible checkpoint: {e}") from None
    return config, changes, checkpoint


def main(argv=None) -> int:
    args = parse_args(argv)
    rank, world_size = launch_rank_and_size()  # only rank 0 reports
    logging.basicConfig(level=logging.WARNING if args.quiet or rank else logging.INFO,
                        format=f"%(asctime)s %(levelname)s {f'[rank {rank}] ' if rank else ''}%(name)s: %(message)s")
    if args.quiet or rank:  # every progress bar, transformers' weight-loading ones too (read when tqdm is imported, later)
        os.environ["TQDM_DISABLE"] = "1"
    launcher = launch_command()  # `python run_training.py`, or the accelerate / torchrun command that started us
    try:
        config, changes, checkpoint = checked_run(args)
        if world_size > 1 and not config.output_dir:
            raise ValueError("a run on several processes needs --output-dir (the folder they share)")
    except (ValueError, TypeError, RuntimeError) as e:  # CheckpointError is a RuntimeError
        print(f"run_training.py: error: {e}", file=sys.stderr)
        return 2
    run_dir = Path(config.output_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    resume_line = shlex.join(launcher + ["--output-dir", str(run_dir), "--resume"])
    if not rank:
        print(f"run folder: {run_dir}", flush=True)
        if checkpoint is not None:
            from training.checkpoint_manager import checkpoint_choice

            print("resuming from " + checkpoint_choice(args.output_dir if args.resume == "latest" else args.resume,
                                                        checkpoint, None, "latest"), flush=True)

    from tqdm.contrib.logging import logging_redirect_tqdm

    from training.checkpoint_manager import RunFolderBusy
    from training.trainer import run_training  # heavy imports after the arguments are checked

    try:
        with logging_redirect_tqdm():  # log lines above the progress bars, not through them
            summary = run_training(config, run_dir, resume=args.resume, start_stage=args.start_stage, changes=changes,
                                   launch_command=shlex.join(launcher + list(sys.argv[1:] if argv is None else argv)))
    except KeyboardInterrupt:
        if not rank:
            print(f"\ninterrupted; resume with: {resume_line}", file=sys.stderr)
        return 130
    except Exception as e:  # one line, and what the run kept; an unexpected error's traceback goes to a file
        message = (str(e).strip().splitlines() or [""])[0]  # Hugging Face errors can run to many lines
        if isinstance(e, RunFolderBusy):  # the run is another trainer's, still going: nothing to resume
            print(f"run_training.py: error: {message}", file=sys.stderr)
            return 1
        print(f"run_training.py: error: {type(e).__name__}: {message}", file=sys.stderr)
        if not isinstance(e, (OSError, ValueError, RuntimeError, ImportError)) and run_dir.is_dir():
            import traceback

            log = run_dir / (f"error-rank{rank}.log" if rank else "error.log")  # (each process of a launch its own)
            log.write_text(traceback.format_exc())
            print(f"(the traceback is in {log})", file=sys.stderr)
        if not rank and (run_dir / "checkpoints" / "latest.json").is_file():
            print(f"the run's checkpoints are kept; resume with: {resume_line}", file=sys.stderr)
        return 1
    if not rank:
        print_results(summary, run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
