"""PPO math on hand-made tensors, and `train_step` on a tiny randomly initialised Llama (no download)."""
import math
from dataclasses import replace

import pytest
import torch

from training.config import PPOConfig
from models.logprobs import entropy_from_logits, logprobs_from_logits
from training.ppo import (
    RolloutBatch,
    batch_logprobs,
    compute_advantages,
    compute_policy_loss,
    compute_ref_logprobs,
    masked_mean,
    train_step,
)

LN2 = math.log(2.0)


# ---------------------------------------------------------------- advantages
def test_group_relative_advantages_hand_computed():
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.5, 0.5, 0.0, 0.5, 1.0])
    groups = [0, 0, 1, 1, 1, 7, 7, 7]
    raw = compute_advantages(rewards, groups, normalize=False)
    torch.testing.assert_close(raw, torch.tensor([0.5, -0.5, 0, 0, 0, -0.5, 0, 0.5]))
    norm = compute_advantages(rewards, groups, normalize=True)
    # group 0: std 0.5 -> ±1; group 7: population std sqrt(1/6) -> ±0.5 * sqrt(6) = ±1.2247
    s = 0.5 * math.sqrt(6)
    torch.testing.assert_close(norm, torch.tensor([1.0, -1.0, 0, 0, 0, -s, 0, s]), atol=1e-5, rtol=0)


def test_equal_rewards_give_exactly_zero_advantages():
    rewards = torch.tensor([0.3, 0.3 + 1e-9, 0.3, 0.9])  # float noise in group 0; group 1 has one sample
    adv = compute_advantages(rewards, [0, 0, 0, 1])
    assert adv.tolist() == [0.0, 0.0, 0.0, 0.0]
    assert compute_advantages([0.0, 1.0], [0, 0]).abs().sum() > 0
    # problem ids may be strings; a tensor of ids works the same
    adv = compute_advantages([1.0, 0.0, 0.2], ["two_sum", "two_sum", "fizzbuzz"])
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0, 0.0]), atol=1e-5, rtol=0)
    assert compute_advantages([1.0, 0.0, 0.2], torch.tensor([3, 3, 9])).tolist() == adv.tolist()


# ---------------------------------------------------------------- the loss on hand tensors
def hand_example():
    """2 sequences x 3 positions; position 0 is the prompt, (1, 2) is padding.
    ratios: row 0 (A = +1): 1.5, 0.9; row 1 (A = -1): 0.5."""
    old = torch.tensor([[0.0, -1.0, -2.0], [0.0, -1.5, -1.0]])
    logprobs = old + torch.log(torch.tensor([[1.0, 1.5, 0.9], [1.0, 0.5, 7.0]]))
    ref = logprobs + torch.tensor([[0.0, LN2, 0.0], [0.0, -LN2, 3.0]])
    mask = torch.tensor([[0, 1, 1], [0, 1, 0]])
    adv = torch.tensor([1.0, -1.0])
    return logprobs.requires_grad_(), old, ref, mask, adv


def test_loss_hand_computed_2x3():
    logprobs, old, ref, mask, adv = hand_example()
    loss, metrics = compute_policy_loss(logprobs, old, adv, mask, clip_coef=0.2, kl_coef=0.1, ref_logprobs=ref)
    # per token max(-A r, -A clip(r)): (0,1): max(-1.5, -1.2) = -1.2; (0,2): -0.9; (1,1): max(0.5, 0.8) = 0.8
    pg = (-1.2 - 0.9 + 0.8) / 3
    # k3 with d = ref - logp: d = ln2 -> 2 - ln2 - 1; d = 0 -> 0; d = -ln2 -> 0.5 + ln2 - 1; sum = 0.5
    kl = 0.5 / 3
    assert metrics["pg_loss"] == pytest.approx(pg)
    assert metrics["kl_ref"] == pytest.approx(kl)
    assert loss.item() == pytest.approx(pg + 0.1 * kl)
    assert metrics["loss"] == pytest.approx(pg + 0.1 * kl)
    assert metrics["clip_frac"] == pytest.approx(2 / 3)  # (0,1) and (1,1) are cut
    # approx KL(old || new) = mean (r - 1) - ln r
    approx = ((0.5 - math.log(1.5)) + (-0.1 - math.log(0.9)) + (-0.5 + LN2)) / 3
    assert metrics["approx_kl"] == pytest.approx(approx)
    loss.backward()
    # gradient: clipped tokens get 0; (0,2): -A r / N = -0.9/3; KL term: beta * (1 - exp(d)) / N
    expected = torch.tensor([[0.0, 0.1 * (1 - 2) / 3, -0.9 / 3], [0.0, 0.1 * (1 - 0.5) / 3, 0.0]])
    torch.testing.assert_close(logprobs.grad, expected)


