"""The LLM wrappers on the tiny model: batching, records, log-probs, sampling, prompts (CPU, seconds)."""
import contextlib
import pytest
import torch
import torch.nn.functional as F
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from models import (
    CodeGeneration,
    LLMGenerator,
    SamplingConfig,
    TestsGeneration,
    TopKFirstTopPLogitsProcessor,
    build_token_batch,
)
from models.base import cache_argument
from models.logprobs import position_ids
from models.generator import CODE_PREFIX
from models.sampling import CodeBlockStop
from reasoning.stages import get_stage


def count_generate_calls(monkeypatch, model):
    """Wrap the decoding loop (`models.base.decode`); returns, per call for `model`, its input_ids,
    attention_mask, max_new_tokens and shared-prefix cache."""
    import models.base as base

    calls, original = [], base.decode

    def spy(m, batch, max_new_tokens, *args, **kwargs):
        if m is model:
            calls.append({"input_ids": batch.input_ids, "attention_mask": batch.attention_mask,
                          "max_new_tokens": max_new_tokens, "cached": kwargs["cached"]})
        return original(m, batch, max_new_tokens, *args, **kwargs)

    monkeypatch.setattr(base, "decode", spy)
    return calls


def canned_generate(monkeypatch, wrapper, texts):
    """Make the decoding loop return `texts[row]`'s tokens, then EOS, for each row."""
    import models.base as base

    tok = wrapper.tokenizer

    def fake(model, batch, *args, **kwargs):
        rows = [tok(texts[i % len(texts)], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                for i in range(batch.input_ids.shape[0])]
        return rows, [[] for _ in rows]

    monkeypatch.setattr(base, "decode", fake)


# ----------------------------------------------------------------------------- records and batching
def test_stage_output_records(tiny_generator, example_problems):
    problem = example_problems[0]
    (records,) = tiny_generator.generate_stage_output([problem], "understand", {}, num_samples=3, max_new_tokens=8,
                                                      seed=0)
    assert len(records) == 3
    for r in records:
        assert r.task == "stage" and r.stage == "understand" and r.problem_id == problem.id
        assert problem.title in r.prompt and r.prompt.startswith("<|im_start|>system")  # chat template used
        assert r.prompt_ids == tiny_generator.encode(r.prompt)
        assert 1 <= len(r.response_ids) <= 8
        assert r.text == tiny_generator.tokenizer.decode(r.response_ids, skip_special_tokens=True)
        assert all(t not in tiny_generator.eos_ids for t in r.response_ids[:-1])  # cut at the first EOS


def test_stage_budget_is_the_default_max_new_tokens(tiny_generator, example_problems, monkeypatch):
    calls = count_generate_calls(monkeypatch, tiny_generator.model)
    tiny_generator.generate_stage_output(example_problems[:1], "pseudocode", {}, num_samples=1, seed=0,
                                         min_new_tokens=1, do_sample=False)
    assert calls[0]["max_new_tokens"] == get_stage("pseudocode").max_new_tokens


def test_problems_batch_into_one_left_padded_generate_call(tiny_generator, example_problems, monkeypatch):
    calls = count_generate_calls(monkeypatch, tiny_generator.model)
    problems = example_problems[:3]
    groups = tiny_generator.generate_stage_output(problems, "understand", [{}, {}, {}], num_samples=2,
                                                  max_new_tokens=4, seed=0)
    assert len(calls) == 1
    assert calls[0]["input_ids"].shape[0] == 6  # 3 problems x 2 samples in one batch
    mask = calls[0]["attention_mask"]
    assert (mask[:, -1] == 1).all()  # left padding: every prompt ends at the last column
    assert (mask[:, 0] == 0).any()  # prompts of different lengths
    assert [len(g) for g in groups] == [2, 2, 2]
    assert [g[0].problem_id for g in groups] == [p.id for p in problems]


def test_seed_is_deterministic_and_leaves_global_rng_alone(tiny_generator, example_problems):
    problem = example_problems[1]
    state = torch.get_rng_state()
    (a,) = tiny_generator.generate_stage_output([problem], "understand", {}, num_samples=2, max_new_tokens=6, seed=7)
    assert torch.equal(state, torch.get_rng_state())
    (b,) = tiny_generator.generate_stage_output([problem], "understand", {}, num_samples=2, max_new_tokens=6, seed=7)
    (c,) = tiny_generator.generate_stage_output([problem], "understand", {}, num_samples=2, max_new_tokens=6, seed=8)
    assert [r.response_ids for r in a] == [r.response_ids for r in b]
    assert [r.response_ids for r in a] != [r.response_ids for r in c]


def test_shared_prefix_prefill_samples_the_same_tokens_as_the_plain_path(tiny_generator, example_problems, monkeypatch):
    """Samples of one prompt and prompts of one problem share their prefix: prefilled once, the rows draw the
    very tokens (same seed, same RNG order) with the same sampler log-probs as when every row prefills alone."""
    import models.base as base

    calls, widths, real = count_generate_calls(monkeypatch, tiny_generator.model), [], base.prefill_shared_prefixes
    monkeypatch.setattr(base, "prefill_shared_prefixes", lambda *a, **k: widths.append((out := real(*a, **k))[1]) or out)
    chains = [{"understand": "Add the numbers."}, {"understand": "Sum a and b, then return it."}]
    problems = [example_problems[0], example_problems[0], example_problems[1]]
    out = {}
    for share in (False, True):
        stages = tiny_generator.generate_stage_output(problems[:2], "understand", {}, num_samples=3, max_new_tokens=8,
                                                      seed=5, temperature=1.0, share_prefix=share)
        codes = tiny_generator.generate_code(problems, chains + [{}], num_samples=2, max_new_tokens=8, seed=5,
                                             temperature=1.0, share_prefix=share)
        out[share] = [g for group in stages + codes for g in group]
    assert [g.response_ids for g in out[True]] == [g.response_ids for g in out[False]]
    for shared, plain in zip(out[True], out[False]):
        torch.testing.assert_close(torch.tensor(shared.sampler_logprobs), torch.tensor(plain.sampler_logprobs),
                                   atol=1e-4, rtol=0)
    assert [c["cached"] is not None for c in calls] == [False, False, True, True]  # shared path ran
    # the code call's rows differ after the chain: the cache holds the shared part, generate prefills the rest
    assert len(widths) == 2 and 0 < widths[1] < calls[3]["input_ids"].shape[1] - 1


def test_decode_drops_finished_rows_and_keeps_the_others_tokens(tiny_generator, example_problems):
    """Rows that finish leave the batch at once; the rows left draw the tokens transformers' `generate` draws
    (greedy), and the forward passes shrink with them."""
    from models.base import decode

    model = tiny_generator.model
    prompts = [tiny_generator.encode(tiny_generator.format_prompt(p.description)) for p in example_problems[:3]]
    batch = build_token_batch(prompts, [[], [], []], tiny_generator.pad_id)
    reference = model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask, do_sample=False,
                               max_new_tokens=9, min_new_tokens=9, pad_token_id=tiny_generator.pad_id)
    reference = reference[:, batch.prompt_width:].tolist()  # (3, 9)
    lengths = [3, 9, 5]
    widths, original = [], model.forward

    def spy(*args, **kwargs):
        widths.append(kwargs["input_ids"].shape[0])
        return original(*args, **kwargs)

    model.forward = spy
    try:
        tokens, logprobs = decode(model, batch, 9, None, lambda row, toks: len(toks) == lengths[row])
    finally:
        del model.forward
    assert tokens == [reference[r][:n] for r, n in enumerate(lengths)] and logprobs == [[], [], []]
    assert widths == [3, 3, 3, 2, 2, 1, 1, 1, 1]  # the prefill and two steps at 3 rows, then 2, then 1


