"""Seconds per group of the generator's half of a learn step: this project against TRL's `GRPOTrainer`.

    pip install --no-deps trl==1.16.0   # optional, for this bench only (not in requirements.txt)
    python bench/bench_trl.py [--preset learn] [--repeats 1] [any run_training.py option, e.g. --problems-per-step 8]

Both sides do the same work on the CPU: the first `problems_per_step` problems of the config's problem set,
each problem's code prompt after an empty chain (`reasoning.stages.code_prompt(problem, {})`) in the
generator's chat template with its code-block prefill; `group_size` codes sampled per problem (temperature,
top_p) within `code_tokens`; each code's reward its pass rate on the problem's tests in this project's
sandbox (sanitized as training does); then one update of the last `train_last_layers` blocks (AdamW at
`learning_rate`, KL coefficient beta `kl_coef`, clip `clip_coef`), in bf16 where the preset's `precision` says so.

- this project: `LLMGenerator.generate_code` (its decoder: the samples of a prompt share its prefill, rows stop
  when their code block closes, sampling runs a bf16 copy of the weights) and `AdversarialTrainer.update`
  (the frozen blocks below the trained ones run once for the reference and the update; a group whose
  rewards are all equal is left out of the update).
- TRL: `GRPOTrainer.train` for `repeats` optimizer steps, each over all the groups: transformers' `generate`
  on the fp32 weights (under bf16 autocast with `precision` bf16), the reference log-probs from a whole second
  copy of the model, then the loss's forward and backward, a group (`group_size` rows) at a time, and the
  optimizer step.

Prints seconds per group for each side (total, generation, sandbox, reference log-probs, update: the rest),
the completion tokens sampled per group, the groups with signal, and TRL's total over this project's.
Model loading and setup are not timed. Numbers vary with machine load: measure with nothing else running.
"""
import argparse
import gc
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data.problems import Problem, load_problem_set  # noqa: E402
from models.generator import CODE_PREFIX, LLMGenerator  # noqa: E402
from models.logprobs import resolve_precision  # noqa: E402
from models.sanitize import sanitize_code  # noqa: E402
from reasoning.stages import code_prompt  # noqa: E402
from sandbox import Sandbox  # noqa: E402
from training.config import PRESETS, TrainingConfig, add_config_arguments, config_from_args  # noqa: E402


@dataclass
class Timing:
    """One side's seconds, summed over its repeats, and what it sampled."""

    groups: int  # groups timed: problems x repeats
    total: float
    generation: float
    sandbox: float
    ref_logprobs: float
    update: float  # the rest: the update's forwards, backward and optimizer step (TRL: and its bookkeeping)
    tokens: float  # completion tokens sampled
    signal: float  # groups whose rewards differ (the others teach nothing)

    def shares(self) -> str:
        """What the side spends its time on, in percent of its total."""
        parts = {"generation": self.generation, "sandbox": self.sandbox, "reference log-probs": self.ref_logprobs,
                 "update": self.update}
        return ", ".join(f"{name} {100 * value / self.total:.0f}%" for name, value in parts.items())

    def row(self, name: str) -> str:
        g = self.groups
        return (f"{name:<9}{self.total / g:>9.2f}{self.generation / g:>9.2f}{self.sandbox / g:>10.2f}"
                f"{self.ref_logprobs / g:>10.2f}{self.update / g:>10.2f}{self.tokens / g:>14.0f}"
                f"{self.signal:>6.0f}/{g}")


HEADER = (f"{'side':<9}{'total s':>9}{'gen s':>9}{'sandbox s':>10}{'ref lp s':>10}{'update s':>10}{'tokens/group':>14}"
          "  signal")


def pass_rates(sandbox: Sandbox, problems: list[Problem], codes: list[str]) -> list[float]:
    """The reward of both sides: each code's pass rate on its problem's own tests ("" for a code that failed
    sanitization runs as an empty module, as in training)."""
    return [r.pass_rate for r in sandbox.execute_pairs([(code, p.tests) for p, code in zip(problems, codes)])]


