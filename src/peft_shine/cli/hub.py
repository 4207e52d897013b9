"""``shine push`` (hypernetworks, generated adapters, the demo Space), ``shine pull`` and ``shine card``: sharing on
the Hugging Face Hub. The token comes from ``HF_TOKEN`` or ``hf auth login`` (there is deliberately no ``--token``
flag: command lines end up in shell histories and process lists)."""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path
from typing import Any

from peft_shine.errors import ConfigError, MissingFileError


PUSH_DESCRIPTION = """Upload a hypernetwork folder, a generated adapter folder or the demo Space to the Hugging Face
Hub, with a model card. The token comes from HF_TOKEN or 'hf auth login' (there is deliberately no --token flag:
command lines end up in shell histories and process lists)."""
PUSH_EPILOG = """examples:
  shine push hypernetwork runs/stage2 user/shine-smollm2 --private --card card.yaml
  shine push adapter my-adapter user/my-adapter --hypernetwork-repo user/shine-smollm2 --context-file notes.txt
  shine push space user/shine-demo     (the demo/ folder + a wheel of this checkout)"""
PULL_DESCRIPTION = ("Download a hypernetwork or adapter repo from the Hub into a local folder, checking what it "
                    "holds, and print how to load it.")
CARD_DESCRIPTION = ("Write the model card (README.md) of a local hypernetwork folder from its config, a JSON or "
                    "YAML file of card fields and, optionally, a 'shine eval' results.json.")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``push`` (with ``hypernetwork`` / ``adapter``), ``card`` and ``pull`` subcommands."""
    push = subparsers.add_parser("push", help="upload a hypernetwork or a generated adapter folder to the Hub",
                                 description=PUSH_DESCRIPTION, epilog=PUSH_EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    kinds = push.add_subparsers(dest="kind", required=True, metavar="KIND")
    hypernetwork = kinds.add_parser("hypernetwork", help="a hypernetwork folder (save_pretrained output)",
                                    description="Upload a hypernetwork folder (save_pretrained output) with its card.")
    _common_push_arguments(hypernetwork)
    hypernetwork.add_argument("--card", default=None,
                              help="JSON or YAML file of model card fields: license, datasets, tags, training, "
                                   "eval_results")
    hypernetwork.set_defaults(func=run_push_hypernetwork)

    adapter = kinds.add_parser("adapter", help="a generated adapter folder (save_adapter output)",
                               description="Upload a generated adapter folder with a card citing its hypernetwork.")
    _common_push_arguments(adapter)
    adapter.add_argument("--hypernetwork-repo", required=True, help="Hub repo of the hypernetwork that generated it")
    adapter.add_argument("--hypernetwork-revision", default=None, help="its commit sha (or branch / tag)")
    adapter.add_argument("--context-sha256", default=None, help="SHA-256 of the context (recorded in the card)")
    adapter.add_argument("--context-file", default=None,
                         help="the context text file: its SHA-256 goes in the card (the text only with "
                              "--include-context)")
    adapter.add_argument("--include-context", action="store_true", help="publish the context text in the card")
    adapter.add_argument("--generation-seconds", type=float, default=None, help="adapter generation time")
    adapter.add_argument("--base-model", default=None,
                         help="base model Hub id for the card (default: adapter_config.json's base_model_name_or_path)")
    adapter.set_defaults(func=run_push_adapter)

    space = kinds.add_parser("space", help="the demo as a Space: the demo/ folder plus a wheel of this checkout",
                             description="Upload the demo as a Space: the demo/ folder plus a wheel of this checkout.")
    space.add_argument("repo_id", help="Space repo id (user/name); created when missing")
    space.add_argument("--folder", default="demo", help="the Space folder (default: demo)")
    space.add_argument("--private", action="store_true", help="create the Space as private")
    space.add_argument("--message", default=None, help="commit message")
    space.set_defaults(func=run_push_space)

    card = subparsers.add_parser("card", help="write the model card (README.md) of a local hypernetwork folder",
                                 description=CARD_DESCRIPTION)
    card.add_argument("folder", help="hypernetwork folder (save_pretrained output); README.md is written there")
    card.add_argument("--repo-id", default=None, help="the name the card uses (default: the folder name)")
    card.add_argument("--card", default=None, help="JSON or YAML file of card fields (as for push hypernetwork)")
    card.add_argument("--eval-results", default=None, help="a results.json of 'shine eval' to report in the card")
    card.add_argument("--eval-dataset", default="SQuAD v1.1", help="dataset label of --eval-results")
    card.add_argument("--eval-dataset-id", default="rajpurkar/squad", help="Hub dataset id of --eval-results")
    card.set_defaults(func=run_card)

    pull = subparsers.add_parser("pull", help="download a hypernetwork or adapter repo into a local folder",
                                 description=PULL_DESCRIPTION)
    pull.add_argument("repo_id", help="Hub repo id (user/name)")
    pull.add_argument("--revision", default=None, help="branch, tag or commit sha (default: main)")
    pull.add_argument("--output", default=None, help="local folder (default: ./<repo name>)")
    pull.add_argument("--overwrite", "--force", dest="overwrite", action="store_true",
                      help="download into a non-empty output folder: a previous download is replaced; in any other "
                           "folder only the downloaded files are written and the rest is kept")
    pull.set_defaults(func=run_pull)


def _common_push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="local folder to upload (read only)")
    parser.add_argument("repo_id", help="Hub repo id (user/name); created when missing")
    parser.add_argument("--private", action="store_true", help="create the repo as private")
    parser.add_argument("--revision", default=None, help="branch to push to (created from main when missing)")
    parser.add_argument("--message", default=None, help="commit message")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing")


def _push_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"private": args.private or None, "revision": args.revision, "commit_message": args.message,
            "create_pr": args.create_pr}


def run_push_hypernetwork(args: argparse.Namespace) -> int:
    """``shine push hypernetwork FOLDER REPO_ID``."""
    # the Hub client and the library: loaded when the command runs, not to parse it
    from peft_shine.hub import push_hypernetwork_folder
    from peft_shine.storage.io_utils import read_mapping

    info = push_hypernetwork_folder(args.folder, args.repo_id, model_card_fields=read_mapping(args.card),
                                    **_push_options(args))
    _report_push(info)
    return 0


def run_card(args: argparse.Namespace) -> int:
    """``shine card FOLDER [--card fields.yaml] [--eval-results results.json]``: render README.md in place."""
    # the card renderer and the library: loaded when the command runs, not to parse it
    from peft_shine.hub.cards import eval_rows, hypernetwork_card_fields, render_hypernetwork_card
    from peft_shine.storage.io_utils import atomic_write_text, read_mapping

    folder = Path(args.folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MissingFileError(f"{config_path} is missing; pass a hypernetwork folder written by save_pretrained")
    fields = hypernetwork_card_fields(read_mapping(config_path), read_mapping(args.card))
    if args.eval_results:
        results = read_mapping(args.eval_results)
        fields["eval_results"] = eval_rows(results, args.eval_dataset, dataset_id=args.eval_dataset_id)
    card = render_hypernetwork_card(repo_id=args.repo_id or folder.resolve().name, **fields)
    atomic_write_text(folder / "README.md", str(card))
    print(f"Wrote {folder / 'README.md'}")
    return 0


def run_push_adapter(args: argparse.Namespace) -> int:
    """``shine push adapter FOLDER REPO_ID --hypernetwork-repo ID``."""
    from peft_shine.hub import push_adapter_folder  # the Hub client: loaded when the command runs

    context = Path(args.context_file).read_text(encoding="utf-8") if args.context_file else None
    if args.include_context and context is None:
        raise ConfigError("--include-context needs --context-file.")
    digest = args.context_sha256 or (hashlib.sha256(context.encode("utf-8")).hexdigest() if context else None)
    fields = {"context_sha256": digest, "generation_seconds": args.generation_seconds}
    if args.base_model:
        fields["base_model"] = args.base_model
    info = push_adapter_folder(args.folder, args.repo_id, hypernetwork_repo=args.hypernetwork_repo,
                               hypernetwork_revision=args.hypernetwork_revision,
                               context=context if args.include_context else None,
                               include_context=args.include_context, model_card_fields=fields,
                               **_push_options(args))
    _report_push(info)
    return 0


def _report_push(info: Any) -> None:
    print(f"Pushed {info.repo_url.repo_id}: commit {info.oid}")
    print(info.pr_url or info.commit_url)


def run_pull(args: argparse.Namespace) -> int:
    """``shine pull REPO_ID [--revision R] [--output DIR]``."""
    from peft_shine.hub import download  # the Hub client and the library: loaded when the command runs

    try:
        path, kind, origin = download(args.repo_id, args.output, revision=args.revision, overwrite=args.overwrite)
    except FileExistsError as error:
        print(f"shine pull: error: {error}", file=sys.stderr)
        return 2
    print(f"Downloaded {kind} {origin.repo_id} at {origin.revision} (commit {origin.commit}) to {path}/")
    if kind == "hypernetwork":
        print(f"Load it with: AutoShineModel.from_pretrained({str(path)!r})")
    elif kind == "adapter":
        print(f"Load it with: PeftModel.from_pretrained(base_model, {str(path)!r})")
    return 0


def run_push_space(args: argparse.Namespace) -> int:
    """``shine push space REPO_ID``."""
    from peft_shine.hub.space import push_space  # the Hub client: loaded when the command runs

    info = push_space(args.folder, args.repo_id, private=args.private or None, commit_message=args.message)
    print(f"Pushed the Space {args.repo_id}: {info.commit_url}")
    return 0
