"""Sampling settings and the top-k-first nucleus sampler.

transformers' `TopPLogitsWarper` sorts the whole vocabulary (49k tokens for SmolLM2) at every step of
every row. Nearly all of the probability mass sits in the top few hundred tokens, so
`TopKFirstTopPLogitsProcessor` takes the top `k` logits first (`torch.topk`, no full sort) and applies
top-p inside them, with probabilities normalised over the *whole* vocabulary. Whenever the nucleus fits
in `k` tokens (nearly always at k=256, top_p=0.95) it keeps exactly the tokens the stock warper keeps;
otherwise it keeps the top `k`, a slightly smaller nucleus. It also draws the token itself (a softmax
over at most `k` scores) instead of a softmax and multinomial over the whole vocabulary. Measured in
`bench/bench_generation.py`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import LogitsProcessor


@dataclass
class SamplingConfig:
    """How responses are sampled. Any field can also be overridden per call by keyword."""

    temperature: float = 0.5  # softmax temperature; 0.2 gave the best single samples, 0.5 keeps diversity
    top_p: float = 0.95  # nucleus sampling mass; 1.0 switches it off
    top_k: int = 0  # plain top-k sampling; 0 switches it off
    top_k_first: int = 256  # cut to this many logits before top-p (fast); 0 = stock transformers warpers
    max_new_tokens: int | None = None  # None: the stage's budget (code and tests have their own defaults)
    min_new_tokens: int = 0  # suppress EOS before this many tokens (benchmarks use it for fixed lengths)
    do_sample: bool = True  # False: greedy decoding
    stop_after_code_block: bool = True  # code and tests: end a sample when its first ``` block closes
    seed: int | None = None  # seeds this call's sampling without touching the global RNG; None: global RNG
    share_prefix: bool = True  # prefill the prompt tokens that rows share once (`models.base.prefill_shared_prefixes`)

    def __post_init__(self):
        if self.do_sample and self.temperature <= 0:
            raise ValueError("temperature must be > 0 when sampling; use do_sample=False for greedy decoding")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]; 1.0 switches nucleus sampling off")
        if self.top_k < 0 or self.top_k_first < 0:
            raise ValueError("top_k and top_k_first must be >= 0 (0 switches them off)")
        if self.max_new_tokens is not None and self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be >= 1, or None for the stage's budget")

    def sampler(self, vocab_size: int) -> TopKFirstTopPLogitsProcessor | None:
        """The sampler that draws each token (`models.base.decode`), None for greedy decoding. With
        `top_k_first` 0 it keeps the whole vocabulary before top-p: exactly the stock temperature → top-k →
        top-p warpers, at the cost of a full sort per step."""
        if not self.do_sample:
            return None
        k = min(self.top_k or self.top_k_first, self.top_k_first) if self.top_k_first else (self.top_k or vocab_size)
        return TopKFirstTopPLogitsProcessor(top_k=k, top_p=self.top_p, temperature=self.temperature, sample=True)


class TopKFirstTopPLogitsProcessor(LogitsProcessor):
    """Temperature, then top-k, then top-p computed on the top-k (see the module docstring).

    Matches transformers' order (temperature → top-k → top-p) and its top-p rule: a token is kept when
    the probability mass of the tokens ranked above it is below `top_p` (the most likely one always).

    sample=False returns the filtered scores (-inf outside the nucleus). sample=True draws the token here,
    from a softmax over the <= k kept scores, and returns 0 for it and -inf elsewhere (the caller takes the
    argmax): the same distribution, without a softmax and multinomial over the whole vocabulary (~70 ms
    per step at batch 16 on 2 CPU cores against ~10 ms for all of this).

    With sample=True it also records, per step, the log-probability of each row's drawn token under the
    whole-vocabulary softmax of logits / temperature (`chosen_logprobs`, one (B,) tensor per step): the
    quantity the PPO update scores (`training.ppo`), taken from the sampler's own logits."""

    def __init__(self, top_k: int = 256, top_p: float = 1.0, temperature: float = 1.0, sample: bool = False):
        if top_k < 1 or not 0 < top_p <= 1 or temperature <= 0:
            raise ValueError("need top_k >= 1, 0 < top_p <= 1 and temperature > 0")
        self.top_k, self.top_p, self.temperature, self.sample = top_k, top_p, temperature, sample
        self.chosen_logprobs: list[torch.Tensor] = []  # per step (B,), when sampling

    def _nucleus(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(B, V) scores -> the top k scores / T with -inf outside the nucleus (B, k), their ids (B, k), and
        the whole-vocabulary log-normaliser of scores / T (B, 1) when it was needed."""
        if self.temperature != 1.0:
            scores = scores / self.temperature  # (B, V)
        k = min(self.top_k, scores.shape[-1])
        top_scores, top_ids = scores.topk(k, dim=-1)  # (B, k), sorted high to low
        log_z = None
        if self.top_p < 1.0 or self.sample:
            log_z = torch.logsumexp(scores.float(), dim=-1, keepdim=True)  # (B, 1) whole-vocabulary normaliser
        if self.top_p < 1.0:
            probs = (top_scores.float() - log_z).exp()  # (B, k)
            mass_above = probs.cumsum(dim=-1) - probs  # (B, k) mass of the tokens ranked above each one
            keep = mass_above < self.top_p
            keep[:, 0] = True
            top_scores = top_scores.masked_fill(~keep, float("-inf"))
        return top_scores, top_ids, log_z

    def draw(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One token per row from the nucleus of (B, V) scores: its id (B,) and its log-prob under the
        whole-vocabulary softmax of scores / T (B,), the quantity the PPO update scores."""
        top_scores, top_ids, log_z = self._nucleus(scores)
        choice = torch.multinomial(torch.softmax(top_scores.float(), dim=-1), num_samples=1)  # (B, 1) rank in top k
        return top_ids.gather(-1, choice).squeeze(-1), (top_scores.gather(-1, choice).float() - log_z).squeeze(-1)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        """transformers' `LogitsProcessor` interface (benchmarks run it inside `generate`)."""
        out = torch.full_like(scores, float("-inf"))  # (B, V)
        if not self.sample:
            top_scores, top_ids, _ = self._nucleus(scores)
            return out.scatter_(-1, top_ids, top_scores)
        ids, logprobs = self.draw(scores)
        self.chosen_logprobs.append(logprobs)  # (B,)
        return out.scatter_(-1, ids[:, None], 0.0)  # (B, V) one finite score per row


class CodeBlockStop:
    """Tells when a reply holds a closed markdown code block (two ``` fences, counting one opened by a
    prefill in the prompt): `stop(row, tokens)` with the row's response tokens so far.

    Models tend to add explanations and usage examples after the block they were asked for; those
    tokens cost time and are thrown away by sanitization, so `models.base.decode` ends the row there."""

    def __init__(self, tokenizer, fences_in_prompt: list[int]):
        self.tokenizer = tokenizer
        self.fences_needed = [max(1, 2 - f) for f in fences_in_prompt]  # a prefilled opening fence counts

    def __call__(self, row: int, tokens: list[int]) -> bool:
        return ("```" in self.tokenizer.decode(tokens[-3:])  # cheap pre-check
                and self.tokenizer.decode(tokens).count("```") >= self.fences_needed[row])
