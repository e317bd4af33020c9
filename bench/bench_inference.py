"""Inference throughput: `solve_batch` over N problems against `solve_problem` in a loop over the same
problems, same engine, same token budgets, timed alternately in one run.

    python bench/bench_inference.py                                   # tiny model, 8 example problems
    python bench/bench_inference.py --model default --problems 4 --stage-tokens 16 --code-tokens 48

Prints seconds per problem of each path, the ratio (loop / batch), and how many answers agree between the
two paths (greedy decoding; batched padding can change the last bits of the logits). The machine's load
varies: compare the ratio, not the seconds.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.problems import load_problem_set  # noqa: E402
from inference import InferenceConfig, InferenceEngine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tiny", help="generator and discriminator, shared (default: tiny)")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint instead of --model")
    parser.add_argument("--problems", type=int, default=8, help="example problems to solve (default: 8)")
    parser.add_argument("--num-candidates", type=int, default=1, help="candidates per problem (default: 1)")
    parser.add_argument("--stage-tokens", type=int, default=16, help="max new tokens per stage (default: 16)")
    parser.add_argument("--code-tokens", type=int, default=32, help="max new tokens of the code (default: 32)")
    parser.add_argument("--test-tokens", type=int, default=32, help="max new tokens per test suite (default: 32)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed rounds of each path; the fastest counts (default: 3)")
    parser.add_argument("--no-execute", action="store_true", help="do not run the problems' tests")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0 = torch's default); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    problems = load_problem_set("examples", args.problems)
    config = InferenceConfig(num_candidates=args.num_candidates, stage_tokens=args.stage_tokens,
                             code_tokens=args.code_tokens, test_tokens=args.test_tokens, num_test_suites=2)
    if args.checkpoint:
        engine = InferenceEngine.from_checkpoint(args.checkpoint, config=config)
    else:
        engine = InferenceEngine(args.model, args.model, config=config)
    execute = not args.no_execute
    with engine:
        engine.solve_problem(problems[0], execute=execute)  # warm up: sandbox workers, first generate
        loop_s, batch_s = [], []
        for _ in range(args.repeats):  # alternate the paths so a change of load hits both
            start = time.perf_counter()
            single = [engine.solve_problem(p, execute=execute) for p in problems]
            loop_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            batched = engine.solve_batch(problems, execute=execute)
            batch_s.append(time.perf_counter() - start)
    n = len(problems)
    loop, batch = min(loop_s) / n, min(batch_s) / n  # the least disturbed round of each
    same = sum(a.code == b.code for a, b in zip(single, batched))
    print(f"model {args.checkpoint or args.model}, {n} problems, {args.num_candidates} candidate(s), tokens: "
          f"stage {args.stage_tokens}, code {args.code_tokens}, execute {execute}, threads {args.threads or 'default'}")
    print(f"solve_problem loop : {loop:7.2f} s/problem  (rounds: {', '.join(f'{s:.1f}' for s in loop_s)} s)")
    print(f"solve_batch        : {batch:7.2f} s/problem  (rounds: {', '.join(f'{s:.1f}' for s in batch_s)} s)")
    print(f"ratio loop / batch : {loop / batch:7.2f}x   same answers: {same}/{n}")


if __name__ == "__main__":
    main()