def test_shared_prefixes_group_neighbours_and_prefill_without_padding(tiny_generator):
    from models.base import prefill_shared_prefixes

    model = tiny_generator.model
    a, b = list(range(100, 140)), list(range(200, 230))
    cache, width = prefill_shared_prefixes(model, [a, a, a, b + [1], b + [2, 3]])
    # groups {a, a, a} (39 shared, 1 to feed) and {b+[1], b+[2,3]} (30 shared): S = 32 - 30 = 2, W = 40 - 2
    assert width == 38 and cache.get_seq_length() == 38
    keys = cache.layers[0].keys  # (N, heads, W, head_dim)
    assert keys[3, :, :38 - 29].abs().sum() == 0 and keys[3, :, 38 - 29:].abs().sum() > 0  # right-aligned
    alone = model(input_ids=torch.tensor([b]), use_cache=True)
    torch.testing.assert_close(keys[4, :, -30:], alone[cache_argument(model)].layers[0].keys[0])
    c = list(range(300, 335))
    # no two rows share: on a CPU each prompt is still prefilled alone, without padding (the last token is fed)
    cache, width = prefill_shared_prefixes(model, [a, b, c])
    assert width == 39 and cache.layers[0].keys[1, :, :39 - 29].abs().sum() == 0
    assert prefill_shared_prefixes(model, [a, b, c], max_cost=0.75) is None  # 102 + 3 tokens > 0.75 x 3 x 40


