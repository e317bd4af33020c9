"""The project's cache folder and the one writer of its verdict caches.

Converted models (`models.loading`), problem-validation verdicts (`data.problems`) and mutants
(`scoring.mutation`) all live under `cache_dir()`.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

CACHE_ENV = "ADVCODE_CACHE_DIR"


def cache_dir() -> Path:
    """Where converted models and verdict caches live: `$ADVCODE_CACHE_DIR`, else
    `$XDG_CACHE_HOME/adversarial-codegen`, else `~/.cache/adversarial-codegen`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "adversarial-codegen"


def write_cache_file(path: Path, record: dict) -> None:
    """Write `record` as JSON to `path` (a file of a verdict cache under `cache_dir()`) through a temporary
    file and a rename: a reader sees the old file or the whole new one, never a torn one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record))
    os.replace(tmp, path)
