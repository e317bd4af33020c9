#!/usr/bin/env python3
"""Solve programming problems with a trained checkpoint (or an untrained base model).

    python run_inference.py --checkpoint runs/a/best --problems-file examples --execute
    python run_inference.py --checkpoint runs/a --which latest --problem my_problem.json --execute
    python run_inference.py --model default --problem "Return the sum of the squares of a list." \\
        --entry-point sum_squares --num-candidates 4 --max-attempts 2
    python run_inference.py --checkpoint runs/a/best --problems-file humaneval --limit 10 --execute --json

Each answer shows the five reasoning stages, the code and, with --execute, a pass/fail table of the
problem's own tests. The problem's tests are only run on the final answer: ranking candidates
(--num-candidates) and repairing (--max-attempts) use the discriminator's tests.
"""
import argparse
import json
import logging
import sys
import time
from dataclasses import fields
from pathlib import Path

from data.problems import Problem, ProblemFormatError, load_problem_set, problem_from_dict
from inference.config import InferenceConfig
from reasoning.stages import STAGES
from training.config import add_dataclass_options

PROG = "run_inference.py"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    models = parser.add_argument_group("models (one of --checkpoint or --model)")
    source = models.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", metavar="PATH",
                        help="a checkpoint folder, a run folder (its best checkpoint by validation, its latest when "
                             "the run had no validation slice, or --which), or runs/NAME/best | runs/NAME/latest")
    source.add_argument("--model", metavar="NAME",
                        help="an untrained base instead: default (Qwen2.5-Coder-0.5B-Instruct), smollm2-135m, tiny, a Hugging Face "
                             "id or a local folder (default: default, when --checkpoint is not given)")
    models.add_argument("--which", choices=["best", "latest"], default=None,
                        help="with a run folder for --checkpoint: its best or its latest checkpoint (default: best "
                             "when the run validated its checkpoints, else latest)")
    models.add_argument("--discriminator-model", metavar="NAME", default="same",
                        help="with --model: the discriminator; 'same' shares the generator's weights, 'none' "
                             "means no discriminator (no ranking tests) (default: same)")
    models.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cuda, cuda:1, mps or cpu")
    models.add_argument("--dtype", default="auto", help="auto (bf16 on a capable GPU, else fp32), float32, bfloat16")
    models.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the checkpoint's files")
    models.add_argument("--allow-unisolated", action="store_true",
                        help="let the sandbox's 'process' level run as root, where bubblewrap and unshare cannot "
                             "start: no network, file or process isolation (refused without it; as in run_training.py)")

    data = parser.add_argument_group("problems (one of --problem or --problems-file)")
    which = data.add_mutually_exclusive_group()
    which.add_argument("--problem", metavar="FILE_OR_TEXT",
                       help="a JSON file holding one problem (project format), or a problem description as "
                            "text together with --entry-point (then there are no tests to execute)")
    which.add_argument("--problems-file", metavar="SPEC",
                       help="a batch: a JSON file in the project format, 'train', 'examples', 'heldout' or 'humaneval'")
    data.add_argument("--entry-point", metavar="NAME", help="with a text --problem: the function to write")
    data.add_argument("--signature", default="", help="with a text --problem: e.g. 'def f(xs: list[int]) -> int:'")
    data.add_argument("--limit", type=int, default=0, help="with --problems-file: only the first N problems (0 = all)")
    data.add_argument("--batch-size", type=int, default=4,
                      help="problems solved together (one generate call per stage for all of them) (default: 4)")

    out = parser.add_argument_group("output")
    out.add_argument("--execute", action="store_true", help="run each problem's own tests on its answer and show them")
    out.add_argument("--chain-only", action="store_true",
                     help="only the five reasoning stages (greedy), no code or tests: InferenceEngine.get_reasoning_chain")
    out.add_argument("--json", action="store_true", help="print one JSON object (results and summary) instead of text")
    out.add_argument("--verbose", action="store_true", help="log progress (INFO) to stderr")

    add_dataclass_options(parser.add_argument_group("solving (InferenceConfig)"), InferenceConfig)
    return parser.parse_args(argv)


def read_problems(args) -> list[Problem]:
    """The problems to solve; `ProblemFormatError` with a one-line reason when they cannot be read."""
    if args.problems_file:
        return load_problem_set(args.problems_file, args.limit)
    text = args.problem
    path = Path(text)
    try:  # a long one-line statement is not a file name (and may be too long to be one)
        is_file = len(text) < 4096 and "\n" not in text and path.is_file()
    except OSError:
        is_file = False
    if is_file:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as e:
            raise ProblemFormatError(f"{path}: cannot read the problem file: {e}") from None
        except json.JSONDecodeError as e:
            raise ProblemFormatError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
        records = data.get("problems", [data]) if isinstance(data, dict) else data
        if not isinstance(records, list) or len(records) != 1:
            count = len(records) if isinstance(records, list) else 0
            raise ProblemFormatError(f"{path}: --problem needs exactly one problem, the file holds {count}; "
                                     f"use --problems-file for a batch")
        return [problem_from_dict(records[0], str(path))]
    if text.endswith(".json") or not args.entry_point:
        raise ProblemFormatError(f"{text[:60]}: no such problem file; to give a problem as text, add "
                                 f"--entry-point NAME")
    return [Problem(id=args.entry_point, title=args.entry_point, description=text, entry_point=args.entry_point,
                    reference_solution="", tests="", signature=args.signature)]


def print_chain(chain, problem: Problem) -> None:
    """The problem's id and title, then each reasoning stage under its title."""
    print(f"\n{'=' * 80}\n{problem.id}: {problem.title}\n{'=' * 80}")
    for stage in STAGES:
        print(f"\n[{stage.title}]\n{chain.get(stage.name, '').strip() or '(empty)'}")