def test_response_cut_at_first_eos_padding_dropped(tiny_generator, example_problems, monkeypatch):
    canned_generate(monkeypatch, tiny_generator, ["hello world", "a much longer answer than the first"])
    (records,) = tiny_generator.generate_stage_output(example_problems[:1], "understand", {}, num_samples=2)
    eos = tiny_generator.tokenizer.eos_token_id
    assert records[0].text == "hello world"
    assert records[0].response_ids[-1] == eos and records[0].response_ids.count(eos) == 1
    assert records[1].text == "a much longer answer than the first"


def test_code_records_carry_sanitization(tiny_generator, example_problems, monkeypatch):
    p = example_problems[0]
    # the reply is prefilled with an open ```python block: the model continues inside it
    canned_generate(monkeypatch, tiny_generator, [p.reference_solution + "```\nSome prose.", "```"])
    (records,) = tiny_generator.generate_code([p], {}, num_samples=2)
    assert all(isinstance(r, CodeGeneration) and r.task == "code" for r in records)
    assert records[0].prompt.endswith(CODE_PREFIX) and records[0].reply == CODE_PREFIX + records[0].text
    assert records[0].ok and records[0].code == p.reference_solution and records[0].reason == ""
    assert not records[1].ok and records[1].code == "" and "no code" in records[1].reason
    unfilled = LLMGenerator((tiny_generator.model, tiny_generator.tokenizer), prefill=False)
    canned_generate(monkeypatch, unfilled, [f"Here:\n```python\n{p.reference_solution}```"])
    ((record,),) = unfilled.generate_code([p], {}, num_samples=1)
    assert record.prefix == "" and not record.prompt.endswith(CODE_PREFIX) and record.ok


def test_code_feedback_reaches_the_prompt(tiny_generator, example_problems):
    p = example_problems[0]
    feedback = [("def reverse_words(s):\n    return s\n", ["test_two_words", "test_empty"])]
    ((record,),) = tiny_generator.generate_code([p], {"understand": "Split and reverse."}, 1, feedback=[feedback],
                                                max_new_tokens=2, seed=0)
    assert "An earlier attempt failed" in record.prompt and "test_two_words" in record.prompt
    assert "return s" in record.prompt and "Split and reverse." in record.prompt
    batched = tiny_generator.generate_code(example_problems[:2], None, 1, feedback=[feedback, None],
                                           max_new_tokens=2, seed=0)
    assert "test_empty" in batched[0][0].prompt and "earlier attempt" not in batched[1][0].prompt


