"""A run's `metrics.jsonl`: reading it (`load_metrics`) and its means per stage and for the whole run
(`summarize_metrics`). Used by the trainer (the stage and run summaries), `evaluation.plot` and the notebook.

`metrics.jsonl` holds one JSON object per line: namespaced metrics (`generator/reward_mean`, `ppo/kl_ref`,
...) plus the bookkeeping fields `step` (int), `position` (schedule position), `stage` (reasoning stage
name), `phase` and `role` (which model was updated).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

METRICS_FILE = "metrics.jsonl"
BOOKKEEPING = ("step", "position", "stage", "phase", "role")  # per-row fields that are not metrics


class MetricsFileError(ValueError):
    """A metrics file is missing, empty or malformed. The message is one line naming the file."""


def metrics_path(path: str | Path) -> Path:
    """`path` itself, or `path/metrics.jsonl` when `path` is a run folder."""
    path = Path(path)
    return path / METRICS_FILE if path.is_dir() else path


def load_metrics(path: str | Path) -> list[dict]:
    """The rows of a `metrics.jsonl` (a file or a run folder holding one), blank lines skipped.
    Raises `MetricsFileError` for a missing or unreadable file, a line that is not a JSON object, or no rows."""
    path = metrics_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise MetricsFileError(f"{path}: no such metrics file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise MetricsFileError(f"{path}: cannot read the metrics file: {getattr(e, 'strerror', None) or e}") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise MetricsFileError(f"{path}: line {number} is not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise MetricsFileError(f"{path}: line {number} is not a JSON object")
        rows.append(row)
    if not rows:
        raise MetricsFileError(f"{path}: the metrics file holds no rows")
    return rows


def number(value) -> float | None:
    """`value` as a float when it is a finite int or float (bools are not metrics), else None."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _means(rows: Sequence[dict]) -> dict[str, float]:
    sums: dict[str, list[float]] = {}
    for row in rows:
        for key, value in row.items():
            if key not in BOOKKEEPING and number(value) is not None:
                sums.setdefault(key, []).append(float(value))
    return {key: sum(values) / len(values) for key, values in sorted(sums.items())}


def summarize_metrics(rows: Sequence[dict]) -> dict:
    """Mean of every numeric metric over the whole run and over each stage:

        {"run": {key: mean}, "stages": {stage: {key: mean}}}

    A mean is over the rows that have the key with a finite number (bools, strings and NaN are skipped;
    the bookkeeping fields step/position/stage/role are not metrics). Stages appear in the order the run
    reached them; rows without a stage count in "run" only. A stage run again (`--resume --start-stage`:
    the rows return to a stage after another, or their schedule `position` goes back) is its own entry,
    "<stage> (run 2)", so two runs of a stage are never averaged together."""
    by_stage: dict[str, list[dict]] = {}
    runs: dict[str, int] = {}
    current, last_position = None, None
    for row in rows:
        stage, position = row.get("stage"), row.get("position")
        if not isinstance(stage, str):
            continue
        went_back = isinstance(position, int) and isinstance(last_position, int) and position < last_position
        if stage != current or went_back:
            runs[stage] = runs.get(stage, 0) + 1
            current = stage
        last_position = position
        label = stage if runs[stage] == 1 else f"{stage} (run {runs[stage]})"
        by_stage.setdefault(label, []).append(row)
    return {"run": _means(rows), "stages": {stage: _means(stage_rows) for stage, stage_rows in by_stage.items()}}
