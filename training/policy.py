"""What makes a loaded model trainable: which parameters train, LoRA, the frozen reference, freezing.

The reference for the KL penalty is the model's initial weights: a frozen copy of the trained parameters
that shares the frozen ones with the policy, or, with LoRA, the same module with its adapters switched off
(no second copy; `reference_logprobs` handles both).

Weights that do not train can be kept in bf16 (`frozen_dtype`) while the trained ones stay fp32: such a
mixed model runs every forward under bf16 autocast (`models.logprobs.autocast`), so sampling goes at bf16
speed (2.7–3.9× fp32 for the default model on a CPU with native bf16) and AdamW's small steps still land
on fp32 weights (in bf16, which keeps 8 significant bits, steps of 1e-6 round away).
"""
from __future__ import annotations

import contextlib
import copy
import warnings

import torch

from training.config import TrainingConfig
from models.logprobs import autocast, decoder_states
from training.ppo import RolloutBatch, compute_ref_logprobs


def freeze(model: torch.nn.Module) -> None:
    """No gradients and eval mode: the other model's steps cannot change it."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)


def unfreeze(model: torch.nn.Module, trainable: set[str] | None = None) -> None:
    """Gradients on the `trainable` parameter names (all when None). Eval mode stays on: dropout would
    make PPO's probability ratios noise (HF causal LMs keep dropout 0 anyway)."""
    model.eval()
    for name, p in model.named_parameters():
        p.requires_grad_(trainable is None or name in trainable)


def decoder_layers(model: torch.nn.Module) -> torch.nn.ModuleList | None:
    """The stack of transformer blocks of a Hugging Face causal LM (Llama, Qwen, Mistral, GPT-2 style)."""
    base = getattr(model, "get_base_model", lambda: model)()
    for path in ("model.layers", "transformer.h", "gpt_neox.layers", "model.decoder.layers"):
        node = base
        for attr in path.split("."):
            node = getattr(node, attr, None)
        if isinstance(node, torch.nn.ModuleList):
            return node
    return None


def _layer_owner(model: torch.nn.Module) -> torch.nn.Module | None:
    """The module whose `layers` attribute is the block stack (Llama/Qwen/Mistral layout), else None."""
    base = getattr(model, "get_base_model", lambda: model)()
    inner = getattr(base, "model", None)
    return inner if isinstance(getattr(inner, "layers", None), torch.nn.ModuleList) else None


@contextlib.contextmanager
def top_blocks(model: torch.nn.Module | None, count: int):
    """Within the block, `model` runs only its last `count` blocks: fed the hidden states before them as
    `inputs_embeds` (`bottom_hidden_states`), its forward equals the whole model's, op for op. A no-op for
    count 0 or no model."""
    if model is None or not count:
        yield model
        return
    owner = _layer_owner(model)
    full = owner.layers
    owner.layers = torch.nn.ModuleList(list(full)[-count:])
    try:
        yield model
    finally:
        owner.layers = full


@torch.no_grad()
def bottom_hidden_states(model: torch.nn.Module, batch: RolloutBatch, top: int, precision: str = "fp32",
                         micro_batch_tokens: int = 0) -> torch.Tensor:
    """(B, T, H) the output of every block but the last `top` on the batch's tokens, without gradients, a
    micro-batch of rows at a time (`RolloutBatch.micro_batches`, each sharing its rows' common prompt prefix:
    `models.logprobs.decoder_states`; zero at the columns a micro-batch cuts, which are padding): what
    `top_blocks` starts from.

    With the last layers trained (`train_last_layers`), the blocks below them are frozen and shared by the
    policy and its reference, so the update computes them once for the old log-probs, the reference
    log-probs and the update's forward instead of three times (a full forward of the 0.5B default model on
    a step's prompts costs ~10 s on 2 CPU cores)."""
    owner = _layer_owner(model)
    full, norm = owner.layers, owner.norm
    owner.layers, owner.norm = torch.nn.ModuleList(list(full)[:-top]), torch.nn.Identity()  # the blocks' output as it is
    out = None
    try:
        for rows, columns, mb in batch.micro_batches(micro_batch_tokens):
            with autocast(model, precision):  # the decoder alone: the output layer is not needed
                hidden = decoder_states(owner, mb.input_ids, mb.attention_mask)  # (b, t, H)
            if out is None:
                out = hidden.new_zeros(*batch.input_ids.shape, hidden.shape[-1])  # (B, T, H)
            out[rows, columns] = hidden
    finally:
        owner.layers, owner.norm = full, norm
    return out