def test_complete_chains_fills_only_the_missing_stages_in_order(tiny_generator, example_problems, monkeypatch):
    calls = count_generate_calls(monkeypatch, tiny_generator.model)
    problems = example_problems[:3]
    chains = [{}, {"understand": "kept"}, {"understand": "kept", "algorithm": "kept too"}]
    out = tiny_generator.complete_chains(problems, chains, ["understand", "algorithm"], max_new_tokens=3, seed=0)
    assert out is chains and len(calls) == 2  # one batched call per stage that some chain lacks
    assert [list(c) for c in chains] == [["understand", "algorithm"]] * 3
    assert chains[1]["understand"] == chains[2]["understand"] == "kept" and chains[2]["algorithm"] == "kept too"
    assert tiny_generator.complete_chains(problems, chains, ["understand"]) is chains and len(calls) == 2


def test_tests_records_and_context(tiny_discriminator, example_problems, monkeypatch):
    p = example_problems[0]
    response = "two():\n    assert reverse_words('a b') == 'b a'\n```"  # continues the prefill "def test_"
    canned_generate(monkeypatch, tiny_discriminator, [response])
    ((from_code,),) = tiny_discriminator.generate_tests([p], "def reverse_words(s):\n    return s\n", 1)
    ((from_chain,),) = tiny_discriminator.generate_tests([p], {"understand": "Words reversed."}, 1)
    assert isinstance(from_code, TestsGeneration) and from_code.task == "tests"
    assert from_code.ok and from_code.test_names == ["test_two"]
    assert from_code.tests.startswith("from solution import *")
    assert "candidate solution" in from_code.prompt and "Words reversed." in from_chain.prompt


def test_critique_uses_the_stage_prompt(tiny_discriminator, example_problems):
    p = example_problems[0]
    (records,) = tiny_discriminator.generate_critique([p], "edge_cases", "Only the empty string.", {"understand": "x"},
                                                      num_samples=2, max_new_tokens=3, seed=0)
    assert len(records) == 2 and records[0].task == "critique" and records[0].stage == "edge_cases"
    assert "Only the empty string." in records[0].prompt and "breaking inputs" in records[0].prompt


def test_code_block_stopping(tiny_generator):
    tok = tiny_generator.tokenizer
    text = "```python\ndef f():\n    return 1\n```\nThis explains the code at length."
    ids = tok(text, add_special_tokens=False)["input_ids"]
    stop = CodeBlockStop(tok, [0])
    fired = next(n for n in range(1, len(ids) + 1) if stop(0, ids[:n]))
    assert tok.decode(ids[:fired]).count("```") == 2 and "explains" not in tok.decode(ids[:fired])
    assert tok.decode(ids[:fired - 1]).count("```") < 2  # not a token earlier
    # with the opening fence prefilled in the prompt, the first fence of the response closes the block
    ids = tok("return 1\n```\nMore prose.", add_special_tokens=False)["input_ids"]
    stop = CodeBlockStop(tok, [0, 1])
    fired = next(n for n in range(1, len(ids) + 1) if stop(1, ids[:n]))
    assert tok.decode(ids[:fired]).rstrip().endswith("```")
    assert not any(stop(0, ids[:n]) for n in range(1, len(ids) + 1))  # row 0 needs two fences


# ----------------------------------------------------------------------------- log-probs
def test_token_batch_layout():
    batch = build_token_batch([[1, 2, 3], [4]], [[5], [6, 7]], pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 5, 0], [0, 0, 4, 6, 7]]
    assert batch.attention_mask.tolist() == [[1, 1, 1, 1, 0], [0, 0, 1, 1, 1]]
    assert position_ids(batch.attention_mask).tolist() == [[0, 1, 2, 3, 3], [0, 0, 0, 1, 2]]  # as generate's
    assert batch.response_ids.tolist() == [[5, 0], [6, 7]]
    assert batch.response_mask.tolist() == [[0, 0, 0, 1, 0], [0, 0, 0, 1, 1]]
    assert batch.prompt_width == 3


