"""The adversarial trainer on the tiny model: schedule, freezing, logging, checkpoints and exact resume.

The tiny random model never writes code that parses, so every real reward is 0 and no update would
happen. Tests that need updates replace the two reward functions with seeded random rewards: the update,
freezing and resume machinery is what they check, not the model's skill.
"""
import importlib.util
import json

import numpy as np
import pytest
import torch

from training import rollout as rollout_module
from training.checkpoint_manager import CheckpointManager
from training.config import preset_config
from training.trainer import AdversarialTrainer, build_schedule

STAGES = ["understand", "edge_cases"]


@pytest.fixture
def random_rewards(monkeypatch):
    """Rewards drawn from NumPy's global RNG (restored on resume, so runs stay reproducible)."""
    monkeypatch.setattr(rollout_module, "generator_reward", lambda terms, config: np.random.rand(len(terms["pass_rate"])))
    monkeypatch.setattr(rollout_module, "discriminator_reward",
                        lambda terms, config: np.random.rand(len(terms["format_ok"])))


def tiny_config(**overrides):
    return preset_config("tiny", **{"stages": STAGES, **overrides})


def make_trainer(problems, sandbox, run_dir=None, manager=None, **overrides):
    return AdversarialTrainer(tiny_config(**overrides), problems[:3], sandbox=sandbox, run_dir=run_dir,
                              checkpoint_manager=manager)


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def changed(before, after):
    return [k for k in before if not torch.equal(before[k], after[k])]


def test_schedule_is_n_plus_n_plus_k_per_stage():
    schedule = build_schedule(["understand", "review"], n_steps=2, k_alternations=1)
    assert [(e.stage, e.role) for e in schedule] == [
        ("understand", "discriminator"), ("understand", "discriminator"),
        ("understand", "generator"), ("understand", "generator"),
        ("understand", "discriminator"), ("understand", "generator"),
        ("review", "discriminator"), ("review", "discriminator"),
        ("review", "generator"), ("review", "generator"),
        ("review", "discriminator"), ("review", "generator"),
    ]
    assert [e.index for e in schedule] == list(range(12))
    assert {e.phase for e in schedule[4:6]} == {"alternating"}


def test_each_role_trains_and_the_other_stays_bit_for_bit_frozen(example_problems, sandbox, random_rewards):
    trainer = make_trainer(example_problems, sandbox)
    gen, disc = trainer.generator.model, trainer.discriminator.model
    g0, d0 = weights(gen), weights(disc)

    trainer.train_generator_epoch("understand", steps=1)
    g1, d1 = weights(gen), weights(disc)
    assert changed(g0, g1), "the generator step did not change the generator"
    assert changed(d0, d1) == [], "the generator step changed the discriminator"

    trainer.train_discriminator_epoch("understand", steps=1)
    g2, d2 = weights(gen), weights(disc)
    assert changed(d1, d2), "the discriminator step did not change the discriminator"
    assert changed(g1, g2) == [], "the discriminator step changed the generator"
    # outside its own update every model is frozen
    assert not any(p.requires_grad for p in gen.parameters())
    assert not any(p.requires_grad for p in disc.parameters())
    # the references are the initial weights, untouched
    assert changed(g0, weights(trainer.references["generator"])) == []


def test_train_last_layers_leaves_the_rest_unchanged(example_problems, sandbox, random_rewards):
    trainer = make_trainer(example_problems, sandbox, train_last_layers=1)
    before = weights(trainer.generator.model)
    trainer.train_generator_epoch("understand", steps=1)
    diff = changed(before, weights(trainer.generator.model))
    assert diff and all("layers.1." in k or k == "model.norm.weight" for k in diff), diff


def test_no_signal_means_no_update(example_problems, sandbox, tmp_path):
    trainer = make_trainer(example_problems, sandbox, run_dir=tmp_path)
    before = weights(trainer.generator.model)
    metrics = trainer.train_generator_epoch("understand", steps=1)[0]
    assert metrics["ppo/no_signal_updates"] == 1 and metrics["ppo/zero_signal_groups"] == 1
    assert changed(before, weights(trainer.generator.model)) == []
    # the log stays standard JSON: a loss with no value (every optimizer step skipped) is null, not NaN
    trainer._log({"step": 1, "ppo/loss": float("nan"), "ppo/steps": 0}, [], step=1)
    rows = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in metrics.jsonl"))
            for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows[0]["ppo/no_signal_updates"] == 1 and rows[1] == {"step": 1, "ppo/loss": None, "ppo/steps": 0}


