"""PPO math as pure functions (torch only), and one update step over a batch of rollouts.

After cleanrl `ppo.py` and the PPO paper (Schulman et al. 2017), with group-relative advantages (GRPO,
Shao et al. 2024) and the k3 KL estimator (Schulman, "Approximating KL divergence", 2020). Per response
token t, with old log-probs from the rollout and ref log-probs from the frozen reference:

    logp_t  = log softmax(logits_t / T)[a_t]    at the sampling temperature T, as TRL and verl do: the
                                                policy that produced the samples is the one scored
    ratio_t = exp(logp_t − old_logp_t)
    A       = (r − mean_group r) [/ (std_group r + eps)]                   broadcast to the response tokens
    L_clip  = − mean_t min(ratio_t · A, clip(ratio_t, 1 − ε, 1 + ε) · A)
    KL_t    = exp(ref_logp_t − logp_t) − (ref_logp_t − logp_t) − 1            (k3, ≥ 0, unbiased)
    loss    = L_clip + β · mean_t KL_t

mean_t is the masked mean over all response tokens of the (mini)batch: Σ x·mask / Σ mask.
Log-prob tensors are (B, T) aligned with input_ids: logprobs[:, t] = log π(input_ids[:, t] | input_ids[:, :t]);
position 0 has no prediction and is 0.
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING

import torch

from models.logprobs import common_prefix_length, forward_logprobs, real_columns, real_tokens, shared_prefix_cost

if TYPE_CHECKING:  # annotation only: this module imports nothing but torch (and `models.logprobs`) at run time
    from training.config import PPOConfig

logger = logging.getLogger(__name__)


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Σ x·mask / max(Σ mask, 1). Masked entries never reach the result (not even a NaN)."""
    mask = mask.bool()
    return torch.where(mask, x, torch.zeros_like(x)).sum() / mask.sum().clamp(min=1)


# ---------------------------------------------------------------- advantages
def compute_advantages(
    rewards: torch.Tensor | Sequence[float],
    group_ids: torch.Tensor | Sequence,
    normalize: bool = True,
    eps: float = 1e-6,
    atol: float = 1e-6,
) -> torch.Tensor:
    """Group-relative advantages (GRPO): A_i = r_i − mean_{g(i)} r  [/ (std_{g(i)} r + eps)].

    rewards (B,), group_ids (B,) the problem (group) of each sample. std is the population std of the
    group. A group whose rewards are all equal (max − min ≤ atol, a single sample included) carries no
    signal and gets exactly zero advantages (float noise is not amplified by the division)."""
    rewards = torch.as_tensor(rewards, dtype=torch.float32)  # (B,)
    if isinstance(group_ids, torch.Tensor):  # index (B,): the group number in 0..G-1 of each sample
        index = torch.unique(group_ids, return_inverse=True)[1].to(rewards.device)
    else:  # any hashables (problem ids)
        numbers: dict = {}
        index = torch.tensor([numbers.setdefault(g, len(numbers)) for g in group_ids], dtype=torch.long,
                             device=rewards.device)
    if rewards.shape != index.shape:
        raise ValueError(f"rewards {tuple(rewards.shape)} and group_ids {tuple(index.shape)} must match")
    if rewards.numel() == 0:
        return rewards.clone()
    count = torch.bincount(index).to(rewards.dtype)  # (G,)
    mean = torch.zeros_like(count).index_add_(0, index, rewards) / count  # (G,)
    var = torch.zeros_like(count).index_add_(0, index, (rewards - mean[index]) ** 2) / count  # (G,)
    high = torch.full_like(count, -math.inf).scatter_reduce_(0, index, rewards, "amax")  # (G,)
    low = torch.full_like(count, math.inf).scatter_reduce_(0, index, rewards, "amin")  # (G,)
    advantages = rewards - mean[index]  # (B,)
    if normalize:
        advantages = advantages / (var.sqrt()[index] + eps)
    no_signal = (high - low) <= atol  # (G,) all rewards of the group equal
    return torch.where(no_signal[index], torch.zeros_like(advantages), advantages)


