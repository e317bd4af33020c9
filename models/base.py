"""What the Generator and the Discriminator share: loading, prompting, batched sampling, log-probs.

Every sampled response becomes a `Generation` record that keeps the exact token ids that were sampled,
so the trainer scores the very tokens the policy produced (sanitized text is never re-tokenized).
Token layout shared by sampling and scoring (`build_token_batch`):

    row i:  [pad … pad | prompt_i | response_i | pad … pad]
             ←— left-padded to P —→ ←— right-padded to R —→

Position ids count real tokens only, so a row's log-probs do not depend on how much padding it got.

Shared-prefix prefill (`prefill_shared_prefixes`): the samples of one prompt, and the prompts of one problem
(the same problem text and greedy stages, then a different sampled stage), begin with the same tokens.
a plain prefill would compute those tokens' keys and values once per row, padded to the longest prompt;
`sample` computes them once per group (batch 1, no padding) and hands `decode` a cache that holds them for
every row, so it prefills only the rows' differing ends. Inside `LLMBase.reusing_prompts` a call also starts
from the prompts of the call before it (`PromptStore`): the next reasoning stage's prompt repeats the
problem and the stages so far. Causal attention makes a prefix's keys and values independent of what follows
it, and positions count real tokens, so every row sees the same numbers up to float rounding.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch

from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from models.loading import contiguous_head_input, load_model, prepare_tokenizer, resolve_device, resolve_dtype
from models.sampling import CodeBlockStop, SamplingConfig, TopKFirstTopPLogitsProcessor
from models.logprobs import autocast, cache_argument, common_prefix_length, forward_logprobs, position_ids

logger = logging.getLogger(__name__)


@dataclass
class Generation:
    """One sampled response and everything the trainer needs to score it again."""

    prompt: str  # the prompt text as the model saw it (chat template applied)
    prompt_ids: list[int]  # its token ids, no padding
    response_ids: list[int]  # the sampled ids, no padding, up to and including EOS when one was produced
    text: str  # the response decoded without special tokens
    prefix: str = ""  # start of the assistant's reply written by us (prefill), the end of `prompt`
    task: str = ""  # "stage", "code", "tests" or "critique"
    stage: str | None = None  # the reasoning stage for "stage" and "critique"
    problem_id: str = ""
    # log π_T of each response token under the sampler's own logits (whole-vocabulary softmax of logits / T);
    # empty when decoding greedily or with the stock transformers sampler
    sampler_logprobs: list[float] = field(default_factory=list)

    @property
    def reply(self) -> str:
        """The whole assistant reply: our prefill followed by the sampled text."""
        return self.prefix + self.text


@dataclass
class CodeGeneration(Generation):
    """A code sample with its sanitization (`models.sanitize.sanitize_code`)."""

    code: str = ""  # runnable source, "" when ok is False
    ok: bool = False  # the format term of the reward: it parsed and defines the entry point
    reason: str = ""  # why it is not ok ("" when ok)
    repairs: list[str] = field(default_factory=list)  # what sanitization fixed, e.g. ["fence", "tabs"]


@dataclass
class TestsGeneration(Generation):
    """A test-suite sample with its sanitization (`models.sanitize.sanitize_tests`)."""

    __test__ = False  # not a pytest test class, despite the name

    tests: str = ""  # a pytest module of test_* functions, "" when ok is False
    ok: bool = False  # the format term of the reward: at least one test that calls the entry point
    reason: str = ""  # why it is not ok ("" when ok)
    test_names: list[str] = field(default_factory=list)  # the module's test functions, in order
    repairs: list[str] = field(default_factory=list)  # what sanitization fixed or dropped


@dataclass
class TokenBatch:
    """Prompts and responses padded into one batch (layout in the module docstring)."""

    input_ids: torch.Tensor  # (B, P+R)
    attention_mask: torch.Tensor  # (B, P+R) 1 on real tokens
    response_ids: torch.Tensor  # (B, R) right-padded responses
    response_mask: torch.Tensor  # (B, P+R) 1 on real response tokens (never column 0: every prompt has a token)
    prompt_width: int  # P: responses start at this column of input_ids


def build_token_batch(
    prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, device: torch.device | str = "cpu"
) -> TokenBatch:
    """Left-pad the prompts and right-pad the responses (empty responses give R = 0: a generation input)."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    if not prompt_ids or any(len(p) == 0 for p in prompt_ids):
        raise ValueError("every row needs a non-empty prompt")
    B = len(prompt_ids)
    P = max(len(p) for p in prompt_ids)
    R = max(len(r) for r in response_ids)
    input_ids = torch.full((B, P + R), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + R), dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        input_ids[i, P - len(p) : P] = torch.tensor(p)
        input_ids[i, P : P + len(r)] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, P - len(p) : P + len(r)] = 1
    response_mask = attention_mask * (torch.arange(P + R) >= P)  # (B, P+R)
    return TokenBatch(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        response_ids=input_ids[:, P:].to(device),
        response_mask=response_mask.to(device),
        prompt_width=P,
    )


