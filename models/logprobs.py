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


class _TokenLogprobs(torch.autograd.Function):
    """log softmax(h · Wᵀ / T)[a] for N rows of hidden states, a chunk of rows at a time.

    The (N, V) logits of a 152k vocabulary (0.6 MB a token in fp32) are never held whole: the forward keeps
    only each row's logsumexp, and the backward computes a chunk's logits again for its gradient,
    d lp / d logits = (onehot(a) − softmax) / T (as fused linear cross-entropy kernels do, e.g. Liger). One
    more matmul per chunk buys the memory traffic of several (N, V) fp32 tensors. The matmuls run in
    `dtype` (bf16 under autocast), the softmax in fp32."""

    @staticmethod
    def forward(ctx, hidden, weight, tokens, temperature, dtype, chunk, entropy):
        lps, lses, ents = [], [], []
        w = weight.to(dtype)
        for h, a in zip(hidden.split(chunk), tokens.split(chunk)):
            logits = (h.to(dtype) @ w.T).float().div_(temperature)  # (n, V)
            lse = torch.logsumexp(logits, -1)  # (n,)
            lps.append(logits.gather(-1, a[:, None]).squeeze(-1) - lse)
            lses.append(lse)
            if entropy:  # H = lse − Σ softmax · logits
                ents.append(lse - ((logits - lse[:, None]).exp_() * logits).sum(-1))
        ctx.save_for_backward(hidden, weight, tokens, torch.cat(lses))
        ctx.temperature, ctx.dtype, ctx.chunk = temperature, dtype, chunk
        lp = torch.cat(lps)  # (N,)
        return lp, (torch.cat(ents) if entropy else torch.zeros_like(lp))

    @staticmethod
    def backward(ctx, grad_lp, _grad_entropy):
        hidden, weight, tokens, lse = ctx.saved_tensors
        T, dtype, chunk = ctx.temperature, ctx.dtype, ctx.chunk
        w = weight.to(dtype)
        grad_h = torch.empty_like(hidden) if ctx.needs_input_grad[0] else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        for start in range(0, len(hidden), chunk):
            h, a = hidden[start:start + chunk], tokens[start:start + chunk]
            g = grad_lp[start:start + chunk].float() / T  # (n,)
            coef = (h.to(dtype) @ w.T).float().div_(T).sub_(lse[start:start + chunk, None]).exp_()  # (n, V) softmax
            coef.mul_(-g[:, None]).scatter_add_(-1, a[:, None], g[:, None])  # (onehot − softmax) · g / T
            if grad_h is not None:
                grad_h[start:start + chunk] = (coef.to(dtype) @ w).to(hidden.dtype)
            if grad_w is not None:
                grad_w += (coef.to(dtype).T @ h.to(dtype)).float()
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), None, None, None, None, None


def token_logprobs(hidden: torch.Tensor, head: torch.nn.Module, tokens: torch.Tensor, temperature: float = 1.0,
                   entropy: bool = False, chunk_bytes: int = 2**28) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N,) log softmax(head(hidden) / T)[tokens] and, with `entropy`, the (N,) entropy of that distribution
    (no grad). hidden (N, H), tokens (N,). `head` is the output layer (a `Linear` without bias); its matmul
    runs in the autocast dtype when autocast is on. Rows go through in chunks of about `chunk_bytes` of fp32
    logits (`_TokenLogprobs`)."""
    weight = head.weight  # (V, H)
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    chunk = max(1, chunk_bytes // (4 * weight.shape[0]))
    with torch.autocast(device_type=device, enabled=False):
        lp, ent = _TokenLogprobs.apply(hidden, weight, tokens, float(temperature), dtype, chunk, entropy)
    return lp, (ent.detach() if entropy else None)


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
    """(B, T) log-probs of logits / temperature aligned with input_ids, at the real tokens (attention mask 1)
    of columns keep_from..T-1 and 0 elsewhere (position 0 included) and, given a (B, T) mask, the (B, T)
    entropy of that distribution at those positions (no grad).
    `hidden_states` (B, T, H): start from these instead of the token embeddings (see `RolloutBatch`).

    The blocks run on the whole batch; the output layer only on the positions scored (`token_logprobs`):
    with a long prompt, padding and a 152k vocabulary, (B, T, V) logits would dominate time and memory.
    Position ids count real tokens, as `generate` does with left padding."""
    inputs = {"input_ids": input_ids} if hidden_states is None else {"inputs_embeds": hidden_states}
    scored = attention_mask[:, keep_from:].bool()  # (B, T-keep_from) the positions whose log-prob is returned
    with autocast(model, precision):
        hidden = model.get_decoder()(**inputs, attention_mask=attention_mask,
                                     position_ids=position_ids(attention_mask), use_cache=False).last_hidden_state
        # hidden[:, t] predicts input_ids[:, t + 1]
        lp, ent = token_logprobs(hidden[:, keep_from - 1:-1][scored], model.get_output_embeddings(),
                                 input_ids[:, keep_from:][scored], temperature,
                                 entropy=entropy_mask is not None)  # (N,), (N,)
    scored = F.pad(scored, (keep_from, 0), value=False)  # (B, T)
    logprobs = torch.zeros(input_ids.shape, dtype=lp.dtype, device=lp.device).masked_scatter(scored, lp)  # (B, T)
    entropy = None
    if entropy_mask is not None:  # (B, T) at the masked positions that were scored
        entropy = torch.zeros_like(logprobs).masked_scatter(scored, ent) * entropy_mask.bool()
    return logprobs, entropy
