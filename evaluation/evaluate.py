"""Evaluate models or checkpoints side by side: pass@k through the project's sandbox, and best-of-n with
the Discriminator's ranking (CodeT dual agreement, `inference.InferenceEngine`).

    python -m evaluation --models default runs/a/best --problems humaneval --limit 20 --num-samples 4

For each model and problem the Generator writes n candidates (the five stages, then code; sampled when
n > 1). Every well-formed candidate runs against the problem's own tests: c of n pass, and
pass@k = 1 − C(n−c, k) / C(n, k) (`evaluation.pass_at_k`). When the model has a Discriminator and n > 1,
`ranked@1` is the share of problems whose top-ranked candidate passes: the hidden tests never choose it.
Writes `report.json` and `report.md` (a side-by-side table) into `--out`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from evaluation.metrics import aggregate_report
from evaluation.pass_at_k import estimate_pass_at_k

logger = logging.getLogger(__name__)


@dataclass
class ModelReport:
    """One model's results on a problem set."""

    model: str  # the name or checkpoint as given
    num_problems: int
    num_samples: int
    pass_at_k: dict[str, float]  # "pass@1" -> mean over problems
    ranked_at_1: float | None  # share of problems whose top-ranked candidate passes (None: no ranking)
    format_ok: float  # share of candidates that parse and define the entry point
    seconds_per_problem: float
    metrics: dict[str, float] = field(default_factory=dict)  # `aggregate_report` keys (eval/...)
    per_problem: list[dict] = field(default_factory=list)  # id, n, c, ranked_passed


def build_engine(spec: str, device: str, sandbox, config, use_discriminator: bool):
    """An `InferenceEngine` from a checkpoint (folder, or run folder + best/latest) or a model name."""
    from inference.inference_engine import InferenceEngine

    path = Path(spec)
    alias = path.name in ("best", "latest") and (path.parent / "checkpoints").is_dir()
    if alias or (path / "manifest.json").exists() or (path / "checkpoints").is_dir():
        which = "best" if (path / "checkpoints").is_dir() else None
        engine = InferenceEngine.from_checkpoint(path, which=which, device=device, sandbox=sandbox, config=config)
        if not use_discriminator:
            engine.discriminator = None
        return engine
    if path.name in ("best", "latest") and not path.parent.exists():
        raise FileNotFoundError(f"{spec}: no such run folder")
    return InferenceEngine(spec, spec if use_discriminator else None, device=device, sandbox=sandbox, config=config)


def evaluate_model(spec: str, problems, num_samples: int, ks: list[int], sandbox, config, device: str = "auto",
                   batch_size: int = 4, use_discriminator: bool = True) -> ModelReport:
    """pass@k (and ranked@1 with a discriminator) of one model on `problems`."""
    engine = build_engine(spec, device, sandbox, config, use_discriminator)
    per_problem, chains, codes, candidates_ok = [], [], [], []
    start = time.perf_counter()
    try:
        for i in tqdm(range(0, len(problems), batch_size), desc=f"evaluating {spec}", unit="batch"):
            batch = problems[i:i + batch_size]
            results = engine.solve_batch(batch, execute=False, num_candidates=num_samples, max_attempts=1)
            for problem, result in zip(batch, results):
                ok = [c for c in result.candidates if c.ok]
                outcomes = [sandbox.execute_tests(c.code, problem.tests) for c in ok]
                passed = [o.all_passed for o in outcomes]
                chosen = result.candidates[result.chosen]
                ranked = None
                if engine.discriminator is not None and num_samples > 1:
                    ranked = bool(chosen.ok and passed[ok.index(chosen)])
                per_problem.append({"id": problem.id, "n": len(result.candidates), "c": int(sum(passed)),
                                    "ranked_passed": ranked})
                candidates_ok += [c.ok for c in result.candidates]
                chains.append(result.chain)
                codes.append(result.code)
    finally:
        engine.close()
    n = np.array([p["n"] for p in per_problem])
    c = np.array([p["c"] for p in per_problem])
    ranked = [p["ranked_passed"] for p in per_problem if p["ranked_passed"] is not None]
    return ModelReport(
        model=spec,
        num_problems=len(problems),
        num_samples=num_samples,
        pass_at_k={f"pass@{k}": float(estimate_pass_at_k(n, c, k).mean()) for k in ks if k <= num_samples},
        ranked_at_1=float(np.mean(ranked)) if ranked else None,
        format_ok=float(np.mean(candidates_ok)) if candidates_ok else 0.0,
        seconds_per_problem=(time.perf_counter() - start) / max(len(problems), 1),
        metrics=aggregate_report(chains=chains, codes=codes, problems=list(problems)),
        per_problem=per_problem,
    )