class _GrowingLayer(DynamicLayer):
    """A `DynamicLayer` whose keys and values are views of buffers with room to grow: a decoding step writes
    its token into the buffers instead of copying the whole cache (`torch.cat`, 22% of a step's time at 64 rows
    and 600 cached tokens with the default model on 2 CPU cores)."""

    length, buffers = 0, None  # tokens held; the (keys, values) buffers, None before the first update

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if self.buffers is None:  # (set here, not by `lazy_initialization`, whose signature changed in 5.x)
            self.dtype, self.device, self.is_initialized = key_states.dtype, key_states.device, True
        n, t = self.length, key_states.shape[-2]
        if self.buffers is None or n + t > self.buffers[0].shape[-2]:
            room = n + t + max(n + t, 128)  # doubled, so a long decode copies its cache O(log) times
            self.buffers = tuple(new.new_empty(*new.shape[:-2], room, new.shape[-1])
                                 for new in (key_states, value_states))
            if n:
                self.buffers[0][..., :n, :] = self.keys
                self.buffers[1][..., :n, :] = self.values
        self.buffers[0][..., n:n + t, :] = key_states
        self.buffers[1][..., n:n + t, :] = value_states
        self.length = n + t
        self.keys, self.values = self.buffers[0][..., :n + t, :], self.buffers[1][..., :n + t, :]
        return self.keys, self.values

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.buffers is not None and self.length:
            self.buffers = (self.buffers[0][indices], self.buffers[1][indices])
            self.keys, self.values = self.buffers[0][..., :self.length, :], self.buffers[1][..., :self.length, :]

    def reset(self) -> None:
        self.length, self.buffers = 0, None
        super().reset()

    def _adopt(self) -> None:
        """New buffers for the keys and values an inherited method replaced (`batch_repeat_interleave`, ...)."""
        keys, values = self.keys, self.values
        self.length, self.buffers = 0, None
        if keys is not None and keys.numel():
            self.update(keys, values)

    def batch_repeat_interleave(self, *args, **kwargs) -> None:
        super().batch_repeat_interleave(*args, **kwargs)
        self._adopt()

    def reorder_cache(self, *args, **kwargs) -> None:
        super().reorder_cache(*args, **kwargs)
        self._adopt()

    def crop(self, *args, **kwargs) -> None:
        super().crop(*args, **kwargs)  # a shorter view of the buffers
        if self.buffers is not None:
            self.length = self.keys.shape[-2]


