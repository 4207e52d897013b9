"""Loading a `ShineModel`: which keyword goes where, and where the hypernetwork lives.

`ShineModel.from_pretrained` and `ShineModel.from_base_model` (both from `ShineLoadingMixin`) take two kinds of
keyword arguments:

* **base-model options** (`BASE_OPTIONS`: ``dtype``, ``device_map``, ``token``, ``cache_dir``,
  ``attn_implementation``; ``revision`` for `from_base_model`) reach `peft_shine.storage.base_models.load_base_model`, i.e.
  the frozen base LM's ``AutoModelForCausalLM.from_pretrained``;
* **hypernetwork options**: ``hypernetwork_dtype`` (default ``torch.float32``: the hypernetwork's own weights,
  memory slots, meta-LoRA and M2P, are master weights and stay fp32 whatever the base's dtype; pass
  ``torch.bfloat16`` for a bf16 hypernetwork at inference), the checkpoint-download options of `from_pretrained`
  (`CHECKPOINT_OPTIONS`) and the `ShineConfig` fields (``lora_rank=8`` for `from_base_model`; overrides of the
  saved config, e.g. ``max_context_length=2048``, for `from_pretrained`).

`Placement` (``--device``/``--dtype`` of the command line, resolved) turns a device and dtype into base-model options.

Any other name raises a `TypeError` that names it, instead of landing silently in the config. The hypernetwork is
placed on the base's *first* device (the one holding the input embeddings, where pass 1 starts); under a
``device_map`` the LoRA binding moves each layer's factors to that layer's device (`peft_shine.hypernetwork.lora_binding`).
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from peft import PeftModel
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from peft_shine.errors import ArgumentError, BaseModelMismatchError, ConfigError
from peft_shine.hypernetwork.configuration_shine import ShineConfig
from peft_shine.hypernetwork.lora_head import new_tensor_prefixes
from peft_shine.storage.base_models import load_base_model as load_base
from peft_shine.storage.base_models import progress_bars_off, renamed_argument
from peft_shine.storage.checkpoints import load_checkpoint_safely
from peft_shine.storage.cpu_features import auto_dtype


BASE_OPTIONS = ("dtype", "device_map", "token", "cache_dir", "attn_implementation")
CHECKPOINT_OPTIONS = frozenset({"revision", "token", "cache_dir", "local_files_only", "force_download", "proxies",
                                "subfolder", "use_safetensors",
                                # passed by transformers' AutoModel.from_pretrained on its way here
                                "config", "adapter_kwargs", "trust_remote_code", "code_revision", "_from_auto",
                                "_commit_hash"})
CONFIG_FIELDS = frozenset(name for name in inspect.signature(ShineConfig.__init__).parameters
                          if name not in ("self", "kwargs"))


FP32 = torch.float32
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}
SPREAD = "auto-map"


@dataclass(frozen=True)
class Placement:
    """Where and in which dtype the base LM is loaded."""

    device: str  # "cpu", "cuda", "cuda:1", "mps", or SPREAD
    dtype: torch.dtype

    def base_options(self) -> dict[str, Any]:
        """Keyword arguments for `ShineModel.from_pretrained` / `from_base_model` / `load_base_model`."""
        options: dict[str, Any] = {"dtype": self.dtype}
        if self.device == SPREAD:
            options["device_map"] = "auto"
        elif self.device != "cpu":
            options["device_map"] = self.device
        return options

    def describe(self) -> str:
        return f"{self.device}, {str(self.dtype).removeprefix('torch.')}"


def resolve_placement(device: str = "auto", dtype: str = "auto", prefer_bf16: bool = False,
                      workload: str = "inference") -> Placement:
    """Turn ``--device``/``--dtype`` into a `Placement`. ``auto`` device: CUDA when available, else CPU. ``auto``
    dtype: `cpu_features.auto_dtype` (bf16 on CUDA with bf16 support or on a CPU with fast bf16 matrix products for
    ``workload``, detected at run time), or bf16 when ``prefer_bf16`` (e.g. a training config asking for bf16), else fp32. An
    unusable device raises `ValueError` naming it."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device != SPREAD:
        try:
            parsed = torch.device(device)
        except RuntimeError as error:
            raise ConfigError(f"--device {device!r} is not a device (cpu, cuda, cuda:N, mps, {SPREAD}).") from error
        if parsed.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"--device {device}: no CUDA device is available here (use --device cpu).")
    if dtype == "auto":
        chosen = torch.bfloat16 if prefer_bf16 else auto_dtype("cuda" if device == SPREAD else device, workload)
    else:
        chosen = DTYPES[dtype]
    return Placement(device, chosen)