def test_metrics_and_samples_are_logged(example_problems, sandbox, random_rewards, tmp_path):
    trainer = make_trainer(example_problems, sandbox, run_dir=tmp_path)
    summary = trainer.train_full_pipeline()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == len(trainer.schedule) == 8
    assert [r["role"] for r in rows[:4]] == ["discriminator", "generator", "discriminator", "generator"]
    for key in ("generator/reward_mean", "discriminator/valid_test_rate", "sandbox/executions",
                "time/generation_s", "time/sandbox_s", "time/update_s", "ppo/loss", "ppo/kl_ref"):
        assert key in rows[1], key
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert samples and {"problem", "stage", "samples", "tests"} <= set(samples[0])
    assert set(summary["stages"]) == set(STAGES) and "generator/reward_mean" in summary["run"]
    assert json.loads((tmp_path / "config.json").read_text())["stages"] == STAGES
    assert (tmp_path / "summary.json").exists()


def test_tensorboard_gets_every_metric_under_its_key_and_the_config(example_problems, sandbox, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    trainer = make_trainer(example_problems, sandbox, run_dir=tmp_path, report_to="tensorboard", stages=["understand"])
    trainer.train_full_pipeline()
    trainer.close()
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    events = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    for key in ("generator/reward_mean", "discriminator/valid_test_rate", "time/step_s"):
        logged = [(row["step"], row[key]) for row in rows if isinstance(row.get(key), (int, float))]
        scalars = events.Scalars(key)
        assert [e.step for e in scalars] == [step for step, _ in logged], key
        assert [e.value for e in scalars] == pytest.approx([v for _, v in logged], rel=1e-5), key  # float32
    assert "stage" not in events.Tags()["scalars"] and "step" not in events.Tags()["scalars"]
    hparams = events.PluginTagToContent("hparams")
    assert hparams and b"learning_rate" in b"".join(hparams.values())  # the resolved config


def test_multi_attempt_retries_failing_codes(example_problems, sandbox):
    trainer = make_trainer(example_problems, sandbox, max_attempts=2)
    metrics = trainer.train_generator_epoch("understand", steps=1)[0]
    assert metrics["attempts/mean"] == 2.0  # the tiny model's code always fails: every sample retried


def test_multi_attempt_feedback_reaches_the_prompts_and_only_told_samples_rewrite(example_problems, sandbox,
                                                                                monkeypatch):
    trainer = make_trainer(example_problems, sandbox, max_attempts=2, num_test_samples=3)
    code_calls, test_calls = [], []
    gen_code, gen_tests = trainer.generator.generate_code, trainer.discriminator.generate_tests
    monkeypatch.setattr(trainer.generator, "generate_code",
                        lambda *a, **k: code_calls.append((a, k)) or gen_code(*a, **k))
    monkeypatch.setattr(trainer.discriminator, "generate_tests",
                        lambda *a, **k: test_calls.append((a, k)) or gen_tests(*a, **k))
    told = rollout_module.discriminator_feedback  # keep the real text, but only sample 1 is told anything
    monkeypatch.setattr(rollout_module, "discriminator_feedback",
                        lambda r: [fb if j == 1 else "" for j, fb in enumerate(told(r))])
    problems = example_problems[:1]
    rollouts, metrics = rollout_module.make_rollouts(
        trainer.generator, trainer.discriminator, trainer.sandbox, trainer.config, problems, "understand",
        trainer.chain_prefixes(problems, "understand"), [trainer.mutants_for(p) for p in problems])

    assert len(code_calls) == 2 and len(test_calls) == 2
    feedback = code_calls[1][1]["feedback"]
    assert len(feedback) == 2  # both code samples failed
    failed_code, failing = feedback[0][0]
    assert failing, "the retried code was not shown its failing tests"
    problem_tests = example_problems[0].tests
    assert all(line.split(":")[0].split(" (")[0] in problem_tests for line in failing)  # named tests it failed
    contexts = test_calls[1][0][1]
    assert len(contexts) == 1 and "Your earlier tests" in contexts[0]  # only sample 1 rewrote its tests
    assert metrics["attempts/tests_rewritten"] == 1
    mutants = len(trainer.mutants_for(example_problems[0]))  # each runs against the 3 suites
    assert metrics["sandbox/executions"] == 2 * (3 * 4 + mutants * 3)  # two attempts of (2 codes + reference) x (3 suites + own)


LORA = pytest.param(4, marks=pytest.mark.skipif(importlib.util.find_spec("peft") is None,
                                                  reason="LoRA needs peft (pip install peft)"), id="lora")


BF16_SAMPLER = pytest.param(-1, id="bf16-sampler")  # last-layer training, frozen bf16: sampling runs a bf16 copy


@pytest.mark.parametrize("lora_rank", [pytest.param(0, id="full"), BF16_SAMPLER, LORA])
def test_interrupted_and_resumed_run_ends_like_an_uninterrupted_one(example_problems, sandbox, random_rewards, tmp_path,
                                                                    lora_rank):
    options = dict(frozen_dtype="bfloat16", train_last_layers=1) if lora_rank < 0 else dict(lora_rank=lora_rank)
    options["carry_samples"] = True  # the checkpoint between the stages holds the discriminator's waiting samples

    def trainer(run):
        return make_trainer(example_problems, sandbox, run_dir=tmp_path / run, manager=CheckpointManager(tmp_path / run),
                            **options)

    straight = trainer("a")
    straight.train_full_pipeline()

    first = trainer("b")
    first.train_stage("understand")  # ends with a checkpoint; the process "dies" here
    del first
    resumed = trainer("b")
    resumed.load_checkpoint(CheckpointManager(tmp_path / "b").get_latest_checkpoint())
    assert resumed.state.position == 4
    resumed.train_full_pipeline()

    for role in ("generator", "discriminator"):
        a, b = weights(straight.wrappers[role].model), weights(resumed.wrappers[role].model)
        assert changed(a, b) == [], role

    def rows(run):
        out = []
        for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines():
            row = json.loads(line)
            out.append({k: v for k, v in row.items() if not k.startswith("time/") and k != "ppo/time_s"})
        return out

    assert rows("a") == rows("b")


def test_a_stage_run_again_gets_new_checkpoint_names_and_log_rows(example_problems, sandbox, random_rewards, tmp_path):
    manager = CheckpointManager(tmp_path, keep_last=None)
    first = make_trainer(example_problems, sandbox, run_dir=tmp_path, manager=manager)
    first.train_full_pipeline()
    names = [c.name for c in manager.list_checkpoints()]
    again = make_trainer(example_problems, sandbox, run_dir=tmp_path, manager=manager)
    again.load_checkpoint(manager.get_latest_checkpoint(), start_stage="understand")
    again.train_full_pipeline()
    after = [c.name for c in manager.list_checkpoints()]
    assert after[:len(names)] == names and len(after) == 2 * len(names) == len(set(after))  # none overwritten
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(2 * len(first.schedule)))  # one row per step taken
    assert list(again.summary()["stages"]) == ["understand", "edge_cases", "understand (run 2)", "edge_cases (run 2)"]


