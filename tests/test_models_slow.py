"""The real default model end to end: load, generate code and tests, sanitize, score (marked slow)."""
import pytest
import torch

from models import LLMDiscriminator, LLMGenerator


@pytest.mark.slow
def test_default_model_generates_sanitizes_and_scores(example_problems):
    problem = next(p for p in example_problems if p.id == "reverse_words")
    generator = LLMGenerator("default", device="cpu", dtype="float32")
    model = generator.model
    assert model.config.num_hidden_layers == 24 and model.config.hidden_size == 896  # Qwen2.5-Coder-0.5B
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied (models/loading.py)
    assert 490e6 < sum(p.numel() for p in model.parameters()) < 500e6

    (codes,) = generator.generate_code([problem], None, num_samples=2, max_new_tokens=128, seed=0)
    assert any(c.ok for c in codes), [c.reason for c in codes]
    assert all(c.ok or c.reason for c in codes)

    discriminator = LLMDiscriminator((generator.model, generator.tokenizer))
    (tests,) = discriminator.generate_tests([problem], None, num_samples=2, max_new_tokens=128, seed=0)
    assert any(t.ok and t.test_names for t in tests), [t.reason for t in tests]

    logprobs, mask = generator.get_log_probs([c.prompt_ids for c in codes], [c.response_ids for c in codes])
    assert mask.sum() == sum(len(c.response_ids) for c in codes)
    assert torch.isfinite(logprobs).all() and (logprobs <= 0).all()
    # a chat model is confident about its own samples: mean log-prob well above uniform (-10.8)
    assert (logprobs.sum() / mask.sum()) > -2.0


@pytest.mark.slow
def test_installed_default_model_parts_are_the_published_file(tmp_path):
    from models.loading import GGUF_MODELS, assemble_gguf, gguf_part_paths

    model = GGUF_MODELS["default"]
    assemble_gguf(model, gguf_part_paths(model), tmp_path / "model.gguf")  # raises on any mismatch
    assert (tmp_path / "model.gguf").stat().st_size == model.size == 491_400_064
