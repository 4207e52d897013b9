"""The hypernetwork's mechanism: `ShineConfig` and its bounds, the base's layout and the zero-copy slicing of the
parameter grid, the M2P transformer, the LoRA binding hooks and the answer-pass losses. Nothing here knows about
peft adapters; `peft_shine.modeling_shine.ShineModel` assembles these parts."""