def test_public_phase_methods_run_and_advance_the_schedule(example_problems, sandbox, random_rewards):
    trainer = make_trainer(example_problems, sandbox)  # tiny: N = 1, K = 1 per stage
    assert [(e.phase, e.role) for e in trainer.schedule[:4]] == [
        ("discriminator", "discriminator"), ("generator", "generator"),
        ("alternating", "discriminator"), ("alternating", "generator")]
    rows = trainer.train_discriminator_epoch("understand")
    assert trainer.state.position == 1 and [r["role"] for r in rows] == ["discriminator"]
    trainer.train_generator_epoch("understand")
    rows = trainer.train_alternating(1, "understand")
    assert trainer.state.position == 4 and [r["position"] for r in rows] == [2, 3]
    rows = trainer.train_generator_epoch("understand", steps=1)  # the schedule is at edge_cases: an extra step
    assert trainer.state.position == 4 and trainer.state.global_step == 5 and rows[0]["position"] == 4
    trainer.train_stage("edge_cases")
    assert trainer.state.position == len(trainer.schedule) == 8 and trainer.state.global_step == 9


def test_incompatible_checkpoint_is_refused(example_problems, sandbox, tmp_path):
    from training.checkpoint_manager import CheckpointError

    trainer = make_trainer(example_problems, sandbox, run_dir=tmp_path, manager=CheckpointManager(tmp_path))
    trainer.state.position = 2  # understand: its discriminator step and its generator step taken
    path = trainer.save_checkpoint()
    other = make_trainer(example_problems, sandbox, train_last_layers=1)
    with pytest.raises(CheckpointError, match="incompatible checkpoint: it was trained with train_last_layers=0"):
        other.load_checkpoint(path)
    # a schedule that rewrites steps already taken: understand's second step would be a discriminator step
    with pytest.raises(CheckpointError, match="its first 2 schedule steps"):
        make_trainer(example_problems, sandbox, n_steps=3).load_checkpoint(path)
    # steps and stages added after them are fine, and so is any schedule that starts a stage again
    longer = make_trainer(example_problems, sandbox, k_alternations=3, stages=STAGES + ["review"])
    longer.load_checkpoint(path)
    assert longer.state.position == 2 and len(longer.schedule) == 24
    make_trainer(example_problems, sandbox, n_steps=3).load_checkpoint(path, start_stage="understand")


