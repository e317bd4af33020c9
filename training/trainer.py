"""`AdversarialTrainer`: the N + N + K schedule over the reasoning stages (docs/how-it-works.md).

Per stage s, in order: N discriminator steps (generator frozen), N generator steps (discriminator frozen),
K rapid alternations (one discriminator step, one generator step). Each step reads as phases:

    rollout (both models sample) → sandbox → rewards → PPO update of one model → log → checkpoint

Outside its own update every model is frozen (no gradients, eval mode), so a step of one role cannot
change the other. The whole schedule is a flat list; `TrainerState.position` is the next entry, which
is what makes resuming from a checkpoint exact.

Problems are drawn per step from a seeded generator whose state is saved, weighted down for problems whose
last group all passed or all failed (dynamic sampling, after DAPO): such a group has equal rewards and
teaches nothing. A fixed seeded slice of the problems is never drawn: the validation slice, on which every
checkpoint is scored (greedy pass@1, valid-test rate, mutation score) to choose the best one.

Launched on several processes (`accelerate launch`, `torchrun`), each rolls out its share of a step's
problems and the update averages their gradients (`training.distributed`); one process is unchanged.
"""
from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from data.problems import Problem, content_hash
from models.loading import resolve_device, resolve_dtype
from models.logprobs import resolve_precision
from reasoning.stages import stages_before
from sandbox import Sandbox
from scoring.run_metrics import BOOKKEEPING, load_metrics, number, summarize_metrics
from training.config import ROLES, TrainingConfig, build_schedule, check_checkpoint_fits, leaves
from training.policy import (
    bottom_hidden_states,
    freeze,
    generation_copy,
    generation_dtype,
    is_lora,
    make_optimizer,
    prepare_policy,
    reference_logprobs,
    shares_bottom,
    sync_generation_copy,
    top_blocks,
    trainable,
)
from training.distributed import Processes, merge_metrics
from training.ppo import RolloutBatch, compute_advantages, train_step
from training.rollout import ProblemRollout, make_rollouts

logger = logging.getLogger(__name__)

# checkpoint score on the validation slice (`AdversarialTrainer.validate`)
VALIDATION_WEIGHTS = {"validation/pass@1": 0.6, "validation/valid_test_rate": 0.2, "validation/mutation_score": 0.2}


@dataclass
class TrainerState:
    """Where the run is; saved in every checkpoint (with RNG states) so a resume continues exactly."""

    position: int = 0  # index of the next schedule entry
    global_step: int = 0  # steps taken (chooses the step's problems)
    chain_cache: dict[str, dict[str, str]] = field(default_factory=dict)  # problem id -> stage -> greedy text
    draw_state: dict = field(default_factory=dict)  # numpy bit-generator state of the problem draws
    uniform_groups: dict[str, bool] = field(default_factory=dict)  # problem id -> its last group all passed or all failed
    last_metrics: dict = field(default_factory=dict)  # the most recent step's metrics (with validation's, if any)
    stage_metrics: dict[str, dict] = field(default_factory=dict)  # stage -> aggregated metrics of its steps
    # role -> the rows of its groups with signal sampled in the other role's steps since its own last update
    # (`carry_samples`): {"prompt_ids", "response_ids", "sampler_logprobs", "reward", "group"} each
    carried: dict[str, list[dict]] = field(default_factory=dict)


