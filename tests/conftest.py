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