@pytest.mark.parametrize("lora_rank", [LORA])
def test_lora_reference_is_the_policy_with_adapters_off(example_problems, sandbox, random_rewards, lora_rank):
    from training.policy import reference_logprobs
    from training.ppo import RolloutBatch

    trainer = make_trainer(example_problems, sandbox, lora_rank=lora_rank)
    model = trainer.generator.model
    assert trainer.references["generator"] is None  # no second copy of the weights
    assert trainer.trainable_names["generator"] and all("lora_" in n for n in trainer.trainable_names["generator"])
    base = {k: v.clone() for k, v in weights(model).items() if "lora_" not in k}
    ids = torch.tensor([[1, 5, 9, 14, 3, 7]])
    batch = RolloutBatch(ids, torch.ones_like(ids), torch.tensor([[0, 0, 0, 1, 1, 1]]), torch.zeros(1))
    adapters = {k: v.clone() for k, v in weights(model).items() if "lora_" in k}
    before = reference_logprobs(model, None, batch, "fp32")
    trainer.train_generator_epoch("understand", steps=1)
    after_weights = weights(model)
    assert all(torch.equal(base[k], after_weights[k]) for k in base)  # only adapters were trained
    assert changed(adapters, {k: after_weights[k] for k in adapters}), "the adapters were not trained"
    assert torch.equal(before, reference_logprobs(model, None, batch, "fp32"))  # the reference did not move


def test_discriminator_is_told_it_caught_nothing_only_when_there_was_something_to_catch():
    from types import SimpleNamespace as NS

    tests = [NS(ok=False, reason="no test functions"), NS(ok=True), NS(ok=True), NS(ok=True)]
    rollout = NS(tests=tests, validity=[False, False, True, True],
                 disc_terms={"discrimination": np.array([0.0, 0.0, 0.0, 0.5])},
                 codes=[NS(ok=True), NS(ok=True)], gt_results=[NS(all_passed=True), NS(all_passed=False)])
    told = rollout_module.discriminator_feedback(rollout)
    assert "could not be used" in told[0] and "failed on a correct solution" in told[1]
    assert "caught no wrong solution" in told[2] and told[3] == ""
    rollout.gt_results = [NS(all_passed=True), NS(all_passed=True)]  # every code right: nothing to catch
    assert rollout_module.discriminator_feedback(rollout)[2] == ""


def test_zero_signal_groups_are_left_out_of_the_batch(example_problems, sandbox, monkeypatch):
    from training import trainer as trainer_module

    trainer = make_trainer(example_problems, sandbox, problems_per_step=2)
    rewards = iter([np.array([0.5, 0.5]), np.array([0.2, 0.9])])  # problem 1: no signal; problem 2: signal
    monkeypatch.setattr(rollout_module, "generator_reward", lambda terms, config: next(rewards))
    sizes, real = [], trainer_module.train_step
    monkeypatch.setattr(trainer_module, "train_step", lambda m, o, batch, c, *rest: sizes.append(len(batch)) or real(m, o, batch, c, *rest))
    metrics = trainer.train_generator_epoch("understand", steps=1)[0]
    assert metrics["ppo/zero_signal_groups"] == 1 and metrics["ppo/no_signal_updates"] == 0
    assert sizes == [2 * 2]  # only the second group: 2 samples x (stage text + code)
    assert metrics["ppo/sampler_logprob_gap"] < 1e-4  # fp32 sampling and training: the same policy