def test_log_probs_equal_log_softmax_of_the_models_logits(tiny_generator):
    prompts, responses = [[1, 50, 60, 70, 80], [90, 100]], [[11, 12, 13], [14, 2]]
    logprobs, mask = tiny_generator.get_log_probs(prompts, responses)
    assert logprobs.shape == mask.shape == (2, 3)
    assert mask.tolist() == [[1, 1, 1], [1, 1, 0]]
    for i, (p, r) in enumerate(zip(prompts, responses)):  # each row alone, unpadded
        ids = torch.tensor([p + r])
        logits = tiny_generator.model(ids).logits[0, len(p) - 1 : -1]  # (R, V)
        expected = F.log_softmax(logits, dim=-1).gather(-1, torch.tensor(r)[:, None])[:, 0]
        torch.testing.assert_close(logprobs[i, : len(r)], expected, atol=1e-5, rtol=1e-5)
    assert logprobs[1, 2] == 0  # masked position


def test_log_probs_match_the_scores_generate_returns(tiny_generator, example_problems):
    """Sample with the raw model (temperature 1, no top-p), then score the sampled ids."""
    gens = tiny_generator.generate_stage_output(example_problems[:2], "understand", None, 1, max_new_tokens=1)
    prompts = [g[0].prompt_ids for g in gens]
    batch = build_token_batch(prompts, [[], []], tiny_generator.pad_id)
    torch.manual_seed(0)
    out = tiny_generator.model.generate(
        input_ids=batch.input_ids, attention_mask=batch.attention_mask, do_sample=True, top_k=0, top_p=1.0,
        temperature=1.0, max_new_tokens=6, min_new_tokens=6, output_logits=True, return_dict_in_generate=True,
        pad_token_id=tiny_generator.pad_id,
    )
    responses = out.sequences[:, batch.prompt_width :]  # (B, 6)
    sampled = torch.stack([F.log_softmax(l.float(), -1) for l in out.logits], dim=1)  # (B, 6, V)
    expected = sampled.gather(-1, responses[..., None])[..., 0]  # (B, 6)
    logprobs, mask = tiny_generator.get_log_probs(prompts, responses.tolist())
    assert mask.all()
    torch.testing.assert_close(logprobs, expected, atol=1e-4, rtol=1e-4)