def split_options(kwargs: dict[str, Any], where: str, allowed: Iterable[str] = ()) -> tuple[dict, dict]:
    """Split ``kwargs`` into (base-model options, the rest). ``torch_dtype`` is the deprecated name of ``dtype``.

    Raises `TypeError` for a name that is neither a base-model option nor in ``allowed``."""
    kwargs = dict(kwargs)
    if "torch_dtype" in kwargs:
        if "dtype" in kwargs:
            raise ArgumentError(f"{where}() got both dtype= and its deprecated name torch_dtype=; pass dtype= only.")
        warnings.warn(f"{where}(torch_dtype=...) is deprecated; use dtype=...", FutureWarning, stacklevel=3)
        kwargs["dtype"] = kwargs.pop("torch_dtype")
    base = {name: kwargs.pop(name) for name in BASE_OPTIONS if name in kwargs}
    allowed = set(allowed)
    unknown = sorted(name for name in kwargs if name not in allowed)
    if unknown:
        raise ArgumentError(
            f"{where}() got unexpected keyword argument(s) {', '.join(unknown)}. Base-model options: "
            f"{', '.join(BASE_OPTIONS)}; the hypernetwork's dtype is hypernetwork_dtype=."
            + (" ShineConfig fields are accepted as overrides." if allowed >= CONFIG_FIELDS else ""))
    return base, kwargs


def first_device(base_lm: torch.nn.Module) -> torch.device:
    """The device of the base's input embeddings: where pass 1 starts (the first device of a ``device_map``)."""
    return base_lm.get_input_embeddings().weight.device


def place_hypernetwork(parameters: Sequence[torch.nn.Parameter], device: torch.device,
                       dtype: torch.dtype | None = None) -> None:
    """Move the hypernetwork's parameters to ``device`` (and ``dtype`` when given) in place."""
    for tensor in parameters:
        tensor.data = tensor.data.to(device=device, dtype=dtype or tensor.dtype)


def check_tokenizer(tokenizer: PreTrainedTokenizerBase | None, base_lm: PreTrainedModel) -> None:
    """A tokenizer whose ids do not fit the base's embedding matrix would index garbage or crash later. Reads the
    module's ``num_embeddings`` rather than the weight's shape (partitioned to nothing under DeepSpeed ZeRO-3)."""
    if tokenizer is None:
        return
    embeddings = base_lm.get_input_embeddings()
    rows = getattr(embeddings, "num_embeddings", None) or embeddings.weight.shape[0]
    if len(tokenizer) > rows:
        raise BaseModelMismatchError(
            f"The tokenizer has {len(tokenizer)} tokens but the base model's embedding matrix has {rows} rows: it "
            f"belongs to another model. Pass the tokenizer saved with {base_lm.config.name_or_path!r}."
        )


def tokenizer_for(base_model: PreTrainedModel) -> PreTrainedTokenizerBase | None:
    """Best effort: the tokenizer saved next to a base model loaded from a folder or the Hub."""
    try:
        return AutoTokenizer.from_pretrained(base_model.config.name_or_path)
    except (OSError, ValueError):
        return None


def check_plain_base(base_lm: Any) -> None:
    """The base must be the plain causal LM, not a `PeftModel` wrapping it."""
    if isinstance(base_lm, PeftModel):
        raise ArgumentError("Pass the plain causal LM, not a PeftModel (use peft_model.get_base_model()).")


