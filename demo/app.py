"""Hugging Face Space entry point of the SHINE demo; the app itself is `peft_shine.demo.app` (installed package).

Locally: ``shine demo`` (or ``python demo/app.py``). Environment: ``SHINE_HYPERNETWORK_REPO`` names the Hub repo of
the default hypernetwork (default: peft-shine/shine-smollm2-135m-instruct, resolved through the Hub cache; if it
cannot be loaded, the copy packaged in the peft-shine wheel, else an untrained one with a banner),
``SHINE_HYPERNETWORK`` overrides it with any checkpoint, ``SHINE_MAX_NEW_TOKENS`` sets the answer length.
"""

import os

from peft_shine.demo.app import build_demo, launch_options
from peft_shine.shipped import DEFAULT_HUB_REPO


demo = build_demo(hypernetwork=os.environ.get("SHINE_HYPERNETWORK") or None,
                  hub_repo=os.environ.get("SHINE_HYPERNETWORK_REPO", DEFAULT_HUB_REPO) or None,
                  max_new_tokens=int(os.environ.get("SHINE_MAX_NEW_TOKENS", "64")))

if __name__ == "__main__":
    demo.launch(**launch_options())