def shares_bottom(config: TrainingConfig, model: torch.nn.Module) -> int:
    """How many top blocks an update runs when the blocks below them are frozen and computed once (0: the
    whole model runs, e.g. with LoRA, full training or an unknown layout)."""
    owner = _layer_owner(model)
    k = config.train_last_layers
    if (config.lora_rank or config.gradient_checkpointing or owner is None or not 0 < k < len(owner.layers)
            or not isinstance(getattr(owner, "norm", None), torch.nn.Module)):
        return 0
    return k


def trainable_names(model: torch.nn.Module, last_layers: int) -> set[str] | None:
    """Names of the parameters to train: the last `last_layers` blocks and the final norm (None: all).
    Training only the top of the network cuts the update's time and memory (docs/troubleshooting.md: out of memory)."""
    if last_layers <= 0:
        return None
    layers = decoder_layers(model)
    if layers is None:
        raise ValueError("train_last_layers needs a model with a known layer stack; use train_last_layers=0")
    keep = {id(p) for layer in list(layers)[-last_layers:] for p in layer.parameters()}
    final_norm = {n for n, _ in model.named_parameters() if n.endswith(("norm.weight", "ln_f.weight", "ln_f.bias"))
                  and ".layers." not in n and ".h." not in n}
    return {n for n, p in model.named_parameters() if id(p) in keep} | final_norm


def is_lora(model: torch.nn.Module) -> bool:
    return hasattr(model, "disable_adapter") and hasattr(model, "peft_config")


def prepare_policy(model: torch.nn.Module, config: TrainingConfig,
                   frozen_dtype: torch.dtype | None = None) -> tuple[torch.nn.Module, torch.nn.Module | None]:
    """Make `model` trainable as `config` says; returns (policy, reference). The reference is None with
    LoRA (adapters off serve) and when kl_coef is 0, else a frozen copy of the initial weights whose
    untrained parameters are the policy's own (shared, not copied). `frozen_dtype`: cast the parameters
    that do not train, and the reference's copies, to this dtype (None: leave them)."""
    if config.gradient_checkpointing and hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    if config.lora_rank > 0:
        try:  # peft is imported only here
            from peft import LoraConfig, get_peft_model
        except ImportError:
            raise ImportError("lora_rank > 0 needs peft: pip install peft") from None
        model = get_peft_model(model, LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, lora_dropout=0.0,
                                                 target_modules=config.lora_targets, task_type="CAUSAL_LM"))
        names = {n for n, _ in model.named_parameters() if "lora_" in n}
    else:
        names = trainable_names(model, config.train_last_layers)
    _cast_frozen(model, names, frozen_dtype)
    # the reference copies what trains; with LoRA the model with its adapters off serves
    reference = frozen_copy(model, names, frozen_dtype) if config.ppo.kl_coef > 0 and not config.lora_rank else None
    unfreeze(model, names)
    return model, reference


def _cast_frozen(model: torch.nn.Module, trained: set[str] | None, dtype: torch.dtype | None) -> None:
    """Cast the parameters not in `trained` (None: all train) to `dtype`. A tied embedding and output layer
    stay one tensor."""
    if dtype is None or trained is None:
        return
    for name, p in model.named_parameters():
        if name not in trained and p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)


def generation_dtype(config: TrainingConfig, trained: torch.dtype, frozen: torch.dtype) -> torch.dtype | None:
    """The dtype of the weights sampling runs, None for the training weights themselves (`frozen_copy`).
    "auto": the frozen weights' dtype when that is lower than the trained one (bf16 frozen weights: a GPU or
    a CPU with native bf16, `frozen_dtype` "auto"), else None; never with LoRA."""
    from models.loading import resolve_dtype

    if config.generation_dtype == "off" or config.lora_rank:
        return None
    if config.generation_dtype == "auto":
        low = frozen in (torch.bfloat16, torch.float16) and trained == torch.float32
        return frozen if low else None
    if config.generation_dtype == "int8":
        return torch.qint8
    dtype = resolve_dtype(config.generation_dtype, torch.device("cpu"))
    return None if dtype == trained else dtype


def generation_copy(model: torch.nn.Module, trained: set[str] | None, dtype: torch.dtype) -> torch.nn.Module:
    """The copy sampling runs (`LLMBase.sampling_model`): `frozen_copy` in `dtype`, or for `torch.qint8` one
    whose linear layers hold int8 weights with a scale per output channel and quantize their inputs on the fly
    (torch.ao dynamic quantization: fbgemm / oneDNN int8 kernels, CPU only), every other parameter (embeddings,
    norms) shared with `model`. Decoding reads a quarter of fp32's weight bytes and multiplies in int8: for a
    CPU without native bf16, where the other copies gain nothing (docs/training.md 'Rollout speed')."""
    if dtype != torch.qint8:
        return frozen_copy(model, trained, dtype)
    if next(model.parameters()).device.type != "cpu":
        raise ValueError("generation_dtype 'int8' runs on CPU only (torch's dynamic quantization)")
    # every parameter shared (and left trainable: they are the model's), the linear layers replaced below
    out = copy.deepcopy(model, memo={id(p): p for p in model.parameters()})
    for name, module in list(out.named_modules()):
        if type(module) is torch.nn.Linear:
            _replace(out, name, _int8_linear(module))
    return out