@pytest.mark.parametrize("carry", [True, False])
def test_carried_samples_join_the_other_roles_next_update(example_problems, sandbox, random_rewards, monkeypatch,
                                                          carry):
    from training import trainer as trainer_module

    trainer = make_trainer(example_problems, sandbox, problems_per_step=2, carry_samples=carry)
    batches, real = [], trainer_module.train_step
    monkeypatch.setattr(trainer_module, "train_step",
                        lambda m, o, batch, c, *rest: batches.append(batch) or real(m, o, batch, c, *rest))
    first = trainer.step("discriminator", "understand")
    waiting = trainer.state.carried.get("generator", [])
    assert first["ppo/carried_groups"] == 0 and first["ppo/groups"] == 2
    # random rewards: both generator groups have signal and wait (2 samples x stage text + code each)
    assert len(waiting) == (8 if carry else 0) and {r["group"] for r in waiting} == ({"0:0", "0:1"} if carry else set())
    second = trainer.step("generator", "understand")
    assert second["ppo/carried_groups"] == (2 if carry else 0) and second["ppo/groups"] == (4 if carry else 2)
    assert len(batches[1]) == (16 if carry else 8)
    if carry:  # the waiting rows come first: the same tokens, sampled by the weights the update trains
        first_row = batches[1].input_ids[0][batches[1].attention_mask[0].bool()].tolist()
        assert first_row == waiting[0]["prompt_ids"] + waiting[0]["response_ids"]
        assert second["ppo/sampler_logprob_gap"] < 1e-4
    assert "generator" not in trainer.state.carried  # used once
    assert len(trainer.state.carried.get("discriminator", [])) == (4 if carry else 0)  # 2 x 2 suites, no critiques


def test_dynamic_sampling_draws_uniform_groups_less_and_resumes_the_same_draws(example_problems, sandbox):
    trainer = make_trainer(example_problems, sandbox, uniform_group_weight=0.01)
    first = trainer.train_problems[0].id
    trainer.state.uniform_groups = {p.id: True for p in trainer.train_problems[1:]}
    drawn = [trainer.next_problems()[0].id for _ in range(60)]
    assert drawn.count(first) > 50  # the others all passed or all failed last time: 50x less likely each
    saved = dict(trainer.state.draw_state)
    ahead = [trainer.next_problems()[0].id for _ in range(10)]
    trainer.state.draw_state = saved
    assert [trainer.next_problems()[0].id for _ in range(10)] == ahead  # the state in checkpoints replays them
    trainer.state.uniform_groups = {}
    assert len({trainer.next_problems()[0].id for _ in range(60)}) == 3  # no history: every problem comes up


def test_generator_steps_draw_easy_problems_less_with_easy_weight_generator(example_problems, sandbox):
    import dataclasses

    trainer = make_trainer(example_problems, sandbox, easy_weight_generator=0.01)
    hard, *easy = trainer.train_problems
    trainer.train_problems = [dataclasses.replace(hard, difficulty="hard")] + [
        dataclasses.replace(p, difficulty="easy") for p in easy]
    by_generator = [trainer.next_problems("generator")[0].id for _ in range(60)]
    assert by_generator.count(hard.id) > 50  # each easy problem 100x less likely
    by_discriminator = [trainer.next_problems("discriminator")[0].id for _ in range(60)]
    assert by_discriminator.count(hard.id) < 40  # the discriminator draws every problem alike
    with pytest.raises(ValueError, match="easy_weight_generator"):
        make_trainer(example_problems, sandbox, easy_weight_generator=0)


def test_max_minutes_checkpoints_and_stops_then_resume_finishes(example_problems, sandbox, random_rewards, tmp_path):
    manager = CheckpointManager(tmp_path)
    stopped = make_trainer(example_problems, sandbox, run_dir=tmp_path, manager=manager, max_minutes=1e-9)
    stopped.train_full_pipeline()
    assert stopped.stopped_early and stopped.state.position == 1  # one step, then time was up
    assert manager.get_latest_checkpoint() is not None
    resumed = make_trainer(example_problems, sandbox, run_dir=tmp_path, manager=manager)
    resumed.load_checkpoint(manager.get_latest_checkpoint())
    resumed.train_full_pipeline()
    assert not resumed.stopped_early and resumed.state.position == len(resumed.schedule)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(len(resumed.schedule)))