def prompts(generator: LLMGenerator, problems: list[Problem]) -> list[str]:
    """Each problem's code prompt after an empty chain, as `generate_code` formats it (with the prefill)."""
    prefix = CODE_PREFIX if generator.prefill else ""
    return [generator.format_prompt(code_prompt(p, {})) + prefix for p in problems]


# ------------------------------------------------------------------ this project
def project_trainer(config: TrainingConfig, problems: list[Problem], sandbox: Sandbox):
    """The trainer whose generator this bench times; a tiny discriminator stands in (it takes no part)."""
    from models import LLMDiscriminator
    from models.loading import TINY_MODEL
    from training.trainer import AdversarialTrainer

    return AdversarialTrainer(config, problems, discriminator=LLMDiscriminator(TINY_MODEL, "cpu", "float32"),
                              sandbox=sandbox)


def project_side(trainer, problems: list[Problem], repeats: int) -> Timing:
    """`repeats` rounds of: sample the groups (`generate_code`), score them, update the generator."""
    from training.rollout import ProblemRollout

    config, G = trainer.config, trainer.config.group_size
    t = Timing(len(problems) * repeats, 0.0, 0.0, 0.0, 0.0, 0.0, 0, 0)
    for _ in range(repeats):
        start = time.perf_counter()
        groups = trainer.generator.generate_code(problems, num_samples=G, max_new_tokens=config.code_tokens or None)
        t.generation += time.perf_counter() - start
        s = time.perf_counter()
        rewards = pass_rates(trainer.sandbox, [p for p in problems for _ in range(G)],
                             [c.code if c.ok else "" for group in groups for c in group])
        t.sandbox += time.perf_counter() - s
        # the codes are the actions (no stage text: None entries, which the update skips)
        rollouts = [ProblemRollout(p, "", {}, [None] * G, [{}] * G, group, [], [],
                                   gen_rewards=np.array(rewards[i * G:(i + 1) * G]))
                    for i, (p, group) in enumerate(zip(problems, groups))]
        s = time.perf_counter()
        m = trainer.update("generator", rollouts)
        update = time.perf_counter() - s
        t.total += time.perf_counter() - start
        t.ref_logprobs += m.get("time/ref_logprobs_s", 0.0)
        t.update += update - m.get("time/ref_logprobs_s", 0.0)
        t.tokens += sum(len(c.response_ids) for group in groups for c in group)
        t.signal += m["ppo/groups"] - m["ppo/zero_signal_groups"]
    return t


# ------------------------------------------------------------------ TRL
def trl_trainer(config: TrainingConfig, problems: list[Problem], sandbox: Sandbox, folder: str, repeats: int = 1):
    """A `GRPOTrainer` set up like the project's generator step (module docstring) for `repeats` optimizer
    steps; its `bench_seconds` dict collects the generation, sandbox and reference seconds."""
    import torch
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from models.loading import load_model
    from training.policy import trainable_names, unfreeze

    generator = LLMGenerator(load_model(config.generator_model, "cpu", config.dtype))
    model, tokenizer = generator.model, generator.tokenizer
    source = model.config._name_or_path  # TRL loads its reference from there: saved first where it cannot (tiny, GGUF)
    if not (source and (Path(source) / "config.json").is_file()) or getattr(model, "is_quantized", False):
        model.save_pretrained(Path(folder) / "model")
        model.config._name_or_path = str(Path(folder) / "model")
    prefix = CODE_PREFIX if generator.prefill else ""
    seconds = {"generation": 0.0, "sandbox": 0.0, "ref_logprobs": 0.0}

    def pass_rate(completions, index, **_):
        s = time.perf_counter()
        chosen = [problems[i] for i in index]
        codes = [sanitize_code(prefix + text, p.entry_point) for p, text in zip(chosen, completions)]
        rewards = pass_rates(sandbox, chosen, [c.code if c.ok else "" for c in codes])
        seconds["sandbox"] += time.perf_counter() - s
        return rewards

    G, P = config.group_size, len(problems)
    args = GRPOConfig(
        output_dir=folder, use_cpu=True, bf16=resolve_precision(config.ppo.precision) == "bf16", seed=config.seed,
        num_generations=G, max_completion_length=config.code_tokens or 320,
        per_device_train_batch_size=G, gradient_accumulation_steps=P,  # one generate call and one step: all groups
        learning_rate=config.ppo.learning_rate, beta=config.ppo.kl_coef, epsilon=config.ppo.clip_coef,
        max_grad_norm=config.ppo.max_grad_norm, weight_decay=config.ppo.weight_decay,
        temperature=config.temperature, top_p=config.top_p,
        gradient_checkpointing=config.gradient_checkpointing, max_steps=repeats, logging_steps=1,
        report_to="none", save_strategy="no", disable_tqdm=True,
    )
    dataset = Dataset.from_list([{"prompt": text, "index": i} for i, text in enumerate(prompts(generator, problems))])
    trainer = GRPOTrainer(model=model, reward_funcs=pass_rate, args=args, train_dataset=dataset,
                          processing_class=tokenizer)
    # the parameters that train, as the project's: before `train()` makes the optimizer of those with gradients
    unfreeze(trainer.model, trainable_names(trainer.model, config.train_last_layers))
    trainer.model.train()

    def timed(method, key, when=lambda *a: True):
        def wrapper(*a, **k):
            s = time.perf_counter()
            try:
                return method(*a, **k)
            finally:
                if when(*a):
                    seconds[key] += time.perf_counter() - s
        return wrapper

    model.generate = timed(model.generate, "generation")
    trainer._get_per_token_logps_and_entropies = timed(trainer._get_per_token_logps_and_entropies, "ref_logprobs",
                                                       lambda m, *a: m is trainer.ref_model)
    trainer.bench_seconds = seconds
    torch.manual_seed(config.seed)
    return trainer


