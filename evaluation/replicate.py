"""Train one recipe with several seeds and evaluate every trained model against the base, paired by problem.

    python -m evaluation.replicate --seeds 1 2 3 --out runs/replicate       # the learn preset, held-out 80
    python -m evaluation.replicate --seeds 1 2 3 --out runs/replicate       # again: goes on where it stopped

For each seed S, in order:

    train      python run_training.py --preset P --seed S --output-dir OUT/seed-S [--train-args]; a run
               folder without summary.json (interrupted) is resumed, as below
    base       python -m evaluation --models BASE --out OUT/eval-base, once (BASE: the runs' own model)
    evaluate   python -m evaluation --models BASE OUT/seed-S --reuse OUT/eval-base/report.json
               --out OUT/eval-seed-S: the trained models against the base on the same problems

Each step is skipped when its result is there (an evaluation only when this version of the evaluation made it
of the run's checkpoint of now), so after an interruption the same command continues: a run folder without
summary.json is resumed (from its latest checkpoint, or from the start when it has none) with what its first
`--max-minutes` has left after the steps it keeps (`--max-minutes` itself counts per session in run_training.py;
OUT/budgets.json keeps the first). A seed whose evaluation is there and whose checkpoints are gone (they are large:
keep the reports, e.g. in git, and delete the runs) is not trained again, and every seed evaluated in OUT is pooled,
also one an earlier call was given: the seeds of a replication can be run in different sessions (on one kind of
machine: the learn preset stops at its 60 minutes, so a slower machine trains fewer steps; each seed's table gives
its checkpoint's step, and config.json the update's precision).

OUT/report.md (and report.json) then holds the pooled table, per problem the mean over the seeds against the base
with a 95% paired bootstrap interval over problems (`evaluate.compare`; the interval resamples problems, not
seeds), each seed's Δ side by side (their spread is the seed-to-seed variation), and every seed's table. Every
seed's evaluation of the held-out set is a look at it: count them. OUT/replicate.json keeps the recipe (preset,
options, problems); a later call with another one is refused, as are options the command sets itself (`--seed`,
`--output-dir`, `--resume`, `--preset` in --train-args; `--models`, `--out`, `--reuse`, `--problems` in
--eval-args).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

from evaluation.evaluate import compare, markdown_report

ROOT = Path(__file__).resolve().parents[1]


class ReplicationError(RuntimeError):
    """A step failed or the folder holds another recipe: one line saying which."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m evaluation.replicate", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", required=True, help="training seeds, one run each")
    parser.add_argument("--preset", default="learn", help="run_training.py preset (default: learn)")
    parser.add_argument("--out", required=True, help="folder for the runs, their evaluations and the report")
    parser.add_argument("--problems", default="heldout",
                        help="evaluation problems, as python -m evaluation --problems takes them (default: heldout, "
                             "the standard 80)")
    parser.add_argument("--train-args", default="", help="more run_training.py options, one string after '=': "
                                                         "--train-args='--stages understand'")
    parser.add_argument("--eval-args", default="", help="more python -m evaluation options, one string after '=': "
                                                        "--eval-args='--limit 16'")
    return parser.parse_args(argv)


def _run(command: list[str], what: str) -> None:
    """Run a step in a process of its own (its output goes to this console), with this checkout importable."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    print(f"replicate: {what}: {shlex.join(command)}", file=sys.stderr, flush=True)
    code = subprocess.run(command, env=env).returncode
    if code:
        raise ReplicationError(f"{what} failed (exit {code}); run the same command again to go on from there")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def minutes_spent(run_dir: Path) -> float:
    """Minutes of the steps an interrupted run keeps: those before its latest checkpoint (a resume runs the
    later ones again), from their `time/step_s` in metrics.jsonl (a torn line is skipped, as the trainer cuts it)."""
    from training.checkpoint_manager import CheckpointManager, read_trainer_state

    latest = CheckpointManager(run_dir, keep_last=None).get_latest_checkpoint()
    done = read_trainer_state(latest).get("global_step", 0) if latest else 0
    try:
        lines = (run_dir / "metrics.jsonl").read_text(errors="replace").splitlines()
    except OSError:
        return 0.0
    seconds = 0.0
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] < done:
            seconds += row.get("time/step_s") or 0
    return seconds / 60


def train(seed: int, args, out: Path) -> Path:
    """OUT/seed-S trained to its end (summary.json), started or resumed here when it is not. A resumed run gets
    what its first `max_minutes` (kept in OUT/budgets.json at its first resume: a resume rewrites config.json with
    the minutes it was given) has left after the steps it keeps; at least a step's worth, so that it ends."""
    run_dir = out / f"seed-{seed}"
    if (run_dir / "summary.json").exists():
        return run_dir
    script = [sys.executable, str(ROOT / "run_training.py"), "--output-dir", str(run_dir)]
    if (run_dir / "config.json").exists():  # started before: from its latest checkpoint, or again from the start
        budgets = _read_json(out / "budgets.json") or {}
        if str(seed) not in budgets:
            budgets[str(seed)] = (_read_json(run_dir / "config.json") or {}).get("max_minutes") or 0
            (out / "budgets.json").write_text(json.dumps(budgets, indent=2) + "\n")
        budget = budgets[str(seed)]
        left = ["--max-minutes", f"{max(budget - minutes_spent(run_dir), 0.01):.2f}"] if budget else []
        _run(script + ["--resume", *left], f"seed {seed}: resuming its training")
    else:
        _run(script + ["--preset", args.preset, "--seed", str(seed), *shlex.split(args.train_args)],
             f"seed {seed}: training")
    if not (run_dir / "summary.json").exists():
        raise ReplicationError(f"seed {seed}: training ended without {run_dir / 'summary.json'}")
    return run_dir


