"""Time per phase of discriminator and generator steps with a real model, and the learning signal they buy.

    python bench/bench_training.py [--preset learn] [--steps 1] [--stage understand] [any run_training.py option]

Prints, per step: generation, sandbox, reference log-probs and update seconds, the update's response
tokens per second, the process's peak resident memory, and the step's groups with signal (groups whose
rewards differ: the others teach nothing); last, `groups with signal per hour: N` at the measured pace
(steps only: model loading, validation and checkpoints excluded). Every `run_training.py` option (e.g.
`--problems-per-step 8`, `--micro-batch-tokens 0`) overrides the preset, so levers can be measured one by one
(farm-bench or alternating runs). Numbers vary with machine load: measure with nothing else running.
"""
import argparse
import logging
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.problems import load_problem_set  # noqa: E402
from training.config import PRESETS, add_config_arguments, config_from_args  # noqa: E402
from training.trainer import AdversarialTrainer  # noqa: E402


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="learn", help="training configuration (default: learn)")
    parser.add_argument("--steps", type=int, default=1, help="steps per role")
    parser.add_argument("--stage", default="understand", help="reasoning stage to train")
    add_config_arguments(parser, "learn")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    config = config_from_args(args, args.preset)
    t = time.perf_counter()
    trainer = AdversarialTrainer(config, load_problem_set(config.problems))
    print(f"setup (load models, references, sandbox): {time.perf_counter() - t:.1f} s, peak {peak_gb():.2f} GB")
    print(f"{'role':<14}{'gen s':>8}{'sandbox s':>10}{'ref lp s':>10}{'update s':>10}{'upd tok/s':>10}"
          f"{'step s':>8}{'peak GB':>9}{'signal':>8}  rewards (gen / disc)")
    seconds = signal = 0.0
    for role in ("discriminator", "generator") * args.steps:
        t = time.perf_counter()
        m = trainer.step(role, args.stage, "bench")
        m["time/step_s"] = time.perf_counter() - t  # with the mutants made on a problem's first draw
        tokens = m.get("ppo/tokens", 0)
        update = m.get("ppo/time_s", float("nan"))
        groups = m["ppo/groups"] - m["ppo/zero_signal_groups"]
        seconds, signal = seconds + m["time/step_s"], signal + groups
        print(f"{role:<14}{m['time/generation_s']:>8.1f}{m['time/sandbox_s']:>10.2f}"
              f"{m.get('time/ref_logprobs_s', float('nan')):>10.2f}{m['time/update_s']:>10.2f}"
              f"{tokens / update if tokens else float('nan'):>10.0f}{m['time/step_s']:>8.1f}{peak_gb():>9.2f}"
              f"{groups:>5}/{m['ppo/groups']:<2}  {m['generator/reward_mean']:.2f} / {m['discriminator/reward_mean']:.2f}"
              + ("  (no signal: update skipped)" if m.get("ppo/no_signal_updates") else ""))
    trainer.close()
    print(f"groups with signal per hour: {3600 * signal / seconds:.0f}")


if __name__ == "__main__":
    main()