class AdversarialTrainer:
    """Trains an `LLMGenerator` and an `LLMDiscriminator` against each other.

    Built from a `TrainingConfig`; models, problems, sandbox and checkpoint manager can be passed in
    (tests pass tiny models), else they are made from the config. `run_dir` receives `config.json`,
    `metrics.jsonl`, `samples.jsonl` and checkpoints (from the main process only); config.json records beside
    the settings the sandbox's isolation in force, the update's precision (`precision` "auto" resolved here) and
    `launch_command`, the command that started the run (`training.config.RUN_RECORD_KEYS`). `processes`: this
    process's place in a multi-process run (`training.distributed.launched_processes`); one by default."""

    def __init__(self, config: TrainingConfig, problems: list[Problem], generator=None, discriminator=None,
                 sandbox: Sandbox | None = None, checkpoint_manager=None, run_dir: str | Path | None = None,
                 processes: Processes | None = None, launch_command: str = ""):
        from models import LLMDiscriminator, LLMGenerator
        from models.sampling import SamplingConfig

        if not problems:
            raise ValueError("no problems to train on")
        self.processes = processes or Processes()
        self.config = config
        self.problems = problems
        # the validation slice: fixed by the seed, never drawn for training (all problems train when too few)
        k = config.validation_problems if len(problems) > 2 * config.validation_problems else 0
        held = set(np.random.default_rng(config.seed).permutation(len(problems))[:k].tolist())
        self.validation_problems = [p for i, p in enumerate(problems) if i in held]
        self.train_problems = [p for i, p in enumerate(problems) if i not in held]
        drawn = min(config.problems_per_step, len(self.train_problems))
        if drawn < self.processes.world_size:
            raise ValueError(f"a step draws {drawn} problem(s) (problems_per_step {config.problems_per_step}, "
                             f"{len(self.train_problems)} training problems) for {self.processes.world_size} "
                             "processes: each needs at least one")
        seed_everything(config.seed)
        sampling = SamplingConfig(temperature=config.temperature, top_p=config.top_p)
        # several processes: one device each (cuda:LOCAL_RANK, or the CPU) where the config leaves it open
        device = (self.processes.device if self.processes.distributed and config.device in ("auto", "cuda")
                  else config.device)
        self.generator = generator or LLMGenerator(config.generator_model, device, config.dtype, sampling)
        self.discriminator = discriminator or LLMDiscriminator(
            config.discriminator_model or config.generator_model, device, config.dtype, sampling)
        self._own_sandbox = sandbox is None
        self.sandbox = sandbox or Sandbox(config.sandbox)
        self.checkpoints = checkpoint_manager
        self.run_dir = Path(run_dir) if run_dir else None
        self.schedule = build_schedule(config.stages, config.n_steps, config.k_alternations)
        self.state = TrainerState()
        self.mutants: dict[str, list[str]] = {}  # problem id -> mutant sources (`mutants_for`)
        self.stopped_early = False  # `max_minutes` ran out
        self._bar = None  # the stage's progress bar while `train_stage` runs (it saves the stage's last checkpoint)
        self._board: TensorBoardLog | None = None  # with `report_to` "tensorboard", opened at the first step logged
        self._started = time.monotonic()

        # trainable parameters, frozen references, optimizers; then everything frozen until its update
        self.references, self.trainable_names, self.optimizers = {}, {}, {}
        update_precision = resolve_precision(config.ppo.precision, self.generator.device)  # "auto" resolved, once
        for role in ROLES:
            wrapper = self.wrappers[role]
            trained = next(wrapper.model.parameters()).dtype
            frozen = resolve_dtype(config.frozen_dtype, resolve_device(wrapper.device))
            wrapper.model, self.references[role] = prepare_policy(wrapper.model, config,
                                                                  frozen if frozen != trained else None)
            self.trainable_names[role] = {n for n, p in wrapper.model.named_parameters() if p.requires_grad}
            sampling = generation_dtype(config, trained, frozen)
            if sampling is not None:  # sampling runs a copy in that dtype, synced after each update
                wrapper.sampling_model = generation_copy(wrapper.model, self.trainable_names[role], sampling)
            logger.info("%s samples with %s weights; its update runs in %s", role, sampling or "its training",
                        update_precision)
            self.optimizers[role] = make_optimizer(wrapper.model, config)
            freeze(wrapper.model)
        if self.processes.rank:  # the same weights everywhere (seeded alike above); its own sampling stream
            seed_everything(config.seed + self.processes.rank)
        if self.run_dir and self.processes.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            record = {"launch_command": launch_command, "isolation": self.sandbox.isolation_record(),
                      "update_precision": update_precision}
            (self.run_dir / "config.json").write_text(json.dumps({**config.to_dict(), **record}, indent=2) + "\n")
        logger.info("%d training problems, %d validation problems", len(self.train_problems),
                    len(self.validation_problems))

    @property
    def wrappers(self) -> dict:
        return {"generator": self.generator, "discriminator": self.discriminator}

    # ------------------------------------------------------------------ the schedule
    def train_full_pipeline(self) -> dict:
        """Every stage in order, each using the stages before it (continuing from the schedule position
        after a resume); returns the run's summary. Stops early, checkpointed, when `max_minutes` is up."""
        for stage in self.config.stages:
            self.train_stage(stage)
            if self.stopped_early:
                break
        return self.summary()

    def time_is_up(self) -> bool:
        """`max_minutes` has passed (by the main process's clock: every process stops at the same step)."""
        return self.processes.broadcast(
            bool(self.config.max_minutes) and time.monotonic() - self._started >= 60 * self.config.max_minutes)

    def train_stage(self, stage: str) -> dict:
        """N + N + K steps at `stage` (the entries of the schedule not yet done), through the public phase
        methods below, then a checkpoint."""
        entries = [e for e in self.schedule if e.stage == stage and e.index >= self.state.position]
        if entries and entries[0].index == min(e.index for e in self.schedule if e.stage == stage):
            self.state.chain_cache = {}  # prefixes come from the generator as it is at the stage's start
        rows = []
        try:
            with tqdm(total=len(entries), desc=f"stage {stage}", unit="step", leave=False) as self._bar:
                while not self.stopped_early:
                    following = [e for e in entries if e.index >= self.state.position]
                    if not following:
                        break
                    phase, before = following[0].phase, self.state.position
                    if phase == "alternating":  # the rounds left (one may be half done after a resume)
                        rows += self.train_alternating(sum(e.role == "generator" for e in following), stage)
                    else:
                        count = next((i for i, e in enumerate(following) if e.phase != phase), len(following))
                        method = self.train_discriminator_epoch if phase == "discriminator" else self.train_generator_epoch
                        rows += method(stage, count)
                    if self.state.position == before:  # nothing ran (cannot happen with `build_schedule`'s entries)
                        break
        finally:
            self._bar = None
        if rows:
            self.state.stage_metrics[stage] = summarize_metrics(rows)["run"]
            if self.checkpoints:
                self.save_checkpoint()
        if self.time_is_up() and self.state.position < len(self.schedule):
            self.stopped_early = True
        return self.state.stage_metrics.get(stage, {})

    def train_discriminator_epoch(self, stage: str, steps: int | None = None) -> list[dict]:
        """`steps` (default N) discriminator steps at `stage`; the generator stays frozen. When they are the
        schedule's next entries they advance its position (with the checkpoints the schedule asks for);
        called elsewhere in the schedule they are extra steps and the position stays."""
        return self._run_phase(stage, "discriminator", steps or self.config.n_steps)

    def train_generator_epoch(self, stage: str, steps: int | None = None) -> list[dict]:
        """`steps` (default N) generator steps at `stage`; the discriminator stays frozen. The schedule
        position as in `train_discriminator_epoch`."""
        return self._run_phase(stage, "generator", steps or self.config.n_steps)

    def train_alternating(self, k: int, stage: str) -> list[dict]:
        """K rapid alternations at `stage`: one discriminator step, then one generator step (a round the
        schedule left half done ends with its generator step). The schedule position as in
        `train_discriminator_epoch`."""
        return self._run_phase(stage, "alternating", 2 * k)

    def _run_phase(self, stage: str, phase: str, count: int) -> list[dict]:
        """`count` steps of `phase` at `stage`: the schedule's next entries when they are of that stage and
        phase (alternating: up to the k-th generator step), else extra steps outside the schedule. Schedule
        entries run in order: a step each, the position advanced after it, validation before the stage's
        last step's checkpoint, `--save-every` checkpoints, and a clean stop when `max_minutes` is up."""
        run = []
        for entry in self.schedule[self.state.position:]:
            if entry.stage != stage or entry.phase != phase or len(run) == count:
                break
            run.append(entry)
            if phase == "alternating" and sum(e.role == "generator" for e in run) == count // 2:
                break
        if not run:  # off the schedule: extra steps, the position stays
            roles = [r for _ in range(count // 2) for r in ROLES] if phase == "alternating" else [phase] * count
            return [self.step(role, stage, phase) for role in roles]
        rows = []
        for entry in run:
            last = entry.index == max(e.index for e in self.schedule if e.stage == entry.stage)
            save_every = self.config.save_every and (entry.index + 1) % self.config.save_every == 0
            rows.append(self.step(entry.role, entry.stage, entry.phase,
                                  validate=bool(self.checkpoints) and (last or bool(save_every))))
            self.state.position = entry.index + 1
            if self._bar is not None:
                self._bar.update(1)
            if self.time_is_up() and not last:
                if self.processes.is_main:
                    logger.warning("max_minutes (%.1f) is up at schedule position %d: checkpointing and stopping; "
                                   "resume with --resume", self.config.max_minutes, self.state.position)
                self.stopped_early = True
                break
            if self.checkpoints and save_every and not (last and self._bar is not None):
                self.save_checkpoint()  # (inside `train_stage`, the stage's last one is its end-of-stage save)
        return rows

    # ------------------------------------------------------------------ one step
    def step(self, role: str, stage: str, phase: str = "", validate: bool = False) -> dict:
        """Roll out, score, update `role`, log. Returns the step's metrics. `validate` (a checkpoint
        follows; also when `max_minutes` is up) adds the validation metrics (`validate()`) to the step's row."""
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        start = time.perf_counter()
        step = self.state.global_step
        problems = self.next_problems(role)
        # rollout → sandbox → rewards (both models sample; neither has gradients), this process's share
        share = self.processes.shard(problems)
        own, metrics = make_rollouts(self.generator, self.discriminator, self.sandbox, self.config, share, stage,
                                     self.chain_prefixes(share, stage), [self.mutants_for(p) for p in share])
        rollouts = self._gather_rollouts(problems, own, metrics) if self.processes.distributed else own
        for r in rollouts:  # dynamic sampling: a group that all passed or all failed draws its problem less
            self.state.uniform_groups[r.problem.id] = len({res.all_passed for res in r.gt_results}) < 2
        # update the model whose turn it is
        t = time.perf_counter()
        metrics.update(self.update(role, own))
        metrics["time/update_s"] = time.perf_counter() - t
        metrics["time/step_s"] = time.perf_counter() - start
        metrics.update(rollout_metrics(rollouts))
        metrics.update({"step": step, "position": self.state.position, "stage": stage, "phase": phase, "role": role,
                        "problems": [p.id for p in problems]})
        if validate or (self.checkpoints and self.time_is_up()):
            metrics.update(self.validate())
        # log
        self.state.last_metrics = metrics
        self._log(metrics, rollouts, step)
        self.state.global_step = step + 1
        return metrics

    def _gather_rollouts(self, problems: list[Problem], own: list[ProblemRollout], metrics: dict) -> list[ProblemRollout]:
        """Every process's rollouts of the step, in the order of `problems`, on every process; the chain
        cache takes the others' prefixes and `metrics` becomes the step's over all processes."""
        parts = self.processes.gather((own, metrics))
        rollouts: list = [None] * len(problems)
        for rank, (part, _) in enumerate(parts):
            rollouts[rank::self.processes.world_size] = part
        for r in rollouts:
            self.state.chain_cache.setdefault(r.problem.id, {}).update(r.prefix)
        metrics.update(merge_metrics([m for _, m in parts], summed=("attempts/tests_rewritten", "sandbox/executions",
                                                                    "attempts/solved_after_retry", "sandbox/timeouts")))
        metrics["attempts/mean"] = float(np.mean([a for r in rollouts for a in r.attempts]))
        return rollouts

    def update(self, role: str, rollouts: list[ProblemRollout]) -> dict:
        """One PPO update of `role` on the step's samples; the other model stays frozen.

        The generator's actions are its stage-s text and its final code, the discriminator's its critique
        (when on) and its tests; both sequences of a sample share that sample's reward. Advantages are
        group-relative within each problem. A group whose rewards are all equal has zero advantages: it is
        left out of the batch (no tokens, no KL term) and counted in `ppo/zero_signal_groups`; a step with
        no group left has no update (`ppo/no_signal_updates`). With several processes each passes its own
        rollouts, all take the same update (`train_step`), and the metrics are those of all processes.

        With `carry_samples` the update also takes the role's groups with signal from the other role's steps
        since its own last update (`TrainerState.carried`, counted in `ppo/carried_groups` and `ppo/groups`):
        its weights have not changed since it sampled them, so they are on-policy, and a step's rollout then
        teaches both models instead of one; their rewards are those scored then, against the other model as
        it was. This step's samples of the other role wait, in the same way, for that role's next update."""
        step = self.state.global_step
        own = [row for g, r in enumerate(rollouts) for row in action_rows(r, role, f"{step}:{g}")]
        waited = self.state.carried.pop(role, [])  # on-policy: this role was frozen since they were sampled
        rows = waited + own
        advantages = compute_advantages([row["reward"] for row in rows], [row["group"] for row in rows],
                                        self.config.ppo.normalize_advantages)  # zero in a group without signal
        live = {row["group"] for row, a in zip(rows, advantages.tolist()) if a != 0}
        keep = [i for i, row in enumerate(rows) if row["group"] in live]
        if self.config.carry_samples:  # the other role's groups with signal wait for its next update
            other = next(r for r in ROLES if r != role)
            waiting = [row for g, r in enumerate(rollouts) for row in action_rows(r, other, f"{step}:{g}")]
            signal = {row["group"] for row, a in zip(waiting, compute_advantages(
                [row["reward"] for row in waiting], [row["group"] for row in waiting]).tolist()) if a != 0}
            self.state.carried.setdefault(other, []).extend(row for row in waiting if row["group"] in signal)
        carried = len({row["group"] for row in waited})
        out = {"ppo/zero_signal_groups": len(rollouts) + carried - len(live), "ppo/groups": len(rollouts) + carried,
               "ppo/carried_groups": carried}
        if not any(self.processes.gather(bool(keep))):
            out["ppo/no_signal_updates"] = 1
            return self._merged(out)
        wrapper = self.wrappers[role]
        top = shares_bottom(self.config, wrapper.model)  # the frozen blocks below the trained ones run once
        batch = self._update_batch(role, [rows[i] for i in keep], advantages[keep], top, out) if keep else None
        # gradients on by parameter name while the whole model is in place, then the top-only view
        with trainable(wrapper.model, self.trainable_names[role]), top_blocks(wrapper.model, top):
            out.update(train_step(wrapper.model, self.optimizers[role], batch, self.config.ppo, self.processes))
        self._sync_sampler(role)
        out["ppo/no_signal_updates"] = 0
        return self._merged(out)

    def _merged(self, out: dict) -> dict:
        """The update's metrics over all processes (counts summed, the rest averaged)."""
        if not self.processes.distributed:
            return out
        return merge_metrics(self.processes.gather(out), summed=("ppo/zero_signal_groups", "ppo/groups", "ppo/tokens",
                                                                  "ppo/carried_groups"))

    def _update_batch(self, role: str, rows: list[dict], advantages: torch.Tensor, top: int, out: dict) -> RolloutBatch:
        """The update's token batch of the sampled `rows` (`action_rows`) with the reference log-probs (and,
        with `top` trained blocks, the frozen bottom's hidden states)."""
        wrapper = self.wrappers[role]
        tb = wrapper.token_batch([row["prompt_ids"] for row in rows], [row["response_ids"] for row in rows])
        P = tb.prompt_width
        sampler_logprobs = torch.full(tb.input_ids.shape, math.nan)  # (B, P+R) NaN where the sampler gave none
        for i, row in enumerate(rows):
            if len(row["sampler_logprobs"]) == len(row["response_ids"]):
                sampler_logprobs[i, P:P + len(row["response_ids"])] = torch.tensor(row["sampler_logprobs"])
        batch = RolloutBatch(input_ids=tb.input_ids, attention_mask=tb.attention_mask,
                             response_mask=tb.response_mask, advantages=advantages.to(wrapper.device),
                             sampler_logprobs=sampler_logprobs.to(wrapper.device),
                             temperature=self.config.temperature)
        precision = self.config.ppo.precision
        t = time.perf_counter()
        micro = self.config.ppo.micro_batch_tokens
        if top:
            batch.hidden_states = bottom_hidden_states(wrapper.model, batch, top, precision, micro)
        with top_blocks(wrapper.model, top), top_blocks(self.references[role], top):
            batch.ref_logprobs = reference_logprobs(wrapper.model, self.references[role], batch, precision, micro)
        out["time/ref_logprobs_s"] = time.perf_counter() - t
        return batch

    # ------------------------------------------------------------------ helpers
    def _sync_sampler(self, role: str) -> None:
        """The role's generation copy (if any) takes its training weights (after an update or a load)."""
        wrapper = self.wrappers[role]
        if wrapper.sampling_model is not None:
            sync_generation_copy(wrapper.sampling_model, wrapper.model, self.trainable_names[role])

    def next_problems(self, role: str = "discriminator") -> list[Problem]:
        """The next step's problems: `problems_per_step` distinct training problems drawn from a seeded
        generator (its state is in `TrainerState`, so a resume draws the same ones), a problem whose last
        group all passed or all failed with weight `uniform_group_weight`, every other one with weight 1; in a
        generator step a problem labelled easy also with weight `easy_weight_generator` (in run 6, 24 of 46
        generator groups on easy problems had every code pass every test, and so no signal)."""
        rng = np.random.default_rng(self.config.seed)
        if self.state.draw_state:
            rng.bit_generator.state = self.state.draw_state
        easy = self.config.easy_weight_generator if role == "generator" else 1.0
        weights = np.array([(self.config.uniform_group_weight if self.state.uniform_groups.get(p.id) else 1.0)
                            * (easy if p.difficulty == "easy" else 1.0) for p in self.train_problems])
        k = min(self.config.problems_per_step, len(self.train_problems))
        chosen = rng.choice(len(self.train_problems), size=k, replace=False, p=weights / weights.sum())
        self.state.draw_state = rng.bit_generator.state
        return [self.train_problems[i] for i in chosen]

    def mutants_for(self, problem: Problem) -> list[str]:
        """Non-equivalent mutants of the problem's reference, the hardest ones with `config.hard_mutants`
        (made once, cached in memory and on disk)."""
        if problem.id not in self.mutants:
            from scoring.mutation import nonequivalent_mutants

            limit, hard = self.config.mutants_per_problem, self.config.hard_mutants
            self.mutants[problem.id] = ([m.source for m in nonequivalent_mutants(problem, self.sandbox, limit, hardest=hard)]
                                        if limit else [])
        return self.mutants[problem.id]

    def validate(self) -> dict:
        """Score both models on the validation slice, greedily (`scoring.measure.evaluate_problems`: the
        chain, one code, one test suite): `validation/pass@1`, `validation/valid_test_rate`,
        `validation/mutation_score` and their weighted sum `validation/score` (`VALIDATION_WEIGHTS`)."""
        from scoring.measure import EvalSettings, evaluate_problems

        if not self.validation_problems or not self.processes.is_main:  # (the main process scores checkpoints)
            return {}
        start = time.perf_counter()
        cfg = self.config
        settings = EvalSettings(chain="full", num_samples=0, num_test_suites=1, stage_tokens=cfg.stage_tokens or 32,
                                code_tokens=cfg.code_tokens or 256, test_tokens=cfg.test_tokens or 256,
                                mutants_per_problem=cfg.mutants_per_problem, seed=cfg.seed)
        results = evaluate_problems(self.generator, self.discriminator, self.validation_problems, self.sandbox,
                                    settings, batch_size=len(self.validation_problems), desc="validation",
                                    mutants={p.id: self.mutants_for(p) for p in self.validation_problems})
        scores = [r.mutation_score for r in results if r.mutation_score is not None]
        out = {"validation/pass@1": float(np.mean([r.greedy_passed for r in results])),
               "validation/valid_test_rate": float(np.mean([r.valid_test_rate for r in results])),
               "validation/mutation_score": float(np.mean(scores)) if scores else 0.0}
        out["validation/score"] = sum(w * out[k] for k, w in VALIDATION_WEIGHTS.items())
        out["time/validation_s"] = time.perf_counter() - start
        logger.info("validation: %s", {k: round(v, 3) for k, v in out.items()})
        return out

    def chain_prefixes(self, problems: list[Problem], stage: str) -> list[dict[str, str]]:
        """The stages before `stage` for each problem, greedy, from the cache; missing ones are generated now
        (`LLMGenerator.complete_chains`: one batched call per earlier stage for all problems that lack it)."""
        caches = [self.state.chain_cache.setdefault(p.id, {}) for p in problems]
        self.generator.complete_chains(problems, caches, stages_before(stage), do_sample=False,
                                       max_new_tokens=self.config.stage_tokens or None)
        return [{s.name: cache[s.name] for s in stages_before(stage)} for cache in caches]

    def summary(self) -> dict:
        """Mean metrics per stage and for the whole run, `{"run": {...}, "stages": {...}}`: over every step
        in `metrics.jsonl` (across resumes) when there is a run folder, else over this session's stages.
        Also written to `summary.json`."""
        metrics_file = self.run_dir / "metrics.jsonl" if self.run_dir else None
        if metrics_file and metrics_file.exists():
            out = summarize_metrics(load_metrics(metrics_file))
            if self.processes.is_main:
                (self.run_dir / "summary.json").write_text(json.dumps(out, indent=2) + "\n")
            return out
        stages = self.state.stage_metrics
        return {"stages": stages, "run": summarize_metrics(list(stages.values()))["run"]}

    def _log(self, metrics: dict, rollouts: list[ProblemRollout], step: int) -> None:
        """Append the step's rows, each file in one write, flushed and fsynced (a crash or a full disk can
        tear at most the last line, which a resume cuts: `_drop_logged_steps_after`)."""
        if not self.run_dir or not self.processes.is_main:
            return
        # standard JSON: a metric with no value this step (e.g. ppo/* of a skipped update) is null, not NaN
        rows = {"metrics.jsonl": json.dumps({k: None if isinstance(v, float) and not math.isfinite(v) else v
                                             for k, v in metrics.items()}, allow_nan=False) + "\n"}
        if rollouts and self.config.samples_every and step % self.config.samples_every == 0:
            rows["samples.jsonl"] = "".join(json.dumps(sample_row(r, step)) + "\n" for r in rollouts)
        for name, text in rows.items():
            append_synced(self.run_dir / name, text)
        if self.config.report_to == "tensorboard":
            if self._board is None:  # opened at the first step logged: steps from there on are dropped from
                # earlier event files (a resume runs them again, as `_drop_logged_steps_after` does)
                self._board = TensorBoardLog(self.run_dir / "tensorboard", self.config.to_dict(), first_step=step)
            self._board.add_metrics(metrics, step)

    def save_checkpoint(self):
        """Validate, then save both models, optimizers, RNG and trainer state through the checkpoint
        manager, with its score (`checkpoint_score`). The state records the content hashes of every problem
        this run trains or validates on, so an evaluation can refuse overlapping problems. With several
        processes every one calls this (their RNG states are saved too) and only the main one writes; the
        others return None."""
        from training.checkpoint_manager import capture_rng_state

        rng_states = self.processes.gather(capture_rng_state()) if self.processes.distributed else None
        carried = self.processes.gather(self.state.carried) if self.processes.distributed else None
        if not self.processes.is_main:
            return None
        metrics = dict(self.state.last_metrics)
        if "validation/score" not in metrics:  # not validated with the last step (a direct call)
            metrics.update(self.validate())
        state = {**asdict(self.state), "last_metrics": metrics, "stage": metrics.get("stage"),
                 "config": self.config.to_dict(),
                 "training_problems": sorted(content_hash(p) for p in self.problems)}
        if carried is not None:  # each process's own samples waiting for an update
            state["carried"] = {"ranks": carried}
        # named by steps taken, which never go back (a stage run again gets new names; the schedule
        # position is in the state)
        return self.checkpoints.save_checkpoint(
            self.state.global_step, self.generator.model, self.discriminator.model,
            self.optimizers["generator"], self.optimizers["discriminator"], state,
            self.generator.tokenizer, self.discriminator.tokenizer,
            rng_state=rng_states and {**rng_states[0], "ranks": rng_states}, score=checkpoint_score(metrics),
        )

    def load_checkpoint(self, path: str | Path, start_stage: str | None = None, verify: bool = True) -> None:
        """Continue from a checkpoint exactly: trained weights, optimizer states, schedule position, the
        chain cache and RNG states. The frozen references stay the initial weights (built from the config).
        `start_stage` restarts at the beginning of that stage instead of the saved position. `verify`: hash
        every file first (`load_checkpoint`; sizes are always checked); False for a checkpoint just verified."""
        from transformers import AutoModelForCausalLM

        from training.checkpoint_manager import CheckpointError, load_adapters, load_checkpoint, restore_rng_state

        ckpt = load_checkpoint(path, verify=verify)
        try:
            check_checkpoint_fits(ckpt.trainer_state.get("config", {}), self.config,
                                  int(ckpt.trainer_state.get("position", 0)), start_stage)
        except ValueError as e:
            raise CheckpointError(f"{ckpt.path}: incompatible checkpoint: {e}") from None
        for role in ROLES:
            model = self.wrappers[role].model
            if is_lora(model):  # only the adapters: the base weights stay the initial ones (the KL reference)
                load_adapters(model, getattr(ckpt, f"{role}_adapter_dir"), ckpt.path)
            else:
                folder = getattr(ckpt, f"{role}_dir")
                # read in fp32, which holds every saved dtype exactly: fp32 trained weights beside bf16 frozen
                # ones must not pass through bf16 (loading in the first parameter's dtype rounded them)
                trained = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
                missing, unexpected = model.load_state_dict(trained.state_dict(), strict=False)
                if unexpected or missing:
                    raise CheckpointError(f"{folder}: weights do not fit this model (missing {missing[:3]}, "
                                          f"unexpected {unexpected[:3]})")
            state = ckpt.optimizer_state(role)
            if state is not None:
                self.optimizers[role].load_state_dict(state)
            self._sync_sampler(role)
        known = TrainerState.__dataclass_fields__
        self.state = TrainerState(**{k: v for k, v in ckpt.trainer_state.items() if k in known})
        # samples waiting for an update: this process's own (saved by one process: the main one's; by more
        # processes than this run has: the others' are dropped); none when this run does not carry samples
        carried = self.state.carried.get("ranks", [self.state.carried])
        self.state.carried = carried[self.processes.rank] if (self.config.carry_samples and
                                                              self.processes.rank < len(carried)) else {}
        if start_stage is not None:
            self.state.position = min(e.index for e in self.schedule if e.stage == start_stage)
        else:
            ranks = ckpt.rng_state.get("ranks") or [ckpt.rng_state]
            if len(ranks) != self.processes.world_size:
                logger.warning("%s was saved by %d process(es), this run has %d: sampling does not continue "
                               "exactly as it would have", ckpt.path, len(ranks), self.processes.world_size)
            if self.processes.rank < len(ranks):
                restore_rng_state(ranks[self.processes.rank])
            else:
                seed_everything(self.config.seed + self.processes.rank + self.state.global_step)
        self._drop_logged_steps_after(self.state.global_step)
        logger.info("resumed from %s at schedule position %d", ckpt.path, self.state.position)

    def _drop_logged_steps_after(self, step: int) -> None:
        """Forget log rows of steps the checkpoint does not contain (run after it, before a crash):
        they are about to be run again. A line that is not JSON (torn by a crash or a full disk) is cut
        with a warning naming the file."""
        if not self.run_dir or not self.processes.is_main:
            return
        for path in (self.run_dir / "metrics.jsonl", self.run_dir / "samples.jsonl"):
            if not path.exists():
                continue
            kept, torn = [], 0
            for line in path.read_text(errors="replace").splitlines():
                try:
                    row = json.loads(line) if line.strip() else None
                except json.JSONDecodeError:
                    torn += 1
                    continue
                if isinstance(row, dict) and row.get("step", 0) < step:
                    kept.append(line)
            if torn:
                logger.warning("%s: cut %d torn line(s) (a crash or a full disk while appending)", path, torn)
            tmp = path.with_suffix(".tmp")
            tmp.write_text("".join(line + "\n" for line in kept))
            tmp.replace(path)

    def close(self):
        if self._board is not None:
            self._board.close()
            self._board = None
        if self._own_sandbox:
            self.sandbox.close()


class TensorBoardLog:
    """Every numeric metric of `metrics.jsonl` under the same key, at its step, and the resolved config as
    hyperparameters (`--report-to tensorboard`; `tensorboard --logdir RUN` shows them). TensorBoard is an
    optional dependency, imported only here."""

    def __init__(self, folder: Path, config: dict, first_step: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ImportError("--report-to tensorboard needs the tensorboard package: pip install tensorboard") from None
        self.writer = SummaryWriter(log_dir=str(folder), purge_step=first_step)
        hparams = {"/".join(keys): value if isinstance(value, (int, float, str, bool)) else json.dumps(value)
                   for keys, value in leaves(config)}
        self.writer.add_hparams(hparams, {}, run_name=".")

    def add_metrics(self, metrics: dict, step: int) -> None:
        for key, value in metrics.items():
            if key not in BOOKKEEPING and number(value) is not None:
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def checkpoint_score(metrics: dict) -> float:
    """What chooses the best checkpoint: `validation/score` (`AdversarialTrainer.validate`); without a
    validation slice, 0.7 · the generator's mean reward + 0.3 · the discriminator's valid-test rate of the
    last step (0 for each that is missing, e.g. before any step)."""
    if "validation/score" in metrics:
        return metrics["validation/score"]
    return 0.7 * metrics.get("generator/reward_mean", 0.0) + 0.3 * metrics.get("discriminator/valid_test_rate", 0.0)


def append_synced(path: Path, text: str) -> None:
    """Append `text` in one write, flushed and fsynced: a crash tears at most the last line."""
    with open(path, "a") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def action_rows(rollout: ProblemRollout, role: str, group: str) -> list[dict]:
    """The update rows of `role`'s sampled actions in one problem's rollout: per sample the generator's stage
    text and code, or the discriminator's critique (when on) and tests, each with its sample's reward and
    `group` (plain data: they may wait in the trainer state, and its checkpoints, for a later update)."""
    pairs = (zip(rollout.stage_samples, rollout.codes, rollout.gen_rewards) if role == "generator"
             else zip(rollout.critiques or [None] * len(rollout.tests), rollout.tests, rollout.disc_rewards))
    return [{"prompt_ids": list(gen.prompt_ids), "response_ids": list(gen.response_ids),
             "sampler_logprobs": list(gen.sampler_logprobs), "reward": float(reward), "group": group}
            for first, second, reward in pairs for gen in (first, second) if gen is not None and gen.response_ids]


def rollout_metrics(rollouts: list[ProblemRollout]) -> dict:
    """Reward and sandbox statistics of a step, namespaced `generator/` and `discriminator/`."""
    gen = np.concatenate([r.gen_rewards for r in rollouts])
    disc = np.concatenate([r.disc_rewards for r in rollouts])

    def mean(key, terms):
        return float(np.mean(np.concatenate([getattr(r, terms)[key] for r in rollouts])))

    return {
        "generator/reward_mean": float(gen.mean()), "generator/reward_std": float(gen.std()),
        "generator/pass_rate": mean("pass_rate", "gen_terms"),
        "generator/gt_pass_rate": mean("gt_pass_rate", "gen_terms"),
        "generator/solved_rate": float(np.mean([res.all_passed for r in rollouts for res in r.gt_results])),
        "generator/format_ok": mean("format_ok", "gen_terms"),
        "discriminator/reward_mean": float(disc.mean()), "discriminator/reward_std": float(disc.std()),
        "discriminator/valid_test_rate": mean("valid_frac", "disc_terms"),
        "discriminator/valid_suite_rate": float(np.mean([v for r in rollouts for v in r.validity])),
        "discriminator/discrimination": mean("discrimination", "disc_terms"),
        "discriminator/mutation_score": float(np.mean([v for r in rollouts if r.mutants
                                                       for v in r.disc_terms["mutation_score"]] or [np.nan])),
        "discriminator/format_ok": mean("format_ok", "disc_terms"),
        "discriminator/num_tests": mean("num_tests", "disc_terms"),
    }


def sample_row(r: ProblemRollout, step: int) -> dict:
    """A readable record of one problem's step for `samples.jsonl`."""
    return {
        "step": step, "problem": r.problem.id, "stage": r.stage, "prefix": r.prefix,
        "samples": [
            {"stage_output": s.text, "code": c.code or c.text, "code_ok": c.ok, "code_reason": c.reason,
             "attempts": a, "reward": float(rw), "gt_outcomes": gt.test_outcomes}
            for s, c, a, rw, gt in zip(r.stage_samples, r.codes, r.attempts, r.gen_rewards, r.gt_results)
        ],
        "tests": [
            {"critique": r.critiques[j].text if r.critiques else None, "tests": t.tests or t.text, "ok": t.ok,
             "reason": t.reason, "valid": r.validity[j], "reward": float(r.disc_rewards[j])}
            for j, t in enumerate(r.tests)
        ],
    }


def run_training(config: TrainingConfig, run_dir: str | Path, resume: str | None = None,
                 start_stage: str | None = None, changes: dict | None = None, launch_command: str = "") -> dict:
    """What `run_training.py` does: load the problems, build the trainer with a checkpoint manager in
    `run_dir`, resume if asked (`resume` = a checkpoint, a run folder, or "latest" of `run_dir`), and
    train the whole pipeline. Returns the run's summary. The run folder is locked for the whole call
    (`lock_run_folder`: a second trainer on it is refused, naming this one's pid). `changes` ({setting:
    [old, new]}, from `resumed_config`) are appended to the run's `changes.jsonl` once the lock is held;
    `launch_command` (the command that started the run) is recorded in its config.json.
    Launched on several processes (`accelerate launch`, `torchrun`), every process calls this with the
    same arguments; the main one holds the lock and writes (`training.distributed`)."""
    from data.problems import load_problem_set
    from training.checkpoint_manager import lock_run_folder
    from training.distributed import launched_processes

    if start_stage is not None and start_stage not in config.stages:
        raise ValueError(f"--start-stage {start_stage!r} is not one of the run's stages {config.stages}")
    problems = load_problem_set(config.problems, config.max_problems)
    heldout = {content_hash(p) for p in load_problem_set("humaneval")}
    seen = [p.id for p in problems if content_hash(p) in heldout]
    if seen and not config.allow_heldout_training:
        raise ValueError(f"{len(seen)} of the problems are HumanEval's, the held-out evaluation set (e.g. {seen[0]}); "
                         "pass --allow-heldout-training to train on them anyway (the run records it)")
    processes = launched_processes(config.device)
    with (lock_run_folder(run_dir) if processes.is_main else None) or nullcontext():  # None: not main, or no fcntl
        if changes and processes.is_main:
            record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "resume": resume, "start_stage": start_stage,
                      "changes": changes}
            append_synced(Path(run_dir) / "changes.jsonl", json.dumps(record) + "\n")
            logger.warning("resumed with changed settings (recorded in %s): %s", Path(run_dir) / "changes.jsonl",
                           ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items()))
        return _run_training(config, Path(run_dir), problems, resume, start_stage, processes, launch_command)


def _run_training(config: TrainingConfig, run_dir: Path, problems: list[Problem], resume: str | None,
                  start_stage: str | None, processes: Processes, launch_command: str) -> dict:
    from data.problems import validate_problem_set
    from training.checkpoint_manager import CheckpointManager, resolve_checkpoint

    manager = CheckpointManager(run_dir, keep_last=config.keep_last)
    if processes.is_main:
        manager.prepare()  # a folder that cannot take a checkpoint fails now, not after the first steps
    checkpoint = None
    metrics_file = run_dir / "metrics.jsonl"
    if resume == "latest":  # the run's own newest checkpoint that verifies, listed once (by the main process)
        checkpoint = processes.broadcast(manager.latest_verified_checkpoint() if processes.is_main else None)
        if checkpoint is None and processes.is_main:
            logger.warning("%s has no checkpoint yet (stopped before the first one): starting the run again", run_dir)
    elif resume is None and metrics_file.is_file() and metrics_file.stat().st_size > 0:
        raise ValueError(f"{run_dir} already holds a run (metrics.jsonl); continue it with --resume, or choose "
                         "another --output-dir")
    elif resume:  # a checkpoint folder, or a run folder (its latest checkpoint)
        checkpoint = resolve_checkpoint(resume, run_folder="latest")
    with Sandbox(config.sandbox) as sandbox:
        # the main process validates; the others keep what it kept (a verdict that depends on a timeout could differ)
        valid, rejected = validate_problem_set(problems, sandbox) if processes.is_main else (None, None)
        kept, rejected = processes.broadcast(({content_hash(p) for p in valid}, rejected)
                                             if processes.is_main else None)
        problems = [p for p in problems if content_hash(p) in kept]
        if not problems:
            pid, reason = next(iter(rejected.items()))
            raise ValueError(f"no valid problem in {config.problems!r}: all {len(rejected)} failed validation "
                             f"(e.g. {pid}: {reason})")
        trainer = AdversarialTrainer(config, problems, sandbox=sandbox, checkpoint_manager=manager, run_dir=run_dir,
                                     processes=processes, launch_command=launch_command)
        try:
            if resume == "latest" and checkpoint is None:
                trainer._drop_logged_steps_after(0)  # the rows of steps that are about to run again
            if checkpoint is not None:
                # files are hashed once, by the main process (the latest one just now); the others check sizes
                trainer.load_checkpoint(checkpoint, start_stage, verify=resume != "latest" and processes.is_main)
            elif start_stage is not None:
                trainer.state.position = min(e.index for e in trainer.schedule if e.stage == start_stage)
            return trainer.train_full_pipeline()
        finally:
            trainer.close()
