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
import sys
import textwrap
import time
from pathlib import Path

from training.config import (PRESETS, add_config_arguments, config_from_args, launch_rank_and_size, preset_overrides,
                             resumed_config)

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
                             "or run folder, which starts --output-dir from its weights with the options given")
    parser.add_argument("--allow-changes", action="store_true",
                        help="with --resume RUN: continue although a setting differs from the run's config.json "
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


def main(argv=None) -> int:
    args = parse_args(argv)
    rank, world_size = launch_rank_and_size()  # only rank 0 reports
    logging.basicConfig(level=logging.WARNING if args.quiet or rank else logging.INFO,
                        format=f"%(asctime)s %(levelname)s {f'[rank {rank}] ' if rank else ''}%(name)s: %(message)s")
    if args.quiet or rank:  # every progress bar, transformers' weight-loading ones too (read when tqdm is imported, later)
        os.environ["TQDM_DISABLE"] = "1"
    saved = Path(args.output_dir or "") / "config.json"
    own = args.resume == "latest" and bool(args.output_dir) and saved.is_file()
    changes: dict = {}
    try:
        if own:  # the run's own settings; checked before anything is built or written
            try:
                data = json.loads(saved.read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
                raise ValueError(f"{saved}: cannot read the run's config: {e}") from None
            from training.checkpoint_manager import newest_position  # reads JSON only (imports torch)

            config, changes = resumed_config(args, data, args.preset, newest_position(args.output_dir),
                                             args.allow_changes, args.start_stage)
        else:
            if args.allow_changes:
                raise ValueError("--allow-changes goes with --resume of a run that has a config.json")
            config = config_from_args(args, args.preset or "demo")
        if args.resume == "latest" and not config.output_dir:
            raise ValueError("--resume without a path needs --output-dir (the run to continue)")
        if world_size > 1 and not config.output_dir:
            raise ValueError("a run on several processes needs --output-dir (the folder they share)")
    except (ValueError, TypeError) as e:
        print(f"run_training.py: error: {e}", file=sys.stderr)
        return 2
    run_dir = Path(config.output_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    if not rank:
        print(f"run folder: {run_dir}", flush=True)

    from tqdm.contrib.logging import logging_redirect_tqdm

    from training.trainer import run_training  # heavy imports after the arguments are checked

    try:
        with logging_redirect_tqdm():  # log lines above the progress bars, not through them
            summary = run_training(config, run_dir, resume=args.resume, start_stage=args.start_stage, changes=changes)
    except KeyboardInterrupt:
        print(f"\ninterrupted; resume with: python run_training.py --output-dir {run_dir} --resume", file=sys.stderr)
        return 130
    except Exception as e:  # one line, and what the run kept; an unexpected error's traceback goes to a file
        message = (str(e).strip().splitlines() or [""])[0]  # Hugging Face errors can run to many lines
        print(f"run_training.py: error: {type(e).__name__}: {message}", file=sys.stderr)
        if not isinstance(e, (OSError, ValueError, RuntimeError, ImportError)) and run_dir.is_dir():
            import traceback

            log = run_dir / (f"error-rank{rank}.log" if rank else "error.log")  # (each process of a launch its own)
            log.write_text(traceback.format_exc())
            print(f"(the traceback is in {log})", file=sys.stderr)
        if (run_dir / "checkpoints" / "latest.json").is_file():
            print(f"the run's checkpoints are kept; resume with: python run_training.py --output-dir {run_dir} "
                  "--resume", file=sys.stderr)
        return 1
    if not rank:
        print_results(summary, run_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