def print_result(result, problem: Problem, execute: bool) -> None:
    """Each stage under its title, the code, and the table of the problem's tests."""
    print_chain(result.chain, problem)
    n = len(result.candidates)
    chosen = result.candidates[result.chosen]
    detail = f"candidate {result.chosen + 1} of {n}, attempt {chosen.attempt}, agreement score {result.score:g}"
    print(f"\n[Code] ({detail}; {len(result.tests)} discriminator test suites)")
    print(f"```python\n{result.code.rstrip()}\n```" if result.code_ok else f"(no usable code: {chosen.reason})")
    if not execute:
        return
    if result.execution is None:
        print("\n[Tests] none to execute (the problem has no tests)")
        return
    ex = result.execution
    print(f"\n[Tests] {ex.passed}/{ex.total} of the problem's tests passed ({ex.status})")
    for name, outcome in ex.test_outcomes.items():
        print(f"  {'PASS' if outcome == 'passed' else 'FAIL'}  {name}" + ("" if outcome in ("passed", "failed")
                                                                      else f" ({outcome})"))


def print_chains(chains, problems: list[Problem], as_json: bool, seconds: float) -> int:
    """`--chain-only`: each problem's stages under their titles, or one JSON object."""
    if as_json:
        print(json.dumps({"isolation": None,  # no code ran
                          "results": [{"problem_id": p.id, "chain": c} for c, p in zip(chains, problems)],
                          "summary": {"problems": len(chains), "seconds": round(seconds, 2)}}, indent=2))
        return 0
    for chain, problem in zip(chains, problems):
        print_chain(chain, problem)
    print(f"\n{len(chains)} problem(s), reasoning only, {seconds:.1f} s")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def fail(message: str, code: int = 1) -> int:
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return code

    if not args.problem and not args.problems_file:
        return fail("give --problem FILE_OR_TEXT or --problems-file SPEC", 2)
    if args.which and not args.checkpoint:
        return fail("--which needs --checkpoint (a run folder)", 2)
    if args.checkpoint and args.discriminator_model != "same":
        return fail("--discriminator-model goes with --model; a checkpoint brings its own trained discriminator", 2)
    if args.chain_only and args.execute:
        return fail("--chain-only writes no code, so there is nothing to --execute", 2)
    if args.batch_size < 1 or args.limit < 0:
        return fail("--batch-size must be >= 1 and --limit >= 0 (0 = all)", 2)
    try:
        config = InferenceConfig(**{f.name: getattr(args, f.name) for f in fields(InferenceConfig)})
        problems = read_problems(args)
    except (ValueError, ImportError) as e:  # ProblemFormatError is a ValueError
        return fail(str(e).splitlines()[0] if str(e) else type(e).__name__, 2 if type(e) is ValueError else 1)

    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from inference.inference_engine import InferenceEngine  # heavy imports after the arguments are checked
    from sandbox import SandboxConfig
    from training.checkpoint_manager import CheckpointError, checkpoint_choice

    start = time.perf_counter()
    sandbox_config = SandboxConfig(allow_unisolated=args.allow_unisolated)
    try:
        if args.checkpoint:
            engine = InferenceEngine.from_checkpoint(args.checkpoint, args.which, args.device, args.dtype,
                                                     config=config, verify=not args.no_verify,
                                                     sandbox_config=sandbox_config)
        else:
            name = args.model or "default"
            disc = {"same": name, "none": None}.get(args.discriminator_model, args.discriminator_model)
            disc = None if args.chain_only else disc  # the chain is the generator's alone
            engine = InferenceEngine(name, disc, args.device, args.dtype, config=config, sandbox_config=sandbox_config)
    except (CheckpointError, OSError, ValueError, RuntimeError) as e:
        return fail(str(e).splitlines()[0] if str(e) else type(e).__name__)
    if engine.checkpoint is not None:  # a run folder means one of its checkpoints: say which one, and why
        print(f"{PROG}: {checkpoint_choice(args.checkpoint, engine.checkpoint, args.which, 'default')}", file=sys.stderr)
    results, isolation = [], None
    try:
        with engine, logging_redirect_tqdm(), tqdm(total=len(problems), desc="solving", unit="problem",
                                                   disable=len(problems) < 2) as bar:  # log lines above the bar
            for i in range(0, len(problems), args.batch_size):
                batch = problems[i:i + args.batch_size]
                results += (engine.get_reasoning_chain(batch) if args.chain_only
                            else engine.solve_batch(batch, execute=args.execute))
                bar.update(len(batch))
            isolation = engine.isolation  # (None when no code ran: --chain-only)
    except KeyboardInterrupt:
        return fail(f"interrupted after {len(results)} of {len(problems)} problems", 130)
    except (OSError, RuntimeError) as e:
        return fail(f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    if args.chain_only:
        return print_chains(results, problems, args.json, time.perf_counter() - start)
    executed = [r for r in results if r.execution is not None]
    totals = {"problems": len(results), "executed": len(executed), "solved": sum(bool(r.passed) for r in executed),
              "well_formed": sum(r.code_ok for r in results), "seconds": round(time.perf_counter() - start, 2)}
    if args.json:
        print(json.dumps({"checkpoint": str(engine.checkpoint) if engine.checkpoint else None,
                          "model": None if args.checkpoint else (args.model or "default"), "isolation": isolation,
                          "results": [r.to_dict() for r in results], "summary": totals}, indent=2))
        return 0
    for result, problem in zip(results, problems):
        print_result(result, problem, args.execute)
    solved = f", {totals['solved']}/{totals['executed']} passed all of their tests" if args.execute else ""
    print(f"\n{totals['problems']} problem(s), {totals['well_formed']} well-formed answer(s){solved}, "
          f"{totals['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
