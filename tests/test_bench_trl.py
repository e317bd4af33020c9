"""Smoke test of bench/bench_trl.py: this project's side and TRL's side each time a group of the tiny model."""
import importlib.util
from pathlib import Path

import pytest
import torch

from training.config import preset_config
from training.policy import trainable_names

pytest.importorskip("trl")  # an optional bench dependency: pip install --no-deps trl==1.16.0

_spec = importlib.util.spec_from_file_location("bench_trl", Path(__file__).parents[1] / "bench" / "bench_trl.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_both_sides_sample_score_and_update_a_group(sandbox, example_problems, tmp_path, monkeypatch):
    config = preset_config("tiny", problems_per_step=1, group_size=2, code_tokens=8, train_last_layers=1)
    problems = example_problems[:1]
    real = bench.pass_rates  # the tiny model's codes all fail: the second code of a group earns 1 more, so both update
    monkeypatch.setattr(bench, "pass_rates", lambda *a: [rate + i % 2 for i, rate in enumerate(real(*a))])

    mine = bench.project_side(bench.project_trainer(config, problems, sandbox), problems, repeats=1)

    trainer = bench.trl_trainer(config, problems, sandbox, str(tmp_path))
    trained = {n for n, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained == trainable_names(trainer.model, 1)  # the last block and the final norm, as the project trains
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    theirs = bench.trl_side(trainer, problems, repeats=1)
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and changed <= trained

    for t in (mine, theirs):
        assert (t.groups, t.signal) == (1, 1)
        assert 0 < t.tokens <= 2 * 8
        assert min(t.generation, t.sandbox, t.ref_logprobs, t.update) > 0
        assert t.total >= t.generation + t.sandbox + t.ref_logprobs
