"""Secure execution of untrusted code against untrusted pytest tests."""
from sandbox.executor import ExecutionResult, Sandbox, SandboxConfig

__all__ = ["ExecutionResult", "Sandbox", "SandboxConfig"]
