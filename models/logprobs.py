"""Log-probabilities of tokens under a causal LM: the one implementation behind the sampler-side scoring
(`LLMBase.get_log_probs`), the rollout's old log-probs, the frozen reference's and the PPO update's
(`training.ppo`). Torch only; models/ imports nothing from training/.

Log-prob tensors are (B, T) aligned with input_ids: logprobs[:, t] = log π(input_ids[:, t] | input_ids[:, :t]);
position 0 has no prediction and is 0.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions that count real tokens only, as `generate` numbers a left-padded row."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log π(token | prefix) for each position.

    logits: (B, T, V) scores predicting tokens (already shifted: logits[:, t] predicts tokens[:, t]);
    tokens: (B, T) ids. Returns (B, T). Computed in fp32 for stability under bf16 autocast."""
    logp = F.log_softmax(logits.float(), dim=-1)  # (B, T, V)
    return torch.gather(logp, -1, tokens.unsqueeze(-1)).squeeze(-1)  # (B, T)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """H = logsumexp(l) − Σ softmax(l) · l over the last dimension, in fp32. (..., V) -> (...)."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (F.softmax(logits, dim=-1) * logits).sum(-1)


def mixed_dtype(model: torch.nn.Module) -> torch.dtype | None:
    """The low-precision dtype of a model whose weights mix dtypes (frozen layers in bf16, trained ones in
    fp32: `training.policy.prepare_policy`), else None. Such a model only runs under autocast."""
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    low = dtypes & {torch.bfloat16, torch.float16}
    return next(iter(low)) if len(dtypes) > 1 and low else None


def autocast(model: torch.nn.Module, precision: str = "fp32"):
    """bf16 autocast on the model's device when `precision` is "bf16" or the model mixes dtypes
    (`mixed_dtype`), else a no-op context."""
    if precision not in ("fp32", "bf16"):
        raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
    device_type = next(model.parameters()).device.type
    low = mixed_dtype(model)
    return torch.autocast(device_type=device_type, dtype=low or torch.bfloat16,
                          enabled=precision == "bf16" or low is not None)


def forward_logprobs(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    precision: str,
    entropy_mask: torch.Tensor | None = None,
    keep_from: int = 1,
    temperature: float = 1.0,
    hidden_states: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(B, T) log-probs of logits / temperature aligned with input_ids (0 before column `keep_from`, and at
    position 0) and, given a (B, T) mask, the (B, T) entropy of that distribution at those positions (no grad).
    `hidden_states` (B, T, H): start from these instead of the token embeddings (see `RolloutBatch`).

    Only the logits that predict columns keep_from..T-1 are computed (`logits_to_keep`): with a long
    prompt and a 49k vocabulary the (B, T, V) prompt logits would dominate time and memory. Position ids
    count real tokens, as `generate` does with left padding."""
    T = input_ids.shape[1]
    keep = T - keep_from + 1  # logits at positions keep_from-1 .. T-1; the last one predicts nothing
    inputs = {"input_ids": input_ids} if hidden_states is None else {"inputs_embeds": hidden_states}
    with autocast(model, precision):
        try:
            logits = model(**inputs, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                           logits_to_keep=keep, use_cache=False).logits  # (B, keep, V)
        except TypeError:  # a model without logits_to_keep: all positions
            logits = model(**inputs, attention_mask=attention_mask, use_cache=False).logits[:, -keep:]  # (B, keep, V)
    if temperature != 1.0:  # the sampling distribution; in place on the fp32 copy (a (B, keep, V) tensor less)
        logits = logits.float().div_(temperature)  # (B, keep, V)
    # logits[:, t] predicts input_ids[:, keep_from + t]
    logprobs = logprobs_from_logits(logits[:, :-1], input_ids[:, keep_from:])  # (B, T-keep_from)
    logprobs = F.pad(logprobs, (keep_from, 0), value=0.0)  # (B, T)
    entropy = None
    if entropy_mask is not None:
        with torch.no_grad():
            where = entropy_mask[:, keep_from:].bool()  # (B, T-keep_from) positions whose prediction is needed
            entropy = torch.zeros_like(logprobs)  # (B, T)
            for b in range(len(where)):  # row by row: a (N, V) copy of a 152k vocabulary would be gigabytes
                entropy[b, keep_from:][where[b]] = entropy_from_logits(logits[b, :-1][where[b]])  # (n_b,)
    return logprobs, entropy
