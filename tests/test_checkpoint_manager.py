"""Checkpoints: round trip, best/latest/pruning, corruption detection, crash safety. Tiny models, CPU, seconds."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from training.checkpoint_manager import (
    MANIFEST, CheckpointError, CheckpointManager, capture_rng_state, load_checkpoint,
    resolve_checkpoint, restore_rng_state,
)

REPO = Path(__file__).resolve().parents[1]
INPUT_IDS = torch.arange(24).reshape(2, 12) % 128  # (B, T) fixed training batch


def tiny_model(seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4)
    return LlamaForCausalLM(config)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {f"t{i}": i for i in range(127)} | {"[UNK]": 127}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]")


def train_steps(model, optimizer, n: int) -> None:
    model.train()
    for _ in range(n):
        loss = model(input_ids=INPUT_IDS, labels=INPUT_IDS).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def state(step: int, score=None) -> dict:
    return {"stage": "understand", "phase": "generator", "step": step, "metrics": {"score": score},
            "config": {"seed": 0}}


@pytest.fixture(scope="module")
def models_pair():
    generator, discriminator = tiny_model(0), tiny_model(1)
    return generator, discriminator, torch.optim.AdamW(generator.parameters(), lr=1e-2)


def save(manager, step, models_pair, score=None):
    generator, discriminator, optimizer = models_pair
    return manager.save_checkpoint(step, generator, discriminator, optimizer, None, state(step, score), score=score)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, models_pair):
    """One pristine checkpoint; corruption tests damage copies of it."""
    return save(CheckpointManager(tmp_path_factory.mktemp("run")), 1, models_pair, score=0.5)


@pytest.fixture
def copy_of(saved, tmp_path):
    return Path(shutil.copytree(saved, tmp_path / saved.name))


def test_round_trip_weights_optimizer_rng_and_tokenizer(tmp_path):
    generator, discriminator = tiny_model(0), tiny_model(1)
    g_opt = torch.optim.AdamW(generator.parameters(), lr=1e-2)
    d_opt = torch.optim.AdamW(discriminator.parameters(), lr=1e-2)
    train_steps(generator, g_opt, 2)
    train_steps(discriminator, d_opt, 1)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    rng = capture_rng_state()
    expected_draws = (random.random(), np.random.rand(), torch.rand(3))
    path = CheckpointManager(tmp_path).save_checkpoint(
        2, generator, discriminator, g_opt, d_opt, state(2, 0.55), generator_tokenizer=tiny_tokenizer(),
        rng_state=rng)
    train_steps(generator, g_opt, 2)  # the run carries on from the saved state...

    ckpt = load_checkpoint(path)  # ...and a resumed run must do exactly the same
    assert ckpt.trainer_state == state(2, 0.55) and ckpt.step == 2 and ckpt.name == "step-000002"
    resumed = AutoModelForCausalLM.from_pretrained(ckpt.generator_dir)
    reloaded_disc = AutoModelForCausalLM.from_pretrained(ckpt.discriminator_dir)
    for a, b in zip(discriminator.state_dict().values(), reloaded_disc.state_dict().values()):
        assert torch.equal(a, b)
    resumed_opt = torch.optim.AdamW(resumed.parameters(), lr=1e-2)
    resumed_opt.load_state_dict(ckpt.optimizer_state("generator"))
    train_steps(resumed, resumed_opt, 2)
    for name, p in generator.named_parameters():
        assert torch.equal(p, resumed.get_parameter(name)), name
    assert ckpt.optimizer_state("discriminator")["state"]  # both optimizers were saved

    random.random(), np.random.rand(), torch.rand(5)  # move every generator on
    restore_rng_state(ckpt.rng_state)
    assert (random.random(), np.random.rand()) == expected_draws[:2]
    assert torch.equal(torch.rand(3), expected_draws[2])

    tokenizer = AutoTokenizer.from_pretrained(ckpt.generator_dir)
    assert tokenizer("t1 t5 zz")["input_ids"] == [1, 5, 127]


def test_optimizer_may_be_none(saved):
    ckpt = load_checkpoint(saved)
    assert ckpt.discriminator_optimizer_path is None and ckpt.optimizer_state("discriminator") is None
    assert not (saved / "discriminator_optimizer.pt").exists()
    assert ckpt.generator_optimizer_path.is_file()


def test_manifest_lists_every_file_with_sha256_and_size(saved):
    manifest = json.loads((saved / MANIFEST).read_text())
    on_disk = {p.relative_to(saved).as_posix() for p in saved.rglob("*") if p.is_file()} - {MANIFEST}
    assert set(manifest["files"]) == on_disk
    assert manifest["format_version"] == 1 and manifest["score"] == pytest.approx(0.5)
    entry = manifest["files"]["generator/model.safetensors"]
    assert entry["size"] == (saved / "generator/model.safetensors").stat().st_size and len(entry["sha256"]) == 64


def test_the_score_given_chooses_the_best_and_a_missing_or_nan_one_never_does(tmp_path, models_pair):
    manager = CheckpointManager(tmp_path, keep_last=None)
    save(manager, 1, models_pair, score=0.5)
    save(manager, 2, models_pair, score=float("nan"))
    save(manager, 3, models_pair)
    assert [c.score for c in manager.list_checkpoints()] == [0.5, None, None]
    assert manager.get_best_checkpoint().name == "step-000001"


def test_best_latest_pointers_and_pruning(tmp_path, models_pair):
    run = tmp_path / "run"
    manager = CheckpointManager(run, keep_last=2)
    assert manager.get_latest_checkpoint() is None and manager.get_best_checkpoint() is None
    save(manager, 10, models_pair, score=0.9)  # the best, then old
    save(manager, 20, models_pair, score=0.1)
    save(manager, 30, models_pair)  # no metrics: never best
    save(manager, 5, models_pair, score=0.2)  # resumed from an earlier step
    names = [c.name for c in manager.list_checkpoints()]
    assert names == ["step-000010", "step-000030", "step-000005"]  # step 20 pruned; best and latest kept
    assert manager.get_best_checkpoint().name == "step-000010"
    assert manager.get_latest_checkpoint().name == "step-000005"  # save order, not step number
    os.utime(run / "checkpoints/step-000030", (2e9, 2e9))  # a newer mtime must not matter
    assert manager.get_latest_checkpoint().name == "step-000005"
    assert json.loads((run / "checkpoints/best.json").read_text())["name"] == "step-000010"
    assert json.loads((run / "checkpoints/latest.json").read_text())["name"] == "step-000005"

    assert resolve_checkpoint(run, "best") == run / "checkpoints/step-000010"
    assert resolve_checkpoint(run / "latest") == run / "checkpoints/step-000005"
    assert resolve_checkpoint(str(run / "checkpoints/best")) == run / "checkpoints/step-000010"
    assert load_checkpoint(run / "best").step == 10
    (run / "checkpoints/latest.json").unlink()  # pointers are a shortcut: the manifests decide
    assert resolve_checkpoint(run, "latest") == run / "checkpoints/step-000005"


def test_a_run_folder_means_its_best_when_it_validated_else_its_latest(tmp_path, models_pair):
    """`run_folder="default"` (evaluation, inference): the best checkpoint of a run that scored its checkpoints
    on a validation slice; the latest (its final weights) of one that had none; and the line saying so."""
    from training.checkpoint_manager import checkpoint_choice, run_default

    run = tmp_path / "run"
    manager = CheckpointManager(run, keep_last=3)
    save(manager, 10, models_pair, score=0.9)
    save(manager, 20, models_pair, score=0.1)
    for validation, chosen in ((8, "step-000010"), (0, "step-000020")):
        (run / "config.json").write_text(json.dumps({"validation_problems": validation}))
        assert run_default(run) == ("best" if validation else "latest")
        assert resolve_checkpoint(run, run_folder="default") == run / "checkpoints" / chosen
        line = checkpoint_choice(run, run / "checkpoints" / chosen, None, "default")
        assert chosen in line and ("the best of" if validation else "the latest of") in line
    assert resolve_checkpoint(run, "best") == run / "checkpoints/step-000010"  # an explicit alias still rules


def test_pruning_with_keep_last_one_keeps_best_and_latest(tmp_path, models_pair):
    manager = CheckpointManager(tmp_path, keep_last=1)
    save(manager, 1, models_pair, score=1.0)
    for step in (2, 3, 4):
        save(manager, step, models_pair, score=0.0)
    assert [c.name for c in manager.list_checkpoints()] == ["step-000001", "step-000004"]


def test_named_checkpoint_replaces_one_of_the_same_name(tmp_path, models_pair):
    manager = CheckpointManager(tmp_path, keep_last=None)
    save(manager, 1, models_pair)
    generator, discriminator, optimizer = models_pair
    for score in (0.1, 0.3):
        manager.save_checkpoint("stage-understand", generator, discriminator, optimizer, None, state(7, score),
                                score=score)
    infos = manager.list_checkpoints()
    assert [(c.name, c.step) for c in infos] == [("step-000001", 1), ("stage-understand", 7)]
    assert load_checkpoint(infos[-1].path).trainer_state["metrics"]["score"] == 0.3 == infos[-1].score
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    with pytest.raises(ValueError, match="bad checkpoint name"):
        manager.save_checkpoint("best", generator, discriminator, optimizer, None, state(8))


def test_resolve_errors(tmp_path, saved):
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_checkpoint(tmp_path / "nowhere")
    with pytest.raises(CheckpointError, match="run folder, not a checkpoint"):
        resolve_checkpoint(saved.parent.parent)
    (tmp_path / "empty_run/checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no best checkpoint"):
        resolve_checkpoint(tmp_path / "empty_run", "best")
    with pytest.raises(CheckpointError, match="not a run folder"):
        resolve_checkpoint(tmp_path, "latest")
    with pytest.raises(CheckpointError, match="alias"):
        resolve_checkpoint(saved.parent.parent, "newest")


def flip_byte(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    file.write_bytes(bytes(data))


@pytest.mark.parametrize("damage, rel, reason", [
    (flip_byte, "generator/model.safetensors", "sha256 mismatch"),
    (lambda f: f.write_bytes(f.read_bytes()[: f.stat().st_size // 2]), "discriminator/model.safetensors",
     "truncated"),
    (Path.unlink, "discriminator/config.json", "missing"),
    (Path.unlink, "generator_optimizer.pt", "missing"),
    (flip_byte, "trainer_state.json", "sha256 mismatch"),
])
def test_damaged_file_is_named(copy_of, damage, rel, reason):
    damage(copy_of / rel)
    with pytest.raises(CheckpointError, match=rf"{rel} \({reason}"):
        load_checkpoint(copy_of)


def test_size_check_runs_without_hashing_but_bit_flip_needs_verify(copy_of):
    flip_byte(copy_of / "generator/model.safetensors")
    assert load_checkpoint(copy_of, verify=False).step == 1  # same size: only sha256 can tell
    (copy_of / "rng_state.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"rng_state.pt \(truncated or changed: 0 bytes"):
        load_checkpoint(copy_of, verify=False)


def test_broken_manifest_is_named(copy_of):
    (copy_of / MANIFEST).write_text('{"format_version": 1, "files": {')
    with pytest.raises(CheckpointError, match=r"manifest.json is damaged"):
        load_checkpoint(copy_of)


def test_manifest_missing_a_required_file_is_refused(copy_of):
    manifest = json.loads((copy_of / MANIFEST).read_text())
    del manifest["files"]["generator/model.safetensors"]
    (copy_of / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"generator/\*.safetensors \(not listed"):
        load_checkpoint(copy_of)


def test_unknown_format_version_is_refused(copy_of):
    manifest = json.loads((copy_of / MANIFEST).read_text())
    (copy_of / MANIFEST).write_text(json.dumps({**manifest, "format_version": 99}))
    with pytest.raises(CheckpointError, match="format_version 99 is not supported"):
        load_checkpoint(copy_of)


def test_non_checkpoint_folder_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a checkpoint: no manifest.json"):
        load_checkpoint(tmp_path)


def test_failed_save_leaves_previous_latest(tmp_path, models_pair, monkeypatch):
    manager = CheckpointManager(tmp_path)
    first = save(manager, 1, models_pair)
    real_save = torch.save

    def disk_full(obj, path, *args, **kwargs):
        if Path(path).name == "rng_state.pt":
            raise OSError(28, "No space left on device")
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left"):
        save(manager, 2, models_pair)
    assert [c.path for c in manager.list_checkpoints()] == [first]
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))  # cleaned up on the way out
    assert resolve_checkpoint(tmp_path, "latest") == first
    assert load_checkpoint(tmp_path / "latest").step == 1


def test_failed_rename_leaves_pointers_that_resolve_to_the_previous_checkpoint(tmp_path, models_pair, monkeypatch):
    manager = CheckpointManager(tmp_path)
    first = save(manager, 1, models_pair, score=0.1)
    real_replace = os.replace

    def failing_replace(src, dst):
        if Path(dst).name == "step-000002":
            raise OSError(5, "Input/output error")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(CheckpointError, match="Input/output"):
        save(manager, 2, models_pair, score=0.9)
    assert [c.path for c in manager.list_checkpoints()] == [first]
    assert resolve_checkpoint(tmp_path, "latest") == first
    assert resolve_checkpoint(tmp_path, "best") == first


def test_crash_right_after_the_rename_leaves_no_stale_pointer(tmp_path, models_pair, monkeypatch):
    import training.checkpoint_manager as cm

    manager = CheckpointManager(tmp_path)
    save(manager, 1, models_pair, score=0.1)
    real_fsync_dir = cm._fsync_dir

    def crash_once_published(path):
        if (tmp_path / "checkpoints/step-000002").exists():
            raise KeyboardInterrupt  # stands in for dying between the rename and anything after it
        real_fsync_dir(path)

    monkeypatch.setattr(cm, "_fsync_dir", crash_once_published)
    with pytest.raises(KeyboardInterrupt):
        save(manager, 2, models_pair, score=0.9)
    monkeypatch.undo()
    assert resolve_checkpoint(tmp_path, "latest").name == "step-000002"
    assert resolve_checkpoint(tmp_path, "best").name == "step-000002"
    assert load_checkpoint(tmp_path / "latest").step == 2


def test_killed_save_never_lists_and_is_cleaned_up(tmp_path, models_pair):
    manager = CheckpointManager(tmp_path)
    first = save(manager, 1, models_pair)
    # A child process dies by SIGKILL in the middle of writing the discriminator's weights.
    script = textwrap.dedent(f"""
        import os, signal, sys, torch
        sys.path.insert(0, {str(REPO)!r})
        from training.checkpoint_manager import CheckpointManager

        class Model:
            def __init__(self, crash):
                self.crash = crash
            def save_pretrained(self, folder):
                os.makedirs(folder)
                open(os.path.join(folder, "config.json"), "w").write("{{}}")
                with open(os.path.join(folder, "model.safetensors"), "wb") as f:
                    f.write(b"half a model")
                    f.flush()
                    if self.crash:
                        os.kill(os.getpid(), signal.SIGKILL)

        CheckpointManager({str(tmp_path)!r}).save_checkpoint(2, Model(False), Model(True), None, None, {{"step": 2}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    leftovers = list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "discriminator/model.safetensors").exists()
    assert [c.path for c in manager.list_checkpoints()] == [first]
    assert resolve_checkpoint(tmp_path, "latest") == first
    assert load_checkpoint(first).step == 1

    (tmp_path / "checkpoints" / ".best.json.4242.tmp").write_text("{")  # a pointer write cut short
    save(manager, 3, models_pair)  # the next save sweeps the leftovers away
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))
    assert [c.step for c in manager.list_checkpoints()] == [1, 3]


