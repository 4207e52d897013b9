"""Contexts in, named peft LoRA adapters out: tokenizing and chunking contexts, the one generation pipeline (plan,
encode, reduce per context, export, add), combining LoRAs, the base's shared `PeftModel`, adapter names and saved
adapter folders. `generation.AdapterGenerationMixin` is `ShineModel`'s adapter lifecycle built on them."""


def __getattr__(name: str):
    """The names of the module this package replaced (``peft_shine.adapters``, now `generation`) keep working."""
    if name in ("AdapterGenerationMixin", "MAX_CONTEXTS_PER_CALL"):
        from peft_shine.adapters import generation  # users' old imports only: loaded on first use

        return getattr(generation, name)
    raise AttributeError(f"module 'peft_shine.adapters' has no attribute {name!r}")
