"""Contexts in, named peft LoRA adapters out: tokenizing and chunking contexts, the one generation pipeline (plan,
encode, reduce per context, export, add), combining LoRAs, the base's shared `PeftModel`, adapter names and saved
adapter folders. `generation.AdapterGenerationMixin` is `ShineModel`'s adapter lifecycle built on them."""