def test_trainer_state_must_be_json_able(tmp_path, models_pair):
    generator, discriminator, optimizer = models_pair
    with pytest.raises(TypeError, match="JSON-able"):
        CheckpointManager(tmp_path).save_checkpoint(1, generator, discriminator, optimizer, None,
                                                    {"step": 1, "bad": object()})
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_peft_model_is_saved_merged_and_with_adapters(tmp_path, monkeypatch):
    """peft is optional and not installed here: a stand-in PeftModel checks the branch's contract."""

    class PeftModel(torch.nn.Module):
        def __init__(self, base):
            super().__init__()
            self.base = base

        def save_pretrained(self, folder):
            os.makedirs(folder)
            Path(folder, "adapter_config.json").write_text("{}")
            save_file({"lora_A": torch.zeros(2, 2)}, str(Path(folder, "adapter_model.safetensors")))

        def merge_and_unload(self):
            with torch.no_grad():
                self.base.lm_head.weight.add_(1.0)  # merging changes weights: must happen on a copy
            return self.base

    monkeypatch.setitem(sys.modules, "peft", types.SimpleNamespace(PeftModel=PeftModel))
    base = tiny_model(0)
    before = base.lm_head.weight.clone()
    path = CheckpointManager(tmp_path).save_checkpoint(1, PeftModel(base), tiny_model(1), None, None, state(1))
    ckpt = load_checkpoint(path)
    assert (ckpt.generator_adapter_dir / "adapter_model.safetensors").is_file()
    assert ckpt.discriminator_adapter_dir is None
    assert torch.equal(base.lm_head.weight, before)  # the live model is untouched
    merged = AutoModelForCausalLM.from_pretrained(ckpt.generator_dir)
    assert torch.equal(merged.lm_head.weight, before + 1.0)