def test_ratio_one_gives_the_plain_policy_gradient():
    torch.manual_seed(0)
    logprobs = (-torch.rand(3, 5) * 3).requires_grad_()  # (B, T)
    mask = torch.tensor([[0, 1, 1, 1, 0], [0, 0, 1, 1, 1], [0, 1, 0, 0, 0]])
    adv = torch.tensor([0.7, -1.3, 2.0])
    loss, metrics = compute_policy_loss(logprobs, logprobs.detach(), adv, mask, clip_coef=0.2)
    loss.backward()
    # plain policy gradient surrogate: -Σ A·logp·mask / Σ mask
    plain = logprobs.detach().clone().requires_grad_()
    (-(adv[:, None] * plain * mask).sum() / mask.sum()).backward()
    torch.testing.assert_close(logprobs.grad, plain.grad)
    assert metrics["clip_frac"] == 0.0 and metrics["approx_kl"] == 0.0
    assert loss.item() == pytest.approx(-(adv[:, None] * mask).sum().item() / mask.sum().item())


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_clipping_engages_only_beyond_one_plus_minus_eps(sign):
    ratios = torch.tensor([[0.5, 0.79, 0.81, 1.0, 1.19, 1.21, 2.0]])
    old = torch.full_like(ratios, -1.0)
    logprobs = (old + ratios.log()).requires_grad_()
    mask = torch.ones_like(ratios)
    loss, metrics = compute_policy_loss(logprobs, old, torch.tensor([sign]), mask, clip_coef=0.2)
    loss.backward()
    # A > 0: the objective stops rewarding ratios above 1.2; A < 0: it stops punishing ratios below 0.8
    cut = ratios > 1.2 if sign > 0 else ratios < 0.8
    expected = torch.where(cut, torch.zeros_like(ratios), -sign * ratios / ratios.numel())
    torch.testing.assert_close(logprobs.grad, expected)
    assert metrics["clip_frac"] == pytest.approx(2 / 7)
    # on the other side the unclipped term is the larger loss, so no clipping there
    assert (logprobs.grad[~cut] != 0).all()


def test_kl_is_zero_against_itself_and_positive_otherwise():
    torch.manual_seed(1)
    logprobs = -torch.rand(2, 4) * 4
    mask = torch.ones(2, 4)
    adv = torch.zeros(2)
    _, same = compute_policy_loss(logprobs, logprobs, adv, mask, 0.2, kl_coef=1.0, ref_logprobs=logprobs)
    assert same["kl_ref"] == 0.0 and same["loss"] == 0.0
    ref = logprobs + torch.randn(2, 4)
    loss, other = compute_policy_loss(logprobs, logprobs, adv, mask, 0.2, kl_coef=1.0, ref_logprobs=ref)
    assert other["kl_ref"] > 0 and loss.item() == pytest.approx(other["kl_ref"])
    _, none = compute_policy_loss(logprobs, logprobs, adv, mask, 0.2, kl_coef=1.0, ref_logprobs=None)
    assert none["kl_ref"] == 0.0