def base_model(run_dir: Path) -> str:
    """The model the run started from, as `python -m evaluation --models` names it."""
    config = _read_json(run_dir / "config.json") or {}
    generator = config.get("generator_model") or "default"
    if (config.get("discriminator_model") or generator) != generator:
        raise ReplicationError(f"{run_dir} trained two different base models; compare them with python -m evaluation")
    return generator


def checkpoint_of(run_dir: Path) -> Path | None:
    """The checkpoint `python -m evaluation` takes for the run folder (`run_default`), None when there is none."""
    from training.checkpoint_manager import CheckpointError, resolve_checkpoint

    try:
        return resolve_checkpoint(run_dir, run_folder="default")
    except CheckpointError:
        return None


def evaluation_of(report_path: Path, checkpoint: Path | None) -> dict | None:
    """The report at `report_path` when it is complete, made by this version of the evaluation, and (given a
    checkpoint) evaluated that checkpoint."""
    from scoring.measure import EVAL_VERSION

    report = _read_json(report_path)
    if not isinstance(report, dict) or not report.get("models") or report.get("eval_version") != EVAL_VERSION:
        return None
    if checkpoint is not None:
        recorded = (report["models"][-1].get("checkpoint") or {}).get("path")
        if recorded is None or Path(recorded).resolve() != checkpoint.resolve():
            return None
    return report


def evaluate(command: list[str], out: Path, checkpoint: Path | None, what: str) -> dict:
    report = evaluation_of(out / "report.json", checkpoint)
    if report is None:
        _run([sys.executable, "-m", "evaluation", *command, "--out", str(out)], what)
        report = evaluation_of(out / "report.json", checkpoint)
        if report is None:
            raise ReplicationError(f"{what}: no report of it in {out}")
    return report


def pooled_report(base: dict, seeds: dict[int, dict], title: str) -> tuple[str, dict]:
    """Markdown with the pooled table (the seeds' per-problem mean against the base), every seed's Δ side by side
    (the spread the pooled interval, which resamples problems only, does not show) and every seed's table; the
    same as data. Raises ReplicationError for a seed evaluated on other problems or settings than the base."""
    num_samples = base["settings"]["num_samples"]
    base_run = base["models"][0]
    ids = [r["id"] for r in base_run["per_problem"]]
    for seed, report in seeds.items():
        if report.get("settings") != base["settings"] or [r["id"] for r in report["models"][-1]["per_problem"]] != ids:
            raise ReplicationError(f"seed {seed} was evaluated on other problems or settings than the base: delete "
                                   f"eval-seed-{seed} (and its run folder's evaluation runs again)")
    parts, data = [], {"seeds": {}, "pooled": None}
    for seed, report in seeds.items():
        runs = [base_run, {**report["models"][-1], "model": f"seed {seed}"}]
        table = compare(runs, num_samples)
        step = (report["models"][-1].get("checkpoint") or {}).get("step")
        parts.append(markdown_report(runs, table, f"seed {seed} (checkpoint step {step}): {title}"))
        data["seeds"][seed] = table
    if len(seeds) > 1:
        pooled = {"model": f"pooled ({len(seeds)} seeds)", "seconds": sum(r["models"][-1]["seconds"] for r in seeds.values()),
                  "seeds": [r["models"][-1] for r in seeds.values()]}
        table = compare([base_run, pooled], num_samples)
        spread = [f"| measure | {' | '.join(f'seed {seed}' for seed in seeds)} |", "|" + "---|" * (len(seeds) + 1)]
        spread += [f"| {name} | " + " | ".join(f"{data['seeds'][seed][name][1]['diff']:+.3f}" if name in data["seeds"][seed]
                                               else "" for seed in seeds) + " |" for name in table]
        parts[:0] = [markdown_report([base_run, pooled], table, f"pooled over seeds {', '.join(map(str, seeds))} "
                                     f"(per problem the mean over the seeds): {title}"),
                     "### each seed's Δ to the base\n\n" + "\n".join(spread) + "\n"]
        data["pooled"] = table
    return "\n".join(parts), data