def test_run_folder_lock_refuses_a_second_holder_and_dies_with_its_process(tmp_path):
    from training.checkpoint_manager import RunFolderBusy, lock_run_folder

    held = lock_run_folder(tmp_path / "run")
    assert (tmp_path / "run" / ".lock").read_text().strip() == str(os.getpid())
    with pytest.raises(RunFolderBusy, match=rf"in use by another trainer \(pid {os.getpid()}\)"):
        lock_run_folder(tmp_path / "run")
    held.close()
    lock_run_folder(tmp_path / "run").close()  # free again
    # a holder killed by SIGKILL leaves no stale lock: the kernel drops it with the process
    script = (f"import os, signal, sys; sys.path.insert(0, {str(REPO)!r}); "
              f"from training.checkpoint_manager import lock_run_folder; "
              f"lock = lock_run_folder({str(tmp_path / 'run')!r}); os.kill(os.getpid(), signal.SIGKILL)")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    lock_run_folder(tmp_path / "run").close()


def test_resume_falls_back_to_the_newest_checkpoint_that_verifies(tmp_path, models_pair, caplog):
    manager = CheckpointManager(tmp_path, keep_last=None)
    assert manager.latest_verified_checkpoint() is None
    first, second = save(manager, 1, models_pair), save(manager, 2, models_pair)
    assert manager.latest_verified_checkpoint() == second
    flip_byte(second / "generator/model.safetensors")
    with caplog.at_level("WARNING"):
        assert manager.latest_verified_checkpoint() == first
    assert f"resuming from {first}" in caplog.text and f"instead of the damaged {second}" in caplog.text
    flip_byte(first / "trainer_state.json")
    with pytest.raises(CheckpointError, match=r"no checkpoint in .* verifies; the latest: .*step-000002"):
        manager.latest_verified_checkpoint()