def test_masked_mean_ignores_padding_even_nan():
    logprobs, old, ref, mask, adv = hand_example()
    clean_loss, _ = compute_policy_loss(logprobs, old, adv, mask, 0.2, 0.1, ref)
    clean_loss.backward()
    clean_grad = logprobs.grad.clone()
    pad = ~mask.bool()
    dirty = logprobs.detach().masked_fill(pad, float("nan")).requires_grad_()
    entropy = torch.full((2, 3), 2.0).masked_fill(pad, float("nan"))
    loss, metrics = compute_policy_loss(dirty, old.masked_fill(pad, 1e4), adv, mask, 0.2, 0.1,
                                        ref.masked_fill(pad, float("inf")), entropy=entropy)
    loss.backward()
    assert loss.item() == pytest.approx(clean_loss.item())
    torch.testing.assert_close(dirty.grad, clean_grad)
    assert metrics["entropy"] == 2.0
    assert masked_mean(torch.tensor([1.0, 100.0, 3.0]), torch.tensor([1, 0, 1])).item() == 2.0
    assert masked_mean(torch.tensor([1.0]), torch.tensor([0])).item() == 0.0  # empty mask: 0, not NaN


def test_entropy_from_logits():
    uniform = torch.zeros(2, 8)
    torch.testing.assert_close(entropy_from_logits(uniform), torch.full((2,), math.log(8)))
    peaked = torch.tensor([[100.0, 0.0, 0.0]])
    assert entropy_from_logits(peaked).item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- a tiny model
@pytest.fixture(scope="module")
def tiny_model_factory():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)

    def make(seed=0):
        torch.manual_seed(seed)
        return transformers.LlamaForCausalLM(config).eval()

    return make