def test_log_probs_grad_only_when_asked(tiny_generator):
    prompts, responses = [[1, 2, 3]], [[4, 5]]
    logprobs, _ = tiny_generator.get_log_probs(prompts, responses)
    assert not logprobs.requires_grad
    logprobs, mask = tiny_generator.get_log_probs(prompts, responses, requires_grad=True)
    assert logprobs.requires_grad
    tiny_generator.model.zero_grad()
    (logprobs * mask).sum().backward()
    grads = [p.grad for p in tiny_generator.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    tiny_generator.model.zero_grad(set_to_none=True)


def test_temperature_scales_log_probs(tiny_generator):
    cold, _ = tiny_generator.get_log_probs([[1, 2, 3]], [[4, 5]], temperature=0.5)
    warm, _ = tiny_generator.get_log_probs([[1, 2, 3]], [[4, 5]])
    assert not torch.allclose(cold, warm)


def test_get_log_probs_is_the_training_log_prob(tiny_generator):
    """The sampler-side scoring and the PPO update's forward agree on the same tokens, padded alike."""
    from training.ppo import batch_logprobs

    prompts, responses = [[1, 50, 60, 70, 80], [90, 100]], [[11, 12, 13], [14, 2]]
    logprobs, mask = tiny_generator.get_log_probs(prompts, responses, temperature=0.7)
    batch = build_token_batch(prompts, responses, tiny_generator.pad_id)
    trained = batch_logprobs(tiny_generator.model, batch.input_ids, batch.attention_mask, temperature=0.7)
    torch.testing.assert_close(logprobs, trained[:, batch.prompt_width:] * mask)
    assert (logprobs[mask.bool()] < 0).all()


# ----------------------------------------------------------------------------- sampling
def test_top_k_first_matches_stock_top_p_when_the_nucleus_fits():
    torch.manual_seed(0)
    scores = torch.randn(4, 1000) * 4  # peaked: the 0.9 nucleus is well under 200 tokens
    ours = TopKFirstTopPLogitsProcessor(top_k=200, top_p=0.9, temperature=0.7)(None, scores.clone())
    stock = TopPLogitsWarper(top_p=0.9)(None, TemperatureLogitsWarper(0.7)(None, scores.clone()))
    assert torch.equal(torch.isinf(ours), torch.isinf(stock))
    kept = ~torch.isinf(ours)
    torch.testing.assert_close(ours[kept], stock[kept])


def test_top_k_first_sampling_draws_from_the_nucleus():
    torch.manual_seed(0)
    scores = torch.tensor([[2.0, 1.0, 0.0, -1.0, -8.0]]).repeat(20000, 1)  # (N, 5)
    filtered = TopKFirstTopPLogitsProcessor(top_k=4, top_p=0.9, temperature=1.0)(None, scores[:1].clone())
    drawn = TopKFirstTopPLogitsProcessor(top_k=4, top_p=0.9, temperature=1.0, sample=True)(None, scores)
    assert (torch.isfinite(drawn).sum(-1) == 1).all()  # one token per row, picked by generate's argmax
    counts = torch.bincount(drawn.argmax(-1), minlength=5).float() / len(scores)
    expected = torch.softmax(filtered[0], -1)  # the stock nucleus distribution (tokens 0..2 here)
    assert counts[3] == counts[4] == 0
    torch.testing.assert_close(counts, expected, atol=0.015, rtol=0)


def test_top_k_first_caps_the_nucleus_at_k():
    scores = torch.zeros(2, 1000)  # flat: the nucleus would be 900 tokens
    out = TopKFirstTopPLogitsProcessor(top_k=50, top_p=0.9)(None, scores)
    assert (~torch.isinf(out)).sum(-1).tolist() == [50, 50]


def test_sampling_config_validation_and_kwargs():
    with pytest.raises(ValueError):
        SamplingConfig(temperature=0)
    with pytest.raises(ValueError):
        SamplingConfig(top_p=0)
    assert SamplingConfig(do_sample=False, temperature=0).sampler(1000) is None  # greedy
    stock = SamplingConfig(top_k_first=0).sampler(1000)  # the whole vocabulary before top-p: the stock warpers
    assert stock.top_k == 1000 and stock.top_p == 0.95 and stock.sample
    fast = SamplingConfig(top_k=40).sampler(1000)
    assert fast.top_k == 40 and fast.temperature == SamplingConfig().temperature and fast.sample


def test_per_call_overrides_do_not_change_the_wrapper(tiny_generator):
    settings = tiny_generator.settings(temperature=0.3, seed=None)
    assert settings.temperature == 0.3 and tiny_generator.sampling.temperature == SamplingConfig().temperature


def test_model_methods_take_a_batch_and_return_one(tiny_generator, tiny_discriminator, example_problems):
    with pytest.raises(TypeError, match="take a list of problems"):
        tiny_generator.generate_code(example_problems[0], None)
    out = tiny_discriminator.generate_tests(example_problems[:1], None, num_samples=2, max_new_tokens=2, seed=0)
    assert len(out) == 1 and len(out[0]) == 2  # one list of samples per problem, for one problem too


def test_reusing_prompts_prefills_only_what_the_last_call_did_not(tiny_generator, example_problems, monkeypatch):
    """Inside `reusing_prompts` the next stage's prompt (the problem and the stages so far) starts from the last
    call's keys and values: the model sees only the new tokens, and the rows get the same greedy tokens."""
    problems = example_problems[:2]
    lengths, original = [], tiny_generator.model.forward

    def spy(*args, **kwargs):
        if "attention_mask" not in kwargs:  # a batch-1 prefill of one prompt (`decode` passes the mask)
            lengths.append(kwargs["input_ids"].shape[1])
        return original(*args, **kwargs)

    out = {}
    for reuse in (False, True):
        chains = [{} for _ in problems]
        monkeypatch.setattr(tiny_generator.model, "forward", spy)
        lengths.clear()
        with tiny_generator.reusing_prompts() if reuse else contextlib.nullcontext():
            tiny_generator.complete_chains(problems, chains, ["understand", "edge_cases"], do_sample=False,
                                           max_new_tokens=4)
            codes = tiny_generator.generate_code(problems, chains, 1, do_sample=False, max_new_tokens=4)
            again = tiny_generator.generate_code(problems, chains, 1, do_sample=False, max_new_tokens=4)
        monkeypatch.undo()
        out[reuse] = (chains, [g[0].response_ids for g in codes], [g[0].response_ids for g in again], list(lengths))
        assert tiny_generator.prompt_store is None  # dropped with the block
    assert out[True][:3] == out[False][:3]
    plain, reused = out[False][3], out[True][3]
    assert len(plain) == 8 and len(reused) == 6  # 2 prompts x 4 calls; the repeated code call prefills nothing ...
    assert reused[0] == plain[0] and sum(reused) < 0.6 * sum(plain)  # ... and the rest far less (even the first
    # call's second prompt: it starts like the first one, with the system prompt)


def test_greedy_first_decodes_the_greedy_code_with_the_sampled_ones(tiny_generator, example_problems):
    """`greedy_first`: each problem's first code is the greedy one (the tokens a greedy call gives, no sampler
    log-probs), then its sampled codes, all in one decoding."""
    problems, chains = example_problems[:2], [{"understand": "Add."}, {}]
    greedy = tiny_generator.generate_code(problems, chains, 1, do_sample=False, max_new_tokens=8)
    both = tiny_generator.generate_code(problems, chains, 3, greedy_first=True, max_new_tokens=8, seed=3,
                                        temperature=1.0)
    assert [len(group) for group in both] == [4, 4]
    for alone, group in zip(greedy, both):
        assert group[0].response_ids == alone[0].response_ids and group[0].sampler_logprobs == []
        assert all(len(c.sampler_logprobs) == len(c.response_ids) for c in group[1:])
    assert len({tuple(c.response_ids) for group in both for c in group[1:]}) > 2  # the others are sampled


def test_growing_cache_holds_what_torch_cat_would(tiny_generator):
    """`growing_cache`: keys and values written into buffers with room equal the concatenation transformers'
    `DynamicLayer` makes, through growth, dropped rows and a crop."""
    from models.base import growing_cache

    torch.manual_seed(0)
    n_layers = len(growing_cache(tiny_generator.model).layers)
    layers = [(torch.randn(3, 2, 5, 4), torch.randn(3, 2, 5, 4)) for _ in range(n_layers)]
    cache = growing_cache(tiny_generator.model, layers)
    layer, (keys, values) = cache.layers[0], layers[0]
    for t in (1, 200, 1):  # the second update outgrows the first buffers
        k, v = torch.randn(3, 2, t, 4), torch.randn(3, 2, t, 4)
        out = layer.update(k, v)
        keys, values = torch.cat([keys, k], dim=-2), torch.cat([values, v], dim=-2)
        assert torch.equal(out[0], keys) and torch.equal(out[1], values)
    layer.batch_select_indices(torch.tensor([0, 2]))
    keys, values = keys[[0, 2]], values[[0, 2]]
    k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    out = layer.update(k, v)
    assert torch.equal(out[0], torch.cat([keys, k], dim=-2)) and cache.get_seq_length() == 5 + 202 + 1
    layer.crop(-3)
    assert layer.keys.shape[-2] == 205 and torch.equal(layer.update(k, v)[1][..., -1:, :], v)
    before = layer.keys.clone()
    layer.batch_repeat_interleave(2)  # an inherited method that replaces the keys: new buffers follow them
    k4 = torch.randn(4, 2, 1, 4)
    assert torch.equal(layer.update(k4, k4)[0], torch.cat([before.repeat_interleave(2, dim=0), k4], dim=-2))