def test_a_reader_whose_checkpoint_is_pruned_meanwhile_reads_the_new_one_once(tmp_path, caplog):
    from training.checkpoint_manager import read_resolved

    folder = tmp_path / "run" / "checkpoints"
    for name in ("step-000001", "step-000002"):
        (folder / name).mkdir(parents=True)
        (folder / name / "manifest.json").write_text("{}")
    (folder / "best.json").write_text(json.dumps({"name": "step-000001"}))
    reads = []

    def read(path):  # a trainer saves a new best and prunes the old one while the reader loads it
        reads.append(path.name)
        if path.name == "step-000001":
            (folder / "best.json").write_text(json.dumps({"name": "step-000002"}))
            shutil.rmtree(path)
            raise FileNotFoundError(path / "generator" / "model.safetensors")
        return path.name

    assert read_resolved(tmp_path / "run", None, "best", read) == "step-000002"
    assert reads == ["step-000001", "step-000002"] and "removed while it was being read" in caplog.text
    # a checkpoint folder named directly has no newer one to turn to: one line
    (folder / "step-000001").mkdir()
    (folder / "step-000001" / "manifest.json").write_text("{}")
    with pytest.raises(CheckpointError, match="step-000001 was removed while it was being read"):
        read_resolved(folder / "step-000001", None, "best", read)
    # a failure of a checkpoint that is still there is its own, not retried
    with pytest.raises(ValueError, match="damaged"):
        read_resolved(folder / "step-000002", None, "best", lambda p: (_ for _ in ()).throw(ValueError("damaged")))