def make_batch(seed=0, B=4, T=12, prompt=4):
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, 100, (B, T), generator=g)
    attention_mask = torch.ones(B, T, dtype=torch.long)
    attention_mask[1, -3:] = 0  # right padding
    response_mask = attention_mask.clone()
    response_mask[:, :prompt] = 0
    return RolloutBatch(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask,
                        advantages=torch.tensor([1.0, -1.0, 0.5, -0.5]))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("tiled", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_chunked_token_logprobs_and_their_gradients_equal_the_whole_softmax(temperature, tiled):
    """`token_logprobs` a few rows at a time against log_softmax over whole logits: values, entropy, and the
    gradients of the hidden states, a tied output weight and a bias; bf16 autocast too. Tiled: an `nn.Linear`
    head, tiles of 5 rows x 16 vocabulary columns (8 x 7 tiles, the last ones partial); else any callable head,
    checkpointed chunks of 5 rows."""
    from models.logprobs import token_logprobs

    torch.manual_seed(0)
    N, H, V = 37, 16, 101
    embedding, linear = torch.nn.Embedding(V, H), torch.nn.Linear(H, V)
    linear.weight = embedding.weight  # tied, as the default model's output layer is
    head = linear if tiled else (lambda h: linear(h))
    hidden, tokens, weights = torch.randn(N, H, requires_grad=True), torch.randint(0, V, (N,)), torch.randn(N)
    params = [hidden, embedding.weight, linear.bias]
    lp, entropy = token_logprobs(hidden, head, tokens, temperature, entropy=True, chunk_bytes=4 * V * 5, tile=(5, 16))
    logits = linear(hidden) / temperature
    expected = torch.log_softmax(logits, -1).gather(-1, tokens[:, None]).squeeze(-1)
    probs = logits.softmax(-1)
    torch.testing.assert_close(lp, expected)
    torch.testing.assert_close(entropy, -(probs * probs.log()).sum(-1))
    for ours, theirs in zip(torch.autograd.grad((lp * weights).sum(), params),
                            torch.autograd.grad((expected * weights).sum(), params)):
        torch.testing.assert_close(ours, theirs)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # the matmul in bf16, the softmax in fp32
        low, _ = token_logprobs(hidden, head, tokens, temperature, chunk_bytes=4 * V * 5, tile=(5, 16))
    assert low.dtype == torch.float32
    torch.testing.assert_close(low, expected, atol=0.1, rtol=0.05)


def test_batch_logprobs_match_the_models_own_logits(tiny_model_factory):
    model = tiny_model_factory()
    batch = make_batch()
    lp = compute_ref_logprobs(model, batch)
    assert lp.shape == batch.input_ids.shape and not lp.requires_grad
    assert (lp[:, :4] == 0).all()  # prompt columns (before the first response token) are not scored
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    for b, t in [(0, 4), (0, 11), (2, 5), (3, 7)]:  # logits[:, t-1] predicts input_ids[:, t]
        expected = torch.log_softmax(logits[b, t - 1], -1)[batch.input_ids[b, t]]
        torch.testing.assert_close(lp[b, t], expected, atol=1e-4, rtol=1e-4)
    scored = batch.attention_mask[:, 4:].bool()  # real tokens only: padding is never scored, and is 0
    torch.testing.assert_close(lp[:, 4:][scored], logprobs_from_logits(logits[:, 3:-1], batch.input_ids[:, 4:])[scored],
                               atol=1e-4, rtol=1e-4)  # float noise of the forward on the scored positions only
    assert (lp[:, 4:][~scored] == 0).all() and (~scored).any()
    full = batch_logprobs(model, batch.input_ids, batch.attention_mask)  # keep_from=1: every position
    real = batch.attention_mask[:, 1:].bool()  # padding positions get other position ids: not compared
    torch.testing.assert_close(full[:, 1:][real], logprobs_from_logits(logits[:, :-1], batch.input_ids[:, 1:])[real])
    # padding does not change the real tokens' log-probs
    alone = compute_ref_logprobs(model, make_batch().select(torch.tensor([1])))
    unpadded = batch_logprobs(model, batch.input_ids[1:2, :-3], torch.ones(1, 9, dtype=torch.long))
    torch.testing.assert_close(alone[:, 4:-3], unpadded[:, 4:].detach(), atol=1e-5, rtol=1e-5)


def test_train_step_changes_trainable_weights_only(tiny_model_factory):
    model = tiny_model_factory()
    model.model.embed_tokens.weight.requires_grad_(False)  # a frozen part must stay frozen
    before = snapshot(model)
    batch = make_batch()
    batch.ref_logprobs = compute_ref_logprobs(tiny_model_factory(), batch)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    metrics = train_step(model, optimizer, batch, PPOConfig(kl_coef=0.1, ppo_epochs=2, num_minibatches=2))
    after = model.state_dict()
    assert torch.equal(after["model.embed_tokens.weight"], before["model.embed_tokens.weight"])
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "lm_head.weight" in changed and "model.layers.0.self_attn.q_proj.weight" in changed
    assert metrics["ppo/steps"] == 4 and metrics["ppo/skipped_steps"] == 0
    assert metrics["ppo/tokens"] == 4 * 8 - 3
    for key in ("ppo/loss", "ppo/pg_loss", "ppo/clip_frac", "ppo/approx_kl", "ppo/kl_ref", "ppo/entropy", "ppo/grad_norm"):
        assert math.isfinite(metrics[key]), key
    assert metrics["ppo/entropy"] > 0 and metrics["ppo/grad_norm"] > 0
    assert metrics["ppo/kl_ref"] > 0  # the weights moved away from the reference after the first step


def ragged_batch(seed=1):
    """Rows of very different extents, as a generator step mixes stage texts and codes: left-padded prompts
    of 3 to 9 tokens, right-padded responses of 2 to 8."""
    g = torch.Generator().manual_seed(seed)
    prompts, responses = [3, 9, 4, 8, 5], [8, 2, 7, 3, 5]
    P, R = max(prompts), max(responses)
    input_ids = torch.randint(0, 100, (5, P + R), generator=g)
    attention_mask = torch.zeros(5, P + R, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        attention_mask[i, P - p:P + r] = 1
    response_mask = attention_mask * (torch.arange(P + R) >= P)
    return RolloutBatch(input_ids=input_ids, attention_mask=attention_mask, response_mask=response_mask,
                        advantages=torch.tensor([1.0, -1.0, 0.5, -0.5, 0.25]))


def test_micro_batches_cover_every_real_token_once_and_cut_padding():
    from training.ppo import micro_batches

    batch = ragged_batch()
    mask = batch.attention_mask.bool()
    assert [(g.tolist(), lo, hi) for g, lo, hi in micro_batches(batch.attention_mask, 0)] == [([0, 1, 2, 3, 4], 0, 17)]
    groups = micro_batches(batch.attention_mask, 40)
    assert sorted(r for g, _, _ in groups for r in g.tolist()) == [0, 1, 2, 3, 4]  # each row once
    for rows, lo, hi in groups:
        assert len(rows) == 1 or len(rows) * (hi - lo) <= 40  # within the budget (a row alone may exceed it)
        assert mask[rows][:, :lo].sum() == 0 and mask[rows][:, hi:].sum() == 0  # every real token inside
    assert sum(len(rows) * (hi - lo) for rows, lo, hi in groups) < mask.numel()  # less padding than the batch


def shared_prompt_batch(seed=2):
    """Two prompts of 20 and 14 tokens with three sampled responses each (2 to 9 tokens), their rows
    interleaved, and a row that shares nothing: as an update batch holds a step's groups."""
    from models.base import build_token_batch

    g = torch.Generator().manual_seed(seed)
    ids = lambda n: torch.randint(3, 100, (n,), generator=g).tolist()  # noqa: E731
    a, b = ids(20), ids(14)
    prompts = [a, b, a, b, a, b, ids(6)]
    responses = [ids(n) for n in (5, 2, 9, 7, 3, 4, 6)]
    tb = build_token_batch(prompts, responses, pad_id=0)
    return RolloutBatch(input_ids=tb.input_ids, attention_mask=tb.attention_mask, response_mask=tb.response_mask,
                        advantages=torch.linspace(-1, 1, 7))


def test_micro_batches_put_the_rows_of_a_prompt_together():
    from models.logprobs import common_prefix_length, real_tokens, shared_prefix_cost
    from training.ppo import micro_batches

    batch = shared_prompt_batch()
    groups = micro_batches(batch.attention_mask, 200, batch.input_ids)
    assert sorted(sorted(rows.tolist()) for rows, _, _ in groups) == [[0, 2, 4], [1, 3, 5], [6]]
    mask = batch.attention_mask.bool()
    for rows, lo, hi in groups:
        assert mask[rows][:, :lo].sum() == 0 and mask[rows][:, hi:].sum() == 0  # every real token inside
        tokens = real_tokens(batch.input_ids[rows], batch.attention_mask[rows])
        common = min((common_prefix_length(tokens[0], t) for t in tokens[1:]), default=0)
        assert len(rows) == 1 or shared_prefix_cost([len(t) for t in tokens], common)[1] <= 200
    # a budget too small for a whole group: it splits, each part still within it
    small = micro_batches(batch.attention_mask, 40, batch.input_ids)
    assert sorted(r for rows, _, _ in small for r in rows.tolist()) == list(range(7)) and len(small) > 3


def test_decoder_states_run_a_shared_prefix_once_and_equal_the_plain_forward(tiny_model_factory):
    """The rows' common prompt runs once (the first block sees it once, then each row's rest right-padded),
    and the states at the real tokens, the log-probs and the gradients equal the plain padded forward's."""
    from models.logprobs import _mask_builder, decoder_states, position_ids, shares_prefixes

    model = tiny_model_factory()
    if _mask_builder() is None:
        pytest.skip("this transformers cannot share a prefix (before 5.x): decoder_states runs the plain forward")
    assert shares_prefixes(model.get_decoder())  # a Llama-style SDPA stack, as the default model (Qwen2) is
    batch = shared_prompt_batch()
    rows = torch.tensor([0, 2, 4])  # one prompt's samples
    ids, mask = batch.input_ids[rows], batch.attention_mask[rows]
    decoder = model.get_decoder()
    seen = []
    hook = decoder.layers[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:2]))
    try:
        shared = decoder_states(decoder, ids, mask)
    finally:
        hook.remove()
    lengths = mask.sum(1)  # 25, 29, 23 real tokens; 20 of them the shared prompt
    assert [tuple(s) for s in seen] == [(1, 20), (3, int(lengths.max()) - 20)]
    plain = decoder(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask), use_cache=False).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(shared[real], plain[real], atol=1e-5, rtol=1e-5)
    assert (shared[~real] == 0).all()
    # fed states (the top blocks after a frozen bottom, whose prefix states are the same in every row), with
    # the gradients of the block's weights
    states = plain.detach()
    weight = torch.randn_like(plain)
    grads = []
    for run in (lambda: decoder_states(decoder, ids, mask, states),
                lambda: decoder(inputs_embeds=states, attention_mask=mask, position_ids=position_ids(mask),
                                use_cache=False).last_hidden_state):
        out = run()
        grads.append(torch.autograd.grad((out * weight)[real].sum(), list(decoder.layers[-1].parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)


def test_shared_prefix_bottom_then_top_blocks_equal_the_whole_model(tiny_model_factory):
    """The frozen bottom block's states and then the top block (its attention in cache slot 1, slot 0 left
    empty), both sharing each prompt's prefix by micro-batch, give the whole model's log-probs."""
    from training.policy import bottom_hidden_states, top_blocks

    model = tiny_model_factory()
    batch = shared_prompt_batch()
    P = int((batch.response_mask.sum(0) > 0).nonzero()[0])
    whole = batch_logprobs(model, batch.input_ids, batch.attention_mask, keep_from=P)
    hidden = bottom_hidden_states(model, batch, top=1, micro_batch_tokens=200)
    with top_blocks(model, 1):
        top = compute_ref_logprobs(model, replace(batch, hidden_states=hidden), micro_batch_tokens=200)
    mask = batch.response_mask.bool()
    torch.testing.assert_close(top[mask], whole[mask], atol=1e-5, rtol=1e-5)


def test_micro_batched_update_equals_the_whole_batch_update(tiny_model_factory):
    """Same loss, gradient and metrics a micro-batch at a time as over the whole minibatch at once, and the
    same reference log-probs; a frozen part stays frozen."""
    batch = ragged_batch()
    ref = compute_ref_logprobs(tiny_model_factory(), batch)
    torch.testing.assert_close(compute_ref_logprobs(tiny_model_factory(), batch, micro_batch_tokens=30), ref)
    results = []
    for micro in (0, 30):
        model = tiny_model_factory()
        b = ragged_batch()
        b.ref_logprobs = ref
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
        metrics = train_step(model, optimizer, b, PPOConfig(kl_coef=0.1, micro_batch_tokens=micro, max_grad_norm=1e9))
        results.append((snapshot(model), metrics))
    (w0, m0), (w1, m1) = results
    for key in w0:
        torch.testing.assert_close(w1[key], w0[key], atol=1e-6, rtol=1e-5)
    assert any(not torch.equal(w0[k], v) for k, v in snapshot(tiny_model_factory()).items())  # it did train
    for key in ("ppo/loss", "ppo/pg_loss", "ppo/kl_ref", "ppo/entropy", "ppo/grad_norm", "ppo/tokens"):
        assert m1[key] == pytest.approx(m0[key], rel=1e-4, abs=1e-7), key


def test_train_step_raises_the_log_prob_of_positive_advantage_responses(tiny_model_factory):
    model = tiny_model_factory()
    batch = make_batch()
    batch.advantages = torch.tensor([1.0, 1.0, 1.0, 1.0])
    mask = batch.response_mask.bool()
    before = compute_ref_logprobs(model, batch)[mask].sum()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    metrics = train_step(model, optimizer, batch, PPOConfig(kl_coef=0.0, max_grad_norm=10.0))
    after = compute_ref_logprobs(model, batch)[mask].sum()
    assert after > before
    # one on-policy step with old_logprobs None: ratio 1, nothing clipped
    assert metrics["ppo/clip_frac"] == 0.0 and metrics["ppo/approx_kl"] == 0.0


def test_on_policy_step_equals_the_policy_gradient_on_the_model(tiny_model_factory):
    model = tiny_model_factory()
    batch = make_batch()
    batch.old_logprobs = compute_ref_logprobs(model, batch)
    mask = batch.response_mask.float()
    logprobs = batch_logprobs(model, batch.input_ids, batch.attention_mask)
    loss, _ = compute_policy_loss(logprobs, batch.old_logprobs, batch.advantages, batch.response_mask, 0.2)
    grads = torch.autograd.grad(loss, [model.lm_head.weight])[0]
    logprobs = batch_logprobs(model, batch.input_ids, batch.attention_mask)
    plain = -(batch.advantages[:, None] * logprobs * mask).sum() / mask.sum()
    torch.testing.assert_close(grads, torch.autograd.grad(plain, [model.lm_head.weight])[0])


def test_nan_loss_skips_the_step_and_leaves_weights_bit_for_bit(tiny_model_factory, caplog):
    model = tiny_model_factory()
    before = snapshot(model)
    batch = make_batch()
    batch.advantages = torch.tensor([1.0, float("nan"), 0.5, -0.5])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    metrics = train_step(model, optimizer, batch, PPOConfig())
    assert metrics["ppo/skipped_steps"] == 1 and metrics["ppo/steps"] == 0
    assert "non-finite loss" in caplog.text  # caught before backward, not only by the gradient check
    assert math.isnan(metrics["ppo/loss"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert len(optimizer.state) == 0


def test_nan_gradient_skips_the_step_and_counts_it(tiny_model_factory):
    model = tiny_model_factory()
    batch = make_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    train_step(model, optimizer, batch, PPOConfig())  # a good step first, so the optimizer has state
    before = snapshot(model)
    state_before = {id(p): {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    handle = model.model.norm.weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    metrics = train_step(model, optimizer, batch, PPOConfig(ppo_epochs=3))
    handle.remove()
    assert metrics["ppo/skipped_steps"] == 3 and metrics["ppo/steps"] == 0
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for p, s in optimizer.state.items():
        assert all(torch.equal(state_before[id(p)][k], v) for k, v in s.items())
    # the next clean step trains again
    assert train_step(model, optimizer, batch, PPOConfig())["ppo/steps"] == 1


def test_train_step_bf16_autocast_on_cpu(tiny_model_factory):
    model = tiny_model_factory()
    before = snapshot(model)
    batch = make_batch()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    metrics = train_step(model, optimizer, batch, PPOConfig(precision="bf16", num_minibatches=4))
    assert metrics["ppo/steps"] == 4 and metrics["ppo/skipped_steps"] == 0
    assert math.isfinite(metrics["ppo/loss"])
    assert next(model.parameters()).dtype == torch.float32  # autocast, not a cast of the weights
    assert not torch.equal(before["lm_head.weight"], model.lm_head.weight)


def test_config_and_batch_validation():
    with pytest.raises(ValueError, match="precision"):
        PPOConfig(precision="fp16")
    with pytest.raises(ValueError, match="advantages"):
        RolloutBatch(input_ids=torch.zeros(2, 3, dtype=torch.long), attention_mask=torch.ones(2, 3),
                     response_mask=torch.ones(2, 3), advantages=torch.zeros(3))


# ---------------------------------------------------------------- the policy that sampled is the one scored
def test_log_probs_are_of_the_sampling_temperature(tiny_model_factory):
    model = tiny_model_factory()
    batch = make_batch()
    batch.temperature = 0.5
    lp = compute_ref_logprobs(model, batch)
    with torch.no_grad():
        logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    expected = logprobs_from_logits(logits[:, 3:-1] / 0.5, batch.input_ids[:, 4:])  # log softmax(logits / T)
    real = batch.attention_mask[:, 4:].bool()
    torch.testing.assert_close(lp[:, 4:][real], expected[real], atol=1e-4, rtol=1e-4)
    assert not torch.allclose(lp[:, 4:][real], logprobs_from_logits(logits[:, 3:-1], batch.input_ids[:, 4:])[real])


def test_training_forward_scores_each_sampled_token_as_the_sampler_did(tiny_generator, example_problems):
    """Sampled at T = 0.7 with top-p 1 and no top-k cut (top_k_first = the whole vocabulary): the log-prob
    the training forward gives each sampled token equals the sampler's own (`Generation.sampler_logprobs`)."""
    gen = tiny_generator
    vocab = gen.model.config.vocab_size
    samples = gen.generate_code(example_problems[:2], None, num_samples=2, temperature=0.7, top_p=1.0,
                                top_k_first=vocab, max_new_tokens=12, seed=3)
    flat = [g for group in samples for g in group]
    tb = gen.token_batch([g.prompt_ids for g in flat], [g.response_ids for g in flat])
    P = tb.prompt_width
    lp = batch_logprobs(gen.model, tb.input_ids, tb.attention_mask, temperature=0.7, keep_from=P)
    for row, g in enumerate(flat):
        assert len(g.sampler_logprobs) == len(g.response_ids) > 0
        torch.testing.assert_close(lp[row, P:P + len(g.response_ids)], torch.tensor(g.sampler_logprobs),
                                   atol=1e-4, rtol=1e-4)
    (greedy,) = gen.generate_code(example_problems[:1], None, do_sample=False, max_new_tokens=4)
    assert greedy[0].sampler_logprobs == []  # nothing sampled, nothing recorded


@pytest.mark.parametrize("epochs,minibatches", [(1, 1), (2, 2)])
def test_the_first_ppo_ratio_is_exactly_one(tiny_model_factory, monkeypatch, epochs, minibatches):
    import training.ppo as ppo

    ratios = []
    real = ppo.compute_policy_loss

    def spy(logprobs, old_logprobs, advantages, response_mask, **kw):
        ratios.append((logprobs.detach() - old_logprobs)[response_mask.bool()])
        return real(logprobs, old_logprobs, advantages, response_mask, **kw)

    monkeypatch.setattr(ppo, "compute_policy_loss", spy)
    model = tiny_model_factory()
    batch = make_batch()
    batch.temperature = 0.7
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    train_step(model, optimizer, batch, PPOConfig(kl_coef=0.0, ppo_epochs=epochs, num_minibatches=minibatches))
    assert torch.equal(ratios[0], torch.zeros_like(ratios[0]))  # log ratio exactly 0 before any step
    if epochs * minibatches == 1:  # one step: every micro-batch's ratio comes before it
        assert all(torch.equal(r, torch.zeros_like(r)) for r in ratios)
    else:
        assert any(r.abs().max() > 0 for r in ratios[1:])  # after a step the policy has moved


def test_sampler_gap_metric(tiny_model_factory):
    model = tiny_model_factory()
    batch = make_batch()
    own = compute_ref_logprobs(model, batch)
    batch.sampler_logprobs = torch.where(batch.response_mask.bool(), own + 0.25, torch.full_like(own, math.nan))
    batch.sampler_logprobs[0, -1] = math.nan  # unknown entries are left out
    metrics = train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch, PPOConfig(kl_coef=0.0))
    assert metrics["ppo/sampler_logprob_gap"] == pytest.approx(0.25, abs=1e-4)
    batch.sampler_logprobs = None
    assert math.isnan(train_step(model, torch.optim.SGD(model.parameters(), lr=0.0), batch,
                                 PPOConfig(kl_coef=0.0))["ppo/sampler_logprob_gap"])
