"""Secure execution of untrusted code against untrusted pytest tests."""
import functools
import hashlib
import json
from pathlib import Path

from sandbox.executor import ExecutionResult, Sandbox, SandboxConfig

__all__ = ["ExecutionResult", "Sandbox", "SandboxConfig", "code_version", "verdict_version"]


@functools.lru_cache(maxsize=None)
def code_version() -> str:
    """A hash of the sandbox's own source files: part of the key of every cache of sandbox verdicts
    (problem validation, mutants), so that a changed sandbox decides again rather than trusting old answers."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parent.glob("*.py")):
        if path.name == "matrix.py":  # host-side analysis of results: it decides no verdict
            continue
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def verdict_version(config: SandboxConfig | None = None) -> str:
    """The key of every cache of sandbox verdicts (problem validation, mutants): `code_version` and the limits
    that can change a verdict (timeout, memory, file size, tmpfs, processes, isolation) of `config` (default:
    `SandboxConfig()`), so a run with other limits decides again."""
    config = config or SandboxConfig()
    limits = [float(config.timeout_s), int(config.memory_mb), int(config.max_file_mb), int(config.tmp_mb),
              int(config.max_processes), config.isolation]  # (the isolation as configured, e.g. "auto")
    return f"{code_version()}-{hashlib.sha256(json.dumps(limits).encode()).hexdigest()[:8]}"
