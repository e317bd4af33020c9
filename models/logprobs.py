"""Log-probabilities of tokens under a causal LM: the one implementation behind the sampler-side scoring
(`LLMBase.get_log_probs`), the rollout's old log-probs, the frozen reference's and the PPO update's
(`training.ppo`). Torch only at import (`decoder_states` takes transformers' mask builder when it
shares a prefix); models/ imports nothing from training/.

Log-prob tensors are (B, T) aligned with input_ids: logprobs[:, t] = log π(input_ids[:, t] | input_ids[:, :t]);
position 0 has no prediction and is 0.
"""
from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """(B, T) positions that count real tokens only, as `generate` numbers a left-padded row."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens `a` and `b` share."""
    return next((n for n, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def cache_argument(model) -> str:
    """The name of the KV cache in `model`'s forward and in its outputs: `cache` since
    transformers 5.x renamed it, `past_key_values` before."""
    base = getattr(model, "get_base_model", lambda: model)()  # a LoRA model's own forward takes **kwargs
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


def real_columns(attention_mask: torch.Tensor) -> tuple[list[int], list[int]]:
    """Each row's first real column (attention mask 1) and one past its last, as lists (B,); a row without a
    real token gets its last column, one wide."""
    real = attention_mask.bool()  # (B, T)
    T = real.shape[1]
    columns = torch.arange(T, device=real.device)
    start = torch.where(real, columns, T).amin(1).clamp(max=T - 1).tolist()
    end = (torch.where(real, columns, -1).amax(1) + 1).tolist()
    return start, [max(e, s + 1) for s, e in zip(start, end)]


def real_tokens(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> list[list[int]]:
    """Each row's real tokens (attention mask 1), in order."""
    return [row[mask].tolist() for row, mask in zip(input_ids, attention_mask.bool())]


def shared_prefix_cost(lengths: Sequence[int], common: int) -> tuple[int, int]:
    """(c, token positions) of rows of these `lengths` that begin with `common` shared tokens, run as
    `decoder_states` does: the prefix once (c = `common`, at most each row's length − 1: every row feeds at
    least one token of its own), then each row's rest right-padded to the longest rest."""
    c = max(0, min(common, min(lengths) - 1))
    return c, c + len(lengths) * (max(lengths) - c)


@functools.cache
def _mask_builder():
    """transformers' `create_causal_mask` where it takes every keyword `decoder_states` passes (5.x), else None."""
    try:
        from transformers.masking_utils import create_causal_mask
    except ImportError:
        return None
    wanted = {"config", "inputs_embeds", "attention_mask", "cache", "position_ids", "layer_idx", "allow_is_causal_skip"}
    return create_causal_mask if wanted <= set(inspect.signature(create_causal_mask).parameters) else None


def shares_prefixes(decoder: torch.nn.Module) -> bool:
    """Whether `decoder_states` can run a shared prefix on this decoder: transformers 5.x (`_mask_builder`), a
    stack of Llama-style blocks whose attention knows its cache slot, every layer full causal attention (a
    sliding window or attention chunks keep only their last tokens, and the mask built here would be wrong),
    SDPA or eager attention (FlashAttention takes a 2-D mask that it would size against the wrong cache
    layer), and no gradient checkpointing in training mode (transformers drops the cache there)."""
    config = decoder.config
    layers = getattr(decoder, "layers", None)
    return bool(
        _mask_builder() is not None and layers and len(layers)
        and getattr(getattr(layers[0], "self_attn", None), "layer_idx", None) is not None
        and all(t == "full_attention" for t in getattr(config, "layer_types", None) or ["full_attention"])
        and not (getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True))
        and not getattr(config, "attention_chunk_size", None)
        and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")
        and not (getattr(decoder, "gradient_checkpointing", False) and decoder.training))


def decoder_states(decoder: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                   inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, H) `decoder`'s last hidden state on a batch in the token layout (`models.base.build_token_batch`),
    fed `input_ids` or, given, `inputs_embeds` (B, T, H) at the same positions (what it holds at padding is
    not defined). Gradients flow when the caller's grad mode allows.

    Shared-prefix forward: when the rows begin with the same c real tokens (a micro-batch of one problem's
    samples: `training.ppo.micro_batches` groups them) and that costs fewer token positions than the padded
    batch (`shared_prefix_cost`), those c run once, at batch 1, and the rest of every row runs right-padded
    on their keys and values (a KV cache repeated for the rows). Causal attention makes a prefix's states
    independent of what follows it and positions count real tokens, so the result equals the plain forward's
    up to float rounding. A step's update rows share a problem's prompt: the bottom blocks' pass over a
    learn-preset batch computed 0.51-0.68 of its real tokens (less still of the padded ones). The plain forward
    where the decoder cannot share (`shares_prefixes`), a row's real tokens are not contiguous, or nothing is
    shared."""
    B, T = input_ids.shape
    rows = real_tokens(input_ids, attention_mask)
    start, end = real_columns(attention_mask)
    lengths = [len(r) for r in rows]
    common = min((common_prefix_length(rows[0], r) for r in rows[1:]), default=0)
    c, cost = shared_prefix_cost(lengths, common) if B > 1 else (0, 0)
    contiguous = all(e - s == n for s, e, n in zip(start, end, lengths))
    if not c or cost >= B * T or not contiguous or not shares_prefixes(decoder):
        inputs = {"input_ids": input_ids} if inputs_embeds is None else {"inputs_embeds": inputs_embeds}
        return decoder(**inputs, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                       use_cache=False).last_hidden_state
    device = input_ids.device
    if inputs_embeds is None:
        inputs_embeds = decoder.get_input_embeddings()(input_ids)  # (B, T, H)
    starts = torch.tensor(start, device=device)[:, None]  # (B, 1)
    rest = torch.tensor(lengths, device=device)[:, None] - c  # (B, 1) each row's tokens after the prefix
    S = int(rest.max())
    name = cache_argument(decoder)
    prefix = decoder(inputs_embeds=inputs_embeds[:1, start[0]:start[0] + c],
                     attention_mask=attention_mask.new_ones(1, c),
                     position_ids=torch.arange(c, device=device)[None], use_cache=True)
    cache = prefix[name]
    cache.batch_repeat_interleave(B)  # (the layers this decoder runs; the others hold nothing)
    offsets = torch.arange(S, device=device)[None]  # (1, S)
    real = offsets < rest  # (B, S) the rest's real tokens, right-padded
    columns = (starts + c + offsets).clamp(max=T - 1)  # (B, S) where they lie in the batch
    embeds = inputs_embeds.gather(1, columns[..., None].expand(-1, -1, inputs_embeds.shape[-1]))  # (B, S, H)
    mask = torch.cat([attention_mask.new_ones(B, c), real.to(attention_mask.dtype)], 1)  # (B, c + S)
    positions = (c + offsets).expand(B, S)  # (B, S)
    # the 4-D mask, built here: the decoder's own sizes it from cache layer 0, empty when only the top blocks run
    first = decoder.layers[0].self_attn.layer_idx  # the cache slot of the first block this decoder runs
    mask = _mask_builder()(config=decoder.config, inputs_embeds=embeds, attention_mask=mask, cache=cache,
                           position_ids=positions, layer_idx=first, allow_is_causal_skip=False)
    suffix = decoder(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=True,
                     **{name: cache}).last_hidden_state  # (B, S, H)
    head = prefix.last_hidden_state  # (1, c, H)
    batch_rows = torch.arange(B, device=device)[:, None]  # (B, 1)
    out = suffix.new_zeros(B, T, suffix.shape[-1])  # the prefix's states in every row, then each row's rest
    out = out.index_put((batch_rows.expand(B, c), starts + torch.arange(c, device=device)[None]), head.expand(B, c, -1))
    return out.index_put((batch_rows.expand(B, S)[real], columns[real]), suffix[real])


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


PRECISIONS = ("fp32", "bf16", "auto")


def resolve_precision(precision: str, device: torch.device | str = "cpu") -> str:
    """"fp32" or "bf16"; "auto" is "bf16" where bf16 is native on `device` (`models.loading.fast_dtype`: a GPU
    that supports it, a CPU with AMX or AVX512-BF16), else "fp32": on a CPU without it a bf16 matmul is
    emulated, 7x slower than fp32 (a 4096 x 896 x 4864 matmul on an AVX2-only AMD EPYC: 1.79 s against 0.25)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto":
        return precision
    from models.loading import fast_dtype

    return "bf16" if fast_dtype(device) == torch.bfloat16 else "fp32"


def autocast(model: torch.nn.Module, precision: str = "fp32"):
    """bf16 autocast on the model's device when `precision` is (or resolves to: `resolve_precision`) "bf16" or
    the model mixes dtypes (`mixed_dtype`), else a no-op context."""
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    low = mixed_dtype(model)
    return torch.autocast(device_type=device.type, dtype=low or torch.bfloat16,
                          enabled=precision == "bf16" or low is not None)


def token_logprobs(hidden: torch.Tensor, head, tokens: torch.Tensor, temperature: float = 1.0,
                   entropy: bool = False, chunk_bytes: int = 2**28,
                   tile: tuple[int, int] = (512, 4096)) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(N,) log softmax(head(hidden) / T)[tokens] and, with `entropy`, the (N,) entropy of that distribution
    (no grad). hidden (N, H), tokens (N,); `head` maps (n, H) to (n, V) logits (the output layer, with whatever
    the model applies after it: `output_logits`).

    A plain `nn.Linear` head (the default model's) goes through `_LinearLogprobs`: `tile` = (rows, vocabulary
    columns) of logits at a time, a log-sum-exp kept online across the columns, so no (rows, V) tensor is ever
    made and each tile's passes stay in the CPU's cache (the whole-vocabulary fp32 softmax of 4,800 rows took
    ~13 s forward and ~15 s backward here, mostly memory traffic, against ~4 s per matmul). Any other head:
    rows in chunks of about `chunk_bytes` of fp32 logits, each under activation checkpointing (the backward
    computes a chunk's logits again instead of keeping them)."""
    if type(head) is torch.nn.Linear:
        dtype = _autocast_dtype(hidden.device.type) or head.weight.dtype
        bias = None if head.bias is None else head.bias.to(dtype)
        lp, ent = _LinearLogprobs.apply(hidden.to(dtype), head.weight.to(dtype), bias, tokens, temperature,
                                        entropy, *tile)
        return lp, (ent if entropy else None)

    from torch.utils.checkpoint import checkpoint

    ents: list[torch.Tensor] = []

    def chunk(h: torch.Tensor, a: torch.Tensor, index: int) -> torch.Tensor:
        logits = head(h).float() / temperature  # (n, V)
        if entropy and len(ents) == index:  # once: not again when the backward recomputes the chunk
            ents.append(entropy_from_logits(logits.detach()))  # (n,)
        return logprobs_from_logits(logits, a)  # (n,)

    with torch.no_grad():
        V = head(hidden[:1]).shape[-1] if len(hidden) else 1  # the vocabulary (one row's logits)
    rows = max(1, chunk_bytes // (4 * V))
    lps = [checkpoint(chunk, h, a, i, use_reentrant=False) if torch.is_grad_enabled() else chunk(h, a, i)
           for i, (h, a) in enumerate(zip(hidden.split(rows), tokens.split(rows)))]
    empty = hidden.new_zeros(0, dtype=torch.float32)
    return (torch.cat(lps) if lps else empty), ((torch.cat(ents) if ents else empty) if entropy else None)


def _autocast_dtype(device: str) -> torch.dtype | None:
    """The dtype autocast computes in on `device` ("cpu", "cuda"), None when it is off."""
    try:
        return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else None
    except (AttributeError, TypeError):  # torch < 2.4: per-device functions
        if device == "cpu":
            return torch.get_autocast_cpu_dtype() if torch.is_autocast_cpu_enabled() else None
        return torch.get_autocast_gpu_dtype() if torch.is_autocast_enabled() else None


class _LinearLogprobs(torch.autograd.Function):
    """log softmax((hidden @ weight.T + bias) / T)[tokens] and its entropy, a tile of (rows, columns) logits at a
    time, as fused linear cross-entropy kernels do. Forward: per row block, an online log-sum-exp m + log s over
    the column tiles (s rescaled by exp(m_old − m_new) when the running maximum m grows), the target's logit
    where it falls in a tile, and for the entropy H = lse − Σ p·z the running Σ exp(z − m)·z. Backward: per
    tile again, d lp / d z = onehot(token) − softmax(z), softmax(z) = exp(z − lse), times the incoming gradient
    and 1/T, into the gradients of hidden, weight and bias (those that need one). The logits are rounded to
    the inputs' dtype before the fp32 softmax, as the matmul of `head(h).float()` under autocast rounds them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, tokens, temperature, want_entropy, rows, columns):
        N, V = hidden.shape[0], weight.shape[0]
        lse = torch.empty(N, dtype=torch.float32, device=hidden.device)
        target = torch.full_like(lse, math.nan)  # (a token outside the vocabulary stays NaN)
        ent = torch.zeros_like(lse)
        for r0 in range(0, N, rows):
            h, a = hidden[r0:r0 + rows], tokens[r0:r0 + rows]
            n = h.shape[0]
            m = torch.full((n,), -math.inf, device=h.device)
            s, t = torch.zeros(n, device=h.device), torch.zeros(n, device=h.device)
            for v0 in range(0, V, columns):
                z = _logit_tile(h, weight, bias, v0, columns, temperature)  # (n, c) fp32
                m_new = torch.maximum(m, z.amax(1))
                rescale = (m - m_new).exp()
                e = (z - m_new[:, None]).exp_()  # (n, c)
                s = s * rescale + e.sum(1)
                if want_entropy:
                    t = t * rescale + (e * z).sum(1)
                inside, column = _in_tile(a, v0, z.shape[1])
                target[r0 + inside] = z[inside, column]
                m = m_new
            lse[r0:r0 + n] = m + s.log()
            if want_entropy:
                ent[r0:r0 + n] = lse[r0:r0 + n] - t / s
        ctx.save_for_backward(hidden, weight, bias, tokens, lse)
        ctx.temperature, ctx.rows, ctx.columns = temperature, rows, columns
        ctx.mark_non_differentiable(ent)
        return target - lse, ent

    @staticmethod
    def backward(ctx, grad_lp, grad_ent):
        hidden, weight, bias, tokens, lse = ctx.saved_tensors
        T, rows, columns = ctx.temperature, ctx.rows, ctx.columns
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_h = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        V = weight.shape[0]
        for r0 in range(0, hidden.shape[0], rows):
            h, a = hidden[r0:r0 + rows], tokens[r0:r0 + rows]
            g = grad_lp[r0:r0 + rows].float() / T  # (n,)
            for v0 in range(0, V, columns):
                z = _logit_tile(h, weight, bias, v0, columns, T)  # (n, c)
                dz = (z - lse[r0:r0 + rows, None]).exp_().mul_(-g[:, None])  # −g·softmax
                inside, column = _in_tile(a, v0, z.shape[1])
                dz[inside, column] += g[inside]
                v1 = v0 + z.shape[1]
                dz_low = dz.to(hidden.dtype)
                if need_h:
                    grad_h[r0:r0 + rows] += dz_low @ weight[v0:v1]
                if need_w:
                    grad_w[v0:v1] += dz_low.T @ h
                if need_b:
                    grad_b[v0:v1] += dz.sum(0)
        cast = lambda grad, like: None if grad is None else grad.to(like.dtype)  # noqa: E731
        return cast(grad_h, hidden), cast(grad_w, weight), cast(grad_b, bias), None, None, None, None, None


def _in_tile(tokens: torch.Tensor, v0: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows whose token lies in vocabulary columns v0..v0+width-1, and its column within the tile."""
    inside = ((tokens >= v0) & (tokens < v0 + width)).nonzero().squeeze(1)
    return inside, tokens[inside] - v0


def _logit_tile(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, v0: int, columns: int,
                temperature: float) -> torch.Tensor:
    """(n, c) fp32 logits / T of vocabulary entries v0..v0+c-1, rounded to the inputs' dtype first."""
    z = h @ weight[v0:v0 + columns].T
    if bias is not None:
        z = z + bias[v0:v0 + columns]
    return z.float().div_(temperature)


def output_logits(model: torch.nn.Module):
    """(n, H) final hidden states -> (n, V) logits as the model's own forward makes them: its output layer
    (a bias or LoRA adapters included), then a final logit soft-cap (Gemma-2) or scale (Cohere) where the
    config has one. A plain `nn.Linear` output layer is returned as it is (`token_logprobs` tiles it)."""
    head = model.get_output_embeddings()
    config = model.config
    cap = getattr(config, "final_logit_softcapping", None)
    scale = getattr(config, "logit_scale", None)
    if type(head) is torch.nn.Linear and scale is None and not cap:
        return head

    def logits(h: torch.Tensor) -> torch.Tensor:
        out = head(h)
        if scale is not None:
            out = out * scale
        if cap:
            out = torch.tanh(out / cap) * cap
        return out

    return logits


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
    scored = attention_mask[:, keep_from:].bool()  # (B, T-keep_from) the positions whose log-prob is returned
    with autocast(model, precision):
        hidden = decoder_states(model.get_decoder(), input_ids, attention_mask, hidden_states)
        # hidden[:, t] predicts input_ids[:, t + 1]
        lp, ent = token_logprobs(hidden[:, keep_from - 1:-1][scored], output_logits(model),
                                 input_ids[:, keep_from:][scored], temperature,
                                 entropy=entropy_mask is not None)  # (N,), (N,)
    scored = F.pad(scored, (keep_from, 0), value=False)  # (B, T)
    logprobs = torch.zeros(input_ids.shape, dtype=lp.dtype, device=lp.device).masked_scatter(scored, lp)  # (B, T)
    entropy = None
    if entropy_mask is not None:  # (B, T) at the masked positions that were scored
        entropy = torch.zeros_like(logprobs).masked_scatter(scored, ent) * entropy_mask.bool()
    return logprobs, entropy