def test_a_save_that_fails_midway_is_one_line_and_keeps_the_earlier_checkpoints(tmp_path, models_pair, monkeypatch):
    import training.checkpoint_manager as cm

    manager = CheckpointManager(tmp_path)
    first = save(manager, 1, models_pair)

    class SafetensorError(Exception):  # what safetensors raises on a full disk: not an OSError
        pass

    def full_disk(model, out_dir, adapter_dir):
        out_dir.mkdir(parents=True)
        (out_dir / "model.safetensors").write_bytes(b"partial")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(cm, "_save_model", full_disk)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint step-000002 .*No space left on device.*"
                                              r"earlier checkpoints are kept"):
        save(manager, 2, models_pair)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.is_dir()] == [first.name]  # no temporary
    assert resolve_checkpoint(tmp_path, "latest") == first


def test_the_choice_of_a_run_folder_is_said_with_its_step_and_reason(tmp_path, models_pair):
    from training.checkpoint_manager import checkpoint_choice

    run = tmp_path / "run"
    manager = CheckpointManager(run)
    generator, discriminator, optimizer = models_pair
    manager.save_checkpoint(10, generator, discriminator, optimizer, None,
                            {"last_metrics": {"validation/score": 0.9}}, score=0.9)
    manager.save_checkpoint(20, generator, discriminator, optimizer, None, {"last_metrics": {}}, score=0.1)
    best, latest = run / "checkpoints/step-000010", run / "checkpoints/step-000020"
    assert checkpoint_choice(run, resolve_checkpoint(run, None, "best"), None, "best") == (
        f"checkpoint {best} (step 10): the best of {run} by validation score")
    assert checkpoint_choice(run / "latest", latest) == f"checkpoint {latest} (step 20): the latest of {run}"
    assert checkpoint_choice(run, latest, "latest", "best").endswith(f": the latest of {run}")
    assert checkpoint_choice(latest, latest) == f"checkpoint {latest} (step 20)"  # given as such: no reason
    (run / "checkpoints/best.json").unlink()
    manager.save_checkpoint(30, generator, discriminator, optimizer, None, {"last_metrics": {}}, score=2.0)
    assert checkpoint_choice(run, run / "checkpoints/step-000030", None, "best").endswith(
        "the best of {} by training reward and valid-test rate (no validation slice)".format(run))


def test_the_nearest_run_folder_is_a_sibling_holding_a_config(tmp_path):
    from training.checkpoint_manager import nearest_run_folder

    for name in ("learn-1", "learn-2", "tiny"):
        (tmp_path / name).mkdir()
    (tmp_path / "learn-1" / "config.json").write_text("{}")
    (tmp_path / "tiny" / "config.json").write_text("{}")  # learn-2 holds no run: never suggested
    assert nearest_run_folder(tmp_path / "lern-2") == tmp_path / "learn-1"
    assert nearest_run_folder(tmp_path / "tyni") == tmp_path / "tiny"
    assert nearest_run_folder(tmp_path / "nowhere" / "run") is None


def test_a_busy_run_folder_says_how_to_wait_or_stop_the_holder_and_nothing_about_resuming(tmp_path):
    from training.checkpoint_manager import RunFolderBusy, lock_run_folder

    held = lock_run_folder(tmp_path)
    with pytest.raises(RunFolderBusy) as busy:
        lock_run_folder(tmp_path)
    held.close()
    assert f"(pid {os.getpid()}): wait for it to end, stop it (kill {os.getpid()})" in str(busy.value)
    assert "resume" not in str(busy.value)
