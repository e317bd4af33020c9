"""Shared fixtures. Everything here runs on CPU in seconds."""
import pytest

from data.problems import EXAMPLE_PROBLEMS, load_problems
from sandbox import Sandbox, SandboxConfig


@pytest.fixture(scope="session")
def sandbox():
    """One warm sandbox (strongest isolation available) shared by the whole session."""
    with Sandbox(SandboxConfig(num_workers=2)) as sb:
        yield sb


@pytest.fixture(scope="session")
def example_problems():
    return load_problems(EXAMPLE_PROBLEMS)


@pytest.fixture(scope="session")
def tiny_pair():
    """The tiny random model and the default model's tokenizer, built once (models/loading.py)."""
    from models.loading import build_tiny_model

    return build_tiny_model(seed=0)


@pytest.fixture(scope="session")
def tiny_generator(tiny_pair):
    from models import LLMGenerator

    return LLMGenerator(tiny_pair, device="cpu")


@pytest.fixture(scope="session")
def tiny_discriminator(tiny_pair):
    from models import LLMDiscriminator

    return LLMDiscriminator(tiny_pair, device="cpu")