def test_validation_slice_is_never_trained_on_and_chooses_the_best(example_problems, sandbox, random_rewards, tmp_path):
    manager = CheckpointManager(tmp_path)
    trainer = AdversarialTrainer(tiny_config(validation_problems=3), example_problems, sandbox=sandbox,
                                 run_dir=tmp_path, checkpoint_manager=manager)
    held = {p.id for p in trainer.validation_problems}
    assert len(held) == 3 and held.isdisjoint(p.id for p in trainer.train_problems)
    assert len(trainer.train_problems) == len(example_problems) - 3
    drawn = {p.id for _ in range(40) for p in trainer.next_problems()}
    assert drawn.isdisjoint(held)
    trainer.train_stage("understand")
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "validation/score" not in rows[0] and "validation/score" in rows[-1]  # only before a checkpoint
    info = manager.list_checkpoints()[-1]
    assert info.score == rows[-1]["validation/score"]
    from data.problems import content_hash
    from training.checkpoint_manager import load_checkpoint

    recorded = set(load_checkpoint(info.path).trainer_state["training_problems"])
    assert recorded == {content_hash(p) for p in example_problems}  # the evaluation's overlap check reads this


def test_frozen_weights_in_bf16_and_trained_ones_in_fp32(example_problems, sandbox, random_rewards):
    trainer = make_trainer(example_problems, sandbox, train_last_layers=1, frozen_dtype="bfloat16")
    model, reference = trainer.generator.model, trainer.references["generator"]
    dtypes = {n: p.dtype for n, p in model.named_parameters()}
    assert dtypes["model.embed_tokens.weight"] == torch.bfloat16 and dtypes["model.layers.0.mlp.up_proj.weight"] == torch.bfloat16
    assert dtypes["model.layers.1.mlp.up_proj.weight"] == torch.float32 and dtypes["model.norm.weight"] == torch.float32
    assert reference.model.embed_tokens.weight is model.model.embed_tokens.weight  # frozen weights are shared
    assert reference.model.layers[1].mlp.up_proj.weight is not model.model.layers[1].mlp.up_proj.weight
    before, reference_before = weights(model), weights(reference)
    metrics = trainer.train_generator_epoch("understand", steps=1)[0]
    diff = changed(before, weights(model))
    assert diff and all("layers.1." in k or k == "model.norm.weight" for k in diff), diff
    assert changed(reference_before, weights(reference)) == []  # the reference's own copies did not move
    # sampled from the bf16 generation copy, scored by the fp32/bf16 training weights: close, not identical
    assert 0 <= metrics["ppo/sampler_logprob_gap"] < 0.1
    sampler = trainer.generator.sampling_model
    assert {p.dtype for p in sampler.parameters()} == {torch.bfloat16}
    assert sampler.model.embed_tokens.weight is model.model.embed_tokens.weight  # frozen bf16 weights shared
    trained = dict(model.named_parameters())
    for name, p in sampler.named_parameters():  # synced after the update: the trained weights, rounded to bf16
        assert torch.equal(p, trained[name].to(torch.bfloat16)), name
    assert trainer.discriminator.sampling_model is not None


def test_generation_copy_follows_the_config(example_problems, sandbox):
    """fp32 frozen weights (the tiny preset) or "off": sampling runs the training weights themselves."""
    assert make_trainer(example_problems, sandbox).generator.sampling_model is None
    assert make_trainer(example_problems, sandbox, train_last_layers=1, frozen_dtype="bfloat16",
                        generation_dtype="off").generator.sampling_model is None
    full = make_trainer(example_problems, sandbox, generation_dtype="bfloat16").generator  # all weights train
    assert {p.dtype for p in full.sampling_model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in full.model.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match="generation_dtype must be"):
        tiny_config(generation_dtype="int4")