def markdown_table(reports: list[ModelReport], title: str) -> str:
    """Side-by-side Markdown table, one row per model."""
    ks = sorted({k for r in reports for k in r.pass_at_k}, key=lambda s: int(s.split("@")[1]))
    head = ["model", *ks, "ranked@1", "well-formed", "coherence", "s/problem"]
    lines = [f"### {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reports:
        cells = [r.model, *[f"{r.pass_at_k.get(k, float('nan')):.3f}" for k in ks],
                 "–" if r.ranked_at_1 is None else f"{r.ranked_at_1:.3f}", f"{r.format_ok:.2f}",
                 f"{r.metrics.get('eval/reasoning_coherence', float('nan')):.2f}", f"{r.seconds_per_problem:.1f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m evaluation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["default"], metavar="MODEL",
                        help="models to compare: 'default', 'tiny', a Hugging Face id or folder, a checkpoint "
                             "folder, or a run folder (its best checkpoint) / runs/x/latest")
    parser.add_argument("--problems", default="examples",
                        help="'examples', 'humaneval', or a problem JSON file (default: examples)")
    parser.add_argument("--limit", type=int, default=0, help="only the first N problems (0 = all)")
    parser.add_argument("--skip", type=int, default=0, help="skip the first N problems (held-out slices)")
    parser.add_argument("--num-samples", type=int, default=4, help="candidates per problem, n (default: 4)")
    parser.add_argument("--k", default="1,2,4", help="comma-separated k of pass@k, each <= n (default: 1,2,4)")
    parser.add_argument("--no-discriminator", action="store_true", help="no ranking: ranked@1 is not reported")
    parser.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default: 0.7)")
    parser.add_argument("--stage-tokens", type=int, default=0, help="max new tokens per stage (0 = stage budget)")
    parser.add_argument("--code-tokens", type=int, default=0, help="max new tokens of code (0 = default 320)")
    parser.add_argument("--test-tokens", type=int, default=0, help="max new tokens of a test suite (0 = 320)")
    parser.add_argument("--batch-size", type=int, default=4, help="problems per batched generate (default: 4)")
    parser.add_argument("--device", default="auto", help="auto, cuda, mps or cpu (default: auto)")
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")
    parser.add_argument("--out", default="eval_report", help="folder for report.json and report.md")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    from data.problems import ProblemFormatError, load_problem_set
    from inference.inference_engine import InferenceConfig
    from sandbox import Sandbox

    try:
        ks = [int(k) for k in args.k.split(",") if k.strip()]
        config = InferenceConfig(num_candidates=args.num_samples, temperature=args.temperature, seed=args.seed,
                                 stage_tokens=args.stage_tokens, code_tokens=args.code_tokens,
                                 test_tokens=args.test_tokens)
        problems = load_problem_set(args.problems)[args.skip:]
        problems = problems[:args.limit] if args.limit > 0 else problems
    except (ValueError, ProblemFormatError) as e:
        print(f"evaluation: error: {e}", file=sys.stderr)
        return 2
    if not problems:
        print("evaluation: error: no problems selected", file=sys.stderr)
        return 2
    reports = []
    with Sandbox() as sandbox:
        for spec in args.models:
            try:
                reports.append(evaluate_model(spec, problems, args.num_samples, ks, sandbox, config, args.device,
                                              args.batch_size, not args.no_discriminator))
            except (OSError, RuntimeError, ValueError) as e:
                print(f"evaluation: error: {spec}: {str(e).splitlines()[0]}", file=sys.stderr)
                return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    title = f"{args.problems}: {len(problems)} problems, n = {args.num_samples}"
    table = markdown_table(reports, title)
    (out / "report.md").write_text(table)
    (out / "report.json").write_text(json.dumps({"problems": args.problems, "skip": args.skip,
                                                 "models": [asdict(r) for r in reports]}, indent=2) + "\n")
    print(table)
    print(f"wrote {out / 'report.json'} and {out / 'report.md'}")
    return 0
