"""``shine demo``: run the Gradio demo (`peft_shine.demo.app`) locally on the shipped or an untrained hypernetwork."""

from __future__ import annotations

import argparse
import os

from peft_shine.cli.defaults import DEFAULT_BASE_MODEL, DEFAULT_HUB_REPO
from peft_shine.cli.options import add_device_options, placement_from_args
from peft_shine.errors import ConfigError


DESCRIPTION = ("Run the Gradio demo locally: paste or upload a context, generate its adapter, chat with it, compare "
               "it with the base model, download the adapter folder or push it to the Hub. The page says which "
               "hypernetwork it runs.")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``shine demo``."""
    parser = subparsers.add_parser(
        "demo", help="run the Gradio demo (context → adapter → chat, compare, download)", description=DESCRIPTION)
    parser.add_argument("--hypernetwork", default=None,
                        help="SHINE checkpoint (folder or Hub id); default: --hypernetwork-repo, else the packaged "
                             "one, else an untrained one")
    parser.add_argument("--hypernetwork-repo", default=os.environ.get("SHINE_HYPERNETWORK_REPO", DEFAULT_HUB_REPO),
                        help="Hub repo of the default hypernetwork, resolved through the Hub cache (default: "
                             "$SHINE_HYPERNETWORK_REPO or %(default)s; 'none' for the packaged copy only)")
    parser.add_argument("--base", default=DEFAULT_BASE_MODEL, help="base LM for an untrained hypernetwork")
    parser.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0 for all)")
    parser.add_argument("--port", type=int, default=7860, help="port to listen on (default: %(default)s)")
    parser.add_argument("--share", action=argparse.BooleanOptionalAction, default=False,
                        help="also open a public gradio.live link (default: off)")
    parser.add_argument("--allow-local-paths", action="store_true",
                        help="let visitors load hypernetwork folders of this server by path (off by default: the "
                             "answers tell visitors which server paths exist; never with --share)")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="greedy decoding budget per answer")
    add_device_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``shine demo``."""
    if args.share and args.allow_local_paths:
        raise ConfigError("--allow-local-paths would tell anyone with the public --share link which paths exist on "
                         "this machine; use one or the other.")
    # gradio is the optional [demo] extra, the engine loads the library: imported only when the demo runs
    from peft_shine.demo.app import build_demo, launch_options
    from peft_shine.demo.engine import DemoEngine

    hub_repo = None if args.hypernetwork_repo.lower() == "none" else args.hypernetwork_repo
    engine = DemoEngine(args.hypernetwork, base=args.base, max_new_tokens=args.max_new_tokens,
                        allow_local_paths=args.allow_local_paths, hub_repo=hub_repo,
                        base_options=placement_from_args(args).base_options())
    demo = build_demo(engine)
    print("Loading the hypernetwork and base model (first request) ...", flush=True)
    engine.hypernetwork()
    try:
        demo.launch(**launch_options(server_name=args.host, server_port=args.port, share=args.share))
    finally:
        engine.close()
    return 0