def test_int8_generation_copy_shares_quantizes_and_follows_the_updates(example_problems, sandbox, random_rewards):
    from torch.ao.nn.quantized.dynamic import Linear as Int8Linear

    trainer = make_trainer(example_problems, sandbox, train_last_layers=1, generation_dtype="int8")
    model, sampler = trainer.generator.model, trainer.generator.sampling_model
    linears = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    modules = dict(sampler.named_modules())
    assert linears and all(isinstance(modules[n], Int8Linear) for n in linears)  # the output layer too
    assert sampler.model.embed_tokens.weight is model.model.embed_tokens.weight  # the rest is shared
    assert sampler.model.layers[1].input_layernorm.weight is model.model.layers[1].input_layernorm.weight

    def int8_weights():
        return {n: dict(sampler.named_modules())[n].weight().dequantize() for n in linears}

    before = int8_weights()
    metrics = trainer.train_generator_epoch("understand", steps=1)[0]
    assert 0 <= metrics["ppo/sampler_logprob_gap"] < 0.1  # int8 sampling, fp32 scoring: close, not identical
    after, trained = int8_weights(), dict(model.named_parameters())
    moved = {n for n in linears if not torch.equal(before[n], after[n])}
    assert moved and all("layers.1." in n for n in moved), moved  # the trained block quantized again, only it
    for n in moved:  # within half a step of its channel's scale of the fp32 weights
        scale = trained[f"{n}.weight"].abs().amax(dim=1, keepdim=True) / 127
        assert ((after[n] - trained[f"{n}.weight"]).abs() <= scale / 2 + 1e-6).all(), n


def test_heldout_problems_need_the_flag(example_problems, tmp_path):
    from data.problems import load_humaneval
    from training.trainer import run_training

    with pytest.raises(ValueError, match="--allow-heldout-training"):
        tiny_config(problems="humaneval")
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([p.to_dict() for p in example_problems[:2] + load_humaneval(1)]))
    with pytest.raises(ValueError, match="HumanEval's, the held-out evaluation set"):
        run_training(tiny_config(problems=str(mixed)), tmp_path / "run")
    assert not (tmp_path / "run").exists()  # refused before anything was built or written


def test_frozen_bottom_blocks_run_once_with_the_same_log_probs(tiny_pair):
    from models.loading import build_tiny_model
    from training.policy import bottom_hidden_states, top_blocks
    from training.ppo import RolloutBatch, batch_logprobs

    model, _ = build_tiny_model(seed=3, num_layers=3, tokenizer=tiny_pair[1])
    ids = torch.tensor([[0, 0, 5, 9, 14, 3, 7, 2], [4, 8, 15, 16, 23, 42, 11, 6]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8])
    full = batch_logprobs(model, ids, mask, keep_from=4, temperature=0.7)
    batch = RolloutBatch(input_ids=ids, attention_mask=mask, response_mask=mask * (torch.arange(8) >= 4),
                         advantages=torch.zeros(2))
    hidden = bottom_hidden_states(model, batch, top=1)
    assert hidden.shape == (2, 8, model.config.hidden_size)
    # a micro-batch per row (each cut to its own columns) gives the same states at the real tokens
    alone = bottom_hidden_states(model, batch, top=1, micro_batch_tokens=1)
    torch.testing.assert_close(alone[mask.bool()], hidden[mask.bool()])
    assert (alone[0, :2] == 0).all()  # the first row's padding was cut
    with top_blocks(model, 1):
        assert len(model.model.layers) == 1
        top = batch_logprobs(model, ids, mask, keep_from=4, temperature=0.7, hidden_states=hidden)
    assert len(model.model.layers) == 3  # the whole model is back
    assert torch.equal(top, full)  # the same ops on the same inputs


def test_update_with_a_shared_frozen_bottom_equals_the_whole_model_update(example_problems, sandbox, random_rewards,
                                                                         monkeypatch):
    from training import trainer as trainer_module

    def one_step():
        trainer = make_trainer(example_problems, sandbox, train_last_layers=1)
        metrics = trainer.train_generator_epoch("understand", steps=1)[0]
        return weights(trainer.generator.model), metrics

    calls = []
    real = trainer_module.bottom_hidden_states
    monkeypatch.setattr(trainer_module, "bottom_hidden_states", lambda *a, **k: calls.append(1) or real(*a, **k))
    shared, m1 = one_step()
    assert calls == [1] and m1["ppo/steps"] == 1
    monkeypatch.setattr(trainer_module, "shares_bottom", lambda config, model: 0)  # the whole model, every forward
    whole, m2 = one_step()
    assert calls == [1] and m2["ppo/steps"] == 1
    assert changed(shared, whole) == []  # bit for bit
