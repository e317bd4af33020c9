"""Time per phase of one discriminator step and one generator step with a real model.

    python bench/bench_training.py [--preset demo] [--model default] [--steps 1] [--problems train]

Prints, per step: generation, sandbox, reference log-probs and update seconds, the update's response
tokens per second, and the process's peak resident memory. Numbers vary with machine load.
"""
import argparse
import logging
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.problems import load_problem_set  # noqa: E402
from training.config import PRESETS, preset_config  # noqa: E402
from training.trainer import AdversarialTrainer  # noqa: E402


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="demo", help="training configuration")
    parser.add_argument("--model", default=None, help="model for both roles (default: the preset's)")
    parser.add_argument("--steps", type=int, default=1, help="steps per role")
    parser.add_argument("--stage", default="understand", help="reasoning stage to train")
    parser.add_argument("--problems", default="train", help="problem set (default: train)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    overrides = {"generator_model": args.model} if args.model else {}
    config = preset_config(args.preset, **overrides)
    t = time.perf_counter()
    trainer = AdversarialTrainer(config, load_problem_set(args.problems))
    print(f"setup (load models, references, sandbox): {time.perf_counter() - t:.1f} s, peak {peak_gb():.2f} GB")
    print(f"{'role':<14}{'gen s':>8}{'sandbox s':>10}{'ref lp s':>10}{'update s':>10}{'upd tok/s':>10}"
          f"{'step s':>8}{'peak GB':>9}  rewards (gen / disc)")
    for role in ("discriminator", "generator") * args.steps:
        t = time.perf_counter()
        m = trainer.step(role, args.stage, "bench")
        m["time/step_s"] = time.perf_counter() - t  # with the mutants made on a problem's first draw
        tokens = m.get("ppo/tokens", 0)
        update = m.get("ppo/time_s", float("nan"))
        print(f"{role:<14}{m['time/generation_s']:>8.1f}{m['time/sandbox_s']:>10.2f}"
              f"{m.get('time/ref_logprobs_s', float('nan')):>10.2f}{m['time/update_s']:>10.2f}"
              f"{tokens / update if tokens else float('nan'):>10.0f}{m['time/step_s']:>8.1f}{peak_gb():>9.2f}"
              f"  {m['generator/reward_mean']:.2f} / {m['discriminator/reward_mean']:.2f}"
              + ("  (no signal: update skipped)" if m.get("ppo/no_signal_updates") else ""))
    trainer.close()


if __name__ == "__main__":
    main()