def trl_side(trainer, problems: list[Problem], repeats: int) -> Timing:
    """`repeats` optimizer steps of `trainer` (`trl_trainer`), each over all the groups."""
    start = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - start
    s, G = trainer.bench_seconds, trainer.args.num_generations
    logs = [row for row in trainer.state.log_history if "completions/mean_length" in row]
    return Timing(len(problems) * repeats, total, s["generation"], s["sandbox"], s["ref_logprobs"],
                  total - s["generation"] - s["sandbox"] - s["ref_logprobs"],
                  tokens=sum(row["completions/mean_length"] * len(problems) * G for row in logs),
                  signal=sum(round((1 - row.get("frac_reward_zero_std", 0.0)) * len(problems)) for row in logs))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=list(PRESETS), default="learn", help="training configuration (default: learn)")
    parser.add_argument("--repeats", type=int, default=1, help="rounds (optimizer steps) per side")
    add_config_arguments(parser, "learn")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    config = config_from_args(args, args.preset)
    problems = load_problem_set(config.problems)[:config.problems_per_step]
    print(f"{config.generator_model}: {len(problems)} problems x group {config.group_size}, code tokens "
          f"{config.code_tokens or 320}, last {config.train_last_layers or 'all'} blocks trained, "
          f"precision {resolve_precision(config.ppo.precision)}, {args.repeats} repeat(s)")
    with Sandbox(config.sandbox) as sandbox, tempfile.TemporaryDirectory() as folder:
        s = time.perf_counter()
        trainer = project_trainer(config, problems, sandbox)
        print(f"project setup: {time.perf_counter() - s:.1f} s")
        mine = project_side(trainer, problems, args.repeats)
        del trainer
        gc.collect()
        s = time.perf_counter()
        trainer = trl_trainer(config, problems, sandbox, folder, args.repeats)
        print(f"TRL setup: {time.perf_counter() - s:.1f} s")
        theirs = trl_side(trainer, problems, args.repeats)
    print("seconds per group:")
    print(HEADER)
    print(mine.row("project"))
    print(theirs.row("TRL"))
    print(f"TRL / project: {theirs.total / mine.total:.2f}x per group, generation "
          f"{theirs.generation / mine.generation:.2f}x")
    print(f"project: {mine.shares()}")
    print(f"TRL:     {theirs.shares()}")
    if mine.signal < mine.groups:
        print(f"(the project leaves the {mine.groups - mine.signal:.0f} group(s) without signal out of its update; "
              "TRL computes its loss on every group)")


if __name__ == "__main__":
    main()