def _int8_linear(linear: torch.nn.Linear) -> torch.nn.Module:
    """`linear` as a dynamically quantized int8 linear layer (weights per output channel), built from a copy."""
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as e:  # a torch without it
        raise ValueError(f"generation_dtype 'int8' needs torch.ao's dynamic quantization, which this torch lacks ({e}); "
                         "use 'auto' or 'off'") from None
    with warnings.catch_warnings():  # torch 2.13 announces the quantized tensor functions' removal at every call
        warnings.simplefilter("ignore", UserWarning)
        return quantize_dynamic(torch.nn.Sequential(linear), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                dtype=torch.qint8)[0]


def _replace(model: torch.nn.Module, name: str, module: torch.nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def frozen_copy(model: torch.nn.Module, trained: set[str] | None, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A frozen copy of `model` that shares the parameters outside `trained` (None: all train, nothing is
    shared) and copies the rest, cast to `dtype` (None: as they are); a shared parameter must already have
    `dtype`. Two uses: the KL reference (`prepare_policy`: the initial trained weights) and the generation
    copy sampling runs (`LLMBase.sampling_model`, in bf16; with `train_last_layers` only the trained blocks
    are copied: ~60 M parameters of the default model's 494 M), which `sync_generation_copy` brings up to
    date after each update.

    Why a generation copy: the training weights decode at fp32 speed where they are all fp32 (3.1-3.4x slower
    than bf16 here, docs/training.md 'Rollout speed'), and a mixed model (frozen bf16, trained fp32) runs under autocast,
    which casts the trained weights again at every decoded token (measured here: about as fast as the copy,
    since they are an eighth of the weights). The PPO old log-probs still come from the training weights, so
    the sampler's rounding is only the small gap `ppo/sampler_logprob_gap` measures (docs/how-it-works.md)."""
    shared = {id(p): p for n, p in model.named_parameters()
              if trained is not None and n not in trained and dtype in (None, p.dtype)}
    out = copy.deepcopy(model, memo=dict(shared))
    if dtype is not None:
        for p in out.parameters():
            if id(p) not in shared and p.is_floating_point():
                p.data = p.data.to(dtype)
    freeze(out)
    return out


@torch.no_grad()
def sync_generation_copy(sampler: torch.nn.Module, model: torch.nn.Module, trained: set[str] | None) -> None:
    """Copy `model`'s `trained` parameters (None: all) into its generation copy (`generation_copy`), cast to the
    copy's dtype; an int8 copy's trained linear layers are quantized again."""
    params = dict(sampler.named_parameters())
    for name, p in model.named_parameters():
        if (trained is None or name in trained) and name in params and params[name] is not p:
            params[name].copy_(p)
    try:
        from torch.ao.nn.quantized.dynamic import Linear as Int8Linear
    except ImportError:  # a torch without dynamic quantization: no int8 copy can exist
        return
    quantized = {name for name, m in sampler.named_modules() if isinstance(m, Int8Linear)}
    for name, module in model.named_modules():  # an int8 copy: the trained linear layers quantized again
        if name in quantized and any(trained is None or f"{name}.{p}" in trained for p, _ in module.named_parameters()):
            _replace(sampler, name, _int8_linear(module))


def make_optimizer(model: torch.nn.Module, config: TrainingConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(params, lr=config.ppo.learning_rate, weight_decay=config.ppo.weight_decay)


def reference_logprobs(
    policy: torch.nn.Module, reference: torch.nn.Module | None, batch: RolloutBatch, precision: str,
    micro_batch_tokens: int = 0,
) -> torch.Tensor | None:
    """(B, T) log-probs of the frozen reference: the copy, or the LoRA policy with adapters off."""
    if reference is not None:
        return compute_ref_logprobs(reference, batch, precision, micro_batch_tokens)
    if is_lora(policy):
        with policy.disable_adapter():
            return compute_ref_logprobs(policy, batch, precision, micro_batch_tokens)
    return None


@contextlib.contextmanager
def trainable(model: torch.nn.Module, names: set[str] | None):
    """Gradients on for the duration of one update, frozen again after."""
    unfreeze(model, names)
    try:
        yield model
    finally:
        freeze(model)