def growing_cache(model, layers: Sequence[tuple[torch.Tensor, torch.Tensor]] = ()) -> DynamicCache:
    """A `DynamicCache` for `model` whose full-attention layers grow in place (`_GrowingLayer`), holding
    `layers` (each layer's keys and values) to begin with."""
    cache = DynamicCache(config=model.config)
    cache.layers = [_GrowingLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    for layer, (keys, values) in zip(cache.layers, layers):
        layer.update(keys, values)
    return cache


class PromptStore:
    """The keys and values of the prompts one model prefilled in its last call (`LLMBase.reusing_prompts`),
    so that a prompt of the next call that starts like one of them prefills only the rest. A reasoning stage's
    prompt holds the problem and the stages before it, which the previous stage's prompt held too; a code
    prompt holds the whole chain; a second call on the same prompts prefills nothing. Entries are batch-1
    caches of each group's prefix (`prefill_shared_prefixes`); the last call's and the current call's are kept,
    so memory stays about two calls' prompts. Valid while the weights do not change. On a GPU the plain
    batched prefill stores nothing: the store pays there only after a call that shared prefixes."""

    def __init__(self):
        self.previous: list[tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = []
        self.current: list[tuple[list[int], list[tuple[torch.Tensor, torch.Tensor]]]] = []

    def new_call(self):
        """Keep the entries of the call that ended (the one to reuse from), drop the older ones."""
        if self.current:
            self.previous, self.current = self.current, []

    def longest(self, ids: list[int]) -> tuple[int, list[tuple[torch.Tensor, torch.Tensor]] | None]:
        """(n, layers): the stored prompt that shares the most leading tokens with `ids`, and how many."""
        best, layers = 0, None
        for stored, kv in self.previous + self.current:
            n = common_prefix_length(stored, ids)
            if n > best:
                best, layers = n, kv
        return best, layers

    def add(self, ids: list[int], layers: list[tuple[torch.Tensor, torch.Tensor]]):
        self.current.append((list(ids), layers))


def _prefill_one(model, ids: list[int], store: PromptStore | None) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Each layer's (keys, values), (1, heads, len(ids), head_dim), of the prompt `ids` at batch 1; with a
    `store`, only past the longest stored prefix, and the result is stored."""
    done, stored = store.longest(ids) if store is not None else (0, None)
    if done >= len(ids):
        layers = [(k[:, :, :len(ids)], v[:, :, :len(ids)]) for k, v in stored]
    else:
        past = (DynamicCache([(k[:, :, :done], v[:, :, :done]) for k, v in stored], config=model.config)
                if done else DynamicCache(config=model.config))
        out = model(input_ids=torch.tensor([ids[done:]], device=model.device), use_cache=True, logits_to_keep=1,
                    **{cache_argument(model): past})
        layers = [(layer.keys, layer.values) for layer in out[cache_argument(model)].layers]
    if store is not None:
        store.add(ids, layers)
    return layers


def prefill_shared_prefixes(model, rows: list[list[int]], min_share: float = 0.5, max_cost: float | None = None,
                            store: PromptStore | None = None) -> tuple[DynamicCache, int] | None:
    """A KV cache for `decode` that holds, for each row, its prompt but the last tokens, computed without
    padding and once per group of rows that share a prefix. Returns `(cache, W)` or None for the plain path.

    Rows are the left-padded prompts of one `decode` call, P = the longest. Consecutive rows whose
    common prefix covers at least `min_share` of a row form a group; a group's prefix (at most each
    member's length - 1: `decode` must feed every row at least one token) runs once, at batch 1 (with a
    `store`, only past what an earlier prompt already computed: `PromptStore`). The cache is the first
    W = P - S columns of the padded batch, S the longest row end left outside its group's prefix: row r holds
    its first len_r - S prompt tokens there, right-aligned as in the padded batch (padding is masked out by
    the attention mask as usual). `decode(batch, ..., cached=(cache, W))` then prefills only the last S
    columns. Used when the tokens prefilled this way (the prefixes, plus N x S) are at most `max_cost` of the
    N x P of the plain path (default: 1 on a CPU, 0.75 elsewhere); on a GPU, also only when some group has two
    rows or the store holds a prefix (a batch-1 prefill per row pays there only by sharing). On 2 CPU cores,
    16 prompts of 200-700 tokens prefilled one at a time took 11.7 s against 19-20 s padded into one batch
    (the default model, bf16: fewer tokens, and each one faster)."""
    groups: list[list[int]] = []  # row indices
    shared: list[int] = []  # each group's common prefix length
    for r, ids in enumerate(rows):
        if groups:
            common = common_prefix_length(rows[groups[-1][0]], ids)
            if common >= min_share * max(len(ids), shared[-1]):  # the group's prefix stays long
                groups[-1].append(r)
                shared[-1] = min(common, shared[-1])
                continue
        groups.append([r])
        shared.append(len(ids))
    if store is not None:
        store.new_call()
    on_cpu = torch.device(model.device).type == "cpu"
    if max_cost is None:
        max_cost = 1.0 if on_cpu else 0.75
    if any(type(layer) is not _GrowingLayer for layer in growing_cache(model).layers):
        return None  # a sliding-window layer keeps only its last tokens: no prefix can be cut from it
    stored = [store.longest(rows[g[0]])[0] if store is not None else 0 for g in groups]
    if not on_cpu and all(len(g) == 1 for g in groups) and not any(
            n >= min_share * len(rows[g[0]]) for g, n in zip(groups, stored)):
        return None  # nothing shared or stored: the plain batched prefill
    shared = [min(c, min(len(rows[r]) for r in g) - 1) for g, c in zip(groups, shared)]  # leave one token to feed
    P = max(len(ids) for ids in rows)
    S = max(len(rows[r]) - c for g, c in zip(groups, shared) for r in g)
    width = P - S  # W
    computed = sum(c - min(n, c) for c, n in zip(shared, stored))  # what the store does not already hold
    if width <= 0 or computed + len(rows) * S > max_cost * len(rows) * P:
        return None
    layers: list[tuple[torch.Tensor, torch.Tensor]] = []
    for g in groups:
        c = max(len(rows[r]) - S for r in g)  # only what the group's rows keep in the cache
        if c <= 0:
            continue
        for layer_idx, (k, v) in enumerate(_prefill_one(model, rows[g[0]][:c], store)):  # (1, heads, c, head_dim)
            if len(layers) <= layer_idx:
                layers.append((k.new_zeros(len(rows), k.shape[1], width, k.shape[3]),
                               v.new_zeros(len(rows), v.shape[1], width, v.shape[3])))  # (N, heads, W, head_dim)
            keys, values = layers[layer_idx]
            for r in g:
                n = len(rows[r]) - S  # this row's cached prompt tokens
                if n > 0:
                    keys[r, :, width - n:] = k[0, :, :n]
                    values[r, :, width - n:] = v[0, :, :n]
    return growing_cache(model, layers), width


@torch.no_grad()
def decode(model, batch: TokenBatch, max_new_tokens: int, sampler: TopKFirstTopPLogitsProcessor | None,
           done, min_new_tokens: int = 0, eos_ids: Sequence[int] = (),
           cached: tuple[DynamicCache, int] | None = None,
           greedy_rows: Sequence[bool] | None = None) -> tuple[list[list[int]], list[list[float]]]:
    """Autoregressive decoding of the left-padded prompts of `batch` (R = 0) with a KV cache, each row until
    `done(row, tokens)` says it is finished, it drew an EOS, or `max_new_tokens`. Returns each row's new tokens
    (an EOS kept) and, with a `sampler`, the log-prob the sampler gave each (`draw`); greedy without one.

    A finished row leaves the batch at once (its cache rows are dropped): rows end at very different lengths
    (a code block closes after 60 tokens or 250), and transformers' `generate` keeps computing every finished
    row until the last one ends. A greedy row gets the same tokens either way, up to float rounding; a
    sampled row draws from the same distribution, but the random stream is spent on the rows still running,
    so seeded samples differ from `generate`'s (and from this project's before 2026-12-07). Only the
    sampler shapes the distribution: a model's `generation_config` (a repetition penalty, say) is not
    applied, so the recorded log-probs are those the PPO update scores. `cached`: a cache of the first W
    prompt columns (`prefill_shared_prefixes`); only the rest is prefilled. EOS is suppressed before
    `min_new_tokens` (benchmarks; the recorded log-probs then leave EOS out of the normaliser).
    `greedy_rows`: rows that take the most likely token even with a sampler (no log-probs recorded for them),
    so that a greedy answer and sampled ones to the same prompt decode together."""
    N = len(batch.input_ids)
    cache, width = cached if cached is not None else (growing_cache(model), 0)
    rows = torch.arange(N, device=batch.input_ids.device)  # (n,) the original row of each batch row
    mask = batch.attention_mask  # (n, P + t)
    positions = position_ids(mask)[:, width:]  # (n, P - W)
    step_ids = batch.input_ids[:, width:]  # (n, P - W): the prefill, then one token a step
    tokens: list[list[int]] = [[] for _ in range(N)]
    logprobs: list[list[float]] = [[] for _ in range(N)]
    eos = torch.tensor(sorted(eos_ids), dtype=torch.long, device=mask.device)
    greedy = (torch.tensor(list(greedy_rows), dtype=torch.bool, device=mask.device)
              if sampler is not None and greedy_rows is not None and any(greedy_rows) else None)
    name = cache_argument(model)
    for t in range(max_new_tokens):
        out = model(input_ids=step_ids, attention_mask=mask, position_ids=positions, use_cache=True,
                    logits_to_keep=1, **{name: cache})
        cache = out[name]
        scores = out.logits[:, -1].float()  # (n, V)
        if t < min_new_tokens and len(eos):
            scores[:, eos] = float("-inf")
        chosen, drawn = sampler.draw(scores) if sampler else (scores.argmax(-1), None)  # (n,), (n,)
        if greedy is not None:
            chosen = torch.where(greedy[rows], scores.argmax(-1), chosen)
        drawn = drawn.tolist() if drawn is not None else None
        keep = []
        for i, (row, token) in enumerate(zip(rows.tolist(), chosen.tolist())):
            tokens[row].append(token)
            if drawn is not None and not (greedy_rows and greedy_rows[row]):
                logprobs[row].append(drawn[i])
            if not (token in eos_ids or done(row, tokens[row])):
                keep.append(i)
        if not keep:
            break
        if len(keep) < len(rows):  # finished rows leave the batch
            index = torch.tensor(keep, device=mask.device)
            cache.batch_select_indices(index)
            rows, mask, chosen, positions = rows[index], mask[index], chosen[index], positions[index]
        mask = torch.cat([mask, mask.new_ones(len(rows), 1)], dim=1)  # (n, P + t + 1)
        positions = positions[:, -1:] + 1  # (n, 1)
        step_ids = chosen[:, None]  # (n, 1)
    return tokens, logprobs


def as_batch(problems, **per_problem) -> tuple[list, dict[str, list]]:
    """The problems of a model call, which always takes a list of problems and returns one list of samples
    per problem, and each per-problem argument as a list: a list or tuple must have one entry per problem,
    anything else (a dict chain, a string, None) is shared by all."""
    if not isinstance(problems, (list, tuple)):
        raise TypeError(f"model methods take a list of problems, got {type(problems).__name__} "
                        "(for one problem pass [problem]; the result is one list of samples per problem)")
    problems = list(problems)
    for name, value in per_problem.items():
        if isinstance(value, (list, tuple)) and len(value) != len(problems):
            raise ValueError(f"{len(problems)} problems but {len(value)} entries in {name!r}")
    return problems, {name: list(value) if isinstance(value, (list, tuple)) else [value] * len(problems)
                      for name, value in per_problem.items()}


def sanitized_records(problems: list, groups: list[list[Generation]], task: str, sanitize, record: type) -> list[list]:
    """Each sample of `groups` (one list per problem) as a `record` (`CodeGeneration`, `TestsGeneration`) with
    its `task`, its problem's id and the fields of `sanitize(reply, entry_point)` (`models.sanitize`)."""
    out = [[record(**dataclasses.asdict(g) | {"task": task, "problem_id": p.id},
                   **dataclasses.asdict(sanitize(g.reply, p.entry_point))) for g in group]
           for p, group in zip(problems, groups)]
    logger.debug("%s samples: %d of %d well-formed", task.removesuffix("s"),
                 sum(r.ok for group in out for r in group), sum(map(len, out)))
    return out


