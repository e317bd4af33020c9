"""Configuration dataclasses. One per concern; they compose into `TrainingConfig`.

Every field is typed, defaulted and documented in one line: `run_training.py` builds its command-line
options (and `--help`) from these fields. Cross-field checks raise `ValueError` saying how to fix them.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import MISSING, asdict, dataclass, field, fields

from reasoning.stages import STAGE_NAMES
from sandbox import SandboxConfig


def launch_rank_and_size() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as `accelerate launch` or `torchrun` set them; (0, 1) without a launcher."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def launch_command(script: str = "run_training.py") -> list[str]:
    """The command that started this run, up to and with its script, as a person would type it again: `python
    run_training.py` in one process; under `accelerate launch` or `torchrun`, the launcher's own command line
    (its process is this one's parent) up to the script, e.g. `accelerate launch --num_processes 2
    run_training.py`, else one rebuilt from the environment the launcher set."""
    world_size = launch_rank_and_size()[1]
    if world_size <= 1 and "TORCHELASTIC_RUN_ID" not in os.environ:
        return ["python", script]
    parent = parent_command_line()
    names = [os.path.basename(arg) for arg in parent]
    mine = os.path.basename(sys.argv[0])
    if mine in names[2:]:  # (after an interpreter and a launcher at least)
        i = names.index(mine, 2)
        head = parent[:i]  # the launcher and its options: [python, .../accelerate, launch, ...] or [python, -m, ...]
        if names[0].startswith("python"):
            head = ["python", *head[1:]] if head[1:2] == ["-m"] else [names[1], *head[2:]]
        return head + [parent[i]]
    count = os.environ.get("LOCAL_WORLD_SIZE") or str(world_size)
    if any(key.startswith("ACCELERATE_") for key in os.environ):
        return ["accelerate", "launch", "--num_processes", count, script]
    return ["torchrun", "--nproc_per_node", count, script]


def parent_command_line() -> list[str]:
    """The parent process's command line (Linux /proc), or [] where it cannot be read."""
    try:
        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            return f.read().decode(errors="replace").split("\0")[:-1]
    except OSError:
        return []


def check_numbers(config) -> None:
    """Every number of a config dataclass is finite and >= 0 (a NaN weight or limit would pass every
    comparison below and poison a run much later); ValueError naming the field otherwise."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and (not math.isfinite(value) or value < 0):
            raise ValueError(f"{f.name} must be a finite number >= 0, got {value}")


@dataclass
class RewardConfig:
    """Reward weights (docs/how-it-works.md); every reward is in [0, 1]."""

    gen_pass_coef: float = 0.9  # generator: weight of the pass rate on valid + ground-truth tests
    gen_format_coef: float = 0.1  # generator: weight of well-formed code (parses, defines the entry point)
    disc_discrimination_coef: float = 0.4  # discriminator: weight of the share of codes caught by valid tests
    disc_mutation_coef: float = 0.4  # discriminator: weight of the share of the reference's mutants its valid tests kill
    disc_validity_coef: float = 0.1  # discriminator: weight of |valid tests| / max(tau, |tests|)
    disc_format_coef: float = 0.10  # discriminator: weight of well-formed test output
    validity_floor: int = 8  # tau: a few trivial tests cannot earn the validity term
    scale_by_validity: bool = True  # multiply discrimination and mutation score by 1 - |invalid tests| / max(invalid_floor, |tests|)
    invalid_floor: int = 1  # each invalid test costs 1/max(this, |tests|) of a suite's credit; 1: the valid fraction (learn run 2; 8 did worse in run 3)

    def __post_init__(self):
        check_numbers(self)
        for name in ("gen", "disc"):
            total = sum(v for k, v in asdict(self).items() if k.startswith(name) and k.endswith("_coef"))
            if abs(total - 1.0) > 1e-6:
                raise ValueError(f"the {name}_*_coef reward weights must sum to 1 (they sum to {total})")
        if self.validity_floor < 1 or self.invalid_floor < 1:
            raise ValueError("validity_floor (tau) and invalid_floor must be >= 1")


@dataclass
class PPOConfig:
    """The PPO update (docs/how-it-works.md)."""

    learning_rate: float = 1e-5  # AdamW learning rate
    clip_coef: float = 0.2  # epsilon of the clipped surrogate
    kl_coef: float = 0.05  # beta: weight of the k3 KL penalty to the frozen reference
    ppo_epochs: int = 1  # passes over each batch of rollouts
    num_minibatches: int = 1  # minibatches per pass
    max_grad_norm: float = 1.0  # global gradient-norm clip
    normalize_advantages: bool = True  # divide group-relative advantages by the group's std
    weight_decay: float = 0.0  # AdamW weight decay
    precision: str = "fp32"  # "fp32"; "bf16": autocast the update's forward pass to bfloat16 (CPU or GPU); "auto": bf16 where it is native (a GPU that has it, a CPU with AMX or AVX512-BF16), else fp32 (emulated bf16 is ~7x slower)
    micro_batch_tokens: int = 8192  # the update's forwards take rows that share a prompt prefix together (the prefix run once), up to this many token positions at a time: less padding, bounded memory (0 = a minibatch at once)

    def __post_init__(self):
        check_numbers(self)
        if self.learning_rate <= 0:
            raise ValueError("learning_rate must be > 0, e.g. 1e-5")
        if not 0 < self.clip_coef < 1:
            raise ValueError("clip_coef must be in (0, 1), e.g. 0.2")
        if self.ppo_epochs < 1 or self.num_minibatches < 1:
            raise ValueError("ppo_epochs and num_minibatches must be >= 1")
        if self.precision not in ("fp32", "bf16", "auto"):
            raise ValueError(f"precision must be 'fp32', 'bf16' or 'auto', got {self.precision!r}")
        if self.kl_coef < 0 or self.max_grad_norm <= 0:
            raise ValueError("kl_coef must be >= 0 and max_grad_norm > 0")


@dataclass
class TrainingConfig:
    """The whole run. Saved with every run folder and checkpoint."""

    # models
    generator_model: str = "default"  # "default" (Qwen2.5-Coder-0.5B-Instruct), "smollm2-135m", "tiny", a Hugging Face id or a folder
    discriminator_model: str = ""  # same choices; empty means the same as generator_model
    device: str = "auto"  # "auto" (cuda, then mps, then cpu), "cuda", "mps" or "cpu"
    dtype: str = "float32"  # dtype of the weights that train: "float32" (AdamW's small steps need it), "bfloat16", "auto"
    frozen_dtype: str = "auto"  # dtype of the weights that do not train: "auto" (bf16 on a GPU or a CPU with native bf16), "float32", "bfloat16"
    generation_dtype: str = "auto"  # sample from a copy of the weights in this dtype, synced after each update: "auto" (bf16 where frozen_dtype's auto picks it, unless LoRA), "bfloat16", "int8" (int8 linear layers, CPU), "off" (the training weights)
    # data
    problems: str = "train"  # "train" (the project's training set), "examples", "humaneval" (held out), a JSON/JSONL/Parquet file, or a dataset id owner/name[:split]
    max_problems: int = 0  # use only the first this many problems (0 = all)
    allow_heldout_training: bool = False  # allow training on HumanEval, the held-out evaluation set (recorded in the run)
    validation_problems: int = 8  # a fixed seeded slice of the problems, never trained on, that chooses the best checkpoint (0 = none)
    # schedule
    stages: list[str] = field(default_factory=lambda: list(STAGE_NAMES))  # stages to train, in order
    n_steps: int = 2  # N: discriminator steps, then generator steps, per stage
    k_alternations: int = 1  # K: rapid one-and-one alternations per stage
    problems_per_step: int = 1  # problems in one training step
    uniform_group_weight: float = 0.25  # draw weight of a problem whose last group all passed or all failed (1 = none)
    easy_weight_generator: float = 1.0  # draw weight, in generator steps, of a problem labelled easy (1 = as any other)
    max_minutes: float = 0.0  # stop cleanly with a checkpoint after this many minutes (0 = no limit); resume later
    # rollouts
    group_size: int = 4  # generator samples (stage text + code) per problem and step: the group of its advantages
    num_test_samples: int = 4  # discriminator samples (critique + tests) per problem and step
    mutants_per_problem: int = 8  # mutants of each reference solution for the discriminator's mutation score (0 = off)
    hard_mutants: bool = True  # those mutants are the ones that fail the fewest ground-truth tests, not a spread over operators
    temperature: float = 0.7  # sampling temperature of both models
    stage_tokens: int = 0  # max new tokens of a reasoning stage or critique (0 = the stage's own budget)
    code_tokens: int = 0  # max new tokens of the final code (0 = the generator's default, 320)
    test_tokens: int = 0  # max new tokens of a test suite (0 = the discriminator's default, 320)
    top_p: float = 0.95  # nucleus sampling mass
    rollout_remaining_stages: bool = True  # write the stages after s before the code (False: code right after s)
    critique: bool = True  # the discriminator critiques stage s before writing its tests
    max_attempts: int = 1  # code attempts per sample; >1 repairs from failing tests (multi-attempt)
    carry_samples: bool = False  # a model's update also takes its samples with signal from the other model's steps since its last update (on-policy: it was frozen then; their rewards as scored then)
    # what trains
    train_last_layers: int = 0  # train only the last this many transformer blocks (0 = all parameters)
    lora_rank: int = 0  # LoRA adapters of this rank instead of full weights (0 = off; needs peft)
    lora_alpha: int = 32  # LoRA scaling
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])  # modules that get adapters
    gradient_checkpointing: bool = False  # recompute activations in the backward pass: less memory, more time
    # run folder, logging, checkpoints
    output_dir: str = ""  # run folder; empty makes runs/<timestamp>
    seed: int = 0  # seeds Python, NumPy and torch
    samples_every: int = 1  # write sample rows to samples.jsonl every this many steps (0 = never)
    report_to: str = ""  # "tensorboard": also write every metric to RUN/tensorboard (needs the tensorboard package)
    save_every: int = 0  # also checkpoint every this many steps (0 = only after each stage)
    keep_last: int = 3  # checkpoints kept besides the best and the latest
    rewards: RewardConfig = field(default_factory=RewardConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)

    def __post_init__(self):
        check_numbers(self)
        check_numbers(self.sandbox)  # its own check lets NaN through (every comparison with NaN is False)
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError("temperature must be > 0 (the PPO log-probs divide by it) and top_p in (0, 1]")
        unknown = [s for s in self.stages if s not in STAGE_NAMES]
        if unknown:
            raise ValueError(f"unknown stages {unknown}; choose from {list(STAGE_NAMES)}")
        if not self.stages:
            raise ValueError("stages is empty; give at least one of " + ", ".join(STAGE_NAMES))
        if self.n_steps + self.k_alternations == 0:  # check_numbers has refused negative ones
            raise ValueError("n_steps and k_alternations must be >= 0 and not both 0")
        if self.group_size < 2 or self.num_test_samples < 1:
            raise ValueError("group_size must be >= 2 (group-relative advantages need a group), num_test_samples >= 1")
        if not 0 < self.uniform_group_weight <= 1:
            raise ValueError("uniform_group_weight must be in (0, 1]; 1 draws every problem equally often")
        if not 0 < self.easy_weight_generator <= 1:
            raise ValueError("easy_weight_generator must be in (0, 1]; 1 draws easy problems as often as the others")
        if self.problems in ("humaneval", "heldout") and not self.allow_heldout_training:
            raise ValueError("HumanEval is the held-out evaluation set; train on 'train', or pass "
                             "--allow-heldout-training to train on it anyway (the run records it)")
        if self.max_attempts < 1 or self.problems_per_step < 1:
            raise ValueError("max_attempts and problems_per_step must be >= 1")
        if self.generation_dtype not in ("auto", "off", "int8", "bfloat16", "bf16", "float16", "fp16", "float32", "fp32"):
            raise ValueError(f"generation_dtype must be 'auto', 'off', 'int8' or a dtype such as 'bfloat16', got "
                             f"{self.generation_dtype!r}")
        if self.lora_rank and self.generation_dtype not in ("auto", "off"):
            raise ValueError("generation_dtype needs full or last-layer training; with LoRA use 'auto' or 'off'")
        if self.report_to not in ("", "tensorboard"):
            raise ValueError(f"report_to must be '' or 'tensorboard', got {self.report_to!r}")
        if self.lora_rank and self.train_last_layers:
            raise ValueError("choose LoRA (lora_rank) or the last layers (train_last_layers), not both")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingConfig:
        """Inverse of `to_dict` (a saved config.json); unknown keys are an error naming them."""
        unknown = sorted(set(data) - {f.name for f in fields(cls)})
        if unknown:
            raise ValueError(f"unknown config keys {unknown}")
        return cls(**{key: SECTIONS[key](**value) if key in SECTIONS and isinstance(value, dict) else value
                      for key, value in data.items()})


# ---------------------------------------------------------------- presets
PRESETS: dict[str, dict] = {
    # the default: the default model, the training set, all five stages, on 2 idle CPU cores (README: what the commands print)
    "demo": dict(n_steps=1, k_alternations=0, group_size=4, num_test_samples=4, rollout_remaining_stages=False,
                 critique=False, stage_tokens=32, code_tokens=160, test_tokens=160, train_last_layers=4,
                 validation_problems=2, ppo=dict(precision="auto", learning_rate=1e-5, kl_coef=0.1)),
    # the proof that training helps: the default models on the training set for 60 minutes on 2 CPU cores,
    # then `python -m evaluation` of base against trained on held-out HumanEval (docs/experiments.md); valid
    # tests weigh 0.2 and the format term is off (run 5: its suites stopped shrinking). No validation slice:
    # the final weights are the run's choice (run 5: they gained on held-out problems, the checkpoint its
    # 8-problem validation chose did not), and its minutes go to training. 8 problems per step: a generate
    # call's time grows far slower than its rows (docs/training.md 'Signal per hour'), so N = K = 1 steps
    # per stage keep the run within its hour with 4x the groups of each step; each model's update also takes
    # its samples from the other's steps (carry_samples: on-policy, it was frozen then)
    "learn": dict(n_steps=1, k_alternations=1, problems_per_step=8, group_size=4, num_test_samples=4,
                  rollout_remaining_stages=False, critique=False, carry_samples=True, stage_tokens=32,
                  code_tokens=192, test_tokens=192,
                  train_last_layers=4, validation_problems=0, max_minutes=60.0,
                  rewards=dict(disc_validity_coef=0.2, disc_format_coef=0.0),
                  ppo=dict(precision="auto", learning_rate=1e-5, kl_coef=0.1)),
    # the tiny random model: a smoke test of the whole pipeline in well under a minute
    "tiny": dict(generator_model="tiny", problems="examples", n_steps=1, k_alternations=1, group_size=2,
                 num_test_samples=2, stage_tokens=12, code_tokens=16, test_tokens=16, rollout_remaining_stages=False,
                 critique=False, validation_problems=2, mutants_per_problem=4, frozen_dtype="float32",
                 sandbox=dict(num_workers=2, timeout_s=3.0)),
    # a GPU with a larger coder model: longer chains, more samples. fp32 weights under bf16 autocast: AdamW
    # steps of ~1e-6 on bf16 weights would round away (bf16 keeps 8 significant bits)
    "gpu": dict(generator_model="Qwen/Qwen2.5-Coder-1.5B-Instruct", n_steps=8, k_alternations=4, group_size=8,
                num_test_samples=8, problems_per_step=4, max_attempts=2, train_last_layers=8, validation_problems=16,
                ppo=dict(precision="auto", learning_rate=1e-6, ppo_epochs=2, num_minibatches=4)),
}


def preset_config(name: str, **overrides) -> TrainingConfig:
    """The preset's config with `overrides` (nested configs as dicts of their fields)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {list(PRESETS)}")
    return TrainingConfig.from_dict(_merge(_merge(asdict(TrainingConfig()), PRESETS[name]), overrides))


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def leaves(values: dict, path: tuple = ()):
    """(keys, value) of every value of a nested dict that is not a dict itself, in order: `{"ppo": {"kl_coef":
    0.1}}` gives (("ppo", "kl_coef"), 0.1)."""
    for key, value in values.items():
        if isinstance(value, dict):
            yield from leaves(value, path + (key,))
        else:
            yield path + (key,), value


# ---------------------------------------------------------------- command line, generated from the fields
def field_docs(cls) -> dict[str, str]:
    """Each field's one-line comment in the class source: the `--help` text of its option."""
    import inspect
    import re

    matches = (re.match(r"\s+(\w+): [^=]+=.*?#\s*(.+)$", line) for line in inspect.getsource(cls).splitlines())
    return {match.group(1): match.group(2).strip() for match in matches if match}


SECTIONS = {"rewards": RewardConfig, "ppo": PPOConfig, "sandbox": SandboxConfig}


def _flag(name: str) -> str:
    """The command-line option of a config field: `learning_rate` -> `--learning-rate`."""
    return "--" + name.replace("_", "-")


def preset_overrides(name: str) -> str:
    """What a preset sets, as command-line options (for `--help`)."""
    def option(key: str, value) -> str:
        return _flag(key if value else f"no_{key}") if isinstance(value, bool) else f"{_flag(key)}={value}"
    return ", ".join(option(keys[-1], value) for keys, value in leaves(PRESETS[name]))


def add_dataclass_options(group, cls, shown: dict | None = None, skip: tuple = (), unset: bool = False) -> None:
    """One option per field of the dataclass `cls` (`learning_rate` -> `--learning-rate`), the field's comment
    as help and `shown[name]` (else the field's default) as the default shown: `--x/--no-x` for a bool, A,B,...
    for a list. `unset`: every option defaults to None, so the caller can tell the options the user gave.
    (The one builder of both command lines; `transformers.HfArgumentParser` does not leave defaults unset,
    and importing transformers would make `--help` take seconds.)"""
    import argparse

    docs = field_docs(cls)
    for f in fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not MISSING else f.default_factory()  # type: ignore[misc]
        value = default if shown is None else shown[f.name]
        kwargs = dict(dest=f.name, default=None if unset else default, help=f"{docs.get(f.name, '')} (default: {value})")
        if isinstance(default, bool):
            group.add_argument(_flag(f.name), action=argparse.BooleanOptionalAction, **kwargs)
        elif isinstance(default, list):
            group.add_argument(_flag(f.name), type=lambda s: [x.strip() for x in s.split(",") if x.strip()],
                               metavar="A,B,...", **kwargs)
        else:
            group.add_argument(_flag(f.name), type=type(default), metavar=type(default).__name__.upper(), **kwargs)


def add_config_arguments(parser, preset: str = "demo") -> None:
    """One option per field of `TrainingConfig` and its nested configs (`--learning-rate`, ...), grouped
    by config, with the field's comment as help and `preset`'s value as the default shown. Defaults stay
    unset, so only what the user gives overrides the preset chosen at run time."""
    shown = asdict(preset_config(preset))
    add_dataclass_options(parser.add_argument_group("training"), TrainingConfig, shown, skip=tuple(SECTIONS), unset=True)
    for name, cls in SECTIONS.items():
        add_dataclass_options(parser.add_argument_group(name, cls.__doc__), cls, shown[name], unset=True)


def _given(args) -> dict:
    """The options the user gave (every option's default is None), as nested overrides of the config."""
    given = {k: v for k, v in vars(args).items() if v is not None}
    if given.get("lora_rank") and "train_last_layers" not in given:
        given["train_last_layers"] = 0
    overrides: dict = {}
    section = {f.name: name for name, cls in SECTIONS.items() for f in fields(cls)}
    for name, value in given.items():
        if name in section:
            overrides.setdefault(section[name], {})[name] = value
        elif name in {f.name for f in fields(TrainingConfig)}:
            overrides[name] = value
    return overrides


def config_from_args(args, preset: str = "demo") -> TrainingConfig:
    """The preset's config with every option the user gave on top (`ValueError` on a bad value). Asking
    for LoRA (`--lora-rank`) switches off the preset's `train_last_layers` unless that is given too."""
    return preset_config(preset, **_given(args))


# ---------------------------------------------------------------- the schedule
ROLES = ("discriminator", "generator")


@dataclass
class ScheduleEntry:
    """One training step of the N + N + K schedule."""

    index: int  # position in the whole run
    stage: str
    phase: str  # "discriminator", "generator" or "alternating"
    role: str  # the model this step updates


def build_schedule(stages: list[str], n_steps: int, k_alternations: int) -> list[ScheduleEntry]:
    """The whole run: per stage N discriminator steps, N generator steps, then K alternations."""
    entries: list[tuple[str, str, str]] = []
    for stage in stages:
        entries += [(stage, "discriminator", "discriminator")] * n_steps
        entries += [(stage, "generator", "generator")] * n_steps
        entries += [(stage, "alternating", role) for _ in range(k_alternations) for role in ROLES]
    return [ScheduleEntry(i, *e) for i, e in enumerate(entries)]


SCHEDULE_KEYS = ("stages", "n_steps", "k_alternations")
# what the checkpoints' weights are: a run's checkpoints load only into a run that agrees on these
CHECKPOINT_KEYS = ("generator_model", "discriminator_model", "train_last_layers", "lora_rank", "lora_alpha",
                   "lora_targets")


def schedule_prefix_matches(old: dict, new: TrainingConfig, position: int) -> bool:
    """Whether the first `position` steps of the schedule of config `old` (a dict, as saved) are those of
    `new`: what a run has done stays what it did when steps or stages are added after its position."""
    defaults = TrainingConfig()
    before = build_schedule(*[old.get(k, getattr(defaults, k)) for k in SCHEDULE_KEYS])
    after = build_schedule(new.stages, new.n_steps, new.k_alternations)
    key = lambda entries: [(e.stage, e.phase, e.role) for e in entries[:position]]  # noqa: E731
    return len(before) >= position and len(after) >= position and key(before) == key(after)


def check_checkpoint_fits(saved: dict, config: TrainingConfig, position: int, start_stage: str | None = None) -> None:
    """`ValueError` saying why a checkpoint saved with config `saved` (a dict, as in its trainer state) at
    schedule `position` cannot continue as a run with `config`: other weights (`CHECKPOINT_KEYS`), or a
    schedule whose first `position` steps differ (allowed with `start_stage`: that stage starts again)."""
    for key in CHECKPOINT_KEYS:
        if key in saved and saved[key] != getattr(config, key):
            raise ValueError(f"it was trained with {key}={saved[key]!r}, this run has {getattr(config, key)!r}")
    if start_stage is None and not schedule_prefix_matches(saved, config, position):
        raise ValueError(f"its first {position} schedule steps (stages {saved.get('stages')}, n_steps "
                         f"{saved.get('n_steps')}, k_alternations {saved.get('k_alternations')}) are not this run's; "
                         "steps and stages may only be added after them, or give --start-stage")


# what a run's config.json records beside its settings (the trainer writes them): never settings, so a resume
# neither reads nor compares them
RUN_RECORD_KEYS = ("launch_command", "isolation", "update_precision")

# settings a resumed run may change: how long it runs now, what it keeps and logs, where it computes
RESUME_MAY_CHANGE = {"max_minutes", "keep_last", "save_every", "samples_every", "output_dir", "device", "report_to"}


def resumed_config(args, saved: dict, preset: str | None = None, position: int | None = None,
                   allow_changes: bool = False, start_stage: str | None = None) -> tuple[TrainingConfig, dict]:
    """A resumed run's config and what it changes: its own `config.json` (`saved`, less its `RUN_RECORD_KEYS`)
    with the options given now on top (with `preset`: that preset with the options, as the run was started),
    and {setting: [old, new]} for every change outside `RESUME_MAY_CHANGE` (the caller records them).

    A resumed run keeps what it has already done: `ValueError` naming the first setting that would change
    it (seed, problems, hyperparameters, ...), unless `allow_changes`; what its checkpoints' weights are
    (`CHECKPOINT_KEYS`: the models, the layers or adapters trained) never changes. Steps and stages added after
    the run's schedule `position` (the newest checkpoint's) are allowed without it, as is any schedule
    with `start_stage` (the run starts that stage again); a schedule that rewrites steps already taken is
    refused even with it."""
    try:
        base = TrainingConfig.from_dict({key: value for key, value in saved.items() if key not in RUN_RECORD_KEYS})
    except (TypeError, ValueError) as e:
        raise ValueError(f"the run's config.json cannot be read as a config: {e}") from None
    config = (config_from_args(args, preset) if preset
              else TrainingConfig.from_dict(_merge(asdict(base), _given(args))))
    old, new = ({keys[-1]: value for keys, value in leaves(asdict(c))} for c in (base, config))
    changes = {key: [old.get(key), value] for key, value in new.items()
               if value != old.get(key) and key not in RESUME_MAY_CHANGE}
    schedule_ok = start_stage is not None or position is None or schedule_prefix_matches(asdict(base), config, position)
    for key, (before, after) in changes.items():
        if key in CHECKPOINT_KEYS:
            raise ValueError(f"--resume cannot change {key} from {before!r} to {after!r}: the run's checkpoints hold "
                             "weights of that shape; start a new run (a new --output-dir) instead")
        if key in SCHEDULE_KEYS:
            if not schedule_ok:
                raise ValueError(f"--resume cannot change {key} from {before!r} to {after!r}: the run has taken "
                                 f"{position} steps of its schedule, and only steps or stages after them may be "
                                 "added (or give --start-stage STAGE to run that stage again)")
        elif not allow_changes:
            raise ValueError(f"--resume keeps the run's settings: {key} is {before!r} in its config.json, "
                             f"{after!r} was given; pass --allow-changes to continue with it (recorded in the "
                             "run's changes.jsonl), or start a new run from a checkpoint: --resume "
                             "RUN/checkpoints/STEP --output-dir NEW_RUN")
    return config, changes