# ---------------------------------------------------------------- the loss
def compute_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_coef: float,
    kl_coef: float = 0.0,
    ref_logprobs: torch.Tensor | None = None,
    entropy: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Clipped surrogate with a k3 KL penalty to the reference; masked mean over response tokens.

        ratio_t = exp(logp_t − old_logp_t)
        L_clip  = mean_t max(−A·ratio_t, −A·clip(ratio_t, 1 − clip_coef, 1 + clip_coef))
        KL_t    = exp(ref_logp_t − logp_t) − (ref_logp_t − logp_t) − 1
        loss    = L_clip + kl_coef · mean_t KL_t

    logprobs (B, T) with grad; old_logprobs, ref_logprobs (B, T) without; advantages (B,) or (B, T);
    response_mask (B, T), 1 on response tokens. Entries outside the mask are ignored, even NaN ones.
    With ratio 1 (old = logprobs) the gradient is the plain policy gradient −mean_t A·∇logp_t.

    Metrics (floats): `pg_loss`; `kl_ref` mean_t KL_t (0 without a reference); `approx_kl` the k3
    estimate of KL(old ‖ new) = mean_t (ratio_t − 1) − log ratio_t (cleanrl); `clip_frac` the share of
    tokens where the clipped term is the active one and the gradient is cut (ratio > 1 + ε with A > 0,
    ratio < 1 − ε with A < 0); `entropy` mean_t of the given per-token entropy (B, T), if any."""
    mask = response_mask.bool()  # (B, T)
    advantages = (advantages.unsqueeze(-1) if advantages.dim() == 1 else advantages).expand_as(logprobs)  # (B, T)
    zero = torch.zeros_like(logprobs)
    # padding may hold anything: keep it out of exp() so it cannot produce NaN gradients
    logprobs = torch.where(mask, logprobs, zero)  # (B, T) log π(a_t|s_t)
    old_logprobs = torch.where(mask, old_logprobs.detach(), zero)  # (B, T)
    advantages = torch.where(mask, advantages.detach(), zero)  # (B, T)

    logratio = logprobs - old_logprobs  # (B, T)
    ratio = logratio.exp()  # (B, T)
    pg_loss1 = -advantages * ratio  # (B, T)
    pg_loss2 = -advantages * torch.clamp(ratio, 1 - clip_coef, 1 + clip_coef)  # (B, T)
    pg_loss = masked_mean(torch.max(pg_loss1, pg_loss2), mask)  # ()

    if ref_logprobs is not None:
        delta = torch.where(mask, ref_logprobs.detach(), zero) - logprobs  # (B, T) ref − logp
        kl_ref = masked_mean(delta.exp() - delta - 1, mask)  # ()
    else:
        kl_ref = torch.zeros((), device=logprobs.device)
    loss = pg_loss + kl_coef * kl_ref

    with torch.no_grad():
        clipped = ((ratio > 1 + clip_coef) & (advantages > 0)) | ((ratio < 1 - clip_coef) & (advantages < 0))  # (B, T)
        metrics = {
            "loss": loss.item(),
            "pg_loss": pg_loss.item(),
            "kl_ref": kl_ref.item(),
            "approx_kl": masked_mean((ratio - 1) - logratio, mask).item(),
            "clip_frac": masked_mean(clipped.float(), mask).item(),
        }
        if entropy is not None:
            metrics["entropy"] = masked_mean(entropy.float(), mask).item()
    return loss, metrics


# ---------------------------------------------------------------- log-probs from a model
@dataclass
class RolloutBatch:
    """Sampled sequences (prompt + response, padded) and what the update needs about them."""

    input_ids: torch.Tensor  # (B, T) prompt and response token ids
    attention_mask: torch.Tensor  # (B, T) 1 on real tokens, 0 on padding
    response_mask: torch.Tensor  # (B, T) 1 on the sampled response tokens (the actions)
    advantages: torch.Tensor  # (B,) one advantage per sequence, broadcast over its response tokens
    old_logprobs: torch.Tensor | None = None  # (B, T) log-probs when sampled; None: on-policy, taken now
    ref_logprobs: torch.Tensor | None = None  # (B, T) log-probs of the frozen reference; None: no KL term
    temperature: float = 1.0  # the sampling temperature: every log-prob of this batch is of logits / temperature
    sampler_logprobs: torch.Tensor | None = None  # (B, T) the sampler's own log-probs (NaN where unknown), for a metric
    # (B, T, H) output of the frozen bottom blocks, computed once: when set, every forward of this batch starts
    # there (`inputs_embeds`) and the model must be one that runs only its top blocks (`training.policy.top_blocks`)
    hidden_states: torch.Tensor | None = None

    def __post_init__(self):
        shape = tuple(self.input_ids.shape)
        for name in ("attention_mask", "response_mask", "old_logprobs", "ref_logprobs", "sampler_logprobs"):
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise ValueError(f"RolloutBatch.{name} has shape {tuple(value.shape)}, input_ids {shape}")
        if self.hidden_states is not None and tuple(self.hidden_states.shape[:2]) != shape:
            raise ValueError(f"RolloutBatch.hidden_states must be {shape} + (H,), got {tuple(self.hidden_states.shape)}")
        if tuple(self.advantages.shape) != shape[:1]:
            raise ValueError(f"RolloutBatch.advantages must be ({shape[0]},), got {tuple(self.advantages.shape)}")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def apply(self, fn) -> RolloutBatch:
        """A batch of `fn(tensor)` for each tensor field (the others as they are)."""
        return RolloutBatch(**{f.name: fn(v) if isinstance(v := getattr(self, f.name), torch.Tensor) else v
                               for f in fields(self)})

    def select(self, index: torch.Tensor) -> RolloutBatch:
        """The rows `index` (a minibatch)."""
        return self.apply(lambda t: t[index])

    def micro_batches(self, max_tokens: int) -> list[tuple[torch.Tensor, slice, RolloutBatch]]:
        """The rows in micro-batches (`micro_batches`: rows that share a prompt prefix together), each
        `(rows, columns, batch)`: the batch of those rows cut to the columns they use; one micro-batch of
        everything when `max_tokens` is 0."""
        return [(rows, slice(lo, hi), self.select(rows).apply(lambda t: t[:, lo:hi] if t.dim() > 1 else t))
                for rows, lo, hi in micro_batches(self.attention_mask, max_tokens, self.input_ids)]


def micro_batches(attention_mask: torch.Tensor, max_tokens: int,
                  input_ids: torch.Tensor | None = None) -> list[tuple[torch.Tensor, int, int]]:
    """Rows of a (B, T) batch in groups `(rows, lo, hi)` whose real tokens all lie in columns lo..hi-1.

    Given `input_ids`, rows are taken in the order of their real tokens, so rows that begin alike (the
    samples of one prompt, the prompts of one problem) come together, and a row joins the group before it
    when the group then costs fewer token positions than the two apart, costed as
    `models.logprobs.decoder_states` runs it (their common prefix once, each row's rest right-padded:
    `shared_prefix_cost`), and its rows × (hi − lo) stay within `max_tokens` (the bound of the plain forward,
    which runs where a prefix cannot be shared: `models.logprobs.shares_prefixes`). The rows left alone that
    way (and every row without `input_ids`) are taken in order of where their real tokens start and end, and a
    group grows while its rows × (hi − lo) stay within `max_tokens`. A row alone may exceed it; `max_tokens` 0
    gives one group of every row. Cutting the columns that are padding in every row of a group changes no real
    token's result (position ids count real tokens, padding is masked), so a forward over the groups equals one
    over the batch up to float rounding, with less padding computed and bounded memory: a step's rows mix short
    stage texts and long codes, whose common (B, T) is mostly padding for the short ones."""
    real = attention_mask.bool()  # (B, T)
    B, T = real.shape
    if not max_tokens or B == 0:
        return [(torch.arange(B, device=real.device), 0, T)]
    start, end = real_columns(attention_mask)  # (B,) first real column, one past the last
    groups: list[tuple[list[int], int, int]] = []  # (rows, lo, hi)
    if input_ids is not None:
        tokens = real_tokens(input_ids, attention_mask)
        costs: list[tuple[int, int]] = []  # each group's (common prefix, token positions)
        for r in sorted(range(B), key=lambda r: tokens[r]):
            n = max(1, len(tokens[r]))
            if groups:
                rows, lo, hi = groups[-1]
                common, cost = costs[-1]
                common = min(common, common_prefix_length(tokens[rows[0]], tokens[r]))
                joined = shared_prefix_cost([len(tokens[i]) for i in rows] + [n], common)[1]
                lo, hi = min(lo, start[r]), max(hi, end[r])
                if joined < cost + n and (len(rows) + 1) * (hi - lo) <= max_tokens:
                    groups[-1], costs[-1] = (rows + [r], lo, hi), (common, joined)
                    continue
            groups.append(([r], start[r], end[r]))
            costs.append((n, n))
        alone = [g[0][0] for g in groups if len(g[0]) == 1]  # rows that share with none: by extent, below
        groups = [g for g in groups if len(g[0]) > 1]
    else:
        alone = list(range(B))
    shared = len(groups)
    for r in sorted(alone, key=lambda r: (start[r], end[r])):
        if len(groups) > shared:
            rows, lo, hi = groups[-1]
            lo, hi = min(lo, start[r]), max(hi, end[r])
            if (len(rows) + 1) * (hi - lo) <= max_tokens:
                groups[-1] = (rows + [r], lo, hi)
                continue
        groups.append(([r], start[r], end[r]))
    return [(torch.tensor(rows, device=real.device), lo, hi) for rows, lo, hi in groups]


def first_scored_column(mask: torch.Tensor | None) -> int:
    """The first column of a (B, T) response mask that any row scores (>= 1); 1 without a mask."""
    if mask is None or not mask.any():
        return 1
    return max(1, int(mask.any(0).nonzero()[0]))


def batch_logprobs(
    model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, precision: str = "fp32",
    keep_from: int = 1, temperature: float = 1.0, hidden_states: torch.Tensor | None = None,
) -> torch.Tensor:
    """(B, T) log π_T(input_ids[:, t] | input_ids[:, :t]) from `model(input_ids=, attention_mask=).logits / T`;
    position 0 (nothing predicts it) is 0. Gradients flow when the caller's grad mode allows.
    The one implementation behind rollout old log-probs, reference log-probs and `train_step`."""
    return forward_logprobs(model, input_ids, attention_mask, precision, keep_from=keep_from,
                             temperature=temperature, hidden_states=hidden_states)[0]


@torch.no_grad()
def compute_ref_logprobs(model: torch.nn.Module, batch: RolloutBatch, precision: str = "fp32",
                         micro_batch_tokens: int = 0) -> torch.Tensor:
    """(B, T) `batch_logprobs` of `model` on the batch without gradients, on the model's device, a micro-batch
    of rows at a time (`micro_batches`). For the frozen reference (ref_logprobs) and for the policy right after
    sampling (old_logprobs)."""
    device = next(model.parameters()).device
    batch = batch.apply(lambda t: t.to(device))
    out = torch.zeros(batch.input_ids.shape, device=device)  # (B, T)
    for rows, columns, mb in batch.micro_batches(micro_batch_tokens):
        out[rows, columns] = batch_logprobs(
            model, mb.input_ids, mb.attention_mask, precision, keep_from=first_scored_column(mb.response_mask),
            temperature=mb.temperature, hidden_states=mb.hidden_states)
    return out


# ---------------------------------------------------------------- one update
def train_step(
    model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch: RolloutBatch | None, config: PPOConfig,
    processes=None,
) -> dict[str, float]:
    """One PPO update of `model` on `batch`: `config.ppo_epochs` passes, each over `config.num_minibatches`
    shuffled minibatches, one optimizer step per minibatch (`config` is a `PPOConfig`; the learning rate is
    the optimizer's).

    Each step: loss = `compute_policy_loss` (clip_coef, kl_coef), backward, clip the global gradient norm
    to `max_grad_norm`, step. The loss and its gradient are taken a micro-batch of rows at a time
    (`micro_batches`, `config.micro_batch_tokens`): the minibatch's token mean is the sum of its micro-batches'
    token means weighted by their shares of its tokens, so the step is that of the whole minibatch. A
    non-finite loss or gradient norm skips the step: gradients are dropped, the optimizer does not step,
    weights and optimizer state stay bit-for-bit unchanged; it is counted in
    `ppo/skipped_steps`. With `batch.old_logprobs` None the log-probs of the current weights (before any
    step, no grad) are used, so the first step has ratio 1. The forward runs under bf16 autocast when
    `config.precision` is "bf16" (or "auto" where bf16 is native: `models.logprobs.resolve_precision`), on the
    model's device type. The model's train/eval mode is left as it is
    (dropout should be off for ratios to mean anything; HF models load in eval mode).

    With `processes` (`training.distributed.Processes`) of several processes, every process calls this in
    the same update with its own batch (None: no rows of its own this time) and takes the same optimizer
    steps: each minibatch's gradients are averaged over the processes, weighted by their response tokens
    (`Processes.average_gradients`), before clipping; every process splits its rows into exactly
    `config.num_minibatches` minibatches (some may be empty); a non-finite loss on any process skips the
    step everywhere.

    Returns namespaced metrics: `ppo/loss`, `ppo/pg_loss`, `ppo/kl_ref`, `ppo/approx_kl`, `ppo/clip_frac`,
    `ppo/entropy`, `ppo/grad_norm` (before clipping), averaged over the steps taken (NaN when none);
    `ppo/steps`, `ppo/skipped_steps`, `ppo/tokens` (response tokens in the batch), `ppo/time_s`."""
    start = time.perf_counter()
    params = [p for p in model.parameters() if p.requires_grad]
    device = next(model.parameters()).device
    distributed = processes is not None and processes.distributed
    if batch is None and not distributed:
        raise ValueError("train_step needs a batch (None only for a process of a multi-process run)")
    batch, minibatches = _prepare_batch(model, batch, config, distributed, device)

    optimizer.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    steps = skipped = counted = 0
    gap_sum, gap_count = 0.0, 0
    for epoch in range(config.ppo_epochs):
        for index in minibatches[epoch]:
            metrics, weight = None, 0.0
            if len(index):
                # the minibatch's loss, a masked mean over its tokens, is the token-weighted sum of its
                # micro-batches' losses: each is backpropagated on its own (bounded memory, less padding)
                mb = batch.select(index.to(device))
                total = float(mb.response_mask.sum().clamp(min=1))
                metrics = {}
                for _, _, micro in mb.micro_batches(config.micro_batch_tokens):
                    share = float(micro.response_mask.sum()) / total
                    logprobs, entropy = forward_logprobs(
                        model, micro.input_ids, micro.attention_mask, config.precision,
                        keep_from=first_scored_column(micro.response_mask), entropy_mask=micro.response_mask,
                        temperature=micro.temperature, hidden_states=micro.hidden_states)  # (b, t), (b, t)
                    old_logprobs = logprobs.detach() if micro.old_logprobs is None else micro.old_logprobs  # (b, t)
                    if epoch == 0 and micro.sampler_logprobs is not None:  # training weights vs the sampler, before any step
                        known = micro.response_mask.bool() & torch.isfinite(micro.sampler_logprobs)  # (b, t)
                        gap_sum += (old_logprobs - micro.sampler_logprobs).abs()[known].sum().item()
                        gap_count += int(known.sum())
                    loss, part = compute_policy_loss(
                        logprobs, old_logprobs, micro.advantages, micro.response_mask, clip_coef=config.clip_coef,
                        kl_coef=config.kl_coef, ref_logprobs=micro.ref_logprobs, entropy=entropy,
                    )
                    if not torch.isfinite(loss):
                        break
                    (loss * share).backward()
                    for key, value in part.items():
                        metrics[key] = metrics.get(key, 0.0) + value * share
                if not torch.isfinite(loss):
                    logger.warning("PPO step skipped: non-finite loss %s", loss.item())
                    optimizer.zero_grad(set_to_none=True)
                    metrics = None
                    if not distributed:
                        skipped += 1
                        continue
                    weight = math.nan  # poisons the average: every process skips this step
                else:
                    weight = float(mb.response_mask.sum())
            if distributed and processes.average_gradients(params, weight) == 0:
                optimizer.zero_grad(set_to_none=True)
                continue  # no process had rows in this minibatch: no step anywhere
            grad_norm = torch.nn.utils.clip_grad_norm_(params, config.max_grad_norm)
            if not torch.isfinite(grad_norm):
                logger.warning("PPO step skipped: non-finite gradient norm %s", grad_norm.item())
                optimizer.zero_grad(set_to_none=True)
                skipped += 1
                continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
            if metrics is not None:
                counted += 1
                metrics["grad_norm"] = grad_norm.item()
                for key, value in metrics.items():
                    sums[key] = sums.get(key, 0.0) + value

    out = {f"ppo/{key}": (sums[key] / counted if counted else math.nan)
           for key in ("loss", "pg_loss", "kl_ref", "approx_kl", "clip_frac", "entropy", "grad_norm")}
    out.update({
        # mean |log π_train − log π_sampler| of the sampled tokens: 0 up to float noise when both run the same
        # weights in the same dtype; bf16 generation (frozen bf16 weights) makes it a few hundredths
        "ppo/sampler_logprob_gap": gap_sum / gap_count if gap_count else math.nan,
        "ppo/steps": steps,
        "ppo/skipped_steps": skipped,
        "ppo/tokens": int(batch.response_mask.sum()) if batch is not None else 0,
        "ppo/time_s": time.perf_counter() - start,
    })
    return out


def _prepare_batch(model: torch.nn.Module, batch: RolloutBatch | None, config: PPOConfig, distributed: bool,
                   device: torch.device) -> tuple[RolloutBatch | None, list]:
    """`train_step`'s batch on the model's device with position 0 unscored, the minibatch row indices of
    each epoch and, for several minibatches or epochs, the old log-probs (micro-batched as `train_step` does).
    None (a process with no rows of its own): `config.num_minibatches` empty minibatches per epoch."""
    if batch is None:
        return None, [[torch.zeros(0, dtype=torch.long)] * config.num_minibatches for _ in range(config.ppo_epochs)]
    response_mask = batch.response_mask.clone()  # (B, T)
    response_mask[:, 0] = 0  # nothing predicts position 0
    batch = replace(batch, response_mask=response_mask, advantages=batch.advantages.float()).apply(
        lambda t: t.to(device))
    num_minibatches = config.num_minibatches if distributed else min(config.num_minibatches, len(batch))
    minibatches = [torch.randperm(len(batch)).tensor_split(num_minibatches) for _ in range(config.ppo_epochs)]
    if batch.old_logprobs is None and (config.ppo_epochs > 1 or num_minibatches > 1):
        # frozen before any step, computed on exactly the rows (and row order) of the first pass's minibatches,
        # so the first minibatch's forward repeats it bit for bit: its ratio is exactly 1
        batch.old_logprobs = torch.zeros(batch.input_ids.shape, device=device)  # (B, T)
        for index in (i.to(device) for i in minibatches[0] if len(i)):
            batch.old_logprobs[index] = compute_ref_logprobs(model, batch.select(index), config.precision,
                                                             config.micro_batch_tokens)
    return batch, minibatches