class LLMBase:
    """A causal LM with its tokenizer, sampling settings and chat formatting.

    model: "default", "tiny", a Hugging Face id, a local folder, or a loaded `(model, tokenizer)` pair.
    system_prompt: replaces the role's system message. prefill: start code and tests replies with an
    open code block written into the prompt (see `CODE_PREFIX`, `TESTS_PREFIX`)."""

    system_prompt: str | None = None  # subclasses set their role; None keeps the chat template's default

    def __init__(
        self,
        model="default",
        device: str | torch.device = "auto",
        dtype: str | torch.dtype = "auto",
        sampling: SamplingConfig | None = None,
        system_prompt: str | None = None,
        prefill: bool = True,
    ):
        if isinstance(model, (tuple, list)):
            self.model, self.tokenizer = model
            if device != "auto":  # a loaded pair stays where it is unless told otherwise
                self.model.to(resolve_device(device))
            if dtype != "auto":
                self.model.to(resolve_dtype(dtype, self.model.device))
            contiguous_head_input(self.model)
            prepare_tokenizer(self.tokenizer)
        else:
            self.model, self.tokenizer = load_model(model, device=device, dtype=dtype)
        self.sampling = sampling or SamplingConfig()
        # the weights `sample` runs (None: `model`); training sets a bf16 copy (`training.policy.frozen_copy`)
        self.sampling_model: torch.nn.Module | None = None
        self.prompt_store: PromptStore | None = None  # set inside `reusing_prompts`
        self.prefill = prefill  # open the code block of code and tests replies in the prompt
        if system_prompt is not None:
            self.system_prompt = system_prompt
        eos = self.model.generation_config.eos_token_id
        eos = [eos] if isinstance(eos, int) else list(eos or [])
        self.eos_ids = {t for t in [*eos, self.tokenizer.eos_token_id] if t is not None}

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    # ------------------------------------------------------------------ prompts
    def format_prompt(self, user_text: str) -> str:
        """The text the model sees: the chat template when the tokenizer has one, else the text itself."""
        if not getattr(self.tokenizer, "chat_template", None):
            return user_text
        messages = [{"role": "user", "content": user_text}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, prompt: str) -> list[int]:
        """Token ids of a formatted prompt (a chat template already holds its special tokens)."""
        has_template = bool(getattr(self.tokenizer, "chat_template", None))
        return self.tokenizer(prompt, add_special_tokens=not has_template)["input_ids"]

    # ------------------------------------------------------------------ sampling
    @contextlib.contextmanager
    def reusing_prompts(self) -> Iterator[None]:
        """Inside the block, each `sample` call prefills only what its prompts do not share with the
        prompts of the call before it (`PromptStore`): the evaluation's stages and codes of a batch. The
        weights must not change inside the block (the stored keys and values would be stale); not nested."""
        self.prompt_store = PromptStore()
        try:
            yield
        finally:
            self.prompt_store = None

    def settings(self, sampling: SamplingConfig | None = None, **overrides) -> SamplingConfig:
        """This wrapper's settings (or `sampling`) with keyword overrides; None values are ignored."""
        return dataclasses.replace(sampling or self.sampling, **{k: v for k, v in overrides.items() if v is not None})

    @torch.no_grad()
    def sample(
        self,
        user_texts: list[str],
        num_samples: int,
        settings: SamplingConfig,
        default_max_new_tokens: int,
        code_block: bool = False,
        prefixes: Sequence[str] | str = "",
        greedy_first: bool = False,
    ) -> list[list[Generation]]:
        """`num_samples` responses to each prompt, all in ONE batched decoding (`decode`).
        Returns one list per prompt, in prompt order. `code_block`: the reply is one code block, so a
        row may stop once it closes (when `settings.stop_after_code_block`). `prefixes` (one, or one per
        prompt): the start of the assistant's reply, written into the prompt (prefill); sampling continues
        from it. `greedy_first`: each prompt's first response is greedy and the `num_samples` after it are
        sampled, in the same decoding."""
        if num_samples < 1:
            raise ValueError("num_samples must be >= 1")
        per_prompt = num_samples + greedy_first
        prefixes = [prefixes] * len(user_texts) if isinstance(prefixes, str) else list(prefixes)
        prompts = [self.format_prompt(t) + prefix for t, prefix in zip(user_texts, prefixes, strict=True)]
        prompt_ids = [self.encode(p) for p in prompts]
        rows = [ids for ids in prompt_ids for _ in range(per_prompt)]
        greedy_rows = [r % per_prompt == 0 for r in range(len(rows))] if greedy_first else None  # each prompt's first
        batch = build_token_batch(rows, [[] for _ in rows], self.pad_id, self.device)
        stop = None
        if code_block and settings.stop_after_code_block:
            fences = [prefix.count("```") for prefix in prefixes for _ in range(per_prompt)]
            stop = CodeBlockStop(self.tokenizer, fences)
        model = self.model if self.sampling_model is None else self.sampling_model
        rng_devices = [self.device.index or 0] if self.device.type == "cuda" else []
        # a model with frozen bf16 weights and fp32 trained ones runs under bf16 autocast (at bf16 speed)
        with autocast(model), torch.random.fork_rng(devices=rng_devices, enabled=settings.seed is not None):
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            cached = prefill_shared_prefixes(model, rows, store=self.prompt_store) if settings.share_prefix else None
            new_tokens, chosen = decode(model, batch, settings.max_new_tokens or default_max_new_tokens,
                                        settings.sampler(model.config.vocab_size), stop or (lambda row, tokens: False),
                                        min_new_tokens=settings.min_new_tokens, eos_ids=self.eos_ids, cached=cached,
                                        greedy_rows=greedy_rows)

        out: list[list[Generation]] = [[] for _ in prompts]
        for row, response in enumerate(new_tokens):  # each ends at its EOS, its closed code block or the budget
            i = row // per_prompt
            out[i].append(
                Generation(
                    prompt=prompts[i],
                    prompt_ids=prompt_ids[i],
                    response_ids=response,
                    text=self.tokenizer.decode(response, skip_special_tokens=True),
                    prefix=prefixes[i],
                    sampler_logprobs=chosen[row],
                )
            )
        n_tokens = sum(len(g.response_ids) for gens in out for g in gens)
        logger.debug("sampled %d responses, %d tokens", len(new_tokens), n_tokens)
        return out

    # ------------------------------------------------------------------ scoring
    def token_batch(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> TokenBatch:
        """`build_token_batch` with this model's pad id and device."""
        return build_token_batch(prompt_ids, response_ids, self.pad_id, self.device)

    def get_log_probs(
        self,
        prompt_ids: list[list[int]],
        response_ids: list[list[int]],
        requires_grad: bool = False,
        temperature: float = 1.0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-token log π(response_t | prompt, response_<t) for a batch.

        Returns `(logprobs, mask)`, both (B, R) with R the longest response: log-probs in fp32 (0 where
        masked) and a float mask that is 1 on real response tokens. Runs under `torch.no_grad()` unless
        `requires_grad` (the PPO update). `temperature` divides the logits (score the sampling policy)."""
        batch = self.token_batch(prompt_ids, response_ids)
        mask = batch.response_mask[:, batch.prompt_width:].float()  # (B, R)
        if mask.shape[1] == 0:  # R = 0: no response token
            return torch.zeros_like(mask), mask
        with torch.set_grad_enabled(requires_grad):
            logprobs, _ = forward_logprobs(self.model, batch.input_ids, batch.attention_mask, "fp32",
                                           keep_from=batch.prompt_width, temperature=temperature)  # (B, P + R)
            logprobs = logprobs[:, batch.prompt_width:] * mask  # (B, R)
        return logprobs, mask
