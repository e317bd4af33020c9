"""Compare models on held-out problems, paired by problem, with bootstrap confidence intervals.

    python -m evaluation --models default runs/a/best                 # base against trained, held-out set
    python -m evaluation --models default --chain none                # the same model asked directly

For every model (a name, a folder, or a checkpoint with both trained models) and every problem:

    chain        the five reasoning stages, greedy (`--chain full`), or none: the code asked for directly
    greedy code  one code after the chain                          -> pass@1 (greedy)
    sampled      n codes after the same chain (`--num-samples`)     -> pass@1 (sampled), pass@k, unbiased
    tests        m test suites from the discriminator (`--num-test-suites`), written against the chain
                 -> valid-test rate (tests that pass on the reference), mutation score (share of the
                 reference's non-equivalent mutants their valid tests kill, `scoring.mutation`), test
                 diversity, and ranked@1: the share of problems whose discriminator-ranked best sampled code
                 (CodeT dual agreement) passes the problem's own tests, which never choose it

Each measure is a mean over problems. Every model after the first gets, per measure, its difference to
the first with a 95% paired bootstrap interval over problems (resampling problems, not samples): an
interval that excludes 0 is a difference the problem set can see. Writes report.json and report.md, which
also record the checkpoint each run folder resolved to (its path and step) and the sandbox isolation in force.
As root where the sandbox can only run unisolated ('process' level), `--allow-unisolated` is needed.

The standard held-out set (`--problems heldout`) is a fixed, seeded slice of 80 HumanEval problems;
`humaneval` is all 164. A checkpoint whose recorded training problems overlap the evaluation set is
refused (`--allow-overlap` evaluates it anyway, marked in the report).

`--reuse REPORT.json` takes a named model's per-problem results (`default`, a Hugging Face id: not a folder or
checkpoint, whose contents can change) from an earlier report instead of running it again, the base model of a
comparison typically, only when that report used the same problems, settings and batch size and the same
version of the evaluation (`EVAL_VERSION`, in report.json); the new report marks the model as reused.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from scoring.measure import CHAINS, EVAL_VERSION, EvalSettings, ProblemResult, evaluate_problems, measures

logger = logging.getLogger(__name__)

BOOTSTRAP_SAMPLES = 10_000


# ---------------------------------------------------------------- comparing models
def paired_bootstrap(base: np.ndarray, other: np.ndarray, samples: int = BOOTSTRAP_SAMPLES,
                     seed: int = 0) -> tuple[float, float, float]:
    """(mean of other − base, 2.5th and 97.5th percentile of that mean over problems resampled with
    replacement). `base` and `other` are per-problem values of the same problems, in the same order."""
    diff = np.asarray(other, dtype=float) - np.asarray(base, dtype=float)
    if diff.size == 0:
        return math.nan, math.nan, math.nan
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, diff.size, size=(samples, diff.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def per_problem_values(run: dict, fn) -> list[float | None]:
    """`fn` of each of a run's problem results; for a pooled run (`{"model": ..., "seeds": [run, ...]}`, one
    recipe trained with several seeds) the mean over its seeds per problem, None where a seed has none."""
    columns = [[fn(ProblemResult(**r)) for r in member["per_problem"]] for member in run.get("seeds") or [run]]
    return [None if any(v is None for v in values) else sum(values) / len(values) for values in zip(*columns)]


def compare(runs: list[dict], num_samples: int) -> dict:
    """Per measure and model: the mean over the problems where the measure is defined for every model,
    and for each model after the first the paired difference to the first with its 95% interval (a pooled
    run counts per problem as its seeds' mean: `per_problem_values`)."""
    table = {}
    for name, fn in measures(num_samples).items():
        values = [per_problem_values(run, fn) for run in runs]
        common = [i for i in range(len(values[0])) if all(v[i] is not None for v in values)]
        if not common:
            continue
        arrays = [np.array([v[i] for i in common], dtype=float) for v in values]
        table[name] = [{"model": run["model"], "mean": float(a.mean()), "problems": len(common)}
                       for run, a in zip(runs, arrays)]
        for row, a in zip(table[name][1:], arrays[1:]):
            row["diff"], row["ci_low"], row["ci_high"] = paired_bootstrap(arrays[0], a)
    return table


def markdown_report(runs: list[dict], table: dict, title: str) -> str:
    """One Markdown table: a row per measure, per model its mean and (after the first) Δ [95% CI]."""
    head = ["measure", *[f"{r['model']}" for r in runs]]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, rows in table.items():
        cells = [f"{name} (n={rows[0]['problems']})"]
        for row in rows:
            text = f"{row['mean']:.3f}"
            if "diff" in row:
                text += f" (Δ {row['diff']:+.3f} [{row['ci_low']:+.3f}, {row['ci_high']:+.3f}])"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("| minutes | " + " | ".join(f"{r['seconds'] / 60:.1f}" + (" (reused)" if r.get("reused") else "")
                                              for r in runs) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- models and checkpoints
def load_models(spec: str, device: str, use_discriminator: bool):
    """(generator, discriminator or None, `Checkpoint` or None) for a model name, folder, or checkpoint (a
    checkpoint folder, or a run folder: its best checkpoint when the run validated its checkpoints, else its
    latest (`run_default`); `runs/x/latest` also works)."""
    from models import LLMDiscriminator, LLMGenerator, load_model
    from training.checkpoint_manager import load_checkpoint, read_resolved

    path = Path(spec)
    alias = path.name in ("best", "latest") and (path.parent / "checkpoints").is_dir()
    if alias or (path / "manifest.json").exists() or (path / "checkpoints").is_dir():
        def read(folder: Path):
            ckpt = load_checkpoint(folder)
            generator = LLMGenerator(load_model(str(ckpt.generator_dir), device))
            discriminator = LLMDiscriminator(load_model(str(ckpt.discriminator_dir), device)) if use_discriminator else None
            return generator, discriminator, ckpt

        return read_resolved(path, None, "default", read)  # retried once if a trainer prunes it meanwhile
    if path.name in ("best", "latest") and not path.parent.exists():
        raise FileNotFoundError(f"{spec}: no such run folder")
    pair = load_model(spec, device)
    return LLMGenerator(pair), LLMDiscriminator(pair) if use_discriminator else None, None


def reusable_runs(path: str, problems, settings: EvalSettings, batch_size: int) -> dict:
    """model spec -> run dict of the earlier report at `path`, or ValueError when it was measured otherwise
    (another problem list, other settings or batch size, another `EVAL_VERSION`: its results would not pair with
    this run's)."""
    try:
        report = json.loads(Path(path).read_text())
        runs = {run["model"]: run for run in report["models"]}
        same = (report["settings"] == asdict(settings) and report.get("batch_size") == batch_size
                and report.get("eval_version") == EVAL_VERSION
                and all([r["id"] for r in run["per_problem"]] == [p.id for p in problems] for run in runs.values()))
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"--reuse {path}: not a readable evaluation report ({e})") from None
    if not same:
        raise ValueError(f"--reuse {path}: measured on other problems, settings or batch size, or by another "
                         f"version of the evaluation (this is version {EVAL_VERSION}); run it again")
    return runs


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    d = EvalSettings()
    parser.add_argument("--models", nargs="+", default=["default"], metavar="MODEL",
                        help="models to compare, the first is the baseline: 'default', 'smollm2-135m', 'tiny', a "
                             "Hugging Face id or folder, a checkpoint folder, a run folder (its best checkpoint by "
                             "validation, its latest when the run had no validation slice), or runs/x/best | runs/x/latest")
    parser.add_argument("--problems", default="heldout",
                        help="'heldout' (80 seeded HumanEval problems, the standard set), 'humaneval' (all 164), "
                             "'train', 'examples', a problem file (JSON, JSONL or Parquet; this project's records, or "
                             "HumanEval- or MBPP-shaped ones) or a dataset id owner/name[:split] (default: heldout)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N problems (0 = all)")
    parser.add_argument("--skip", type=int, default=0, help="skip the first N problems")
    parser.add_argument("--chain", choices=CHAINS, default=d.chain,
                        help="full: the five greedy reasoning stages before the code; none: ask for the code directly")
    parser.add_argument("--num-samples", type=int, default=d.num_samples,
                        help=f"sampled codes per problem for pass@k and ranked@1, 0 = greedy only (default: {d.num_samples})")
    parser.add_argument("--num-test-suites", type=int, default=d.num_test_suites,
                        help=f"discriminator test suites per problem (default: {d.num_test_suites})")
    parser.add_argument("--no-discriminator", action="store_true", help="generator measures only")
    parser.add_argument("--temperature", type=float, default=d.temperature, help=f"sampling temperature (default: {d.temperature})")
    parser.add_argument("--stage-tokens", type=int, default=d.stage_tokens, help=f"max new tokens per stage (default: {d.stage_tokens})")
    parser.add_argument("--code-tokens", type=int, default=d.code_tokens, help=f"max new tokens of a code (default: {d.code_tokens})")
    parser.add_argument("--test-tokens", type=int, default=d.test_tokens, help=f"max new tokens of a test suite (default: {d.test_tokens})")
    parser.add_argument("--mutants", type=int, default=d.mutants_per_problem,
                        help=f"non-equivalent mutants per reference for the mutation score (default: {d.mutants_per_problem})")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="problems per batch: a batch's stages, codes and test suites are one batched generation "
                             "each (default: 16)")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (default: auto)")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"sampling seed (default: {d.seed})")
    parser.add_argument("--allow-overlap", action="store_true",
                        help="evaluate a checkpoint even when it was trained on some of the evaluation problems")
    parser.add_argument("--reuse", metavar="REPORT", default=None,
                        help="report.json of an earlier evaluation: named models listed there (not folders or checkpoints) "
                             "are not run again when it used the same problems, settings, batch size and evaluation "
                             "version")
    parser.add_argument("--allow-unisolated", action="store_true",
                        help="let the sandbox's 'process' level run as root, where bubblewrap and unshare cannot start: "
                             "no network, file or process isolation (refused without it; as in run_training.py)")
    parser.add_argument("--out", default="eval_report", help="folder for report.json and report.md (default: eval_report)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from tqdm.contrib.logging import logging_redirect_tqdm

    from data.problems import content_hash, load_problem_set, validate_problem_set
    from sandbox import Sandbox, SandboxConfig
    from training.checkpoint_manager import checkpoint_choice

    def fail(message: str, code: int) -> int:
        print(f"evaluation: error: {message}", file=sys.stderr)
        return code

    try:
        if args.batch_size < 1 or args.limit < 0 or args.skip < 0:
            raise ValueError("--batch-size must be >= 1, --limit and --skip >= 0")
        settings = EvalSettings(args.chain, args.num_samples, 0 if args.no_discriminator else args.num_test_suites,
                                args.temperature, 0.95, args.stage_tokens, args.code_tokens, args.test_tokens,
                                args.mutants, args.seed)
        problems = load_problem_set(args.problems)[args.skip:][:args.limit or None]
        out = Path(args.out)
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out} is a file; give a folder")
    except ValueError as e:  # ProblemFormatError too
        return fail(str(e), 2)
    runs = []
    try:
        sandbox = Sandbox(SandboxConfig(allow_unisolated=args.allow_unisolated))
    except RuntimeError as e:  # no isolation this machine allows: one line saying what would
        return fail(str(e), 1)
    with logging_redirect_tqdm(), sandbox:  # log lines above the progress bars, not through them
        problems, rejected = validate_problem_set(problems, sandbox)
        if not problems:
            return fail("no valid problem selected" + (f" ({len(rejected)} failed validation)" if rejected else ""), 2)
        try:
            reused = reusable_runs(args.reuse, problems, settings, args.batch_size) if args.reuse else {}
        except ValueError as e:
            return fail(str(e), 2)
        mutants: dict = {}
        for spec in args.models:
            if spec in reused and not Path(spec).exists():  # a folder or checkpoint may have changed since
                runs.append({**reused[spec], "reused": args.reuse})
                print(f"{spec}: results reused from {args.reuse}", file=sys.stderr)
                continue
            try:
                generator, discriminator, ckpt = load_models(spec, args.device, settings.num_test_suites > 0)
            except (OSError, RuntimeError, ValueError) as e:
                message = (str(e).strip().splitlines() or [type(e).__name__])[0]
                return fail(message if message.startswith(spec) else f"{spec}: {message}", 1)
            if ckpt is not None:  # a run folder means one of its checkpoints: say which one, and why
                print(f"{spec}: {checkpoint_choice(spec, ckpt.path, None, 'default')}", file=sys.stderr)
            trained = set(ckpt.trainer_state.get("training_problems", []) if ckpt else [])  # their content hashes
            seen = [p.id for p in problems if content_hash(p) in trained]
            if seen and not args.allow_overlap:
                return fail(f"{spec} was trained on {len(seen)} of these problems (e.g. {seen[0]}); evaluate on "
                            "other problems, or pass --allow-overlap", 2)
            if seen:
                logger.warning("%s was trained on %d of the evaluation problems", spec, len(seen))
            start = time.perf_counter()
            per_problem = evaluate_problems(generator, discriminator, problems, sandbox, settings, args.batch_size,
                                            f"evaluating {spec}", mutants)
            runs.append({"model": spec, "seconds": time.perf_counter() - start, "overlap": len(seen),
                         "checkpoint": {"path": str(ckpt.path), "step": ckpt.step} if ckpt else None,
                         "per_problem": [asdict(r) for r in per_problem]})
            del generator, discriminator
    table = compare(runs, settings.num_samples)
    title = (f"{args.problems}: {len(problems)} problems, chain {settings.chain}, n = {settings.num_samples}, "
             f"m = {settings.num_test_suites}; Δ = difference to {runs[0]['model']} [95% paired bootstrap CI]")
    isolation = sandbox.isolation_record()
    report = markdown_report(runs, table, title) + "".join(
        f"\n{run['model']}: checkpoint {run['checkpoint']['path']} (step {run['checkpoint']['step']})"
        for run in runs if run.get("checkpoint")) + f"\nsandbox isolation: {isolation['description']}\n"
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.md").write_text(report)
    (out / "report.json").write_text(json.dumps({"problems": args.problems, "skip": args.skip, "limit": args.limit,
                                                 "settings": asdict(settings), "eval_version": EVAL_VERSION,
                                                 "rejected": rejected,
                                                 "batch_size": args.batch_size, "isolation": isolation,
                                                 "measures": table, "models": runs}, indent=2) + "\n")
    print(report)
    print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return 0
