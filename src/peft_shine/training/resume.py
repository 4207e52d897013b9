"""Starting from checkpoints: a stage-1 checkpoint's weights copied into a new run (``init_from``), and the newest
complete Trainer checkpoint to resume from (an interrupted write is skipped, never resumed)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from safetensors.torch import load_file

from peft_shine.errors import ConfigError, MissingFileError
from peft_shine.hypernetwork.configuration_shine import ShineConfig
from peft_shine.hypernetwork.lora_head import new_tensor_prefixes
from peft_shine.modeling_shine import BASE_PREFIX, ShineModel
from peft_shine.storage.checkpoints import check_checkpoint_folder, check_finite


logger = logging.getLogger(__name__)
_COMPATIBLE_FIELDS = ("base_fingerprint", "lora_rank", "meta_lora_rank", "num_memory_slots", "m2p_num_layers",
                      "m2p_num_heads", "m2p_ffn_dim")


def load_hypernetwork_weights(model: ShineModel, checkpoint: str | Path) -> None:
    """Copy a saved hypernetwork's weights (a `save_pretrained` or Trainer checkpoint folder) into ``model``.

    Raises:
        FileNotFoundError: if the folder has no ``model.safetensors``.
        ValueError: if the checkpoint was built for another base LM or hypernetwork size.
        CheckpointError: a stale shard index beside the file, or a tensor holding NaN/Inf (named).
    """
    folder = Path(checkpoint)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise MissingFileError(f"No model.safetensors in {folder}: pass a SHINE checkpoint folder.")
    saved = ShineConfig.from_pretrained(folder)
    differences = {name: (getattr(saved, name), getattr(model.config, name)) for name in _COMPATIBLE_FIELDS
                   if getattr(saved, name) != getattr(model.config, name)}
    if differences:
        raise ConfigError(f"{folder} does not fit this hypernetwork; (checkpoint, model) differ in {differences}.")
    check_checkpoint_folder(folder)
    state = load_file(str(weights), device="cpu")
    check_finite(state, f"The hypernetwork weights in {folder}")
    new_tensors = new_tensor_prefixes(saved, model.config)  # features the checkpoint was saved without
    result = model.load_state_dict(state, strict=not new_tensors)
    if new_tensors:
        missing = [key for key in result.missing_keys if not key.startswith(BASE_PREFIX)]
        unexpected = [key for key in missing if not key.startswith(new_tensors)] + list(result.unexpected_keys)
        if unexpected:
            raise ConfigError(f"{folder} does not fit this hypernetwork: missing or unexpected {unexpected[:4]}.")
        model.generated_head.preserve_function(missing)


CHECKPOINT_FILES = ("trainer_state.json", "config.json", "model.safetensors")


def last_complete_checkpoint(output_dir: str | Path) -> Path:
    """The newest ``checkpoint-N`` folder holding everything a resume needs. A process killed while writing a
    checkpoint leaves a newer, incomplete folder behind; it is skipped (and named in the log), never resumed from."""
    folders = sorted((p for p in Path(output_dir).glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                     key=lambda p: int(p.name.split("-")[-1]), reverse=True)
    for folder in folders:
        if all((folder / name).is_file() for name in CHECKPOINT_FILES):
            return folder
        logger.warning("Skipping incomplete checkpoint %s (interrupted while it was being written).", folder)
    raise MissingFileError(f"No complete checkpoint to resume from in {output_dir}: start without --resume.")


def evaluated_at_save(checkpoint: str | Path) -> bool:
    """Whether a Trainer checkpoint's own step was evaluated before it was saved (its ``trainer_state.json`` logs
    an evaluation loss at its ``global_step``): a resumed run then needs no evaluation on start."""
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return any("eval_loss" in entry and entry.get("step") == state.get("global_step")
               for entry in state.get("log_history", []))
