"""Generation benchmark: speed of the wrappers' batched sampling, and quality of the default model.

    python3 bench/bench_generation.py speed    [--model default] [--new-tokens 64] [--batches 1 4 16]
    python3 bench/bench_generation.py quality  [--model default] [--samples 4] [--chain]

speed: tokens per second of `LLMGenerator.generate_stage_output` (the decoding loop `models.base.decode`) at
each batch size, beside transformers' raw `model.generate` on the same prompt ids with the same settings, in the same run, repetitions interleaved
(so load from other processes hits every variant alike). Rows: raw generate with the stock transformers
sampler, raw generate with the top-k-first sampler, and the wrapper with each. Every row generates
exactly --new-tokens tokens (EOS suppressed), so tokens/s compare like for like.

quality: on data/example_problems.json, pass@k of sampled code against each problem's ground-truth tests
(k = --samples; with n = k samples pass@k is "any sample passes"), and the validity of sampled tests on
the reference solutions: the share of test suites that are well-formed, of well-formed suites that pass
whole on the reference, and of test functions that pass on it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from data.problems import EXAMPLE_PROBLEMS, load_problems  # noqa: E402
from models import LLMDiscriminator, LLMGenerator, SamplingConfig  # noqa: E402
from models.base import build_token_batch  # noqa: E402
from reasoning.stages import STAGES, generator_prompt  # noqa: E402


def bench_speed(args) -> None:
    problem = load_problems(EXAMPLE_PROBLEMS)[0]
    gen = LLMGenerator(args.model, device=args.device, dtype=args.dtype)
    n = args.new_tokens
    base = SamplingConfig(max_new_tokens=n, min_new_tokens=n)
    fast, stock = base, SamplingConfig(**{**base.__dict__, "top_k_first": 0})
    prompt_ids = gen.encode(gen.format_prompt(generator_prompt(problem, "understand", {})))
    print(f"model {args.model} on {gen.device} ({gen.model.dtype}), torch threads {torch.get_num_threads()}, "
          f"prompt {len(prompt_ids)} tokens, {n} new tokens per row, temperature {base.temperature}, "
          f"top-p {base.top_p}, top-k-first {base.top_k_first}", flush=True)

    def raw(batch_size: int, settings: SamplingConfig) -> int:
        batch = build_token_batch([prompt_ids] * batch_size, [[]] * batch_size, gen.pad_id, gen.device)
        if settings.top_k_first:  # the sampler draws the token; generate's greedy step then picks it
            kwargs = {"do_sample": False, "logits_processor": [settings.sampler(gen.model.config.vocab_size)]}
        else:
            kwargs = {"do_sample": True, "top_k": settings.top_k, "top_p": settings.top_p,
                      "temperature": settings.temperature}
        out = gen.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                 max_new_tokens=n, min_new_tokens=n, pad_token_id=gen.pad_id, **kwargs)
        return (out.shape[1] - batch.prompt_width) * batch_size

    def wrapped(batch_size: int, settings: SamplingConfig) -> int:
        (records,) = gen.generate_stage_output([problem], "understand", {}, batch_size, sampling=settings)
        return sum(len(r.response_ids) for r in records)

    variants = {
        "raw generate, stock top-p": lambda b: raw(b, stock),
        "wrapper,      stock top-p": lambda b: wrapped(b, stock),
        "raw generate, top-k-first": lambda b: raw(b, fast),
        "wrapper,      top-k-first": lambda b: wrapped(b, fast),
    }
    results: dict[tuple[str, int], list[float]] = {}
    for fn in variants.values():  # warm-up
        fn(1)
    for b in args.batches:
        for _ in range(args.repeats):
            for name, fn in variants.items():
                start = time.perf_counter()
                tokens = fn(b)
                results.setdefault((name, b), []).append(tokens / (time.perf_counter() - start))
                print(f"  batch {b:3d} {name}: {results[(name, b)][-1]:.1f} tokens/s", flush=True)
    print(f"\n{'variant':28s}" + "".join(f"{'batch ' + str(b):>12s}" for b in args.batches) + "   (tokens/s, median)")
    med = {k: statistics.median(v) for k, v in results.items()}
    for name in variants:
        print(f"{name:28s}" + "".join(f"{med[(name, b)]:12.1f}" for b in args.batches))
    for b in args.batches:
        for kind in ("stock top-p", "top-k-first"):
            over = med[(f"raw generate, {kind}", b)] / med[(f"wrapper,      {kind}", b)] - 1
            print(f"batch {b:3d} {kind}: wrapper overhead {100 * over:+.1f}% vs raw generate")
    lo, hi = min(args.batches), max(args.batches)
    for kind in ("stock top-p", "top-k-first"):
        ratio = med[(f"wrapper,      {kind}", hi)] / med[(f"wrapper,      {kind}", lo)]
        print(f"wrapper {kind}: batch {hi} gives {ratio:.1f}x the tokens/s of batch {lo}")
    gain = med[("wrapper,      top-k-first", hi)] / med[("wrapper,      stock top-p", hi)]
    print(f"top-k-first vs stock top-p at batch {hi}: {gain:.2f}x")


def bench_quality(args) -> None:
    from sandbox import Sandbox

    problems = load_problems(EXAMPLE_PROBLEMS)
    gen = LLMGenerator(args.model, device=args.device, dtype=args.dtype,
                       sampling=SamplingConfig(temperature=args.temperature, top_p=args.top_p))
    disc = LLMDiscriminator((gen.model, gen.tokenizer), sampling=gen.sampling)
    k = args.samples
    start = time.perf_counter()
    flat_p = [p for p in problems for _ in range(k)]
    chains = [{} for _ in flat_p]
    if args.chain:  # whole sampled reasoning chains first, one per code sample
        gen.complete_chains(flat_p, chains, STAGES, seed=args.seed)
    codes = gen.generate_code(flat_p, chains, 1, seed=args.seed)
    codes = [[codes[i * k + j][0] for j in range(k)] for i in range(len(problems))]
    t_code = time.perf_counter() - start
    tests = disc.generate_tests(problems, None, k, seed=args.seed)
    t_tests = time.perf_counter() - start - t_code
    print(f"model {args.model} on {gen.device}, temperature {args.temperature}, top-p {args.top_p}, "
          f"{k} samples per problem, chain {'sampled' if args.chain else 'empty'}; "
          f"code {t_code:.0f}s, tests {t_tests:.0f}s")

    solved = format_ok = 0
    suites = suites_ok = suites_valid = funcs = funcs_valid = 0
    with Sandbox() as sandbox:
        print(f"\n{'problem':34s} {'code ok':>8s} {'passing':>8s} {'pass@' + str(k):>7s} "
              f"{'tests ok':>9s} {'valid':>6s} {'valid fns':>10s}")
        for problem, code_group, test_group in zip(problems, codes, tests):
            passing = sum(sandbox.execute_tests(c.code, problem.tests).all_passed for c in code_group if c.ok)
            ok_suites = [t for t in test_group if t.ok]
            results = [sandbox.execute_tests(problem.reference_solution, t.tests) for t in ok_suites]
            valid = sum(r.all_passed for r in results)
            n_fns = sum(len(t.test_names) for t in ok_suites)
            n_valid_fns = sum(sum(r.passed_test(name) for name in t.test_names) for t, r in zip(ok_suites, results))
            n_ok = sum(c.ok for c in code_group)
            print(f"{problem.id:34s} {n_ok:5d}/{k:<2d} {passing:5d}/{k:<2d} {int(passing > 0):7d} "
                  f"{len(ok_suites):6d}/{k:<2d} {valid:3d}/{len(ok_suites):<2d} {n_valid_fns:6d}/{n_fns:<3d}")
            solved += passing > 0
            format_ok += n_ok
            suites += k
            suites_ok += len(ok_suites)
            suites_valid += valid
            funcs += n_fns
            funcs_valid += n_valid_fns
    n = len(problems)
    print(f"\npass@{k}: {solved}/{n} problems; well-formed code {format_ok}/{n * k}")
    print(f"tests: well-formed suites {suites_ok}/{suites}; valid on the reference (whole suite) "
          f"{suites_valid}/{suites_ok}; valid test functions {funcs_valid}/{funcs} "
          f"({100 * funcs_valid / max(funcs, 1):.0f}%)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=["speed", "quality"])
    parser.add_argument("--model", default="default", help="default, smollm2-135m, tiny, a Hugging Face id or a folder")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--new-tokens", type=int, default=128, help="speed: tokens generated per row")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 16],
                        help="speed: batch sizes (4: the rows of a demo training step)")
    parser.add_argument("--repeats", type=int, default=2, help="speed: timed repetitions per variant")
    parser.add_argument("--samples", type=int, default=4, help="quality: samples per problem (the k of pass@k)")
    parser.add_argument("--chain", action="store_true", help="quality: sample the 5-stage chain before the code")
    parser.add_argument("--temperature", type=float, default=SamplingConfig.temperature)
    parser.add_argument("--top-p", type=float, default=SamplingConfig.top_p)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bench_speed(args) if args.mode == "speed" else bench_quality(args)


if __name__ == "__main__":
    main()