class ShineLoadingMixin:
    """`from_pretrained` and `from_base_model` of `ShineModel` (see the module docstring for the keywords)."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, base_model: PreTrainedModel | None = None,
                        tokenizer: PreTrainedTokenizerBase | None = None, load_base_model: bool = True,
                        allow_pickle: bool = False, hypernetwork_dtype: torch.dtype = torch.float32, **kwargs):
        """Load a hypernetwork and attach its base LM: ``base_model`` if given, else the one named in the config
        (the embedded SmolLM2 default is resolved offline), loaded with the base-model options ``dtype``,
        ``device_map``, ``token``, ``cache_dir``, ``attn_implementation`` at the config's ``base_model_revision``
        (``revision=`` is the hypernetwork checkpoint's). The hypernetwork's weights are ``hypernetwork_dtype``
        (fp32 by default) on the base's first device.

        Only safetensors weights are read; pickle-based files (``.bin``, ``.pt``) are refused unless
        ``allow_pickle=True`` (they can run code when unpickled: only for files you trust). A truncated or
        corrupted checkpoint raises `CheckpointError` and no model is returned. `ShineConfig` fields override the
        saved config (``max_context_length=2048``), as in transformers; any other unknown keyword raises `TypeError`.
        ``bias_lora_rank=`` / ``generated_gate_init=`` turn the bias LoRA / gate on for a checkpoint saved without
        them: their tensors start where the function is unchanged (`peft_shine.hypernetwork.lora_head`).
        """
        base_options, checkpoint = split_options(kwargs, "from_pretrained", CHECKPOINT_OPTIONS | CONFIG_FIELDS)
        for shared in ("token", "cache_dir"):
            if shared in base_options:
                checkpoint[shared] = base_options[shared]
        new_tensors = ()
        if checkpoint.keys() & {"bias_lora_rank", "generated_gate_init"}:  # a feature turned on at load time
            saved = ShineConfig.from_pretrained(pretrained_model_name_or_path, **{
                k: v for k, v in checkpoint.items() if k in CHECKPOINT_OPTIONS and k not in ("config", "_from_auto")})
            requested = {name: checkpoint.get(name, getattr(saved, name))
                          for name in ("bias_lora_rank", "generated_gate_init")}
            new_tensors = new_tensor_prefixes(saved, SimpleNamespace(**requested))
        with progress_bars_off():  # a few MB of hypernetwork weights: no bar (the base's own load keeps one)
            model = load_checkpoint_safely(super().from_pretrained, pretrained_model_name_or_path, args,
                                           {**checkpoint, "dtype": hypernetwork_dtype}, allow_pickle=allow_pickle,
                                           new_tensors=new_tensors)
        if base_model is None and load_base_model:
            base_model, loaded_tokenizer = load_base(model.config.base_model_name_or_path,
                                                     revision=model.config.base_model_revision, **base_options)
            tokenizer = tokenizer or loaded_tokenizer
        if base_model is not None:
            model.attach_base_model(base_model, tokenizer or tokenizer_for(base_model),
                                    hypernetwork_dtype=hypernetwork_dtype)
        return model.eval()

    @classmethod
    def from_base_model(cls, base_model: str | PreTrainedModel | None = None,
                        tokenizer: PreTrainedTokenizerBase | None = None, target_modules: Sequence[str] | None = None,
                        revision: str | None = None, seed: int = 0, hypernetwork_dtype: torch.dtype = torch.float32,
                        **kwargs: Any):
        """A fresh (untrained) hypernetwork for any supported causal LM: a loaded model or a Hub id / path, loaded
        with the base-model options (``dtype``, ``device_map``, ``token``, ``cache_dir``, ``attn_implementation``,
        ``revision``). Other keywords must be `ShineConfig` fields (``lora_rank=8``, ...); ``hypernetwork_dtype``
        (fp32 by default) is the dtype of the hypernetwork's weights. (``base=`` is the deprecated name of
        ``base_model``.)"""
        base = renamed_argument(base_model, kwargs, "base", "base_model", "from_base_model")
        base_options, overrides = split_options(kwargs, "from_base_model", CONFIG_FIELDS)
        if isinstance(base, str):
            base, loaded_tokenizer = load_base(base, revision=revision, **base_options)
            tokenizer = tokenizer or loaded_tokenizer
        elif base_options:
            raise ArgumentError(f"from_base_model() got {', '.join(base_options)} for an already loaded base model: "
                                f"those options apply only when base_model is a Hub id or a folder.")
        config = ShineConfig.from_base_model(base, target_modules=list(target_modules or []) or None,
                                             revision=revision, **overrides)
        torch.manual_seed(seed)
        model = cls(config).attach_base_model(base, tokenizer, hypernetwork_dtype=hypernetwork_dtype)
        model.init_memory_from_embeddings(seed)
        return model.eval()
