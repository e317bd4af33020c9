"""Configuration dataclasses. One per concern; they compose into `TrainingConfig`.

Every field is typed, defaulted and documented in one line: `run_training.py` builds its command-line
options (and `--help`) from these fields. Cross-field checks raise `ValueError` saying how to fix them.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from reasoning.stages import STAGE_NAMES
from sandbox import SandboxConfig


@dataclass
class RewardConfig:
    """Reward weights (DESIGN.md 'Rewards'); every reward is in [0, 1]."""

    gen_pass_coef: float = 0.9  # generator: weight of the pass rate on valid + ground-truth tests
    gen_format_coef: float = 0.1  # generator: weight of well-formed code (parses, defines the entry point)
    disc_discrimination_coef: float = 0.85  # discriminator: weight of the share of codes caught by valid tests
    disc_validity_coef: float = 0.05  # discriminator: weight of |valid tests| / max(tau, |tests|)
    disc_format_coef: float = 0.10  # discriminator: weight of well-formed test output
    validity_floor: int = 8  # tau: a few trivial tests cannot earn the validity term

    def __post_init__(self):
        for name in ("gen", "disc"):
            total = sum(v for k, v in asdict(self).items() if k.startswith(name) and k.endswith("_coef"))
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"the {name}_*_coef reward weights must sum to 1 (they sum to {total})")
        if self.validity_floor < 1:
            raise ValueError("validity_floor (tau) must be >= 1")


@dataclass
class PPOConfig:
    """The PPO update (DESIGN.md 'PPO')."""

    learning_rate: float = 1e-5  # AdamW learning rate
    clip_coef: float = 0.2  # epsilon of the clipped surrogate
    kl_coef: float = 0.05  # beta: weight of the k3 KL penalty to the frozen reference
    ppo_epochs: int = 1  # passes over each batch of rollouts
    num_minibatches: int = 1  # minibatches per pass
    max_grad_norm: float = 1.0  # global gradient-norm clip
    normalize_advantages: bool = True  # divide group-relative advantages by the group's std
    weight_decay: float = 0.0  # AdamW weight decay
    precision: str = "fp32"  # "fp32", or "bf16": autocast the update's forward pass to bfloat16 (CPU or GPU)

    def __post_init__(self):
        if not 0 < self.clip_coef < 1:
            raise ValueError("clip_coef must be in (0, 1), e.g. 0.2")
        if self.ppo_epochs < 1 or self.num_minibatches < 1:
            raise ValueError("ppo_epochs and num_minibatches must be >= 1")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.kl_coef < 0 or self.max_grad_norm <= 0:
            raise ValueError("kl_coef must be >= 0 and max_grad_norm > 0")


@dataclass
class TrainingConfig:
    """The whole run. Saved with every run folder and checkpoint."""

    generator_model: str = "default"  # "default", "tiny", a Hugging Face id or a local folder
    discriminator_model: str = ""  # same choices; empty means the same as generator_model
    problems: str = "examples"  # "examples", "humaneval", or a path to a problem JSON file
    stages: list[str] = field(default_factory=lambda: list(STAGE_NAMES))  # stages to train, in order
    n_steps: int = 2  # N: discriminator steps, then generator steps, per stage
    k_alternations: int = 1  # K: rapid one-and-one alternations per stage
    num_samples: int = 4  # generator code samples and discriminator test samples per problem
    problems_per_step: int = 1  # problems in one training step
    seed: int = 0  # seeds Python, NumPy and torch
    output_dir: str = ""  # run folder; empty makes runs/<timestamp>
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), "cuda", "mps" or "cpu"
    dtype: str = "auto"  # "auto" (bf16 on a capable GPU, else fp32), "float32", "bfloat16", "float16"
    rewards: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)

    def __post_init__(self):
        unknown = [s for s in self.stages if s not in STAGE_NAMES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; choose from {list(STAGE_NAMES)}")
        if self.n_steps < 0 or self.k_alternations < 0:
            raise ValueError("n_steps and k_alternations must be >= 0")
        if self.num_samples < 2:
            raise ValueError("num_samples must be >= 2: group-relative advantages need a group")

    def to_dict(self) -> dict:
        return asdict(self)
