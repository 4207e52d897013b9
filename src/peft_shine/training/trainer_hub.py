"""`ShineTrainer`'s saving and Hub conventions: a hypernetwork repo that looks like one pushed with `push_to_hub`.

`Trainer` would write ``training_args.bin`` (a pickle) into every save and checkpoint, render its generic card
(``library_name: transformers``, no base model) and upload the whole output folder (tokenizer files included). Here:

* every save, checkpoints included, writes ``training_args.json`` instead of the pickle (resuming never reads it;
  the optimizer and RNG states that Trainer keeps in checkpoints stay local and are never pushed);
* `create_model_card` writes the SHINE hypernetwork card (the renderer of ``shine push`` / ``push_to_hub``);
* `push_to_hub` and the checkpoint pushes of ``hub_strategy`` upload only ``config.json``, the safetensors weights and
  that card, in one atomic commit through `peft_shine.hub.push_hypernetwork_folder`.
"""

from __future__ import annotations

import functools
import json
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from huggingface_hub import CommitInfo

from peft_shine.hub.cards import hypernetwork_card_fields, render_hypernetwork_card
from peft_shine.hub.push import push_hypernetwork_folder
from peft_shine.storage.io_utils import atomic_write_text


PICKLED_ARGS = "training_args.bin"
JSON_ARGS = "training_args.json"


class ShineHubMixin:
    """Saving without pickles and pushing SHINE repos, for a `transformers.Trainer` subclass."""

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        self._replace_pickled_args(Path(output_dir if output_dir is not None else self.args.output_dir))

    def _replace_pickled_args(self, folder: Path) -> None:
        if not self.args.should_save or not folder.is_dir():
            return
        (folder / PICKLED_ARGS).unlink(missing_ok=True)
        atomic_write_text(folder / JSON_ARGS, self.args.to_json_string())

    def model_card_fields(self, **overrides: Any) -> dict[str, Any]:
        """The card fields of this run: the base model and shapes from the config, the training stage and steps."""
        stage = {"name": self.args.stage, "steps": self.state.global_step}
        fields: dict[str, Any] = {"training": {"stages": [stage], "steps": self.state.global_step}}
        for key in ("license", "datasets", "tags"):
            if overrides.get(key) is not None:
                fields[key] = [overrides[key]] if key != "license" and isinstance(overrides[key], str) else overrides[key]
        return hypernetwork_card_fields(self.model.config.to_dict(), fields)

    def create_model_card(self, model_name: str | None = None, **kwargs: Any) -> None:
        """Write the SHINE hypernetwork card (``README.md``) into the output folder (``kwargs``: license, tags,
        datasets; other Trainer card arguments are accepted and ignored)."""
        if not self.is_world_process_zero():
            return
        repo_id = self.hub_model_id or self.args.hub_model_id or model_name or Path(self.args.output_dir).name
        card = render_hypernetwork_card(repo_id=repo_id, **self.model_card_fields(**kwargs))
        atomic_write_text(Path(self.args.output_dir) / "README.md", str(card))

    def push_to_hub(self, commit_message: str | None = "End of training", blocking: bool = True,
                    token: str | None = None, revision: str | None = None, private: bool | None = None,
                    **kwargs: Any) -> CommitInfo | Future | None:
        """Save the final hypernetwork and push it as a SHINE repo: ``config.json`` + safetensors + the SHINE card,
        one atomic commit, never a pickle or tokenizer files. Returns the `CommitInfo`; with ``blocking=False`` the
        upload runs in a background thread after the save and a `concurrent.futures.Future` of it is returned."""
        token = token if token is not None else self.args.hub_token
        if self.hub_model_id is None:
            self.init_hf_repo(token=token, private=private)
        self.save_model(_internal_call=True)
        if not self.is_world_process_zero():
            return None
        push = functools.partial(push_hypernetwork_folder, self.args.output_dir, self.hub_model_id,
                                 model_card_fields=self.model_card_fields(**kwargs), commit_message=commit_message,
                                 token=token, revision=revision or self.args.hub_revision, private=private)
        if blocking:
            return push()
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="shine-push")
        future = executor.submit(push)
        executor.shutdown(wait=False)  # the thread finishes the upload; the caller holds the future
        return future


    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        """``hub_strategy`` pushes during training: the checkpoint's hypernetwork files only, with the SHINE card."""
        if not self.is_world_process_zero() or self.args.hub_strategy == "end":
            return
        state = json.loads((Path(checkpoint_folder) / "trainer_state.json").read_text(encoding="utf-8"))
        push_hypernetwork_folder(checkpoint_folder, self.hub_model_id, model_card_fields=self.model_card_fields(),
                                 commit_message=f"Training in progress, step {state.get('global_step')}",
                                 token=self.args.hub_token, revision=self.args.hub_revision)
