"""The real default model end to end: load, generate code and tests, sanitize, score (marked slow)."""
import pytest
import torch

from models import LLMDiscriminator, LLMGenerator


@pytest.mark.slow
def test_default_model_generates_sanitizes_and_scores(example_problems):
    problem = next(p for p in example_problems if p.id == "reverse_words")
    generator = LLMGenerator("default", device="cpu", dtype="float32")
    assert generator.model.config.num_hidden_layers == 30  # the real SmolLM2-135M, not the tiny one

    codes = generator.generate_code(problem, None, num_samples=2, max_new_tokens=128, seed=0)
    assert any(c.ok for c in codes), [c.reason for c in codes]
    assert all(c.ok or c.reason for c in codes)

    discriminator = LLMDiscriminator((generator.model, generator.tokenizer))
    tests = discriminator.generate_tests(problem, None, num_samples=2, max_new_tokens=128, seed=0)
    assert any(t.ok and t.test_names for t in tests), [t.reason for t in tests]

    logprobs, mask = generator.get_log_probs([c.prompt_ids for c in codes], [c.response_ids for c in codes])
    assert mask.sum() == sum(len(c.response_ids) for c in codes)
    assert torch.isfinite(logprobs).all() and (logprobs <= 0).all()
    # a chat model is confident about its own samples: mean log-prob well above uniform (-10.8)
    assert (logprobs.sum() / mask.sum()) > -2.0
