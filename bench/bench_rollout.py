"""Rollout benchmark: one training step's sampling, plain fp32 decoding against the fast path.

    python3 bench/bench_rollout.py [--model default] [--shapes demo learn] [--repeats 1]

One rollout is what a training step samples (`training.rollout`): the trained stage's samples for every
problem of the step (`group_size` each), the code of every chain, and the discriminator's test suites
(`num_test_samples` each), at the preset's shape (problems per step x samples x token budgets, stage
"algorithm": two greedy stages before it). Every row decodes its whole token budget (EOS suppressed, no stop
at a closed code block), so all variants do the same work; real steps stop earlier.

Variants, interleaved within each repeat (load from other processes hits every one alike):

    fp32 plain          all weights fp32, no shared prefix (`models.base.decode` as is: the reference of the speedup)
    fp32 shared         the same weights, the shared prompt prefix prefilled once (`prefill_shared_prefixes`)
    mixed plain         frozen weights bf16, the trained last layers fp32, under bf16 autocast (learn run 2)
    bf16 copy plain     sampling from the bf16 generation copy (`training.policy.frozen_copy`)
    bf16 copy shared    both: the default of the demo and learn presets where bf16 is native
    int8 copy plain     sampling from the int8 generation copy (`training.policy.generation_copy`, `--generation-dtype
    int8 copy shared    int8`): int8 linear layers, the rest fp32; for a CPU without native bf16

`--variants` picks some (on a CPU without native bf16 the bf16 ones only emulate it). The last line reads
`rollout speedup X.XX (LAST over FIRST, shape S)`: the last variant timed over the first, at the last shape, in
the same run (by default: int8 copy shared over fp32 plain).
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import threading
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import psutil  # noqa: E402
import torch  # noqa: E402

from data.problems import load_problem_set  # noqa: E402
from models import LLMDiscriminator, LLMGenerator, SamplingConfig  # noqa: E402
from models.loading import load_model  # noqa: E402
from training.config import preset_config  # noqa: E402
from training.policy import _cast_frozen, frozen_copy, generation_copy, trainable_names  # noqa: E402
from training.rollout import sample_discriminator, sample_generator  # noqa: E402

STAGE = "algorithm"
VARIANTS = ("fp32 plain", "fp32 shared", "mixed plain", "bf16 copy plain", "bf16 copy shared", "int8 copy plain",
            "int8 copy shared")


def bandwidth_gb_s() -> float:
    """Bytes read + written per second by a 512 MiB numpy copy (best of 3)."""
    a = np.ones(512 << 20, dtype=np.uint8)
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(3))
    return 2 * a.nbytes / best / 1e9


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 10 ms by a thread."""

    def __enter__(self):
        self.process, self.base, self.peak, self.running = psutil.Process(), psutil.Process().memory_info().rss, 0, True
        self.thread = threading.Thread(target=self._watch, daemon=True)
        self.thread.start()
        return self

    def _watch(self):
        while self.running:
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.extra_mb = max(0, self.peak - self.base) / 2**20


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="model name, Hugging Face id or folder (default: default)")
    parser.add_argument("--shapes", nargs="+", default=["demo", "learn"], help="presets whose step shape to time")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved repetitions of every variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS, metavar="VARIANT",
                        help=f"which to time, in this order (default: all: {', '.join(VARIANTS)})")
    args = parser.parse_args()
    chosen_variants = tuple(args.variants)
    warnings.filterwarnings("ignore", message="Unfeasible length constraints")  # EOS suppressed on purpose

    torch.manual_seed(0)
    fp32, tokenizer = load_model(args.model, device="cpu", dtype="float32")
    config = preset_config("learn")
    trained = trainable_names(fp32, config.train_last_layers)
    mixed = copy.deepcopy(fp32)  # the learn preset's model: frozen weights bf16, the trained layers fp32
    _cast_frozen(mixed, trained, torch.bfloat16)
    bf16 = frozen_copy(mixed, trained, torch.bfloat16)
    models = {"fp32": fp32, "mixed": mixed, "bf16 copy": bf16, "int8 copy": generation_copy(fp32, trained, torch.qint8)}
    generator, discriminator = LLMGenerator((mixed, tokenizer)), LLMDiscriminator((mixed, tokenizer))
    weight_gb = sum(p.numel() * p.element_size() for p in bf16.parameters()) / 1e9
    bandwidth = bandwidth_gb_s()
    print(f"model {args.model}: {sum(p.numel() for p in fp32.parameters()) / 1e6:.0f} M parameters, "
          f"{weight_gb:.2f} GB in bf16; torch threads {torch.get_num_threads()}; memory bandwidth "
          f"{bandwidth:.1f} GB/s (numpy copy, read + write): at most ~{bandwidth / 2 / weight_gb:.0f} decode "
          f"steps/s in bf16 (each reads every weight once)", flush=True)

    problems = load_problem_set("train")
    order = np.random.default_rng(0).permutation(len(problems))
    steps, results = {}, {}
    for shape in args.shapes:
        cfg = preset_config(shape)
        chosen = [problems[i] for i in order[:cfg.problems_per_step]]
        generator.sampling_model = bf16  # the greedy stages before STAGE, once, untimed
        prefixes = generator.complete_chains(chosen, [{} for _ in chosen], ["understand", "edge_cases"],
                                             do_sample=False, max_new_tokens=cfg.stage_tokens or None)
        steps[shape] = SimpleNamespace(config=cfg, generator=generator, discriminator=discriminator,
                                       prefixes=prefixes, problems=chosen)
        rows = cfg.problems_per_step * (2 * cfg.group_size + cfg.num_test_samples)
        print(f"shape {shape}: {cfg.problems_per_step} problem(s) x ({cfg.group_size} stage + {cfg.group_size} code "
              f"+ {cfg.num_test_samples} test samples) = {rows} rows; budgets stage {cfg.stage_tokens}, code "
              f"{cfg.code_tokens}, tests {cfg.test_tokens} tokens", flush=True)

    def run(shape: str, variant: str) -> tuple[float, int, float]:
        step = steps[shape]
        name, share = variant.rsplit(" ", 1)
        settings = SamplingConfig(temperature=step.config.temperature, top_p=step.config.top_p, seed=1,
                                  min_new_tokens=10_000, stop_after_code_block=False, share_prefix=share == "shared")
        for wrapper in (generator, discriminator):
            wrapper.sampling_model, wrapper.sampling = models[name], settings
        with PeakRSS() as memory:
            start = time.perf_counter()
            stages, chains, codes = sample_generator(step.generator, step.config, step.problems, STAGE, step.prefixes)
            _, tests = sample_discriminator(step.discriminator, step.config, step.problems, STAGE, chains)
            seconds = time.perf_counter() - start
        tokens = sum(len(g.response_ids) for groups in (stages, codes, tests) for group in groups for g in group)
        return seconds, tokens, memory.extra_mb

    for repeat in range(args.repeats):
        for shape in args.shapes:
            variants = chosen_variants if repeat % 2 == 0 else chosen_variants[::-1]
            for variant in variants:
                seconds, tokens, extra = run(shape, variant)
                results.setdefault((shape, variant), []).append((seconds, tokens, extra))
                print(f"  repeat {repeat + 1} {shape:6s} {variant:17s} {seconds:7.1f} s  {tokens} tokens", flush=True)

    print(f"\n{'shape':6s}  {'variant':17s}  {'s/step':>7s}  {'tokens/s':>8s}  {'vs ' + chosen_variants[0]:>13s}  {'peak +MB':>8s}")
    for shape in args.shapes:
        base = statistics.median(s for s, _, _ in results[(shape, chosen_variants[0])])
        for variant in chosen_variants:
            runs = results[(shape, variant)]
            seconds = statistics.median(s for s, _, _ in runs)
            tokens = runs[0][1]
            print(f"{shape:6s}  {variant:17s}  {seconds:7.1f}  {tokens / seconds:8.1f}  {base / seconds:12.2f}x  "
                  f"{max(m for _, _, m in runs):8.0f}")
    last = args.shapes[-1]
    first, final = chosen_variants[0], chosen_variants[-1]
    speedup = (statistics.median(s for s, _, _ in results[(last, first)])
               / statistics.median(s for s, _, _ in results[(last, final)]))
    print(f"rollout speedup {speedup:.2f} ({final} over {first}, shape {last})")


if __name__ == "__main__":
    main()