TRAINING_OWN = ("--seed", "--output-dir", "--resume", "--preset")  # options the command sets itself
EVALUATION_OWN = ("--models", "--out", "--reuse", "--problems")


def _refuse_own_options(text: str, own: tuple[str, ...], name: str) -> None:
    for token in shlex.split(text):
        if token.split("=", 1)[0] in own:
            raise ReplicationError(f"{name}: {token.split('=', 1)[0]} is set by python -m evaluation.replicate itself")


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out).resolve()
    recipe = {"preset": args.preset, "train_args": args.train_args, "problems": args.problems,
              "eval_args": args.eval_args}
    try:
        if len(set(args.seeds)) != len(args.seeds):
            raise ReplicationError("--seeds: a seed is given twice")
        _refuse_own_options(args.train_args, TRAINING_OWN, "--train-args")
        _refuse_own_options(args.eval_args, EVALUATION_OWN, "--eval-args")
        if out.exists() and not out.is_dir():
            raise ReplicationError(f"--out {out} is a file; give a folder")
        kept = _read_json(out / "replicate.json")
        if kept is not None and kept != recipe:
            raise ReplicationError(f"{out} holds another recipe ({json.dumps(kept)}); give another --out")
        out.mkdir(parents=True, exist_ok=True)
        (out / "replicate.json").write_text(json.dumps(recipe, indent=2) + "\n")
        eval_args = ["--problems", args.problems, *shlex.split(args.eval_args)]
        earlier = {int(p.name.removeprefix("eval-seed-")) for p in out.glob("eval-seed-*")
                   if p.name.removeprefix("eval-seed-").lstrip("-").isdigit() and (p / "report.json").exists()}
        seeds = args.seeds + sorted(earlier - set(args.seeds))  # an earlier call's seeds are pooled too
        base, reports = None, {}

        def base_of(model: str) -> dict:
            """The base model's evaluation (run once), which every seed must have started from."""
            nonlocal base
            base = base or evaluate(["--models", model, *eval_args], out / "eval-base", None, f"base model {model}")
            if base["models"][0]["model"] != model:
                raise ReplicationError(f"seed {seed} trained {model}, not {base['models'][0]['model']}")
            return base

        for seed in seeds:
            run_dir, evaluated = out / f"seed-{seed}", out / f"eval-seed-{seed}"
            kept = evaluation_of(evaluated / "report.json", None)
            gone = not run_dir.exists() or (run_dir / "summary.json").exists() and checkpoint_of(run_dir) is None
            if kept is not None and gone:  # the run's checkpoints are gone (they are big), its verdict stays
                base_of(kept["models"][0]["model"])
                reports[seed] = kept
                continue
            train(seed, args, out)
            model = base_model(run_dir)
            base_of(model)
            checkpoint = checkpoint_of(run_dir)
            if checkpoint is None:
                raise ReplicationError(f"seed {seed}: {run_dir} ended without a checkpoint")
            reports[seed] = evaluate(["--models", model, str(run_dir), "--reuse", str(out / "eval-base" / "report.json"),
                                      *eval_args], evaluated, checkpoint, f"seed {seed}: evaluation")
        settings = base["settings"]
        title = (f"{args.problems}: {len(base['models'][0]['per_problem'])} problems, chain {settings['chain']}, "
                 f"n = {settings['num_samples']}, m = {settings['num_test_suites']}; Δ = difference to "
                 f"{base['models'][0]['model']} [95% paired bootstrap CI]")
        text, data = pooled_report(base, reports, title)
    except ReplicationError as e:
        print(f"replicate: error: {e}", file=sys.stderr)
        return 1
    (out / "report.md").write_text(text)
    (out / "report.json").write_text(json.dumps({**recipe, "seeds": seeds, "tables": data}, indent=2) + "\n")
    print(text)
    print(f"wrote {out / 'report.md'} and {out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
