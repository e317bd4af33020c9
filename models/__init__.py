"""The Generator and Discriminator LLM wrappers, model loading and output sanitization.

    from models import LLMGenerator, LLMDiscriminator, load_model
    gen = LLMGenerator("default")            # or "tiny", a Hugging Face id, a folder, a (model, tokenizer) pair
    (codes,) = gen.generate_code([problem], chain, num_samples=4, temperature=0.8, seed=0)
"""
from models.base import CodeGeneration, Generation, TestsGeneration, TokenBatch, build_token_batch
from models.discriminator import LLMDiscriminator
from models.generator import LLMGenerator
from models.loading import load_model, resolve_device, resolve_dtype
from models.sampling import SamplingConfig, TopKFirstTopPLogitsProcessor
from models.sanitize import SanitizedCode, SanitizedTests, sanitize_code, sanitize_tests

__all__ = [
    "CodeGeneration", "Generation", "LLMDiscriminator", "LLMGenerator", "SamplingConfig", "SanitizedCode",
    "SanitizedTests", "TestsGeneration", "TokenBatch", "TopKFirstTopPLogitsProcessor", "build_token_batch",
    "load_model", "resolve_device", "resolve_dtype", "sanitize_code", "sanitize_tests",
]
